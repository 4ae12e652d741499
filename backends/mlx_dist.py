"""mlx.distributed binding of :class:`~backends.distributed.ProcessGroup` (``mlx.launch``).

``mlx.launch`` starts one process per host slot and tells each its rank and peers through the
environment (``MLX_RANK`` and ``MLX_HOSTFILE`` for the ring backend over TCP, ``MLX_WORLD_SIZE``
and ``NCCL_*`` for NCCL with mlx's CUDA build, the MPI variables for MPI);
``mx.distributed.init()`` picks the backend that environment describes.
"""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np

from mygpt.backends.distributed import ProcessGroup
from mygpt.errors import MygptError

_LAUNCH_ENV = ("MLX_RANK", "MLX_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched() -> bool:
    return any(v in os.environ for v in _LAUNCH_ENV)


def _transport() -> str:
    if "MLX_JACCL_COORDINATOR" in os.environ:
        return "jaccl"
    if "NCCL_HOST_IP" in os.environ:
        return "nccl"
    if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ:
        return "mpi"
    return "ring"


class MLXProcessGroup(ProcessGroup):
    launcher = "mlx.launch"

    def __init__(self, ops) -> None:
        super().__init__(ops)
        self.transport = _transport()
        try:
            self.group = mx.distributed.init(strict=True, backend=self.transport)
        except (RuntimeError, ValueError) as e:
            raise MygptError(
                f"could not join the mlx.distributed group ({str(e).splitlines()[0]}) — start "
                "the run with mlx.launch, e.g. mlx.launch -n 2 --backend ring -- mygpt train ..."
            ) from None
        self.rank, self.world_size = self.group.rank(), self.group.size()
        # ranks on one host share its cores; mlx.launch says nothing about locality
        self.local_rank = self.rank

    def _all_sum(self, x):
        return mx.distributed.all_sum(x, group=self.group)

    def _all_sum_host(self, x: np.ndarray) -> np.ndarray:
        # float64 is not an MLX dtype: host values travel as float32 (losses, flags)
        y = mx.distributed.all_sum(mx.array(x.astype(np.float32)), group=self.group)
        mx.eval(y)
        return np.array(y, dtype=np.float64)

    def _all_gather_host(self, x: np.ndarray) -> np.ndarray:
        y = mx.distributed.all_gather(mx.array(x[None]), group=self.group)
        mx.eval(y)
        return np.array(y)

    def lost_ranks(self) -> list[int] | None:
        if self.world_size == 2:
            return [1 - self.rank]
        return None  # a ring sees only its neighbours' sockets
