"""KV caches: what makes one :func:`mygpt.model.forward` serve training, prefill and decoding.

The model is the same for every caller; the cache is what differs. A cache answers three
questions for each forward pass (the ``Cache`` protocol):

- ``begin(T)``: at which positions are these T new tokens, and which mask do they attend under?
  (``Positions`` and ``Mask`` from ``mygpt.backends.base``; the backend keeps the step's tables,
  rotations, write indices and masks, inside them, made once per step and used by every layer.)
- ``update(ops, layer, kv)``: store this layer's new keys and values (one array, the K heads then
  the V heads), and return the keys and values to attend to.
- ``end(T)``: the pass is over (advance the offset).

The kinds:

- none (``cache=None``): training and eval, causal over the tokens given;
- :class:`GrowingCache`: one stream, an offset, up to the context (the exact generator refills
  past it, as the book's loop crops);
- :class:`SlidingCache`: one stream that keeps its last ``window`` keys (rotary models);
- :class:`RowCache`: a fixed (rows, capacity) buffer, each row at its own position under a
  per-row length mask (``mygpt serve``'s batched decoding; ``generate`` runs the same shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from mygpt.backends.base import Array, Mask, Positions
from mygpt.config import ModelConfig
from mygpt.errors import MygptError


class Cache(Protocol):
    def begin(self, T: int) -> tuple[Positions, Mask | None]: ...

    def update(self, ops, layer: int, kv: Array) -> tuple[Array, Array]: ...

    def end(self, T: int) -> None: ...


@dataclass
class GrowingCache:
    """Keys and values of one stream's tokens so far, per layer, up to ``max_len`` of them.

    Each layer writes into a buffer that doubles as needed (up to ``2 * max_len`` positions)
    rather than concatenating a new array per token; attention reads a view of the entries.
    """

    num_layers: int
    max_len: int
    offset: int = 0  # absolute position of the next token
    keys: list[Array | None] = field(default_factory=list)
    values: list[Array | None] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # per layer: buffer index after the newest entry
    rotates: ClassVar[bool] = False  # past max_len: drop the oldest entries, or refuse

    def __post_init__(self) -> None:
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        self.ends = [0] * self.num_layers

    def begin(self, T: int) -> tuple[Positions, Mask | None]:
        return Positions(self.offset, T), None  # causal, aligned to the newest key

    def end(self, T: int) -> None:
        self.offset += T

    def _overflow(self, end: int, t: int) -> None:
        raise MygptError(
            f"{end + t} cached positions would pass the context of {self.max_len} — the exact "
            "generator refills its cache from the cropped window; use a SlidingCache to rotate"
        )

    def update(self, ops, layer: int, kv: Array) -> tuple[Array, Array]:
        """Append (B, 2 Hkv, T, D) keys then values; return those attention sees (<= max_len)."""
        hkv = kv.shape[1] // 2
        return self.append(ops, layer, kv[:, :hkv], kv[:, hkv:])

    def append(self, ops, layer: int, k: Array, v: Array) -> tuple[Array, Array]:
        """Append (B, Hkv, T, D) keys and values; return those attention sees (<= max_len)."""
        t, n = k.shape[2], self.max_len
        if t > n:  # only the newest max_len can ever be seen again
            k, v, t = k[:, :, -n:], v[:, :, -n:], n
        if self.keys[layer] is None:
            # start small and double: a real model's context (32k positions) would otherwise
            # preallocate gigabytes for a short chat
            self.keys[layer] = ops.zeros((*k.shape[:2], min(2 * n, max(256, 2 * t)), k.shape[3]),
                                         ops.dtype_of(k))  # fmt: skip
            self.values[layer] = ops.zeros(self.keys[layer].shape, ops.dtype_of(v))
        keys, values, end = self.keys[layer], self.values[layer], self.ends[layer]
        if end + t > n and not self.rotates:
            self._overflow(end, t)
        cap = keys.shape[2]
        if end + t > cap and cap < 2 * n:  # grow (copying the entries so far)
            grown = min(2 * n, max(2 * cap, end + t))
            keys = ops.write(ops.zeros((*keys.shape[:2], grown, keys.shape[3]), ops.dtype_of(k)),
                             keys[:, :, :end], axis=2, start=0)  # fmt: skip
            values = ops.write(ops.zeros(keys.shape, ops.dtype_of(v)),
                               values[:, :, :end], axis=2, start=0)  # fmt: skip
        if end + t > 2 * n:  # full: keep the newest n - t entries, at the front
            keep = n - t  # (their source starts at end - keep >= n + t > keep: no overlap)
            keys = ops.write(keys, keys[:, :, end - keep : end], axis=2, start=0)
            values = ops.write(values, values[:, :, end - keep : end], axis=2, start=0)
            end = keep
        keys = ops.write(keys, k, axis=2, start=end)
        values = ops.write(values, v, axis=2, start=end)
        end += t
        self.keys[layer], self.values[layer], self.ends[layer] = keys, values, end
        begin = max(0, end - n)
        return keys[:, :, begin:end], values[:, :, begin:end]


class SlidingCache(GrowingCache):
    """A :class:`GrowingCache` that keeps going past ``max_len`` by dropping its oldest entries
    (the rotating cache of mlx-lm and llama.cpp).

    With rotary positions that is well defined, as scores depend only on relative positions; it
    is *not* what re-running the cropped window gives (see ``mygpt.generate``). Full, it moves its
    newest entries to the front of its buffer once per ``max_len`` tokens.
    """

    rotates: ClassVar[bool] = True


@dataclass
class RowCache:
    """A fixed-shape KV cache for batched decoding: ``rows`` rows of ``capacity`` positions.

    Every layer's keys and values are one (2, rows, Hkv, capacity, D) buffer (keys, then
    values), allocated up front; row r holds one stream, its entry for absolute position p at
    index p. A step (:meth:`at`) always attends over the whole capacity with a per-row length
    mask, so a row's arithmetic is the same whatever the other rows hold.
    """

    rows: int
    capacity: int
    kv: list[Array]

    @classmethod
    def allocate(cls, ops, cfg: ModelConfig, rows: int, dtype: str = "float32") -> RowCache:
        shape = (2, rows, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim)
        return cls(rows, cfg.max_seq_len, [ops.zeros(shape, dtype) for _ in range(cfg.num_layers)])

    @staticmethod
    def nbytes(cfg: ModelConfig, rows: int, dtype: str = "float32") -> int:
        per_row = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.max_seq_len * cfg.head_dim
        return rows * per_row * (2 if dtype == "bfloat16" else 4)

    def at(self, positions: np.ndarray) -> RowStep:
        """One token per row, row r's at ``positions[r]`` (its cached length): the cache of one
        decode step."""
        return RowStep(self, np.array(positions, dtype=np.int64))

    def load(self, ops, row: int, cache: GrowingCache) -> None:
        """Copy a prefilled :class:`GrowingCache` (one row, not past its window) into ``row``."""
        start = Positions(np.zeros(1, dtype=np.int64), 0)
        for i in range(len(self.kv)):
            end = cache.ends[i]
            heads = ops.concat([cache.keys[i][:, :, :end], cache.values[i][:, :, :end]], axis=1)
            self.kv[i] = ops.write_kv(self.kv[i], heads, [row], start)


class RowStep:
    """:class:`RowCache` during one decode step: every row writes its token's key and value at
    its own position and sees keys ``0..position``."""

    def __init__(self, cache: RowCache, positions: np.ndarray) -> None:
        self.cache, self.positions = cache, positions
        self.rows: Sequence[int] = range(cache.rows)
        self.mask = Mask(lengths=positions + 1)

    def begin(self, T: int) -> tuple[Positions, Mask | None]:
        if T != 1:
            raise ValueError("a RowCache step decodes one token per row")
        self.at = Positions(self.positions, T)
        return self.at, self.mask

    def update(self, ops, layer: int, kv: Array) -> tuple[Array, Array]:
        kv = self.cache.kv[layer] = ops.write_kv(self.cache.kv[layer], kv, self.rows, self.at)
        return kv[0], kv[1]

    def end(self, T: int) -> None:
        return None
