"""Book checkpoints load on both backends with the book's logits; generation with and without the
KV cache agrees; the CLI streams only text to stdout."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mygpt
from mygpt import generate as gen
from mygpt import model
from mygpt.backends import available_backends, get_backend
from mygpt.cache import GrowingCache
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.generate import generate, sample_next
from mygpt.quant import quantize
from tests.conftest import BOOK_FIXTURES

FIXTURES = ["part1_ch18", "ch27_modern", "ch28_bpe"]
BACKENDS = ["torch", "mlx"]
# the bar: 1e-5 against the book's logits on torch, 1e-4 on MLX (fp32)
LOGIT_ATOL = {"torch": 1e-5, "mlx": 1e-4}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FIXTURES)
def test_book_checkpoint_logits_and_greedy(name, backend):
    ref = np.load(BOOK_FIXTURES / f"{name}.npz")
    m = mygpt.load(BOOK_FIXTURES / f"{name}.ckpt", backend=backend, device="cpu")
    logits = m.logits(ref["input_ids"])
    np.testing.assert_allclose(logits, ref["logits"], atol=LOGIT_ATOL[backend], rtol=0)
    greedy = ref["greedy_ids"][0]
    for use_cache in (True, False):
        new = list(m.stream(list(greedy[:8]), 40, temperature=0, use_cache=use_cache))
        assert new == list(greedy[8:]), f"use_cache={use_cache}"
    text = json.loads((BOOK_FIXTURES / f"{name}.json").read_text())["greedy_text"]
    assert m.decode(greedy) == text


def _random_model(ops, position: str, norm: str, kv_heads: int, max_seq_len: int = 16):
    cfg = ModelConfig(
        vocab_size=23,
        embed_dim=24,
        num_heads=4,
        num_kv_heads=kv_heads,
        num_layers=2,
        max_seq_len=max_seq_len,
        norm=norm,
        position=position,
    )
    params = model.init_params(cfg, seed=3)
    # scale the embedding down so sampling is not one-hot (the book init gives huge logits)
    params["token_embedding.embedding.weight"] *= 0.2
    return cfg, {k: ops.asarray(v) for k, v in params.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "position,norm,kv_heads", [("learned", "layer", 4), ("rope", "rms", 2), ("rope", "layer", 1)]
)
def test_kv_cache_equals_recompute_past_the_window(backend, position, norm, kv_heads):
    ops = get_backend(backend, "cpu")
    cfg, params = _random_model(ops, position, norm, kv_heads)
    prompt = [1, 5, 7, 2, 9]
    # 40 new tokens with a 16-token window: the context crops many times
    for kwargs in (
        dict(temperature=0),
        dict(temperature=1.0, top_k=5, seed=7),
        dict(temperature=0.8, top_p=0.9, seed=1),
    ):
        a = list(generate(ops, cfg, params, prompt, 40, use_cache=True, **kwargs))
        b = list(generate(ops, cfg, params, prompt, 40, use_cache=False, **kwargs))
        assert a == b, kwargs
    if position == "rope":  # the sliding cache agrees while the window is not yet full ...
        a = list(
            generate(ops, cfg, params, prompt, 11, use_cache=True, sliding=True, temperature=0)
        )
        b = list(generate(ops, cfg, params, prompt, 11, use_cache=False, temperature=0))
        assert a == b
    # and a prompt longer than the window is cropped, as in the book
    long_prompt = list(np.arange(40) % 23)
    a = list(generate(ops, cfg, params, long_prompt, 10, temperature=0, use_cache=True))
    b = list(generate(ops, cfg, params, long_prompt[-16:], 10, temperature=0, use_cache=False))
    assert a == b


def test_cached_logits_match_full_forward_both_backends():
    for backend in BACKENDS:
        ops = get_backend(backend, "cpu")
        cfg, params = _random_model(ops, "rope", "rms", 2, max_seq_len=32)
        ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
        full = ops.to_numpy(model.forward(ops, cfg, params, ops.asarray(ids)))
        cache = GrowingCache(cfg.num_layers, cfg.max_seq_len)
        parts = [
            ops.to_numpy(model.forward(ops, cfg, params, ops.asarray(ids[:, :6]), cache=cache))
        ]
        for t in range(6, 10):
            parts.append(
                ops.to_numpy(
                    model.forward(ops, cfg, params, ops.asarray(ids[:, t : t + 1]), cache=cache)
                )
            )
        np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5)


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.0, -2.0])
    assert sample_next(logits, rng, temperature=0) == 1
    draws = {sample_next(logits, rng, top_k=2) for _ in range(200)}
    assert draws == {1, 2}  # top-k keeps only the two best
    draws = {sample_next(logits, rng, top_k=None, top_p=0.5) for _ in range(100)}
    assert draws == {1}  # the top token alone already holds more than half the mass


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "--temperature"),
        (dict(top_p=0), "--top-p"),
        (dict(top_k=-3), "--top-k"),
    ],
)
def test_bad_sampling_args(kwargs, message):
    ops = get_backend("torch", "cpu")
    cfg, params = _random_model(ops, "rope", "rms", 2)
    with pytest.raises(MygptError, match=message):
        list(generate(ops, cfg, params, [1, 2], 3, **kwargs))


def test_cli_generate_streams_only_text_to_stdout(capfd):
    from mygpt.cli import main

    ckpt = BOOK_FIXTURES / "part1_ch18.ckpt"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(ckpt),
                "--prompt",
                "ROMEO:\nB",
                "--temperature",
                "0",
                "--max-new-tokens",
                "40",
                "--backend",
                "mlx",
            ]
        )
        == 0
    )
    out, err = capfd.readouterr()
    expected = json.loads((BOOK_FIXTURES / "part1_ch18.json").read_text())["greedy_text"]
    assert out == expected + "\n"
    assert "mlx on cpu" in err


def test_cli_generate_bad_inputs(tmp_path, capsys):
    from mygpt.cli import main

    ckpt = str(BOOK_FIXTURES / "part1_ch18.ckpt")
    truncated = tmp_path / "half.ckpt"
    truncated.write_bytes((BOOK_FIXTURES / "part1_ch18.ckpt").read_bytes()[:40000])
    cases = [
        (["generate", "--checkpoint", ckpt, "--prompt", "naïve ☃"], "not in the char tokenizer"),
        (["generate", "--checkpoint", str(tmp_path / "nope.safetensors")], "does not exist"),
        (["generate", "--checkpoint", str(truncated)], "truncated"),
        (["generate", "--checkpoint", ckpt, "--temperature", "-1"], "--temperature"),
        (["generate", "--checkpoint", ckpt, "--device", "mps", "--backend", "torch"], "MPS"),
    ]
    for argv, message in cases:
        assert main(argv) != 0, argv
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, (argv, last)


@pytest.mark.parametrize("name", ["ch27_modern", "part1_ch18"])
@pytest.mark.parametrize("backend", available_backends())
def test_a_lone_stream_decodes_in_as_few_rows_as_compute_like_the_batch(backend, name):
    """``solo_rows``: the fewest rows whose step gives a row the batch's logits, bit for bit.
    Checked again here with other company in the other rows and other steps."""
    m = mygpt.load(BOOK_FIXTURES / f"{name}.ckpt", backend=backend, device="cpu")
    rows = gen.solo_rows(m.ops, m.config, m.params, m.dtype)
    assert rows in (1, 2, 4, gen.DECODE_ROWS)
    weights = model.prepare(m.ops, m.config, m.params, m.dtype)
    batch = gen._row_zero_logits(m.ops, m.config, weights, gen.DECODE_ROWS, m.dtype, steps=7)
    alone = gen._row_zero_logits(m.ops, m.config, weights, rows, m.dtype, steps=7)
    np.testing.assert_array_equal(alone, batch)


def test_solo_rows_keeps_the_batch_shape_where_fewer_rows_compute_otherwise(monkeypatch):
    m = mygpt.load(BOOK_FIXTURES / "part1_ch18.ckpt", backend="torch", device="cpu")
    real = gen._row_zero_logits

    def drifting(ops, cfg, weights, rows, dtype, steps=4):  # every smaller shape one ulp off
        out = real(ops, cfg, weights, rows, dtype, steps)
        return out if rows == gen.DECODE_ROWS else np.nextafter(out, np.inf)

    monkeypatch.setattr(gen, "_row_zero_logits", drifting)
    monkeypatch.setattr(gen, "_SOLO_ROWS", {})
    assert gen.solo_rows(m.ops, m.config, m.params, m.dtype) == gen.DECODE_ROWS


def test_solo_rows_is_checked_again_for_another_kind_of_weights(monkeypatch):
    """The same shape with quantized weights (or another kernel) sums its rows its own way: a
    float model's answer must not be reused for it."""
    m = mygpt.load(BOOK_FIXTURES / "part1_ch18.ckpt", backend="torch", device="cpu")
    monkeypatch.setattr(gen, "_SOLO_ROWS", {})
    gen.solo_rows(m.ops, m.config, m.params, m.dtype)
    name = "blocks.0.mlp.fc1.weight"
    blocks = quantize(m.ops.to_numpy(m.params[name]), "Q8_0")
    gen.solo_rows(m.ops, m.config, {**m.params, name: m.ops.quantized(blocks)}, m.dtype)
    assert len(gen._SOLO_ROWS) == 2
