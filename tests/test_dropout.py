"""--dropout: attention probabilities are dropped in training only, on both backends."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.config import ModelConfig
from mygpt.model import forward, init_params

BACKENDS = available_backends()


def _qkv(rng, B=2, H=4, hkv=2, tq=5, tk=5, D=8):
    q = rng.standard_normal((B, H, tq, D)).astype(np.float32)
    k = rng.standard_normal((B, hkv, tk, D)).astype(np.float32)
    v = rng.standard_normal((B, hkv, tk, D)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 4, 6, 6), (4, 2, 6, 6), (4, 1, 3, 8)])
def test_the_dropout_path_is_the_same_attention(backend, shape):
    """A vanishing dropout rate takes the dropout code path and must give plain attention."""
    ops = get_backend(backend, "cpu")
    H, hkv, tq, tk = shape
    q, k, v = (ops.asarray(a) for a in _qkv(np.random.default_rng(0), H=H, hkv=hkv, tq=tq, tk=tk))
    plain = ops.to_numpy(ops.attention(q, k, v, 0.35))
    kernels = ["sdpa", "bmm"] if backend == "torch" and tq == tk else [None]
    for kernel in kernels:  # torch has two training kernels; force each
        before = getattr(ops, "attention_kernel", None)
        if kernel:
            ops.attention_kernel = kernel
        try:
            nearly_plain = ops.to_numpy(ops.attention(q, k, v, 0.35, dropout=1e-12))
        finally:
            if kernel:
                ops.attention_kernel = before
        np.testing.assert_allclose(nearly_plain, plain, atol=2e-6, rtol=1e-5, err_msg=kernel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_unbiased_and_random(backend):
    """Inverted dropout: outputs vary between calls, their mean is plain attention."""
    ops = get_backend(backend, "cpu")
    ops.seed(0)
    q, k, v = (ops.asarray(a) for a in _qkv(np.random.default_rng(1), tq=6, tk=6))
    plain = ops.to_numpy(ops.attention(q, k, v, 0.35))
    samples = np.stack(
        [ops.to_numpy(ops.attention(q, k, v, 0.35, dropout=0.3)) for _ in range(400)]
    )
    assert np.abs(samples[0] - samples[1]).max() > 1e-3  # dropped different probabilities
    # the first query sees one key: its output is v or 0, so it is never rescaled by others
    assert np.abs(samples.mean(axis=0) - plain).max() < 0.25
    assert np.abs(samples.mean(axis=0) - plain).mean() < 0.03


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_applies_in_training_only(backend):
    ops = get_backend(backend, "cpu")
    ops.seed(0)
    cfg = ModelConfig(
        vocab_size=20, embed_dim=16, num_heads=2, num_layers=2, max_seq_len=8, dropout=0.2
    )
    params = {k: ops.asarray(v) for k, v in init_params(cfg, 0).items()}
    no_dropout = dataclasses.replace(cfg, dropout=0.0)
    ids = ops.asarray(np.arange(16).reshape(2, 8) % 20)
    evaluated = ops.to_numpy(forward(ops, cfg, params, ids))
    np.testing.assert_array_equal(evaluated, ops.to_numpy(forward(ops, no_dropout, params, ids)))
    trained = [ops.to_numpy(forward(ops, cfg, params, ids, train=True)) for _ in range(2)]
    assert np.abs(trained[0] - evaluated).max() > 1e-3
    assert np.abs(trained[0] - trained[1]).max() > 1e-3
    # position 0 attends to itself only: dropping that probability zeroes its attention output,
    # otherwise it is scaled by 1/(1-p); either way the logits there stay finite
    assert np.isfinite(trained[0]).all()


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_step_draws_a_new_mask_even_compiled(backend, compile):
    """A compiled step must not freeze its RNG key (MLX bakes it in unless told otherwise)."""
    if compile and backend == "torch":
        pytest.skip("torch.compile takes tens of seconds on CPU; MLX's is the one with the trap")
    ops = get_backend(backend, "cpu")
    ops.seed(0)
    x = ops.trainable({"w": ops.asarray(np.ones((64,), np.float32))})
    step = ops.value_and_grad(lambda p: (ops.dropout(p["w"], 0.5) ** 2).sum(), compile=compile)
    grads = [ops.to_numpy(step(x)[1]["w"]) for _ in range(3)]
    assert not np.array_equal(grads[0], grads[1]) and not np.array_equal(grads[1], grads[2])
    ops.seed(5)
    again = ops.to_numpy(step(x)[1]["w"])
    ops.seed(5)
    assert np.array_equal(ops.to_numpy(step(x)[1]["w"]), again)  # and reseeding replays it
