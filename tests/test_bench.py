"""`mygpt bench`: tiny configs on each installed backend give positive, consistent numbers."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from mygpt.backends import available_backends, get_backend
from mygpt.bench import (
    _shape_from,
    bench,
    bench_generation_modes,
    bench_train_step,
    format_table,
    measure_peak_flops,
    published_peak,
)
from mygpt.blas import mlx_blas
from mygpt.cache import GrowingCache
from mygpt.config import ModelConfig
from mygpt.errors import UsageError
from mygpt.generate import generate
from mygpt.model import flops_per_token, forward, init_params

BACKENDS = available_backends()
TINY = ModelConfig(vocab_size=32, embed_dim=16, num_heads=2, num_layers=1, max_seq_len=16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_numbers_are_positive(backend):
    ops = get_backend(backend, "cpu")
    r = bench_train_step(ops, TINY, batch_size=2, seq_len=8, steps=3, warmup=1)
    assert r["ms_per_step"] > 0 and r["ms_min"] <= r["ms_per_step"]
    assert r["tokens_per_s"] == pytest.approx(2 * 8 / (r["ms_per_step"] / 1e3))
    assert r["flops_per_token"] == flops_per_token(TINY, 8)
    assert r["flops_per_s"] > 0 and 0 < r["loss"] < 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_peak_probe_and_no_published_peak_on_cpu(backend):
    ops = get_backend(backend, "cpu")
    assert measure_peak_flops(ops, "float32", n=64, repeats=2) > 1e6
    assert published_peak(ops) is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_cached_generation_equals_uncached_within_the_window(backend, position):
    ops = get_backend(backend, "cpu")
    cfg = ModelConfig(
        vocab_size=32, embed_dim=16, num_heads=2, num_layers=2, max_seq_len=24,
        position=position,
    )  # fmt: skip
    raw = init_params(cfg, seed=3)
    raw["token_embedding.embedding.weight"] *= 0.3  # flatter logits: a real test of equality
    params = {k: ops.asarray(v) for k, v in raw.items()}
    n = 40  # past max_seq_len: the (exact) cache refills once full, so they stay equal
    runs = [
        list(generate(ops, cfg, params, [1, 2, 3], n, temperature=0.0, use_cache=c))
        for c in (True, False)
    ]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1  # not a degenerate constant sequence
    modes = bench_generation_modes(ops, cfg, params, 30, rounds=2)
    assert ("gen_tok_s_sliding" in modes) == (position == "rope")
    assert modes["cache_speedup"] == modes["gen_tok_s_cache"] / modes["gen_tok_s_nocache"]
    assert all(v > 0 for v in modes.values())

    # and the logits themselves: one token at a time through the cache vs the full sequence
    ids = np.array([runs[0][:20]], dtype=np.int64)
    with ops.inference():
        full = ops.to_numpy(forward(ops, cfg, params, ops.asarray(ids)))
        cache = GrowingCache(cfg.num_layers, cfg.max_seq_len)
        steps = [
            ops.to_numpy(forward(ops, cfg, params, ops.asarray(ids[:, i : i + 1]), cache=cache))
            for i in range(ids.shape[1])
        ]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=1e-4)


def test_mlx_blas_reports_a_known_kind():
    kind, lib = mlx_blas()
    assert kind in ("optimized", "reference", "n/a")
    assert kind != "optimized" or lib


def test_shape_from_recipe_and_overrides():
    cfg, s = _shape_from("ch27-modern", {"max_seq_len": 256, "embed_dim": None})
    assert (cfg.norm, cfg.position, cfg.num_kv_heads) == ("rms", "rope", 2)
    assert cfg.max_seq_len == 256 and cfg.embed_dim == 64
    assert s["precision"] == "fp32"  # recipes don't set bench precision
    assert _shape_from("ch28", {})[0].vocab_size == 3046
    with pytest.raises(UsageError, match="--seq-len 128 is longer"):
        _shape_from(None, {"seq_len": 128})


def test_table_formats_missing_values():
    text = format_table([{"backend": "torch", "device": "cpu", "dtype": "float32"}])
    assert "| torch | cpu | float32 | - |" in text


def test_bench_command_runs_each_backend():
    args = [
        "--embed-dim", "16", "--num-heads", "2", "--num-layers", "1", "--max-seq-len", "16",
        "--seq-len", "8", "--batch-size", "2", "--steps", "2", "--warmup", "1",
        "--gen-tokens", "5", "--no-peak", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    for backend in BACKENDS:
        assert f"| {backend}" in result.output
    assert "cache speed-up" in result.output
