"""Quantized weights: ggml's Q8_0 and Q4_0 blocks, byte for byte.

A quantized weight is a 2-D (rows, cols) matrix cut along each row into blocks of 32 weights,
each block stored as ggml stores it (``block_q8_0`` / ``block_q4_0`` in ggml-common.h):

- ``Q8_0``, 34 bytes: the scale d as a little-endian fp16, then 32 int8 codes q; x̂ = d·q.
  d = amax/127, q = round(x/d) with halves rounded away from zero.
- ``Q4_0``, 18 bytes: d as fp16, then 16 bytes of 4-bit codes q, element i in the low nibble
  of byte i and element 16+i in its high nibble; x̂ = d·(q − 8). With m the signed value of
  largest magnitude, d = m/−8 and q = min(15, trunc(x/d + 8.5)).

The arithmetic is ggml's own (``quantize_row_q8_0_ref`` / ``quantize_row_q4_0_ref``, which
``gguf.quants`` reproduces): fp32 throughout, x times 1/d rather than x/d. The dequantized value
d·q is exact in fp32 (an 11-bit d times an 8-bit q), so every backend that dequantizes gets the
same bits.

In a native checkpoint a quantized weight keeps its usual name and is stored as a uint8 tensor
of shape (rows, cols/32·34) or (rows, cols/32·18): the blocks exactly, row after row, which is
what a GGUF file holds for the same tensor. The metadata key ``quantization`` (JSON) names each
quantized tensor's type and logical shape: see :func:`to_metadata`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mygpt.errors import MygptError

BLOCK = 32  # weights per block, for both types
#: bytes per block of each type
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18}
BITS = {"Q8_0": 8, "Q4_0": 4}
TYPE_OF_BITS = {8: "Q8_0", 4: "Q4_0"}
METADATA_KEY = "quantization"
METADATA_VERSION = 1


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """One quantized 2-D weight: its ggml type, its logical (rows, cols) and its block bytes,
    uint8 (rows, cols/32 * bytes per block)."""

    kind: str
    shape: tuple[int, int]
    blocks: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_BYTES:
            raise MygptError(f"unknown quantization type {self.kind!r} — mygpt knows Q8_0 and Q4_0")
        rows, cols = self.shape
        want = (rows, cols // BLOCK * BLOCK_BYTES[self.kind])
        if cols % BLOCK or self.blocks.dtype != np.uint8 or tuple(self.blocks.shape) != want:
            raise MygptError(
                f"a {self.kind} weight of shape {self.shape} needs uint8 blocks of shape {want}, "
                f"got {self.blocks.dtype} {tuple(self.blocks.shape)} — the file is damaged"
            )

    @property
    def bits(self) -> int:
        return BITS[self.kind]

    @property
    def nbytes(self) -> int:
        return int(self.blocks.nbytes)

    def scales(self) -> np.ndarray:
        """Each block's d as float32 (exact: fp16 widens exactly), (rows, cols/32)."""
        rows, cols = self.shape
        by_block = self.blocks.reshape(rows, cols // BLOCK, BLOCK_BYTES[self.kind])
        return np.ascontiguousarray(by_block[..., :2]).view("<f2")[..., 0].astype(np.float32)

    def codes(self) -> np.ndarray:
        """The integer each weight is d times, int8 (rows, cols): q for Q8_0, q − 8 for Q4_0."""
        rows, cols = self.shape
        by_block = self.blocks.reshape(rows, cols // BLOCK, BLOCK_BYTES[self.kind])[..., 2:]
        if self.kind == "Q8_0":
            return np.ascontiguousarray(by_block).view(np.int8).reshape(rows, cols)
        low, high = by_block & np.uint8(0x0F), by_block >> np.uint8(4)
        q = np.concatenate([low, high], axis=-1)  # elements 0-15 low nibbles, 16-31 high
        return (q.astype(np.int8) - np.int8(8)).reshape(rows, cols)

    def dequantize(self) -> np.ndarray:
        """The weights the blocks stand for, float32 (rows, cols): d·q, exact."""
        rows, cols = self.shape
        q = self.codes().reshape(rows, cols // BLOCK, BLOCK).astype(np.float32)
        return (q * self.scales()[..., None]).reshape(rows, cols)

    def rows(self, index: np.ndarray) -> QuantizedTensor:
        """The rows ``index`` picks, in its order (blocks run along rows: rows move whole)."""
        blocks = np.ascontiguousarray(self.blocks[np.asarray(index)])
        return QuantizedTensor(self.kind, (len(blocks), self.shape[1]), blocks)


def from_codes(kind: str, codes: np.ndarray, scales: np.ndarray) -> QuantizedTensor:
    """The record whose :meth:`QuantizedTensor.codes` and ``scales`` are these (the inverse of
    those two: a backend's weight back to its blocks, exactly; the scales are fp16 values)."""
    rows, cols = codes.shape
    nb = cols // BLOCK
    q = np.asarray(codes, dtype=np.int8).reshape(rows, nb, BLOCK)
    d = np.asarray(scales, dtype=np.float32).astype("<f2").reshape(rows, nb, 1).view(np.uint8)
    if kind == "Q8_0":
        body = q.view(np.uint8)
    else:
        c = (q + 8).astype(np.uint8)
        body = c[..., :16] | (c[..., 16:] << np.uint8(4))
    return QuantizedTensor(kind, (rows, cols), np.concatenate([d, body], axis=-1).reshape(rows, -1))


def can_quantize(shape: Iterable[int]) -> bool:
    """Whether a weight of ``shape`` fits whole blocks: 2-D, its rows a multiple of 32 long."""
    shape = tuple(shape)
    return len(shape) == 2 and shape[1] % BLOCK == 0 and shape[1] > 0


def _blocks_of(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if not can_quantize(x.shape):
        raise MygptError(
            f"a weight of shape {x.shape} can't be cut into blocks of {BLOCK} — only 2-D weights "
            f"whose rows are a multiple of {BLOCK} long quantize"
        )
    return x.reshape(-1, BLOCK)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: to nearest, halves away from zero (numpy's round takes halves to even)."""
    a = np.abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(2 * (a - floored)))


def _fp16_scale(d: np.ndarray, kind: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        d16 = d.astype(np.float16)
    if not np.all(np.isfinite(d16)):
        raise MygptError(
            f"a weight is too large or not finite for {kind}'s fp16 scale — the model's weights "
            "are damaged (NaN/inf) or outside fp16's range; keep it in float"
        )
    return d16


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """ggml's Q8_0 blocks of ``x`` (rows, cols): uint8 (rows, cols/32*34)."""
    blocks = _blocks_of(x)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _round_half_away(blocks * inv).astype(np.int8)
    out = np.concatenate([_fp16_scale(d, "Q8_0").view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(x.shape[0], -1)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """ggml's Q4_0 blocks of ``x`` (rows, cols): uint8 (rows, cols/32*18)."""
    blocks = _blocks_of(x)
    at = np.abs(blocks).argmax(axis=1)[:, None]  # the first of equal magnitudes, as ggml's loop
    d = np.take_along_axis(blocks, at, axis=1) / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    # (the cast to uint8 of trunc(...) is what C's (int8_t) cast does for values in 0..16.5)
    q = np.minimum(np.trunc(blocks * inv + np.float32(8.5)), np.float32(15)).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << np.uint8(4))
    out = np.concatenate([_fp16_scale(d, "Q4_0").view(np.uint8), packed], axis=1)
    return out.reshape(x.shape[0], -1)


_QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0}


def quantize(x: np.ndarray, kind: str) -> QuantizedTensor:
    """``x`` (rows, cols) as a :class:`QuantizedTensor` of type ``kind`` ("Q8_0" or "Q4_0")."""
    if kind not in _QUANTIZERS:
        raise MygptError(f"unknown quantization type {kind!r} — use Q8_0 or Q4_0")
    rows, cols = np.shape(x)
    return QuantizedTensor(kind, (int(rows), int(cols)), _QUANTIZERS[kind](x))


def dequantize(w: QuantizedTensor | np.ndarray) -> np.ndarray:
    """A weight as float32 numpy, whether quantized or not."""
    return w.dequantize() if isinstance(w, QuantizedTensor) else np.asarray(w, dtype=np.float32)


# --- whole models ----------------------------------------------------------------------------


def is_quantized(params: Mapping[str, Any]) -> bool:
    return any(isinstance(v, QuantizedTensor) for v in params.values())


def quantize_params(
    params: Mapping[str, np.ndarray], bits: int
) -> tuple[dict[str, Any], list[str]]:
    """Every 2-D weight that fits whole blocks quantized (embeddings, projections, the head);
    returns the new dict and the names of the 2-D weights kept in float because they don't fit.

    Learned position tables stay float (each position's row is added, not multiplied: there is
    no matmul for blocks to speed up), as do norms and biases (1-D)."""
    if bits not in TYPE_OF_BITS:
        raise MygptError(f"--bits {bits}: mygpt quantizes to 8 (Q8_0) or 4 (Q4_0) bits")
    kind = TYPE_OF_BITS[bits]
    out: dict[str, Any] = {}
    kept: list[str] = []
    for name, value in params.items():
        if np.ndim(value) != 2 or name.startswith("position_embedding."):
            out[name] = value
        elif can_quantize(np.shape(value)):
            out[name] = quantize(value, kind)
        else:
            out[name] = value
            kept.append(name)
    return out, kept


def dequantize_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: dequantize(v) for k, v in params.items()}


def to_metadata(params: Mapping[str, Any]) -> str | None:
    """The ``quantization`` metadata value for ``params``, None when nothing is quantized:
    ``{"version": 1, "format": "ggml", "tensors": {name: {"type": "Q8_0", "shape": [r, c]}}}``."""
    tensors = {
        k: {"type": v.kind, "shape": list(v.shape)}
        for k, v in params.items()
        if isinstance(v, QuantizedTensor)
    }
    if not tensors:
        return None
    return json.dumps({"version": METADATA_VERSION, "format": "ggml", "tensors": tensors})


def from_metadata(value: str | None, tensors: Mapping[str, np.ndarray], where: str) -> dict:
    """``tensors`` (as read from the file) with the quantized ones as :class:`QuantizedTensor`."""
    if value is None:
        return dict(tensors)
    try:
        meta = json.loads(value)
        entries = meta["tensors"]
        if int(meta.get("version", 0)) > METADATA_VERSION:
            raise MygptError(f"{where} uses a newer quantization format — upgrade mygpt")
        out = dict(tensors)
        for name, info in entries.items():
            out[name] = QuantizedTensor(info["type"], tuple(info["shape"]), tensors[name])
    except (ValueError, KeyError, TypeError) as e:
        raise MygptError(
            f"{where}: unreadable quantization metadata ({e!r}) — the file is damaged"
        ) from None
    return out


def refuse_quantized(params: Mapping[str, Any], where: str, what: str) -> None:
    """One-line refusal where float weights are required (``what``: what needs them)."""
    if is_quantized(params):
        raise MygptError(
            f"{where}: the model is quantized (ggml blocks) and {what} needs float weights — "
            "use the float checkpoint it was quantized from"
        )
