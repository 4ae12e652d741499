"""Run setup: the backend, its device, the process group a launcher made, and the precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mygpt.backends import get_backend, resolve_backend_name
from mygpt.backends.distributed import ProcessGroup
from mygpt.blas import reference_blas_warning
from mygpt.config import ModelConfig
from mygpt.console import console
from mygpt.errors import MygptError
from mygpt.precision import resolve_precision, time_dtypes
from mygpt.train.config import TrainConfig
from mygpt.train.probe import synthetic_step


@dataclass
class Run:
    """What every later part of a run computes with."""

    ops: Any
    dist: ProcessGroup
    dtype: str

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch (``--batch-size`` is split evenly across ranks)."""
        per_rank = batch_size // self.dist.world_size
        return slice(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank)


def start_run(tc: TrainConfig, config: ModelConfig | None = None) -> Run:
    """Open the backend, join the launcher's process group (if any), settle the precision and
    print the status line. ``config`` is a resumed or --init-from model's architecture."""
    backend_name, backend_why = resolve_backend_name(tc.backend)
    ops = get_backend(backend_name, tc.device)
    ops.activate()
    dist = ops.init_distributed()
    console.rank = dist.rank
    if tc.batch_size % dist.world_size:
        raise MygptError(
            f"--batch-size {tc.batch_size} does not split evenly across {dist.world_size} "
            f"processes — use a multiple of {dist.world_size} (it is the global batch)"
        )
    dtype, why = _precision(ops, dist, tc, config)
    threads = f", {ops.threads} threads: {ops.threads_reason}" if ops.threads else ""
    where = "" if dist.world_size == 1 else f" · {dist.describe()}"
    console.status(
        f"backend: {ops.name} ({backend_why}) · device: {ops.device} ({ops.device_reason}{threads}) · "
        f"precision: {dtype} ({why}){where}"
    )
    for note in (reference_blas_warning(ops), compile_note(ops.name, ops.device, tc)):
        if note:
            console.status(note)
    if dist.world_size > 1 and tc.model.dropout > 0:
        console.status(
            f"note: with --dropout each of the {dist.world_size} ranks draws its own masks, so "
            "the losses differ from a single-process run's (without dropout they agree)"
        )
    return Run(ops, dist, dtype)


def _precision(ops, dist: ProcessGroup, tc: TrainConfig, config) -> tuple[str, str]:
    """The compute dtype; ``--precision auto`` may time both dtypes on a bf16-capable CPU, and
    every rank must compute in the same one, so rank 0's choice is everyone's."""
    dtype, why = resolve_precision(ops, tc.precision, lambda: _probe(ops, tc, config))
    if dist.world_size > 1 and tc.precision == "auto":
        chosen = dist.gather_digests(dtype.encode().ljust(8))[0].rstrip(b" ").decode()
        if chosen != dtype:
            dtype, why = chosen, f"{why}; rank 0 measured {chosen} faster, and ranks must agree"
    return dtype, why


def _probe(ops, tc: TrainConfig, config: ModelConfig | None) -> dict[str, float]:
    """Seconds per training step of the run's own model in each dtype (``--precision auto`` on a
    bf16-capable CPU): ``config`` when resuming, else built from ``tc``."""
    cfg = config if config is not None else tc.model_config(_probe_vocab(tc))
    return time_dtypes(lambda dt: synthetic_step(ops, cfg, tc.batch_size, tc.seq_len, dt))


def _probe_vocab(tc: TrainConfig) -> int:
    # the tokenizer is not built yet when the start line is printed: its size, near enough
    return {"char": 96, "bpe": 128 + tc.num_merges, "bytebpe": 256 + tc.num_merges}.get(
        tc.tokenizer, 1024
    )


#: seconds ``--compile`` spent compiling the Ch.17-Ch.28 steps on this project's 2-core CPUs
COMPILE_SECONDS = {"torch": 40, "mlx": 5}
#: the step time compiling saves at best on a GPU (elementwise ops fused): optimistic on purpose
GPU_SAVING = 0.3


def compile_note(backend: str, device: str, tc: TrainConfig) -> str | None:
    """One line when ``--compile`` will not pay for itself in this run, else None.

    On this project's CPUs the compiled step measured no faster than eager at the Ch.17 and Ch.27
    shapes (the step is matmul-bound; docs/performance.md, "Compiling the step"), so there compiling is start-up
    cost. On a GPU a run must be long enough for even an optimistic saving to repay it.
    """
    if not tc.compile:
        return None
    cost = COMPILE_SECONDS.get(backend, 40)
    if device == "cpu":
        return (
            f"note: --compile costs ~{cost} s of compiling, and on CPUs compiled steps measured no "
            "faster at the book's sizes (matmul-bound) — drop --compile for a quicker run"
        )
    if tc.steps * 0.01 * GPU_SAVING < cost:  # a fast GPU step is ~10 ms
        return (
            f"note: --compile costs ~{cost} s of compiling, more than {tc.steps} steps can save "
            "on a GPU — drop --compile for runs this short"
        )
    return None
