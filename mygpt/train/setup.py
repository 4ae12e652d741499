"""Run setup: the backend, its device, the process group a launcher made, and the precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mygpt.backends import get_backend, resolve_backend_name
from mygpt.backends.distributed import ProcessGroup
from mygpt.console import console
from mygpt.errors import MygptError
from mygpt.precision import resolve_precision
from mygpt.train.config import TrainConfig


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


def start_run(tc: TrainConfig) -> Run:
    """Open the backend, join the launcher's process group (if any) and print the status line."""
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
    dtype, why = resolve_precision(ops, tc.precision)
    threads = f", {ops.threads} threads: {ops.threads_reason}" if ops.threads else ""
    where = "" if dist.world_size == 1 else f" · {dist.describe()}"
    console.status(
        f"backend: {ops.name} ({backend_why}) · device: {ops.device} ({ops.device_reason}{threads}) · "
        f"precision: {dtype} ({why}){where}"
    )
    if dist.world_size > 1 and tc.dropout > 0:
        console.status(
            f"note: with --dropout each of the {dist.world_size} ranks draws its own masks, so "
            "the losses differ from a single-process run's (without dropout they agree)"
        )
    return Run(ops, dist, dtype)
