"""The generation scheduler behind ``mygpt serve``: one worker thread, a fair round-robin queue.

What it is: every admitted request owns a :meth:`mygpt.api.Model.stream` generator (so sampling,
top-k/top-p and the exact KV cache are the same code as ``mygpt generate``, and greedy output is
token-for-token the same). The worker takes one token from each active request in turn, so N
concurrent streams each advance at 1/N of the single-stream rate and none waits for another to
finish; requests beyond ``max_active`` wait in FIFO order. A cancelled request (the client went
away) is dropped before its next token.

What it is not: batched decoding. Putting several requests into one forward pass over a shared
KV cache needs per-row positions and a padding mask in the attention op, which the ops interface
(``backends/base.py``) does not have yet; without the mask, rows of different lengths would see
each other's padding. And even rows at the same position do not decode exactly as they do alone:
a forward pass of 8 rows gives logits up to ~5e-6 away from one row's (matmuls of another shape
sum in another order; ``scripts/bench_serve.py`` measures it), which can flip a greedy token at a
near-tie. Round-robin keeps every stream token-for-token ``mygpt generate``'s; the README's serve
section says what it costs (aggregate tokens/s is flat in the number of clients).

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

from mygpt.errors import MygptError


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)


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


class Job:
    """One request's place in the engine; its events arrive on an asyncio queue.

    Events: ``("text", str)`` pieces of valid UTF-8 text, then one ``("end", finish_reason,
    completion_tokens)`` or ``("error", message)``.
    """

    def __init__(self, req: GenRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.req = req
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.gen = None
        self.count = 0
        self.submitted = time.perf_counter()
        # a byte-level token may end inside a character: decode incrementally, as cli.generate does
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopper = StopMatcher(req.stop)

    def cancel(self) -> None:
        """Called from the event loop when the client is gone; the worker drops the job."""
        self.cancelled = True

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's event loop is gone: nobody is listening
            self.cancelled = True


class Engine:
    """Owns the model on a worker thread and interleaves the active requests token by token."""

    def __init__(self, load: Callable[[], object], max_active: int = 16) -> None:
        self._load = load
        self.max_active = max_active
        self.model = None
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._wake = threading.Condition()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0}
        self._thread = threading.Thread(target=self._run, name="mygpt-engine", daemon=True)

    def start(self) -> None:
        """Load the model on the worker thread; a load failure is raised here, in the caller."""
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    def submit(self, req: GenRequest) -> Job:
        job = Job(req, asyncio.get_running_loop())
        with self._wake:
            self._pending.append(job)
            self._wake.notify()
        return job

    def load_state(self) -> dict:
        with self._wake:
            return {"active": len(self._active), "queued": len(self._pending), **self.stats}

    # --- worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.model = self._load()
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
                for job in list(self._active):
                    self._step(job)

    def _admit(self) -> None:
        with self._wake:
            while not self._active and not self._pending:
                self._wake.wait()
            while self._pending and len(self._active) < self.max_active:
                self._active.append(self._pending.popleft())

    def _finish(self, job: Job, *event, stat: str) -> None:
        if job.gen is not None:
            job.gen.close()
        with self._wake:
            self._active.remove(job)
            self.stats[stat] += 1
        if event:
            job.emit(*event)

    def _step(self, job: Job) -> None:
        """One token for ``job`` (its first call also runs the prompt through the model)."""
        if job.cancelled:
            return self._finish(job, stat="cancelled")
        req, m = job.req, self.model
        try:
            if job.count >= req.max_tokens:
                return self._end(job, "length")
            if job.gen is None:
                job.gen = m.stream(
                    req.prompt_ids, req.max_tokens, temperature=req.temperature,
                    top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                )  # fmt: skip
            token = next(job.gen)
        except StopIteration:  # the model ended its turn (an end-of-sequence id)
            return self._end(job, "stop")
        except MygptError as e:
            return self._finish(job, "error", str(e), stat="failed")
        except Exception as e:  # a bug must fail this request, not stop the worker thread
            return self._finish(job, "error", f"internal error: {e!r}", stat="failed")
        job.count += 1
        self.stats["tokens"] += 1
        text, stopped = job.stopper.feed(job.decoder.decode(m.tokenizer.decode_bytes([token])))
        if text:
            job.emit("text", text)
        if stopped:
            return self._finish(job, "end", "stop", job.count, stat="completed")

    def _end(self, job: Job, reason: str) -> None:
        text, stopped = job.stopper.feed(job.decoder.decode(b"", final=True))
        text += "" if stopped else job.stopper.flush()
        if text:
            job.emit("text", text)
        self._finish(job, "end", "stop" if stopped else reason, job.count, stat="completed")
