"""The generation scheduler behind ``mygpt serve``: one worker thread, batched exact decoding.

Batched (the default where it is exact): every admitted request is a
:class:`mygpt.generate.Stream` in a row of one :class:`mygpt.generate.Decoder`. A request joins
at any step (its prompt is prefilled alone, exactly as ``mygpt generate`` prefills it) and
leaves when it is done or its client is gone; each step decodes every active row in fixed-shape
groups of ``DECODE_ROWS`` rows over the whole context, and ``generate`` runs that same shape with
one live row, so each stream's tokens and logprobs are bit for bit ``generate``'s whatever else
runs. At start the engine checks that on this backend and device
(:func:`mygpt.generate.batch_invariance_check`); where it does not hold it falls back to:

Round-robin: every request owns a ``generate`` generator and the worker takes one token from each
in turn (exact by construction, but the aggregate tokens/s is one stream's).

Requests beyond ``max_active`` wait in FIFO order; beyond ``max_queue`` waiting, :meth:`submit`
refuses (the server answers 429). A cancelled request is dropped before its next step.

Why one thread: the backends are not re-entrant across threads (MLX streams are per thread, torch's
inference mode is thread-local), so the model is loaded and run only on the worker thread.
"""

from __future__ import annotations

import asyncio
import codecs
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mygpt.errors import MygptError
from mygpt.generate import (
    DECODE_ROWS,
    Decoder,
    Stream,
    batch_invariance_check,
    fixed_shape_fits,
    log_softmax,
)

SCHEDULERS = ("auto", "batched", "round-robin")


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's and the top k
    echo: bool = False  # emit the prompt first (with its logprobs when asked)


class QueueFull(MygptError):
    """More requests are waiting than ``max_queue`` allows."""


class StopMatcher:
    """Cut streamed text at the first stop sequence, holding back what could still begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """``(text safe to emit, stopped)``."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0  # longest tail of pending that is a proper prefix of some stop
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def token_logprobs(tokenizer, logits: np.ndarray, token: int, k: int) -> dict:
    """One logprobs entry: the token's text, its log-probability and the top ``k`` alternatives
    (the model's own log-softmax of fp32 logits, computed in float64)."""
    lp = log_softmax(logits)
    top = {}
    if k > 0:
        for t in np.argsort(-lp, kind="stable")[:k]:
            top.setdefault(token_text(tokenizer, int(t)), float(lp[t]))
    return {"token": token_text(tokenizer, token), "id": token, "logprob": float(lp[token]),
            "top": top}  # fmt: skip


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode_bytes([token]).decode("utf-8", errors="replace")


def prompt_entries(tokenizer, ids: list[int], logits: np.ndarray | None, k: int | None) -> list:
    """Echoed prompt tokens; each token's logprob given the ones before (the first has none)."""
    entries = [{"token": token_text(tokenizer, ids[0]), "id": ids[0], "logprob": None,
                "top": None}]  # fmt: skip
    for i in range(1, len(ids)):
        if logits is None:
            entries.append({"token": token_text(tokenizer, ids[i]), "id": ids[i]})
        else:
            entries.append(token_logprobs(tokenizer, logits[i - 1], ids[i], k or 0))
    return entries


class Job:
    """One request's place in the engine; its events arrive on an asyncio queue.

    Events: ``("text", str, entries)`` pieces of valid UTF-8 text with the logprobs entries of
    the tokens they came from (empty unless asked for), then one ``("end", finish_reason,
    completion_tokens)`` or ``("error", message)``.
    """

    def __init__(self, req: GenRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.req = req
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.gen = None  # round-robin: the request's generate() generator
        self.stream: Stream | None = None  # batched: its row's state
        self.row = -1
        self.count = 0
        self.entries: list[dict] = []  # logprobs of tokens whose text is not emitted yet
        self.submitted = time.perf_counter()
        # a byte-level token may end inside a character: decode incrementally, as cli.generate does
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopper = StopMatcher(req.stop)
        self.outbox: list | None = None  # during a batched step: events wait here (see emit)

    def cancel(self) -> None:
        """Called from the event loop when the client is gone; the worker drops the job."""
        self.cancelled = True

    def emit(self, *event) -> None:
        if self.outbox is not None:  # a batched step delivers its rows' events together
            self.outbox.append((self, event))
            return
        deliver(self.loop, [(self, event)])


def deliver(loop: asyncio.AbstractEventLoop, items: list[tuple[Job, tuple]]) -> None:
    """Hand events to their jobs' queues on ``loop``: one wake-up of the loop for all of them
    (a wake-up per token per stream was most of the server's cost beside the model)."""

    def put() -> None:
        for job, event in items:
            job.events.put_nowait(event)

    try:
        loop.call_soon_threadsafe(put)
    except RuntimeError:  # the requests' event loop is gone: nobody is listening
        for job, _ in items:
            job.cancelled = True


class Engine:
    """Owns the model on a worker thread; decodes the active requests together (or in turn)."""

    def __init__(
        self, load: Callable[[], object], max_active: int = 16, max_queue: int | None = None,
        scheduler: str = "auto",
    ) -> None:  # fmt: skip
        if scheduler not in SCHEDULERS:
            raise MygptError(f"unknown scheduler {scheduler!r} — use one of {SCHEDULERS}")
        self._load = load
        self.max_active = max_active
        self.max_queue = max_queue
        self.scheduler = scheduler
        self.mode = ""  # "batched" | "round-robin", once loaded
        self.mode_reason = ""
        self.kv_bytes = 0
        self.stop_ids: frozenset[int] = frozenset()
        self.model = None
        self.decoder: Decoder | None = None
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._wake = threading.Condition()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0, "steps": 0}
        self._thread = threading.Thread(target=self._run, name="mygpt-engine", daemon=True)

    def start(self) -> None:
        """Load the model on the worker thread; a load failure is raised here, in the caller."""
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    def submit(self, req: GenRequest) -> Job:
        return self.submit_all([req])[0]

    def submit_all(self, reqs: list[GenRequest]) -> list[Job]:
        """Queue requests together (the choices of one API request): all of them, or none."""
        loop = asyncio.get_running_loop()
        jobs = [Job(r, loop) for r in reqs]
        with self._wake:
            free = max(0, self.max_active - len(self._active))
            if (
                self.max_queue is not None
                and len(self._pending) + len(jobs) - free > self.max_queue
            ):
                raise QueueFull(
                    f"{len(self._pending)} requests are already waiting (--max-queue "
                    f"{self.max_queue}) — retry shortly"
                )
            self._pending.extend(jobs)
            self._wake.notify()
        return jobs

    def load_state(self) -> dict:
        with self._wake:
            return {"active": len(self._active), "queued": len(self._pending), **self.stats}

    # --- worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.model = self._load()
            self._choose_mode()
        except BaseException as e:  # reported by start() in the main thread
            self._load_error = e
            self._ready.set()
            return
        self._ready.set()
        # One inference context for the thread's life: the per-request generators each enter
        # their own, and interleaving them would otherwise restore each other's saved state.
        with self.model.ops.inference():
            while True:
                self._admit()
                if self.mode == "batched":
                    self._batched_step()
                else:
                    for job in list(self._active):
                        self._step(job)

    def _choose_mode(self) -> None:
        """Batched where batched decoding is checked exact here; round-robin otherwise."""
        m = self.model
        cfg, dtype = getattr(m, "config", None), getattr(m, "dtype", "float32")
        self.stop_ids = frozenset(getattr(m, "stop_ids", None) or ())
        if self.scheduler == "round-robin" or cfg is None:
            self.mode, self.mode_reason = "round-robin", "requested"
        elif not fixed_shape_fits(cfg, dtype):
            self.mode = "round-robin"
            self.mode_reason = (
                f"a {DECODE_ROWS}-row decode buffer over the context of {cfg.max_seq_len} would "
                "be too large; each request decodes alone with a growing cache"
            )
        else:
            m.ops.activate()
            drift = batch_invariance_check(m.ops, cfg, m.params, dtype)
            if drift == 0.0 or self.scheduler == "batched":
                self.mode = "batched"
                self.mode_reason = (
                    "checked at start: batched decode is bit for bit solo decode"
                    if drift == 0.0
                    else f"forced by --scheduler batched, NOT exact here (logits differ by {drift:.1e})"
                )
                with m.ops.inference():
                    self.decoder = Decoder(m.ops, cfg, m.params, self.max_active, dtype)
                self.kv_bytes = Decoder.nbytes(cfg, self.max_active, dtype)
                return
            self.mode = "round-robin"
            self.mode_reason = (
                f"batched decode differs from solo decode on {m.ops.describe()} by up to "
                f"{drift:.1e} in the logits, so it would not be exact"
            )
        if cfg is not None and fixed_shape_fits(cfg, dtype):  # a DECODE_ROWS-row decoder each
            self.kv_bytes = self.max_active * Decoder.nbytes(cfg, DECODE_ROWS, dtype)

    def _admit(self) -> None:
        with self._wake:
            while not self._active and not self._pending:
                self._wake.wait()
            while self._pending and len(self._active) < self.max_active:
                job = self._pending.popleft()
                if job.cancelled:
                    self.stats["cancelled"] += 1
                    continue
                self._active.append(job)
                if self.mode == "batched":
                    self._join(job)

    def _join(self, job: Job) -> None:
        r = job.req
        job.stream = Stream(
            r.prompt_ids, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, seed=r.seed,
            keep_prompt_logits=r.echo and r.logprobs is not None,
        )  # fmt: skip
        job.row = self.decoder.add(job.stream)

    def _finish(self, job: Job, *event, stat: str) -> None:
        if job.gen is not None:
            job.gen.close()
        if job.row >= 0:
            self.decoder.remove(job.row)
            job.row = -1
        with self._wake:
            self._active.remove(job)
            self.stats[stat] += 1
        if event:
            job.emit(*event)

    def _batched_step(self) -> None:
        """One decode step of every active request (prefilling the ones that just joined)."""
        for job in list(self._active):
            if job.cancelled:
                self._finish(job, stat="cancelled")
        jobs = list(self._active)
        if not jobs:
            return
        try:
            logits = self.decoder.logits([j.row for j in jobs])
        except Exception as e:  # a bug must fail these requests, not stop the worker thread
            for job in jobs:
                self._finish(job, "error", f"internal error: {e!r}", stat="failed")
            return
        self.stats["steps"] += 1
        outbox: list[tuple[Job, tuple]] = []
        for job in jobs:
            job.outbox = outbox
        try:
            self._sample_all(jobs, logits)
        finally:
            for job in jobs:
                job.outbox = None
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for job, event in outbox:
                by_loop.setdefault(job.loop, []).append((job, event))
            for loop, items in by_loop.items():
                deliver(loop, items)

    def _sample_all(self, jobs: list[Job], logits: dict[int, np.ndarray]) -> None:
        """Each job's token from its row's logits, its text and events (into the outbox)."""
        m = self.model
        for job in jobs:
            req = job.req
            if job.count == 0 and req.echo:
                self._echo(job, job.stream.prompt_logits)
            if job.count >= req.max_tokens:  # max_tokens 0: scoring the prompt only
                self._end(job, "length")
                continue
            token = job.stream.sample(logits[job.row])
            if token in self.stop_ids:  # the model ended its turn (an end-of-sequence id)
                self._end(job, "stop")
                continue
            if req.logprobs is not None:
                job.entries.append(
                    token_logprobs(m.tokenizer, logits[job.row], token, req.logprobs)
                )
            self._emit_token(job, token)

    def _echo(self, job: Job, prompt_logits: np.ndarray | None) -> None:
        req, tok = job.req, self.model.tokenizer
        entries = []
        if req.logprobs is not None:
            entries = prompt_entries(tok, req.prompt_ids, prompt_logits, req.logprobs)
        job.emit("text", tok.decode_bytes(req.prompt_ids).decode("utf-8", "replace"), entries)

    def _emit_token(self, job: Job, token: int) -> None:
        """Count ``token``, stream the text it completes, and end the job at a stop or limit."""
        job.count += 1
        self.stats["tokens"] += 1
        piece = job.decoder.decode(self.model.tokenizer.decode_bytes([token]))
        text, stopped = job.stopper.feed(piece)
        if text or (job.entries and not job.stopper.pending):
            job.emit("text", text, job.entries)
            job.entries = []
        if stopped:
            return self._finish(job, "end", "stop", job.count, stat="completed")
        if job.count >= job.req.max_tokens:
            self._end(job, "length")

    def _step(self, job: Job) -> None:
        """Round-robin: one token for ``job`` (its first call also runs the prompt)."""
        if job.cancelled:
            return self._finish(job, stat="cancelled")
        req, m = job.req, self.model
        try:
            if job.count >= req.max_tokens:
                if req.echo and job.count == 0:
                    self._echo(job, self._prompt_logits(req) if req.logprobs is not None else None)
                return self._end(job, "length")
            if job.gen is None:
                if req.echo:
                    self._echo(job, self._prompt_logits(req) if req.logprobs is not None else None)
                job.gen = m.steps(
                    req.prompt_ids, req.max_tokens, temperature=req.temperature,
                    top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                )  # fmt: skip
            token, logits = next(job.gen)
            if token in self.stop_ids:  # the model ended its turn (an end-of-sequence id)
                return self._end(job, "stop")
        except MygptError as e:
            return self._finish(job, "error", str(e), stat="failed")
        except Exception as e:  # a bug must fail this request, not stop the worker thread
            return self._finish(job, "error", f"internal error: {e!r}", stat="failed")
        if req.logprobs is not None:
            job.entries.append(token_logprobs(m.tokenizer, logits, token, req.logprobs))
        self._emit_token(job, token)

    def _prompt_logits(self, req: GenRequest) -> np.ndarray:
        return self.model.logits(req.prompt_ids)

    def _end(self, job: Job, reason: str) -> None:
        text, stopped = job.stopper.feed(job.decoder.decode(b"", final=True))
        text += "" if stopped else job.stopper.flush()
        if text or job.entries:
            job.emit("text", text, job.entries)
            job.entries = []
        self._finish(job, "end", "stop" if stopped else reason, job.count, stat="completed")
