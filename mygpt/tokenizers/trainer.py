"""One fast BPE trainer shared by the character-level (book) BPE and the byte-level BPE.

The book's trainer recounts every adjacent pair over every unique word after each merge. This one
counts the unique pre-tokens once, then keeps the pair counts up to date incrementally:

* ``where[pair]`` is the exact set of words that contain the pair, so a merge only rewrites the
  words it can change;
* a heap of ``(-count, first_seen, pair)`` entries with lazy invalidation gives the best pair; an
  entry whose count or key no longer matches the live value is simply skipped when it surfaces.

Tie-breaking must match the book exactly. The book picks ``max(pairs, key=pairs.get)`` over a
Counter built by scanning the words in first-appearance order, left to right, so among equally
frequent pairs it picks the one whose *first occurrence* comes first in that scan. We give each
pair the key ``(word index, offset)`` of its first occurrence, where ``offset`` is counted in base
symbols (characters or bytes) from the start of the word: token boundaries that a merge does not
touch keep their offsets, so keys of untouched occurrences never move.

How keys change under a merge ``(a, b) -> c``:

* pairs that *gain* occurrences contain ``c``; their new key is ``min(old key, new occurrence)``;
* pairs that *lose* occurrences contain an ``a`` or ``b`` that was consumed. Their true key can only
  grow, so the old key remains a valid lower bound; we mark the pair "stale" (only if it lost an
  occurrence in the word that defined its key) and recompute the exact key lazily, only when its
  heap entry reaches the top. Because every live entry holds a lower bound of its pair's key, the
  first non-stale valid entry popped is the true ``(max count, min key)`` pair.

Symbol identity is by *value* (the concatenated string or bytes), as in the book's string-based
trainer: should a merge spell a string that already is a symbol, it produces that same symbol.
(Training from single characters with global left-to-right merges never seems to do this — random
search found no case — but the trainer accepts multi-character starting symbols, where it does.)
Then ``c`` existed before the merge, a pair can lose and gain occurrences in one word, and the word
takes a slower, fully general path that compares first offsets before and after.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

try:  # the C helper behind Counter.update; a plain dict avoids Counter's per-call overhead
    from collections import _count_elements  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - other Python implementations

    def _count_elements(mapping: dict, iterable) -> None:
        for x in iterable:
            mapping[x] = mapping.get(x, 0) + 1


Pair = tuple[int, int]


@dataclass
class TrainResult:
    """Merges in order as ``(a, b, c, new)`` symbol ids; ``values`` maps a symbol id to its value."""

    merges: list[tuple[int, int, int, bool]]
    values: list
    requested: int
    stopped_early: bool


def _merge_word(toks: list[int], a: int, b: int, c: int) -> list[int]:
    """Replace non-overlapping ``a b`` by ``c``, scanning left to right (the book's rule)."""
    out: list[int] = []
    i, n = 0, len(toks)
    append = out.append
    while i < n:
        if toks[i] == a and i + 1 < n and toks[i + 1] == b:
            append(c)
            i += 2
        else:
            append(toks[i])
            i += 1
    return out


def _first_offsets(toks: list[int], toklen: list[int]) -> dict[Pair, int]:
    """Offset (in base symbols) of the first occurrence of every pair in a word."""
    first: dict[Pair, int] = {}
    off = 0
    for i in range(len(toks) - 1):
        p = (toks[i], toks[i + 1])
        if p not in first:
            first[p] = off
        off += toklen[toks[i]]
    return first


def _first_offset(toks: list[int], p: Pair, toklen: list[int]) -> int:
    a, b = p
    off = 0
    for i in range(len(toks) - 1):
        if toks[i] == a and toks[i + 1] == b:
            return off
        off += toklen[toks[i]]
    raise AssertionError("pair not in word")  # pragma: no cover - `where` is kept exact


class _PairIndex:
    """Every adjacent pair's weighted count, the words it occurs in and its first occurrence
    (word, offset), with a lazy max-heap over (count, first occurrence): the book's tie-break."""

    def __init__(self, words: list[list[int]], freqs: Sequence[int], toklen: list[int]) -> None:
        self.words, self.freqs, self.toklen = words, freqs, toklen
        self.counts: dict[Pair, int] = defaultdict(int)
        self.where: dict[Pair, set[int]] = defaultdict(set)
        self.key: dict[Pair, tuple[int, int]] = {}
        self.stale: set[Pair] = set()  # pairs whose first occurrence moved later
        for w, toks in enumerate(words):
            if len(toks) < 2:
                continue
            pairs = list(zip(toks, toks[1:]))
            off = 0
            for p in pairs:
                if p not in self.key:
                    self.key[p] = (w, off)
                off += toklen[p[0]]
            for p, k in Counter(pairs).items():
                self.counts[p] += k * freqs[w]
                self.where[p].add(w)
        self.heap = [(-c, self.key[p], p) for p, c in self.counts.items()]
        heapq.heapify(self.heap)

    def pop_best(self) -> Pair | None:
        """The most frequent pair (earliest first occurrence on ties), or None when none is left."""
        heap = self.heap
        while heap:
            negc, k, p = heap[0]
            if self.counts.get(p, 0) != -negc or self.key.get(p) != k:
                heapq.heappop(heap)  # outdated entry: a newer one exists (or the pair is gone)
                continue
            if p in self.stale:
                heapq.heappop(heap)
                wmin = min(self.where[p])
                self.key[p] = (wmin, _first_offset(self.words[wmin], p, self.toklen))
                self.stale.discard(p)
                heapq.heappush(heap, (negc, self.key[p], p))
                continue
            return heapq.heappop(heap)[2]
        return None

    def merge(self, best: Pair, c: int, new: bool) -> None:
        """Rewrite every word holding ``best`` with symbol ``c`` and update the index."""
        a, b = best
        changed: set[Pair] = set()
        for w in self.where.pop(best):
            old = self.words[w]
            cur = _merge_word(old, a, b, c)
            self.words[w] = cur
            old_pc: dict[Pair, int] = {}
            _count_elements(old_pc, zip(old, old[1:]))
            new_pc: dict[Pair, int] = {}
            _count_elements(new_pc, zip(cur, cur[1:]))
            if new:
                self._update_new(w, cur, old_pc, new_pc, changed)
            else:
                self._update_existing(w, old, cur, old_pc, new_pc, changed)
        self._requeue(changed)

    def _update_new(self, w, cur, old_pc, new_pc, changed) -> None:
        # Fast path: gained pairs all contain the brand-new symbol, lost pairs never do.
        f, counts, where, key = self.freqs[w], self.counts, self.where, self.key
        for q, k in old_pc.items():
            nk = new_pc.get(q, 0)
            if nk != k:
                counts[q] += (nk - k) * f
                changed.add(q)
                if nk == 0:
                    where[q].discard(w)
                if key[q][0] == w:
                    self.stale.add(q)
        for q, nk in new_pc.items():
            if q not in old_pc:
                counts[q] += nk * f
                where[q].add(w)
                changed.add(q)
                kq = (w, _first_offset(cur, q, self.toklen))
                if q not in key or kq < key[q]:
                    key[q] = kq
                    self.stale.discard(q)

    def _update_existing(self, w, old, cur, old_pc, new_pc, changed) -> None:
        # The merged value already existed: pairs with it may move, so compare first offsets.
        f, counts, where, key = self.freqs[w], self.counts, self.where, self.key
        old_first = _first_offsets(old, self.toklen)
        new_first = _first_offsets(cur, self.toklen)
        for q in old_first.keys() | new_first.keys():
            k, nk = old_pc.get(q, 0), new_pc.get(q, 0)
            of, nf = old_first.get(q), new_first.get(q)
            if k == nk and of == nf:
                continue
            counts[q] += (nk - k) * f
            changed.add(q)
            if nk == 0:
                where[q].discard(w)
                if key[q][0] == w:
                    self.stale.add(q)
                continue
            where[q].add(w)
            if of is not None and key[q][0] == w and nf > of:
                self.stale.add(q)
            kq = (w, nf)
            if q not in key or kq < key[q]:
                key[q] = kq
                self.stale.discard(q)

    def _requeue(self, changed: set[Pair]) -> None:
        for q in changed:
            cq = self.counts[q]
            if cq > 0:
                heapq.heappush(self.heap, (-cq, self.key[q], q))
            else:
                del self.counts[q]
                self.key.pop(q, None)
                self.where.pop(q, None)
                self.stale.discard(q)


def train_bpe(
    words: list[list[int]],
    freqs: Sequence[int],
    values: list,
    num_merges: int,
    *,
    count_duplicates: bool = True,
    on_merge: Callable[[], None] | None = None,
) -> TrainResult:
    """Learn up to ``num_merges`` merges over unique ``words`` (symbol-id lists, first-appearance order).

    ``values[i]`` is symbol ``i``'s value (``str`` or ``bytes``); offsets count ``len(value)`` units.
    With ``count_duplicates=False`` a merge that re-creates an existing value is still applied to the
    words but does not count towards ``num_merges`` (byte-level BPE, whose tokens must be unique).
    ``words`` is modified in place.
    """
    values = list(values)
    value_id = {v: i for i, v in enumerate(values)}
    toklen = [len(v) for v in values]
    index = _PairIndex(words, freqs, toklen)
    merges: list[tuple[int, int, int, bool]] = []
    done = 0
    while done < num_merges:
        best = index.pop_best()
        if best is None:
            break
        a, b = best
        v = values[a] + values[b]
        c = value_id.get(v)
        new = c is None
        if new:
            c = len(values)
            values.append(v)
            toklen.append(toklen[a] + toklen[b])
            value_id[v] = c
        merges.append((a, b, c, new))
        if new or count_duplicates:
            done += 1
            if on_merge is not None:
                on_merge()
        index.merge(best, c, new)
    return TrainResult(merges, values, num_merges, stopped_early=done < num_merges)
