"""--grad-accum k costs the memory of one micro-batch, not of k (issue 21).

MLX is lazy: accumulating k micro-batches' gradients without evaluating them builds every
micro-batch's graph before one evaluation, so all k sets of activations are alive at once (measured:
364 MB at batch 8 x 256 tokens, 128 wide, 2 layers, grad-accum 4, against 121 MB at grad-accum 1).
The step evaluates the running sum after each micro-batch; then the peak stays within 1.25x of
grad-accum 1. MLX's own allocator counter measures it; torch on the CPU has none, so its peak RSS is
read in a fresh process (torch frees each micro-batch's graph in backward anyway: measured
1.05-1.1x).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.config import ModelConfig
from mygpt.model import init_params
from mygpt.optim import AdamWConfig, adamw
from mygpt.train.step import make_train_step

ROOT = Path(__file__).resolve().parents[1]
_SHAPE = dict(vocab_size=65, embed_dim=128, num_heads=4, num_layers=2, max_seq_len=256)


def _peak(backend: str, grad_accum: int, batch: int = 4) -> int:
    """Bytes a training step at ``grad_accum`` micro-batches of ``batch`` x 256 needs at most:
    the allocator's peak (MLX), else the growth of the process's peak RSS over a warmed-up step."""
    ops = get_backend(backend, "cpu")
    cfg = ModelConfig(**_SHAPE)
    params = ops.trainable({n: ops.asarray(v) for n, v in init_params(cfg, 0).items()})
    step = make_train_step(ops, cfg, adamw(ops, params, AdamWConfig()))
    rng = np.random.default_rng(0)
    micro = [
        tuple(ops.asarray(rng.integers(0, 65, (batch, 256))) for _ in range(2))
        for _ in range(grad_accum)
    ]
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    ops.reset_peak_memory()
    for _ in range(2):
        params, loss = step(params, micro, 1e-3)
        ops.item(loss)
    peak = ops.peak_memory()
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss


def _peak_in_subprocess(backend: str, grad_accum: int) -> int:
    code = (
        "import json, sys; from tests.test_accum_memory import _peak; "
        f"print(json.dumps(_peak({backend!r}, {grad_accum}, batch=8)))"
    )
    # glibc serves large blocks from its heap, where a freed block's pages stay counted in the
    # RSS and fragmentation moves the peak by +-20% from run to run; blocks of 64 kB and up from
    # mmap return their pages on free, so the peak RSS then follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif("mlx" not in available_backends(), reason="needs mlx")
def test_mlx_grad_accum_peak_memory_is_one_micro_batchs():
    one, four = _peak("mlx", 1), _peak("mlx", 4)
    assert one > 20e6  # the activations of a 4 x 256 batch really are measured
    assert four <= 1.25 * one, f"grad-accum 4 peaks at {four / one:.2f}x grad-accum 1"


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux /proc")
@pytest.mark.skipif("torch" not in available_backends(), reason="needs torch")
def test_torch_grad_accum_peak_rss_is_one_micro_batchs():
    one, four = _peak_in_subprocess("torch", 1), _peak_in_subprocess("torch", 4)
    assert one > 5e6
    assert four <= 1.25 * one, f"grad-accum 4 peaks at {four / one:.2f}x grad-accum 1"
