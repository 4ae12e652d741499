"""Data-parallel collectives, as part of the backend interface.

A :class:`ProcessGroup` is what a training run sees of the other processes: its rank, the world
size, a mean all-reduce of a gradient dict, a mean of a few host floats, a barrier and a check
that every rank holds the same bytes (settings, corpus, weights). The launchers (``torchrun``,
``mlx.launch``) and the collectives are the frameworks' own; the subclasses in
``torch_dist.py`` and ``mlx_dist.py`` bind them. The base class is the single-process group:
every collective is the identity, so a run with no launcher is exactly a single-process run.

Gradients travel in a few large flat buckets (one framework call per bucket, not per tensor: each
call costs a round-trip latency). The reduction happens after the whole backward pass, so
communication does not overlap it yet; the buckets are filled in reverse parameter order (the
order backward produces gradients), which is what an overlapping version would hook into.

A collective that waits on a dead or hung peer must not wait forever: a watchdog thread ends the
process with a one-line error once a collective has waited ``MYGPT_DIST_TIMEOUT`` seconds
(default 30).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mygpt.backends.types import Array, Params

BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket size
DEFAULT_TIMEOUT_S = 30.0


def dist_timeout() -> float:
    try:
        return max(1.0, float(os.environ.get("MYGPT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


class PeerLost(RuntimeError):
    """A collective failed because another rank died or stopped answering."""


class ProcessGroup:
    """The processes of one run. This base class is the one-process group (no launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = ""  # "torchrun", "mlx.launch"
    transport: str = ""  # "gloo", "nccl", "ring", ...

    def __init__(self, ops: Any = None) -> None:
        self.ops = ops
        self.comm_seconds = 0.0  # time spent inside gradient all-reduces (for bench_ddp)
        self._watch_since: float | None = None
        self._watch_what = ""
        self._watchdog: threading.Thread | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if self.world_size == 1:
            return "single process"
        return f"rank {self.rank} of {self.world_size} ({self.launcher}, {self.transport})"

    # --- what the training loop calls ----------------------------------------------------------
    def all_reduce_grads(self, grads: Params) -> Params:
        """The mean of every rank's gradients, reduced in flat fp32 buckets of ~25 MB."""
        if self.world_size == 1:
            return grads
        ops = self.ops
        # MLX is lazy: finish the backward pass first, so the timing below is communication only
        ops.eval(*grads.values())
        t0 = time.perf_counter()
        out: Params = {}
        with self._watch("the gradient all-reduce"):
            for names in self._buckets(grads):
                flat = ops.concat([ops.reshape(grads[k], (-1,)) for k in names], axis=0)
                flat = self._all_sum(flat) * (1.0 / self.world_size)
                ops.eval(flat)
                offset = 0
                for k in names:
                    n = _numel(grads[k])
                    out[k] = ops.reshape(flat[offset : offset + n], tuple(grads[k].shape))
                    offset += n
        self.comm_seconds += time.perf_counter() - t0
        return {k: out[k] for k in grads}

    def mean(self, values: Sequence[float]) -> list[float]:
        """The mean over ranks of a few host floats (losses, flags), in one collective."""
        if self.world_size == 1:
            return [float(v) for v in values]
        with self._watch("an all-reduce of the logged losses"):
            total = self._all_sum_host(np.asarray(values, dtype=np.float64))
        return [float(v) / self.world_size for v in total]

    def barrier(self, what: str = "a barrier") -> None:
        if self.world_size > 1:
            with self._watch(what):
                self._all_sum_host(np.zeros(1))

    def main_done(self, ok: bool = True) -> None:
        """Rank 0: release the ranks waiting in :meth:`wait_for_main`, telling them whether the
        work succeeded."""
        if self.world_size > 1:
            self._all_sum_host(np.array([1.0 if ok else 0.0]))

    def wait_for_main(self) -> bool:
        """Ranks other than 0: block until rank 0's :meth:`main_done`; whether it succeeded.

        No timeout: rank 0 may be training a tokenizer for minutes (if it dies, the launcher ends
        this process)."""
        if self.world_size == 1:
            return True
        return bool(self._all_sum_host(np.zeros(1))[0] > 0.5)

    def gather_digests(self, digest: bytes) -> list[bytes]:
        """Every rank's ``digest`` (the same length on every rank), in rank order."""
        if self.world_size == 1:
            return [digest]
        with self._watch("the start-up consistency check"):
            mine = np.frombuffer(digest.ljust(-(-len(digest) // 4) * 4, b"\0"), dtype=np.int32)
            rows = self._all_gather_host(mine.copy())  # (world, len / 4)
        return [np.asarray(r, dtype=np.int32).tobytes()[: len(digest)] for r in rows]

    def lost_ranks(self) -> list[int] | None:
        """Which ranks are gone, where the engine can tell; None where it cannot."""
        if self.world_size == 2:
            return [1 - self.rank]
        return None

    def close(self) -> None:
        self._watch_since = None

    # --- what a subclass binds -----------------------------------------------------------------
    def _all_sum(self, x: Array) -> Array:
        return x

    def _all_sum_host(self, x: np.ndarray) -> np.ndarray:
        return x

    def _all_gather_host(self, x: np.ndarray) -> np.ndarray:
        return x[None]

    # --- shared plumbing -----------------------------------------------------------------------
    def _buckets(self, grads: Params) -> list[list[str]]:
        buckets: list[list[str]] = [[]]
        size = 0
        for k in reversed(list(grads)):  # backward produces the last layer's gradients first
            nbytes = _numel(grads[k]) * 4
            if buckets[-1] and size + nbytes > BUCKET_BYTES:
                buckets.append([])
                size = 0
            buckets[-1].append(k)
            size += nbytes
        return buckets

    def peer_lost_message(self, what: str, cause: str = "") -> str:
        lost = self.lost_ranks()
        who = (
            f"rank {', '.join(map(str, lost))}"
            if lost
            else "a peer rank (the launcher's log names it)"
        )
        detail = f" ({cause})" if cause else ""
        return (
            f"rank {self.rank} lost contact with {who} during {what}{detail} — the last "
            "checkpoint is intact; fix the lost process and rerun with --resume"
        )

    @contextlib.contextmanager
    def _watch(self, what: str) -> Iterator[None]:
        """Time-limit a collective: past the timeout, a watchdog thread ends the process."""
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch_loop, daemon=True)
            self._watchdog.start()
        self._watch_what, self._watch_since = what, time.monotonic()
        try:
            yield
        except PeerLost:
            raise
        except RuntimeError as e:  # the engine noticed the peer's socket close
            raise PeerLost(self.peer_lost_message(what, _first_line(e))) from None
        finally:
            self._watch_since = None

    def _watch_loop(self) -> None:
        timeout = dist_timeout()
        while True:
            time.sleep(0.5)
            since = self._watch_since
            if since is not None and time.monotonic() - since > timeout:
                msg = self.peer_lost_message(
                    self._watch_what, f"no answer for {timeout:.0f} s; MYGPT_DIST_TIMEOUT sets it"
                )
                sys.stderr.write(f"error: {msg}\n")
                sys.stderr.flush()
                os._exit(1)


def _numel(x: Array) -> int:
    n = 1
    for d in x.shape:
        n *= int(d)
    return n


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."
