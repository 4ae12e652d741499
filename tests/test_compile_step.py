"""--compile compiles the whole step, the optimizer included, and trains as eager does.

Compiling costs seconds (MLX) to a minute (torch) here, so this is one small model, 30 steps with
grad-accum 2, clipping and --optimizer muon (whose AdamW group is then ``OpsAdamW``: both
optimizers' functional forms are compiled), per backend. Tolerances are the parity table's: loss
1e-5, 30-step parameters 1e-4 of each tensor's max.
"""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.config import ModelConfig
from mygpt.model import init_params
from mygpt.optim.muon import make_optimizer
from mygpt.train.step import make_train_step

_CFG = ModelConfig(
    vocab_size=40,
    embed_dim=32,
    num_heads=4,
    num_layers=2,
    max_seq_len=16,
    norm="rms",
    position="rope",
    num_kv_heads=2,
)


def _run(ops, compile: bool, batches: list) -> tuple[list[float], dict]:
    params = ops.trainable({k: ops.asarray(v) for k, v in init_params(_CFG, 0).items()})
    opt = make_optimizer(ops, params, "muon", functional=compile)
    step = make_train_step(ops, _CFG, opt, max_grad_norm=0.5, compile=compile)
    losses = []
    for i, micro in enumerate(batches):
        params, loss = step(params, micro, 3e-3 * (1 - i / 40))  # the lr changes every step
        losses.append(ops.item(loss))
    return losses, {k: ops.to_numpy(v) for k, v in params.items()}


@pytest.mark.parametrize("backend", [b for b in ("mlx", "torch") if b in available_backends()])
def test_compiled_step_with_optimizer_equals_eager(backend, monkeypatch):
    ops = get_backend(backend, "cpu")
    compiled = []
    real = ops.compile
    monkeypatch.setattr(ops, "compile", lambda fn: compiled.append(fn) or real(fn))
    rng = np.random.default_rng(0)
    batches = [
        [tuple(ops.asarray(rng.integers(0, 40, (2, 16))) for _ in range(2)) for _ in range(2)]
        for _ in range(30)
    ]
    eager_losses, eager_params = _run(ops, False, batches)
    assert not compiled
    losses, params = _run(ops, True, batches)
    assert compiled, "the optimizer update was not compiled"
    np.testing.assert_allclose(losses, eager_losses, atol=1e-5, rtol=0)
    for k in params:
        scale = np.abs(eager_params[k]).max()
        assert np.abs(params[k] - eager_params[k]).max() <= 1e-4 * scale, k
    assert eager_losses[-1] < eager_losses[0] - 0.3  # it trained


def test_compile_says_when_it_will_not_pay():
    from mygpt.train import TrainConfig
    from mygpt.train.setup import compile_note

    assert compile_note("torch", "cpu", TrainConfig(compile=False)) is None
    cpu = compile_note("torch", "cpu", TrainConfig(compile=True))
    assert cpu.startswith("note: --compile") and "\n" not in cpu
    assert "100 steps" in compile_note("mlx", "gpu", TrainConfig(compile=True, steps=100))
    assert compile_note("torch", "cuda", TrainConfig(compile=True, steps=100_000)) is None
