"""The engine behind ``mygpt serve``: one worker thread runs the model for every request.

How the active requests get their tokens is the scheduler's (``mygpt.serve.schedulers``):
batched exact decoding where the engine checks at start that it is exact on this backend and
device (:func:`mygpt.generate.batch_invariance_check`), round-robin otherwise. The engine owns the
requests: admission, the queue, their text (UTF-8, stop sequences), logprobs and events.

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
from mygpt.generate import DECODE_ROWS, batch_invariance_check, log_softmax, pads_to_batch
from mygpt.serve.schedulers import Batched, RoundRobin, Scheduler

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
        self.count = 0
        self.entries: list[dict] = []  # logprobs of tokens whose text is not emitted yet
        self.submitted = time.perf_counter()
        # a byte-level token may end inside a character: decode incrementally, as cli.generate does
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopper = StopMatcher(req.stop)
        self.outbox: list | None = None  # during a step: events wait here (see emit)

    def cancel(self) -> None:
        """Called from the event loop when the client is gone; the worker drops the job."""
        self.cancelled = True

    def emit(self, *event) -> None:
        if self.outbox is not None:  # a step delivers its requests' events together
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
    """Owns the model on a worker thread; its scheduler decodes the active requests."""

    def __init__(
        self, load: Callable[[], object], max_active: int = 16, max_queue: int | None = None,
        scheduler: str = "auto",
    ) -> None:  # fmt: skip
        if scheduler not in SCHEDULERS:
            raise MygptError(f"unknown scheduler {scheduler!r} — use one of {SCHEDULERS}")
        self._load = load
        self.max_active = max_active
        self.max_queue = max_queue
        self.requested = scheduler
        self.scheduler: Scheduler | None = None  # once loaded
        self.stop_ids: frozenset[int] = frozenset()
        self.model = None
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._wake = threading.Condition()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0, "steps": 0}
        self._thread = threading.Thread(target=self._run, name="mygpt-engine", daemon=True)

    @property
    def mode(self) -> str:
        return self.scheduler.name if self.scheduler else ""

    @property
    def mode_reason(self) -> str:
        return self.scheduler.reason if self.scheduler else ""

    @property
    def kv_bytes(self) -> int:
        return self.scheduler.kv_bytes if self.scheduler else 0

    @property
    def decoder(self):
        """The batched scheduler's decoder (None under round-robin)."""
        return getattr(self.scheduler, "decoder", None)

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
            self.stop_ids = frozenset(getattr(self.model, "stop_ids", None) or ())
            self.scheduler = self._choose_scheduler()
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
                self._step()

    def _choose_scheduler(self) -> Scheduler:
        """Batched where batched decoding is checked exact here; round-robin otherwise."""
        m = self.model
        cfg, dtype = getattr(m, "config", None), getattr(m, "dtype", "float32")
        if self.requested == "round-robin" or cfg is None:
            return RoundRobin(m, self.max_active, "requested")
        if not pads_to_batch(cfg, dtype):
            return RoundRobin(m, self.max_active, (
                f"a {DECODE_ROWS}-row decode buffer over the context of {cfg.max_seq_len} would "
                "be too large; each request decodes alone with a growing cache"
            ))  # fmt: skip
        m.ops.activate()
        drift = batch_invariance_check(m.ops, cfg, m.params, dtype)
        if drift == 0.0:
            return Batched(m, self.max_active, "checked at start: batched decode is bit for bit "
                           "solo decode")  # fmt: skip
        if self.requested == "batched":
            return Batched(m, self.max_active, "forced by --scheduler batched, NOT exact here "
                           f"(logits differ by {drift:.1e})")  # fmt: skip
        return RoundRobin(m, self.max_active, (
            f"batched decode differs from solo decode on {m.ops.describe()} by up to "
            f"{drift:.1e} in the logits, so it would not be exact"
        ))  # fmt: skip

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
                self.scheduler.join(job)

    def _finish(self, job: Job, *event, stat: str) -> None:
        self.scheduler.leave(job)
        with self._wake:
            self._active.remove(job)
            self.stats[stat] += 1
        if event:
            job.emit(*event)

    def _step(self) -> None:
        """One scheduler step over the active requests; their events reach their event loops
        together, one wake-up per loop."""
        for job in list(self._active):
            if job.cancelled:
                self._finish(job, stat="cancelled")
        jobs = list(self._active)
        if not jobs:
            return
        outbox: list[tuple[Job, tuple]] = []
        for job in jobs:
            job.outbox = outbox
        try:
            self.scheduler.step(jobs, self)
            self.stats["steps"] += 1
        finally:
            for job in jobs:
                job.outbox = None
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for job, event in outbox:
                by_loop.setdefault(job.loop, []).append((job, event))
            for loop, items in by_loop.items():
                deliver(loop, items)

    # --- the scheduler's Outlet: what happens to a request's tokens ----------------------------
    def echo(self, job: Job, prompt_logits: np.ndarray | None) -> None:
        req, tok = job.req, self.model.tokenizer
        entries = []
        if req.logprobs is not None:
            entries = prompt_entries(tok, req.prompt_ids, prompt_logits, req.logprobs)
        job.emit("text", tok.decode_bytes(req.prompt_ids).decode("utf-8", "replace"), entries)

    def token(self, job: Job, token: int, logits: np.ndarray) -> None:
        """A sampled token: the end of its turn (an end-of-sequence id), or its text."""
        if token in self.stop_ids:
            return self.end(job, "stop")
        if job.req.logprobs is not None:
            job.entries.append(
                token_logprobs(self.model.tokenizer, logits, token, job.req.logprobs)
            )
        self._emit_token(job, token)

    def fail(self, job: Job, message: str) -> None:
        self._finish(job, "error", message, stat="failed")

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
            self.end(job, "length")

    def end(self, job: Job, reason: str) -> None:
        text, stopped = job.stopper.feed(job.decoder.decode(b"", final=True))
        text += "" if stopped else job.stopper.flush()
        if text or job.entries:
            job.emit("text", text, job.entries)
            job.entries = []
        self._finish(job, "end", "stop" if stopped else reason, job.count, stat="completed")
