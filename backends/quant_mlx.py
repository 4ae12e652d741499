"""Quantized weights on MLX: ``mx.quantized_matmul`` with affine groups of 32.

MLX's affine quantization computes ``scale·c + bias`` per group of 32 codes c. ggml's blocks are
exactly that with scale d and c = q + 128, bias −128·d (Q8_0), or c = q, bias −8·d (Q4_0) (MLX
itself loads GGUF files this way). MLX packs codes low bits first into uint32 words: 4 codes
of 8 bits or 8 of 4 bits a word, in element order, so ggml's nibbles are reordered once, at
load. The scales are d exactly and the dequantized weights are d·q bit for bit; a bf16 model's
matmuls too use the exact d (mlx-lm rounds its scales to the model's dtype).
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
    """``words``: uint32 codes in MLX's packing; ``scales``: d, (rows, cols/32), and ``biases``:
    −offset·d, with offset the code of zero (128 or 8). Both in fp16, which holds them exactly
    (d is an fp16 and offset a power of two), unless a bias overflows fp16: then fp32."""

    def __init__(self, kind: str, shape, words: Array, scales: Array, biases: Array,
                 dtype: Any) -> None:  # fmt: skip
        self.kind, self.shape = kind, (int(shape[0]), int(shape[1]))
        self.words, self.scales, self.biases, self.dtype = words, scales, biases, dtype

    @classmethod
    def from_record(cls, qt: QuantizedTensor) -> MLXQuantized:
        d = qt.scales()
        biases = d * -(128 if qt.kind == "Q8_0" else 8)
        small = np.abs(biases).max(initial=0) <= np.finfo(np.float16).max
        store = np.float16 if small else np.float32
        return cls(qt.kind, qt.shape, mx.array(mlx_codes(qt)), mx.array(d.astype(store)),
                   mx.array(biases.astype(store)), mx.float32)  # fmt: skip

    def cast(self, dtype: Any) -> MLXQuantized:
        if dtype == self.dtype:
            return self
        return MLXQuantized(self.kind, self.shape, self.words, self.scales, self.biases, dtype)

    @classmethod
    def concat_rows(cls, weights: Sequence[MLXQuantized]) -> MLXQuantized:
        first = weights[0]
        rows = sum(w.shape[0] for w in weights)
        words = mx.concatenate([w.words for w in weights], axis=0)
        scales = mx.concatenate([w.scales for w in weights], axis=0)
        biases = mx.concatenate([w.biases for w in weights], axis=0)
        return cls(first.kind, (rows, first.shape[1]), words, scales, biases, first.dtype)

    def _rows(self, words: Array, scales: Array, biases: Array) -> Array:
        """Dequantized in fp32 (exact: d·q), then in the compute dtype."""
        w = mx.dequantize(words, scales.astype(mx.float32), biases.astype(mx.float32),
                          group_size=BLOCK, bits=self.bits)  # fmt: skip
        return w if self.dtype == mx.float32 else w.astype(self.dtype)

    def dequantize(self) -> Array:
        return self._rows(self.words, self.scales, self.biases)

    def linear(self, x: Array, bias: Array | None = None) -> Array:
        # fp16 scales with an fp32 or bf16 x: MLX promotes to fp32 and computes with the exact
        # d (a bf16 scale would round d: every weight of a block off in the same direction);
        # the product comes back in x's dtype
        y = mx.quantized_matmul(x, self.words, self.scales, self.biases, transpose=True,
                                group_size=BLOCK, bits=self.bits)  # fmt: skip
        y = y if y.dtype == x.dtype else y.astype(x.dtype)
        return y if bias is None else y + bias

    def embedding(self, ids: Array) -> Array:
        flat = ids.reshape(-1)
        rows = self._rows(self.words[flat], self.scales[flat], self.biases[flat])
        return rows.reshape(*ids.shape, self.shape[1])

    def to_record(self) -> QuantizedTensor:
        rows, cols = self.shape
        packed = np.array(self.words).view(np.uint8)
        if self.kind == "Q8_0":
            codes = (packed.astype(np.int16) - 128).astype(np.int8)
        else:  # two codes a byte, the even element in the low nibble
            c = np.stack([packed & 15, packed >> 4], axis=-1).reshape(rows, cols)
            codes = c.astype(np.int8) - 8
        return from_codes(
            self.kind, codes.reshape(rows, cols), np.array(self.scales.astype(mx.float32))
        )

    def nbytes(self) -> int:
        return self.words.nbytes + self.scales.nbytes + self.biases.nbytes

    def to_numpy(self) -> np.ndarray:
        return np.array(self.cast(mx.float32).dequantize())
