"""Quantized models (issue 29): ggml's Q8_0/Q4_0 blocks byte for byte, the same dequantized
numbers on numpy, torch and MLX, quantized linears against a float64 reference, the quantize
command and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from mygpt import model, quant
from mygpt.backends import get_backend
from mygpt.config import ModelConfig
from mygpt.errors import MygptError

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GT  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

KINDS = {"Q8_0": GT.Q8_0, "Q4_0": GT.Q4_0}
BACKENDS = ["torch", "mlx"]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, except that a zero's sign is free: MLX's affine form computes a Q4_0 zero
    as d*8 - 8d = +0 where ggml's d*(q - 8) gives -0 for a negative d."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.array_equal(a, b) and np.array_equal(a[a != 0].view(np.uint32), b[b != 0].view(np.uint32))


def _awkward(rows: int = 48, cols: int = 96, seed: int = 0) -> np.ndarray:
    """Weights with the cases quantizers get wrong: zero blocks, exact halves, ties of |max|,
    a negative extreme, tiny and large scales."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    x[0, :32] = 0.0
    x[1, :32] = np.arange(32, dtype=np.float32) / 2 - 8  # halves after scaling
    x[2, :32] = 1.0
    x[2, 7] = -1.0  # |max| tie: the first one wins
    x[3, 32:64] *= 1e-4
    x[4, 64:] *= 300
    x[5, 3] = -2.5  # a negative extreme: Q4_0's d is positive
    return x


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_are_ggml_bytes_and_dequantize_exactly(kind):
    x = _awkward()
    qt = quant.quantize(x, kind)
    ref = gguf_quantize(x, KINDS[kind])
    assert qt.blocks.shape == (48, 96 // 32 * quant.BLOCK_BYTES[kind])
    assert np.array_equal(qt.blocks, ref)
    assert np.array_equal(qt.dequantize().view(np.uint32), gguf_dequantize(ref, KINDS[kind]).view(np.uint32))
    again = quant.from_codes(kind, qt.codes(), qt.scales())
    assert np.array_equal(again.blocks, qt.blocks)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_backends_dequantize_to_the_same_bits(backend, kind):
    ops = get_backend(backend, "cpu")
    x = _awkward(seed=1)
    qt = quant.quantize(x, kind)
    w = ops.quantized(qt)
    want = gguf_dequantize(gguf_quantize(x, KINDS[kind]), KINDS[kind])
    assert _same_bits(ops.to_numpy(w), want)
    if backend == "torch" or kind == "Q8_0":  # the sign of zero too
        assert np.array_equal(ops.to_numpy(w).view(np.uint32), want.view(np.uint32))
    assert np.array_equal(w.to_record().blocks, qt.blocks)
    # a recorded bf16 compute dtype keeps the blocks: to_numpy is still the exact fp32 values
    assert ops.dtype_of(ops.cast(w, "bfloat16")) == "bfloat16"
    # embedding rows: the gathered rows dequantized
    ids = ops.asarray(np.array([[3, 0, 47], [5, 5, 1]]))
    rows = ops.to_numpy(ops.embedding(w, ids))
    assert _same_bits(rows, want[np.array([[3, 0, 47], [5, 5, 1]])])
    # fused Q|K|V: rows concatenated block by block
    w2 = ops.quantized(quant.quantize(x[:16] * 2, kind))
    fused = ops.concat([w, w2], axis=0)
    assert _same_bits(ops.to_numpy(fused), np.concatenate([want, ops.to_numpy(w2)]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_quantized_linear_matches_float64(backend, kind):
    ops = get_backend(backend, "cpu")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    qt = quant.quantize(_awkward(seed=3), kind)
    bias = rng.standard_normal(48).astype(np.float32)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T + bias
    w = ops.quantized(qt)
    y = ops.to_numpy(ops.linear(ops.asarray(x), w, ops.asarray(bias)))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    yb = ops.to_numpy(ops.linear(ops.asarray(x, "bfloat16"), ops.cast(w, "bfloat16")))
    np.testing.assert_allclose(yb, ref - bias, rtol=2e-2, atol=2e-2 * np.abs(ref).max())
