"""torch's two training-attention kernels (SDPA's flash kernel and plain batched matmuls) agree.

Which one runs depends on the machine (the matmul path is chosen on CPUs with 2+ threads), and the
test suite pins one thread, so both are forced here and held to the same parity bars.
"""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.config import ModelConfig
from mygpt.model import init_params, loss_fn
from mygpt.parity import CHECKS, run_check

pytestmark = pytest.mark.skipif(
    "torch" not in available_backends(), reason="the torch backend is not installed"
)
KERNELS = ("sdpa", "bmm")
SELF_ATTENTION = [c for c in CHECKS if c.kind == "op" and c.name.startswith("attention")]
SELF_ATTENTION = [c for c in SELF_ATTENTION if c.name.endswith("Tq6/Tk6")]  # training shapes
MODEL = [c for c in CHECKS if c.kind == "model" and c.name.split(" ", 1)[1].endswith("/gqa")]


@pytest.fixture(params=KERNELS)
def torch_ops(request):
    ops = get_backend("torch", "cpu")
    before = ops.attention_kernel
    ops.attention_kernel = request.param
    yield ops
    ops.attention_kernel = before


@pytest.mark.parametrize("check", SELF_ATTENTION, ids=lambda c: c.name.split(" ")[1])
def test_attention_op_against_numpy(check, torch_ops, check_rows):
    check_rows(run_check(check, None, torch_ops, "float32"))


@pytest.mark.skipif("mlx" not in available_backends(), reason="needs MLX to compare against")
@pytest.mark.parametrize("check", MODEL, ids=lambda c: c.name.split(" ", 1)[1])
def test_model_against_mlx(check, torch_ops, check_rows):
    check_rows(run_check(check, torch_ops, get_backend("mlx", "cpu"), "float32"))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_kernels_give_the_same_loss_and_gradients(position):
    ops = get_backend("torch", "cpu")
    cfg = ModelConfig(
        vocab_size=40, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2, max_seq_len=16,
        position=position,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.vocab_size, (3, 17))
    x, y = ops.asarray(ids[:, :-1]), ops.asarray(ids[:, 1:])
    params = ops.trainable({k: ops.asarray(v) for k, v in init_params(cfg, 0).items()})
    grad_fn = ops.value_and_grad(lambda p: loss_fn(ops, cfg, p, x, y))
    results = {}
    before = ops.attention_kernel
    try:
        for kernel in KERNELS:
            ops.attention_kernel = kernel
            loss, grads = grad_fn(params)
            results[kernel] = ops.item(loss), {k: ops.to_numpy(g) for k, g in grads.items()}
    finally:
        ops.attention_kernel = before
    (loss_a, grads_a), (loss_b, grads_b) = results["sdpa"], results["bmm"]
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for name in grads_a:
        scale = max(1.0, float(np.abs(grads_a[name]).max()))
        np.testing.assert_allclose(grads_b[name], grads_a[name], atol=1e-5 * scale, err_msg=name)
