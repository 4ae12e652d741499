"""Quantized weights on a backend: the protocol both backends' classes follow.

A :class:`QuantizedWeight` stands where a weight array goes: the model prepares weights with
``ops.cast`` and ``ops.concat`` and computes with ``ops.linear`` and ``ops.embedding``, and each
backend's methods hand a quantized weight to it. It keeps the blocks in memory (int8 or packed
4-bit codes and one scale per 32 weights) and records the dtype it computes in: ``cast`` changes
that record, never the blocks. ``.dtype`` is the framework's dtype object, so ``ops.dtype_of``
and the base class's ``cast`` treat it like any array.

The numbers are :mod:`mygpt.quant`'s: dequantized, a weight is exactly ``d·q`` in fp32 on every
backend (the tests compare the bits).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from mygpt.backends.types import Array
from mygpt.errors import MygptError
from mygpt.quant import QuantizedTensor


class QuantizedWeight(abc.ABC):
    """One (rows, cols) weight in Q8_0 or Q4_0 blocks, on one backend."""

    kind: str  # "Q8_0" | "Q4_0"
    shape: tuple[int, int]  # the logical (rows, cols)
    dtype: Any  # the framework dtype it computes in (and dequantizes to)

    @property
    def bits(self) -> int:
        return 8 if self.kind == "Q8_0" else 4

    @abc.abstractmethod
    def cast(self, dtype: Any) -> QuantizedWeight:
        """The same blocks, computing in ``dtype`` (a framework dtype)."""

    @classmethod
    @abc.abstractmethod
    def concat_rows(cls, weights: Sequence[QuantizedWeight]) -> QuantizedWeight:
        """Row-wise concatenation (blocks run along rows: fused Q|K|V)."""

    @abc.abstractmethod
    def dequantize(self) -> Array:
        """The (rows, cols) weights in ``self.dtype``: d·q, exact in fp32."""

    @abc.abstractmethod
    def linear(self, x: Array, bias: Array | None = None) -> Array:
        """``x @ W.T + bias`` with W dequantized (never materialised where a kernel avoids it)."""

    @abc.abstractmethod
    def embedding(self, ids: Array) -> Array:
        """The rows ``ids`` picks, dequantized: ids.shape + (cols,)."""

    @abc.abstractmethod
    def to_record(self) -> QuantizedTensor:
        """The blocks again, as ``mygpt.quant`` holds them (exactly the bytes loaded)."""

    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes held on the device (codes and scales)."""


def concat(weights: Sequence[Any], axis: int) -> QuantizedWeight:
    """``ops.concat`` of quantized weights: rows only, all quantized alike."""
    first = weights[0]
    if axis != 0 or not all(
        isinstance(w, QuantizedWeight) and w.kind == first.kind and w.shape[1] == first.shape[1]
        for w in weights
    ):
        raise MygptError(
            "quantized weights concatenate only along rows, with others of their type and width "
            "— keep these weights in float (`mygpt quantize` quantizes a model's weights alike)"
        )
    return type(first).concat_rows(weights)
