"""--init: the book's init stays bit for bit what it was; --init scaled starts at ~ln(vocab)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.model import init_params, loss_fn

# sha256 over (name, bytes) of init_params(cfg, seed=3) before --init existed (issue 21)
_BOOK_DIGESTS = {
    "gelu": "4b1ccfb1b004bd7e51a0f1bc6ac93dc24a913367fe252265050a61658ba2f056",
    "swiglu": "65334bff45d17a256a27edb79f8c141917e262c70c3be36b4d52d533e0a2fd15",
}
_CONFIGS = {
    "gelu": ModelConfig(vocab_size=65),
    "swiglu": ModelConfig(vocab_size=65, norm="rms", position="rope", num_kv_heads=2, mlp="swiglu"),
}
_CH28 = ModelConfig(
    vocab_size=3046,
    embed_dim=192,
    num_heads=6,
    num_kv_heads=2,
    num_layers=4,
    max_seq_len=256,
    norm="rms",
    position="rope",
)


def _digest(params: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode() + params[k].tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_book_init_is_bit_identical_to_before(mlp):
    cfg = _CONFIGS[mlp]
    assert _digest(init_params(cfg, seed=3)) == _BOOK_DIGESTS[mlp]
    assert _digest(init_params(cfg, seed=3, init="book")) == _BOOK_DIGESTS[mlp]


def test_scaled_init_shapes_the_residual_projections():
    cfg = _CONFIGS["gelu"]
    p = init_params(cfg, seed=0, init="scaled")
    assert abs(p["token_embedding.embedding.weight"].std() - 0.02) < 2e-3
    assert abs(p["blocks.0.mha.W_Q.weight"].std() - 0.02) < 2e-3
    want = 0.02 / math.sqrt(2 * cfg.num_layers)
    assert abs(p["blocks.0.mha.W_O.weight"].std() - want) < 1e-3
    assert abs(p["blocks.0.mlp.fc2.weight"].std() - want) < 1e-3
    assert not p["blocks.0.mlp.fc1.bias"].any() and (p["ln_f.weight"] == 1).all()
    with pytest.raises(MygptError, match="unknown --init"):
        init_params(cfg, init="xavier")


@pytest.mark.parametrize("backend", [b for b in ("torch", "mlx") if b in available_backends()])
def test_scaled_init_first_loss_is_ln_vocab_at_the_ch28_shape(backend):
    ops = get_backend(backend, "cpu")
    rng = np.random.default_rng(0)
    x, y = (ops.asarray(rng.integers(0, _CH28.vocab_size, (2, 256))) for _ in range(2))
    losses = {}
    for init in ("book", "scaled"):
        params = {k: ops.asarray(v) for k, v in init_params(_CH28, seed=0, init=init).items()}
        losses[init] = ops.item(loss_fn(ops, _CH28, params, x, y, train=False))
    assert abs(losses["scaled"] - math.log(_CH28.vocab_size)) < 0.5, losses
    assert losses["book"] > 2 * math.log(_CH28.vocab_size), losses  # the book's N(0, 1) head
