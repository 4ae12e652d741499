"""KV caches: what makes one :func:`mygpt.model.forward` serve training, prefill and decoding.

The model is the same for every caller; the cache is what differs. A cache answers three
questions for each forward pass (the ``Cache`` protocol):

- ``begin(T)``: at which positions are these T new tokens, and which mask do they attend under?
  (``Positions`` and ``Mask`` from ``mygpt.backends.base``; the backend keeps the step's tables,
  rotations, write indices and masks, inside them, made once per step and used by every layer.)
- ``update(ops, layer, kv)``: store this layer's new keys and values (one array, K heads then V
  heads), and return the keys and values to attend to.
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

    def update(
        self, ops, layer: int, kv: Array, window: int | None = None
    ) -> tuple[Array, Array]: ...

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
    #: per layer: the position of its buffer's first entry (a sliding layer drops the keys its
    #: window has left: index i holds position firsts[layer] + i)
    firsts: list[int] = field(default_factory=list)
    rotates: ClassVar[bool] = False  # past max_len: drop the oldest entries, or refuse

    def __post_init__(self) -> None:
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        self.ends = [0] * self.num_layers
        self.firsts = [0] * self.num_layers

    def begin(self, T: int) -> tuple[Positions, Mask | None]:
        return Positions(self.offset, T), None  # causal, aligned to the newest key

    def end(self, T: int) -> None:
        self.offset += T

    def _overflow(self, end: int, t: int) -> None:
        raise MygptError(
            f"{end + t} cached positions would pass the context of {self.max_len} — the exact "
            "generator refills its cache from the cropped window; use a SlidingCache to rotate"
        )

    def update(self, ops, layer: int, kv: Array, window: int | None = None) -> tuple[Array, Array]:
        """Append (B, 2 Hkv, T, D) keys|values; return the (B, Hkv, ., D) keys and values
        attention sees (<= max_len).

        A sliding layer's (``window``) returns the new keys and the ``window - 1`` before them,
        and its buffer keeps no more than that plus room to grow: what its window has left is
        dropped (moved out once per buffer's worth of tokens)."""
        h = kv.shape[1] // 2
        k, v = kv[:, :h], kv[:, h:]
        if window is not None and 1 < window <= self.max_len and not self.rotates:
            return self._update_window(ops, layer, k, v, window - 1)
        t, n = k.shape[2], self.max_len
        if t > n:  # only the newest max_len can ever be seen again
            k, v, t = k[:, :, -n:], v[:, :, -n:], n
        if self.keys[layer] is None:
            # start small and double: a real model's context (32k positions) would otherwise
            # preallocate gigabytes for a short chat
            self.keys[layer] = ops.zeros((*k.shape[:2], min(2 * n, max(256, 2 * t)), k.shape[3]),
                                         ops.dtype_of(k))  # fmt: skip
            self.values[layer] = ops.zeros(self.keys[layer].shape, ops.dtype_of(v))
        if self.ends[layer] + t > n and not self.rotates:
            self._overflow(self.ends[layer], t)
        return self._append(ops, layer, k, v, n, keep=n - t)

    def _append(
        self, ops, layer: int, k: Array, v: Array, n: int, keep: int
    ) -> tuple[Array, Array]:
        """Write ``k``, ``v`` after the layer's entries in a buffer of up to ``2 n``; when full,
        the newest ``keep`` entries move to the front first. Returns the newest ``n``."""
        t = k.shape[2]
        keys, values, end = self.keys[layer], self.values[layer], self.ends[layer]
        cap = keys.shape[2]
        if end + t > cap and cap < 2 * n:  # grow (copying the entries so far)
            grown = min(2 * n, max(2 * cap, end + t))
            keys = ops.write(ops.zeros((*keys.shape[:2], grown, keys.shape[3]), ops.dtype_of(k)),
                             keys[:, :, :end], axis=2, start=0)  # fmt: skip
            values = ops.write(ops.zeros(keys.shape, ops.dtype_of(v)),
                               values[:, :, :end], axis=2, start=0)  # fmt: skip
        if end + t > 2 * n:  # full: keep the newest ``keep`` (<= n - t) entries, at the front
            # (their source starts at end - keep >= n + t > keep: no overlap)
            keys = ops.write(keys, keys[:, :, end - keep : end], axis=2, start=0)
            values = ops.write(values, values[:, :, end - keep : end], axis=2, start=0)
            self.firsts[layer] += end - keep
            end = keep
        keys = ops.write(keys, k, axis=2, start=end)
        values = ops.write(values, v, axis=2, start=end)
        end += t
        self.keys[layer], self.values[layer], self.ends[layer] = keys, values, end
        begin = max(0, end - n)
        return keys[:, :, begin:end], values[:, :, begin:end]

    def _update_window(self, ops, layer: int, k: Array, v: Array, keep: int):
        """A sliding layer: its buffer holds up to 2 (keep + t) entries, the newest ``keep`` of
        them (what the window still needs) moved to the front when it is full."""
        t = k.shape[2]
        if self.keys[layer] is None:
            self.keys[layer] = ops.zeros((*k.shape[:2], 2 * (keep + t), k.shape[3]),
                                         ops.dtype_of(k))  # fmt: skip
            self.values[layer] = ops.zeros(self.keys[layer].shape, ops.dtype_of(v))
        if self.firsts[layer] + self.ends[layer] + t > self.max_len:
            self._overflow(self.firsts[layer] + self.ends[layer], t)
        return self._append(ops, layer, k, v, keep + t, keep)


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

    A sliding-window layer keeps only its window: a ring of ``window`` entries (``rings``, None
    for a full layer), position p at index p % window. Attention is order-free over keys, and a
    ring holds exactly the keys the window sees, so its mask is only "the entries written so far".
    """

    rows: int
    capacity: int
    kv: list[Array]
    rings: list[int | None] = field(default_factory=list)  # per layer: its ring's length
    #: per row, the position its stream writes next (the rows a step leaves idle write at
    #: theirs, in a ring: the entry the window has just left, never a live one)
    next: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _views: dict = field(default_factory=dict)  # layer -> (buffer, its keys, its values)

    def __post_init__(self) -> None:
        #: the sliding layers' ring length (one window per model), None if every layer is full
        self.ring = next((n for n in self.rings if n is not None), None)

    @staticmethod
    def _rings(cfg: ModelConfig) -> list[int | None]:
        return [min(w, cfg.max_seq_len) if (w := cfg.window(i)) is not None else None
                for i in range(cfg.num_layers)]  # fmt: skip

    @classmethod
    def allocate(cls, ops, cfg: ModelConfig, rows: int, dtype: str = "float32") -> RowCache:
        rings = cls._rings(cfg)
        kv = [ops.zeros((2, rows, cfg.num_kv_heads, n or cfg.max_seq_len, cfg.head_dim), dtype)
              for n in rings]  # fmt: skip
        return cls(rows, cfg.max_seq_len, kv, rings, np.full(rows, cfg.max_seq_len - 1))

    @staticmethod
    def nbytes(cfg: ModelConfig, rows: int, dtype: str = "float32") -> int:
        positions = sum(n or cfg.max_seq_len for n in RowCache._rings(cfg))
        per_row = 2 * positions * cfg.num_kv_heads * cfg.head_dim
        return rows * per_row * (2 if dtype == "bfloat16" else 4)

    def keys_values(self, ops, layer: int, kv: Array) -> tuple[Array, Array]:
        """Layer ``layer``'s buffer ``kv`` as (keys, values): on a backend that writes in place
        (torch) views made once per buffer, two ops fewer per layer and step."""
        if not ops.writes_in_place:  # (an MLX write makes a new array behind the same object)
            return kv[0], kv[1]
        views = self._views.get(layer)
        if views is None or views[0] is not kv:
            views = self._views[layer] = (kv, kv[0], kv[1])
        return views[1], views[2]

    def at(self, positions: np.ndarray) -> RowStep:
        """One token per row, row r's at ``positions[r]`` (its cached length): the cache of one
        decode step."""
        positions = np.array(positions, dtype=np.int64)
        writes = positions
        if self.ring is not None:
            live = positions == self.next
            writes = np.where(live, positions, np.minimum(self.next, self.capacity - 1))
            self.next = np.where(live, positions + 1, self.next)
        return RowStep(self, positions, writes)

    def load(self, ops, row: int, cache: GrowingCache) -> None:
        """Copy a prefilled :class:`GrowingCache` (one row, not past its window) into ``row``
        (a ring: its last ``window`` entries, each at its position modulo the window)."""
        for i, ring in enumerate(self.rings or [None] * len(self.kv)):
            base = cache.firsts[i]  # the position of the prefill buffer's first entry
            end = self.next[row] = base + cache.ends[i]
            first = base if ring is None else max(base, end - ring)
            while first < end:  # a ring's entries wrap around its end once at most
                at = first if ring is None else first % ring
                stop = end if ring is None else min(end, first + ring - at)
                k = cache.keys[i][:, :, first - base : stop - base]
                v = cache.values[i][:, :, first - base : stop - base]
                start = Positions(np.array([at], dtype=np.int64), 0)
                self.kv[i] = ops.write_kv(self.kv[i], ops.concat([k, v], axis=1), [row], start)
                first = stop


class RowStep:
    """:class:`RowCache` during one decode step: every row writes its token's key and value at
    its own position and sees keys ``0..position``."""

    def __init__(self, cache: RowCache, positions: np.ndarray, writes: np.ndarray) -> None:
        self.cache, self.positions = cache, positions
        self.rows: Sequence[int] = range(cache.rows)
        self.mask = Mask(lengths=positions + 1)
        ring = cache.ring
        #: the sliding layers' mask and write positions: the entries written so far of the ring
        self.window_mask = None if ring is None else Mask(
            lengths=np.minimum(positions + 1, ring), window=ring)  # fmt: skip
        self.ring_at = None if ring is None else Positions(writes % ring, 1)

    def begin(self, T: int) -> tuple[Positions, Mask | None]:
        if T != 1:
            raise ValueError("a RowCache step decodes one token per row")
        self.at = Positions(self.positions, T)
        return self.at, self.mask

    def update(self, ops, layer: int, kv: Array, window: int | None = None) -> tuple[Array, Array]:
        # (a sliding layer's ring is its window: made at allocation)
        at = self.at if self.ring_at is None or self.cache.rings[layer] is None else self.ring_at
        buf = self.cache.kv[layer] = ops.write_kv(self.cache.kv[layer], kv, self.rows, at)
        return self.cache.keys_values(ops, layer, buf)

    def end(self, T: int) -> None:
        return None
