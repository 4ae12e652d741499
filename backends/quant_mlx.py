"""Quantized weights on MLX: ``mx.quantized_matmul`` with affine groups of 32.

MLX's affine quantization computes ``scale·c + bias`` per group of 32 codes c. ggml's blocks are
exactly that with scale d and c = q + 128, bias −128·d (Q8_0), or c = q, bias −8·d (Q4_0) (MLX
itself loads GGUF files this way). MLX packs codes low bits first into uint32 words: 4 codes
of 8 bits or 8 of 4 bits a word, in element order, so ggml's nibbles are reordered once, at
load. In fp32 the scales are d exactly and the dequantized weights are d·q bit for bit; a bf16
model computes with d rounded to bf16 (what mlx-lm does with its scales).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from mygpt.backends.quant import QuantizedWeight
from mygpt.backends.types import Array
from mygpt.quant import BLOCK, QuantizedTensor, from_codes


def mlx_codes(qt: QuantizedTensor) -> np.ndarray:
    """``qt``'s codes packed as MLX packs them: uint32 (rows, cols * bits / 32)."""
    q = qt.codes()  # int8: q (Q8_0) or q - 8 (Q4_0)
    if qt.kind == "Q8_0":
        return (q.astype(np.int16) + 128).astype(np.uint8).view("<u4")
    c = (q + 8).astype(np.uint8)
    return np.ascontiguousarray(c[:, 0::2] | (c[:, 1::2] << np.uint8(4))).view("<u4")


class MLXQuantized(QuantizedWeight):
    """``words``: uint32 codes in MLX's packing; ``scales`` fp32 d (rows, cols/32); ``offset``:
    the code of zero (128 or 8), so the affine bias is −offset·scale."""

    def __init__(self, kind: str, shape, words: Array, scales: Array, dtype: Any) -> None:
        self.kind, self.shape = kind, (int(shape[0]), int(shape[1]))
        self.words, self.scales, self.dtype = words, scales, dtype
        self.offset = 128 if kind == "Q8_0" else 8
        self._affine: tuple[Array, Array] | None = None  # scales and biases in self.dtype

    @classmethod
    def from_record(cls, qt: QuantizedTensor) -> MLXQuantized:
        return cls(qt.kind, qt.shape, mx.array(mlx_codes(qt)), mx.array(qt.scales()), mx.float32)

    def affine(self) -> tuple[Array, Array]:
        """(scales, biases) in the compute dtype, made once per cast."""
        if self._affine is None:
            s = self.scales if self.dtype == mx.float32 else self.scales.astype(self.dtype)
            self._affine = (s, s * -self.offset)  # exact: offset is a power of two
        return self._affine

    def cast(self, dtype: Any) -> MLXQuantized:
        if dtype == self.dtype:
            return self
        return MLXQuantized(self.kind, self.shape, self.words, self.scales, dtype)

    @classmethod
    def concat_rows(cls, weights: Sequence[MLXQuantized]) -> MLXQuantized:
        first = weights[0]
        rows = sum(w.shape[0] for w in weights)
        words = mx.concatenate([w.words for w in weights], axis=0)
        scales = mx.concatenate([w.scales for w in weights], axis=0)
        return cls(first.kind, (rows, first.shape[1]), words, scales, first.dtype)

    def dequantize(self) -> Array:
        s, b = self.affine()
        return mx.dequantize(self.words, s, b, group_size=BLOCK, bits=self.bits)

    def linear(self, x: Array, bias: Array | None = None) -> Array:
        s, b = self.affine()
        y = mx.quantized_matmul(x, self.words, s, b, transpose=True, group_size=BLOCK,
                                bits=self.bits)  # fmt: skip
        return y if bias is None else y + bias

    def embedding(self, ids: Array) -> Array:
        s, b = self.affine()
        flat = ids.reshape(-1)
        rows = mx.dequantize(self.words[flat], s[flat], b[flat], group_size=BLOCK, bits=self.bits)
        return rows.reshape(*ids.shape, self.shape[1])

    def to_record(self) -> QuantizedTensor:
        rows, cols = self.shape
        packed = np.array(self.words).view(np.uint8)
        if self.kind == "Q8_0":
            codes = (packed.astype(np.int16) - 128).astype(np.int8)
        else:  # two codes a byte, the even element in the low nibble
            c = np.stack([packed & 15, packed >> 4], axis=-1).reshape(rows, cols)
            codes = c.astype(np.int8) - 8
        return from_codes(self.kind, codes.reshape(rows, cols), np.array(self.scales))

    def nbytes(self) -> int:
        return self.words.nbytes + self.scales.nbytes

    def to_numpy(self) -> np.ndarray:
        return np.array(self.cast(mx.float32).dequantize())
