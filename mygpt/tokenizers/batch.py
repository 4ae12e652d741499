"""Book-style BPE over a whole chunk of text at once, in numpy: the corpus encoder's fast path.

``merge_all_by_rank`` (base.py) encodes one word in Python: find the lowest-rank pair, merge every
occurrence left to right, repeat. A corpus has tens of thousands of distinct words per megabyte,
and that per-word loop was most of the encoding time (and all of a fresh worker's). Here every
distinct word of a chunk takes the same step at the same time, as array operations over all of
them; a word leaves the working set once it has no mergeable pair. Same algorithm, same ids
(tests compare the two on real text and on generated words). Words met in earlier chunks are
remembered (:class:`BatchEncoder`), but a fresh worker is fast from its first chunk too.
"""

from __future__ import annotations

import numpy as np

_NONE = np.iinfo(np.int64).max
# Below this many symbols the pair table is a dense nsym x nsym array (2048: 32 MB), a lookup is
# one gather; above it, a binary search over the sorted pair keys.
DENSE_MAX_SYMBOLS = 2048


class PairTable:
    """The merges, pair key ``a * nsym + b`` -> (rank, merged symbol), as arrays."""

    def __init__(self, table: dict[tuple[int, int], tuple[int, int]], nsym: int) -> None:
        self.nsym = nsym
        items = sorted(((a * nsym + b), r, m) for (a, b), (r, m) in table.items())
        self.keys = np.array([k for k, _, _ in items], dtype=np.int64)
        self.ranks = np.array([r for _, r, _ in items], dtype=np.int64)
        self.merged = np.array([m for _, _, m in items], dtype=np.int64)
        self.dense_rank = self.dense_merged = None
        if nsym <= DENSE_MAX_SYMBOLS:
            self.dense_rank = np.full(nsym * nsym, _NONE, dtype=np.int64)
            self.dense_rank[self.keys] = self.ranks
            self.dense_merged = np.zeros(nsym * nsym, dtype=np.int32)
            self.dense_merged[self.keys] = self.merged

    def lookup(self, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rank or _NONE, a handle for :meth:`merged_of`) of each pair key."""
        if self.dense_rank is not None:
            return self.dense_rank[key], key
        pos = np.searchsorted(self.keys, key)
        pos[pos == self.keys.size] = 0
        return np.where(self.keys[pos] == key, self.ranks[pos], _NONE), pos

    def merged_of(self, handle: np.ndarray) -> np.ndarray:
        if self.dense_merged is not None:
            return self.dense_merged[handle].astype(np.int64)
        return self.merged[handle]


def _step(sym: np.ndarray, wid: np.ndarray, t: PairTable):
    """One round for every word: returns (finished mask, positions to merge, their new symbols)."""
    n = sym.size
    same = wid[1:] == wid[:-1]
    key = sym[:-1] * t.nsym + sym[1:]
    pair_rank, handle = t.lookup(key)
    rank = np.full(n, _NONE, dtype=np.int64)
    rank[:-1] = np.where(same, pair_rank, _NONE)
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    best = np.minimum.reduceat(rank, starts)
    best_at = np.repeat(best, np.diff(np.append(starts, n)))
    finished = best_at == _NONE
    match = (rank == best_at) & ~finished  # ranks are unique: the word's lowest pair, everywhere
    prev = np.concatenate(([False], match[:-1]))
    if (match & prev).any():
        # overlapping matches ("xxx" with the pair (x, x)): left to right, every other one
        idx = np.arange(n)
        run_start = np.maximum.accumulate(np.where(match & ~prev, idx, 0))
        match &= (idx - run_start) % 2 == 0
    at = np.flatnonzero(match)
    return finished, at, t.merged_of(handle[at])


def merge_words(sym: np.ndarray, wid: np.ndarray, nwords: int, t: PairTable):
    """BPE every word at once. ``sym``: all words' symbols concatenated; ``wid``: each symbol's
    word (non-decreasing). Returns (symbols grouped by word in order, each word's length)."""
    done_sym, done_wid = [], []
    if t.keys.size == 0:
        done_sym, done_wid = [sym], [wid]
        sym = sym[:0]
    while sym.size:
        finished, at, new = _step(sym, wid, t)
        drop = finished.copy()
        sym = sym.copy()
        sym[at] = new
        drop[at + 1] = True
        if finished.any():
            done_sym.append(sym[finished])
            done_wid.append(wid[finished])
        keep = ~drop
        sym, wid = sym[keep], wid[keep]
    all_sym = np.concatenate(done_sym) if done_sym else np.zeros(0, np.int64)
    all_wid = np.concatenate(done_wid) if done_wid else np.zeros(0, np.int64)
    order = np.argsort(all_wid, kind="stable")  # a word's symbols stay in order
    return all_sym[order], np.bincount(all_wid, minlength=nwords)


class BatchEncoder:
    """Encodes pre-token lists chunk after chunk. Words seen in earlier chunks are remembered (their
    ids in one flat array), so a chunk merges only its new words; everything per *piece* is a C
    loop (dict lookups through ``map``) or a numpy gather. The memory is bounded: past
    ``max_words`` remembered words it starts afresh."""

    def __init__(
        self, alphabet: np.ndarray, table: PairTable, sym_out: np.ndarray, max_words: int
    ) -> None:
        self.alphabet, self.table, self.sym_out, self.max_words = (
            alphabet,
            table,
            sym_out,
            max_words,
        )
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {}
        self.ids = np.zeros(0, dtype=np.int32)  # every remembered word's ids, back to back
        self.starts = np.zeros(0, dtype=np.int64)
        self.lens = np.zeros(0, dtype=np.int64)

    def _learn(self, words: list[str]) -> None:
        cps = np.frombuffer("".join(words).encode("utf-32-le"), dtype=np.uint32)
        char_wid = np.repeat(
            np.arange(len(words), dtype=np.int64),
            np.fromiter(map(len, words), np.int64, len(words)),
        )
        pos = np.searchsorted(self.alphabet, cps)
        pos[pos == self.alphabet.size] = 0
        known = self.alphabet[pos] == cps  # the book's corpus policy: unknown characters dropped
        toks, lens = merge_words(
            pos[known].astype(np.int64), char_wid[known], len(words), self.table
        )
        base = len(self.index)
        self.index.update(zip(words, range(base, base + len(words))))
        self.starts = np.concatenate((self.starts, self.ids.size + np.cumsum(lens) - lens))
        self.lens = np.concatenate((self.lens, lens))
        self.ids = np.concatenate((self.ids, self.sym_out[toks].astype(np.int32)))

    def encode(self, pieces: list[str]) -> np.ndarray:
        """The ids of ``pieces`` (pre-tokens, in order), as int32."""
        distinct = dict.fromkeys(pieces)  # C loops only: no Python code per piece
        if len(self.index) + len(distinct) > self.max_words:
            self._reset()
        index = self.index
        new = [w for w in distinct if w not in index]
        if new:
            self._learn(new)
        word_of = np.fromiter(map(index.__getitem__, pieces), dtype=np.int64, count=len(pieces))
        n = self.lens[word_of]
        first = np.repeat(self.starts[word_of] - (np.cumsum(n) - n), n)
        return self.ids[first + np.arange(first.size, dtype=np.int64)]
