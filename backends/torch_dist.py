"""torch.distributed binding of :class:`~backends.distributed.ProcessGroup` (``torchrun``).

``torchrun`` puts ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the
environment; ``init_process_group`` reads them. gloo on CPU, NCCL on CUDA (each rank on
``cuda:LOCAL_RANK``). The collective timeout is tens of seconds, not torch's 30-minute default,
so a rank whose peer died exits promptly.
"""

from __future__ import annotations

import datetime
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from mygpt.backends.distributed import ProcessGroup, dist_timeout
from mygpt.errors import MygptError


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class TorchProcessGroup(ProcessGroup):
    def __init__(self, ops) -> None:
        super().__init__(ops)
        self.transport = "nccl" if ops.device == "cuda" else "gloo"
        self.launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "torch.distributed"
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if ops.device == "cuda":
            torch.cuda.set_device(self.local_rank)
        try:
            dist.init_process_group(
                self.transport, timeout=datetime.timedelta(seconds=dist_timeout())
            )
        except (RuntimeError, ValueError) as e:
            raise MygptError(
                f"could not join the torch.distributed group ({str(e).splitlines()[0]}) — start "
                "the run with torchrun, e.g. torchrun --nproc-per-node 2 -m mygpt train ..."
            ) from None
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._dev = torch.device(f"cuda:{self.local_rank}") if ops.device == "cuda" else None
        self._rendezvous = 0

    def _all_sum(self, x):
        dist.all_reduce(x)
        return x

    def _host(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(x))  # a writable copy
        return t.to(self._dev) if self._dev is not None else t  # NCCL reduces device tensors

    def _all_sum_host(self, x: np.ndarray) -> np.ndarray:
        t = self._host(x)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def _all_gather_host(self, x: np.ndarray) -> np.ndarray:
        t = self._host(x)
        rows = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(rows, t)
        return np.stack([r.cpu().numpy() for r in rows])

    def _store(self):
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()

    # The rendezvous store, not a collective: a collective would time out after
    # MYGPT_DIST_TIMEOUT while rank 0 trains a tokenizer or encodes a large corpus.
    def main_done(self, ok: bool = True) -> None:
        self._rendezvous += 1
        self._store().set(f"mygpt/ready/{self._rendezvous}", "1" if ok else "0")

    def wait_for_main(self) -> bool:
        self._rendezvous += 1
        key = f"mygpt/ready/{self._rendezvous}"
        store = self._store()
        while True:  # short waits, so a signal is handled between them
            try:
                store.wait([key], datetime.timedelta(seconds=1))
                return store.get(key) == b"1"
            except RuntimeError as e:
                if "timeout" not in str(e).lower():
                    raise

    def lost_ranks(self) -> list[int] | None:
        """Each survivor marks itself in the store; whoever has not after a moment is gone."""
        try:
            store = self._store()
            store.set(f"mygpt/failed/{self.rank}", "1")
            others = [r for r in range(self.world_size) if r != self.rank]
            deadline = time.monotonic() + 2.0
            while True:
                missing = [r for r in others if not store.check([f"mygpt/failed/{r}"])]
                if not missing or time.monotonic() > deadline:
                    return missing or None
                time.sleep(0.1)
        except Exception:  # the store itself lived in the lost process
            return super().lost_ranks()

    def close(self) -> None:
        super().close()
        if dist.is_initialized():
            dist.destroy_process_group()
