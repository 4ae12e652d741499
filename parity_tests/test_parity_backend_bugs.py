"""Backend behaviour the two backends must share, found while writing the parity checks.

Each test here once failed on the torch backend (memory shared with numpy; a rope table built
under inference mode); they stay as regression tests for both backends.
"""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.model import forward, init_params, loss_fn
from mygpt.optim import AdamWConfig, adamw
from mygpt.parity import tiny_config


def _one_step(ops, params):
    P = ops.trainable({k: ops.asarray(v) for k, v in params.items()})
    opt = adamw(ops, P, AdamWConfig())
    return P, opt


def test_asarray_does_not_share_memory_with_numpy(pair):
    _, ops = pair
    w = np.zeros((3, 4), dtype=np.float32)
    P, opt = _one_step(ops, {"w": w})
    P = opt.step(P, {"w": ops.asarray(np.ones((3, 4), dtype=np.float32))}, lr=0.1)
    ops.eval(P, opt.arrays())
    assert np.all(w == 0), "the optimizer step wrote into the numpy array the params came from"


def test_to_numpy_is_a_snapshot(pair):
    _, ops = pair
    P, opt = _one_step(ops, {"w": np.zeros((3, 4), dtype=np.float32)})
    before = ops.to_numpy(P["w"])
    P = opt.step(P, {"w": ops.asarray(np.ones((3, 4), dtype=np.float32))}, lr=0.1)
    ops.eval(P, opt.arrays())
    assert np.all(before == 0), "a to_numpy() result changed when the parameters were updated"
    assert not np.all(ops.to_numpy(P["w"]) == 0)  # the step itself did happen


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_after_inference_with_rope(dtype, pair):
    """Sampling mid-training (under ops.inference()) must not break the next training step."""
    _, ops = pair
    # a rope dimension no other test uses, so the backend's table is built here, under inference
    cfg = tiny_config("rms", "rope", "gqa", embed_dim=40)
    P = ops.trainable({k: ops.asarray(v) for k, v in init_params(cfg).items()})
    ids = ops.asarray(np.arange(8, dtype=np.int64).reshape(1, 8) % cfg.vocab_size)
    with ops.inference():
        ops.eval(forward(ops, cfg, P, ids, dtype=dtype))
    vg = ops.value_and_grad(lambda p, a, b: loss_fn(ops, cfg, p, a, b, dtype))
    loss, grads = vg(P, ids, ids)
    ops.eval(loss, grads)
    assert np.isfinite(ops.item(loss))
