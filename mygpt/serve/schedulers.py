"""The engine's two schedulers, behind one interface: how the active requests get their tokens.

- :class:`Batched` (the default where it is exact): every request is a
  :class:`mygpt.generate.Stream` in a row of one :class:`mygpt.generate.Decoder`; each step
  decodes every active row together, in the fixed shape ``mygpt generate``'s rows compute like
  (the exactness policy ``generate.pads_to_batch``), so each stream's tokens and logprobs are ``generate``'s.
- :class:`RoundRobin`: every request owns a ``generate`` generator and gets one token per turn
  (exact by construction; the aggregate tokens/s is one stream's).

A scheduler owns its per-request state (a row, a generator); the engine owns the requests, their
text and their events, which a scheduler reports through :class:`Outlet`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mygpt.errors import MygptError
from mygpt.generate import DECODE_ROWS, Decoder, Stream


class Outlet(Protocol):
    """What a scheduler reports to the engine about one request ("job")."""

    def echo(self, job, prompt_logits: np.ndarray | None) -> None: ...

    def token(self, job, token: int, logits: np.ndarray) -> None: ...

    def end(self, job, reason: str) -> None: ...

    def fail(self, job, message: str) -> None: ...


class Scheduler(Protocol):
    name: str  # "batched" | "round-robin"
    reason: str  # why this one (printed at start and in /health)
    kv_bytes: int  # KV memory it holds for max_active requests

    def join(self, job) -> None: ...

    def leave(self, job) -> None: ...

    def step(self, jobs: list, out: Outlet) -> None:
        """One token for each of ``jobs`` (prefilling those that just joined)."""


class Batched:
    name = "batched"

    def __init__(self, model, max_active: int, reason: str) -> None:
        self.model, self.reason = model, reason
        cfg, dtype = model.config, model.dtype
        with model.ops.inference():
            self.decoder = Decoder(model.ops, cfg, model.params, max_active, dtype)
        self.kv_bytes = Decoder.nbytes(cfg, max_active, dtype)
        self.rows: dict[object, int] = {}

    def join(self, job) -> None:
        r = job.req
        stream = Stream(
            r.prompt_ids, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, seed=r.seed,
            keep_prompt_logits=r.echo and r.logprobs is not None,
        )  # fmt: skip
        self.rows[job] = self.decoder.add(stream)

    def leave(self, job) -> None:
        row = self.rows.pop(job, None)
        if row is not None:
            self.decoder.remove(row)

    def step(self, jobs: list, out: Outlet) -> None:
        try:
            logits = self.decoder.logits([self.rows[j] for j in jobs])
        except Exception as e:  # a bug must fail these requests, not stop the worker thread
            for job in jobs:
                out.fail(job, f"internal error: {e!r}")
            return
        for job in jobs:
            row, req = self.rows[job], job.req
            stream = self.decoder.streams[row]
            if job.count == 0 and req.echo:
                out.echo(job, stream.prompt_logits)
            if job.count >= req.max_tokens:  # max_tokens 0: scoring the prompt only
                out.end(job, "length")
                continue
            out.token(job, stream.sample(logits[row]), logits[row])


class RoundRobin:
    name = "round-robin"

    def __init__(self, model, max_active: int, reason: str) -> None:
        self.model, self.reason = model, reason
        cfg, dtype = getattr(model, "config", None), getattr(model, "dtype", "float32")
        self.kv_bytes = max_active * Decoder.nbytes(cfg, DECODE_ROWS, dtype) if cfg else 0
        self.gens: dict[object, object] = {}

    def join(self, job) -> None:
        return None  # its generator starts at its first turn

    def leave(self, job) -> None:
        gen = self.gens.pop(job, None)
        if gen is not None:
            gen.close()

    def step(self, jobs: list, out: Outlet) -> None:
        for job in jobs:
            self._turn(job, out)

    def _turn(self, job, out: Outlet) -> None:
        req = job.req
        try:
            if job.count == 0 and req.echo and job not in self.gens:
                out.echo(job, self._prompt_logits(req) if req.logprobs is not None else None)
            if job.count >= req.max_tokens:
                return out.end(job, "length")
            if job not in self.gens:
                self.gens[job] = self.model.steps(
                    req.prompt_ids, req.max_tokens, temperature=req.temperature,
                    top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                )  # fmt: skip
            token, logits = next(self.gens[job])
        except MygptError as e:
            return out.fail(job, str(e))
        except Exception as e:  # a bug must fail this request, not stop the worker thread
            return out.fail(job, f"internal error: {e!r}")
        out.token(job, token, logits)

    def _prompt_logits(self, req) -> np.ndarray:
        return self.model.logits(req.prompt_ids)
