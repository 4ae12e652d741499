"""A model that decodes alone (its context too long for the fixed 8-row shape) is held with its
matmul weights as the backend multiplies one row by them fastest (``Ops.asarray_for_one_row``;
torch on CPU: stored transposed). The same values, a faster one-row product, its own rounding:
checked here that the layout is what is claimed, that the logits are the plain layout's to fp32
rounding, and that serve (whose round-robin runs ``generate``) stays exact to ``mygpt generate``.
A model that pads to the batch (every book checkpoint) keeps its layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mygpt
from mygpt import model
from mygpt.backends import available_backends, get_backend
from mygpt.checkpoint import load_checkpoint, save_checkpoint
from mygpt.cli import main
from mygpt.config import ModelConfig
from mygpt.generate import pads_to_batch
from tests.conftest import BOOK_FIXTURES
from tests.serving import running_server

CHARS = sorted("abcdefgh \n")
TOK = {"kind": "char", "version": 1, "chars": CHARS}


def long_context(tmp_path: Path) -> Path:
    """A tiny rotary model with a 2M-token context: 8 rows of its KV cache would pass 512 MiB."""
    cfg = ModelConfig(vocab_size=len(CHARS), embed_dim=32, num_heads=4, num_kv_heads=2,
                      num_layers=2, max_seq_len=2**21, norm="rms", position="rope",
                      mlp="swiglu", mlp_hidden=64)  # fmt: skip
    assert not pads_to_batch(cfg)
    path = tmp_path / "long.safetensors"
    save_checkpoint(path, cfg, model.init_params(cfg, seed=3, init="scaled"), TOK)
    return path


@pytest.mark.parametrize("name", available_backends())
def test_a_weight_for_one_row_has_the_same_values_and_shape(name):
    ops = get_backend(name, "cpu")
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    held = ops.asarray_for_one_row(w)
    assert tuple(held.shape) == w.shape
    np.testing.assert_array_equal(ops.to_numpy(held), w)
    fused = ops.concat([held, ops.asarray_for_one_row(w[:2])], axis=0)  # Q|K|V stay so
    np.testing.assert_array_equal(ops.to_numpy(fused), np.concatenate([w, w[:2]]))
    if name == "torch":
        assert held.t().is_contiguous() and not held.is_contiguous()
        assert fused.t().is_contiguous()


def test_a_model_that_decodes_alone_is_held_for_one_row_and_computes_the_same(tmp_path):
    path = long_context(tmp_path)
    m = mygpt.load(path, backend="torch", device="cpu")
    # (the tied embedding is the head)
    for name in ("blocks.0.mha.W_Q.weight", "blocks.1.mlp.down.weight",
                 "token_embedding.embedding.weight"):  # fmt: skip
        assert m.params[name].t().is_contiguous() and not m.params[name].is_contiguous(), name
    assert m.params["blocks.0.ln1.weight"].is_contiguous()
    plain = {k: m.ops.asarray(v) for k, v in load_checkpoint(path).params.items()}
    ids = m.ops.asarray(np.array([[1, 2, 3, 4, 5, 6, 7, 0, 8, 9]]))
    got = m.ops.to_numpy(model.forward(m.ops, m.config, m.params, ids))
    want = m.ops.to_numpy(model.forward(m.ops, m.config, plain, ids))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_book_checkpoint_keeps_its_layout():
    m = mygpt.load(BOOK_FIXTURES / "ch27_modern.ckpt", backend="torch", device="cpu")
    assert all(v.is_contiguous() for v in m.params.values())


def test_serve_stays_exact_to_generate_for_a_model_held_for_one_row(tmp_path, capsys):
    openai = pytest.importorskip("openai")
    path = long_context(tmp_path)
    args = ["generate", "--checkpoint", str(path), "--prompt", "abc", "--max-new-tokens", "40",
            "--temperature", "0", "--backend", "torch", "--device", "cpu"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    want = capsys.readouterr().out[len("abc") : -1]
    with running_server(path) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        got = client.completions.create(model="long", prompt="abc", max_tokens=40, temperature=0)
    assert got.choices[0].text == want and len(want) == 40
