"""The book's character-level BPE (Ch.28), with a fast trainer and a cached encoder.

Compatibility facts kept from the book:

* pre-tokenisation ``\\s*\\S+|\\s+`` with Python's ``re`` (its ``\\s`` is what the book used);
* alphabet = sorted unique characters of the BPE training text; vocabulary = alphabet followed by
  ``a + b`` for each merge; an id is a position in that list;
* merges learned by the book's rule (most frequent pair, ties by first occurrence), see trainer.py;
* corpus encoding silently drops characters outside the alphabet (the book's policy); encoding a
  prompt with such a character is an error instead, because a silently altered prompt surprises.

Tokens are identified by their string, as in the book's string-based code. Two merges may spell
the same string (``("a", "bc")`` and ``("ab", "c")``); the vocabulary then holds that string twice,
and encoding maps it to its *last* position, like a ``{token: i for i, token in enumerate(vocab)}``
lookup does.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import chain

import numpy as np

from mygpt.errors import MygptError
from mygpt.tokenizers.base import (
    CACHE_LIMIT,
    FORMAT_VERSION,
    Tokenizer,
    corrupt,
    merge_all_by_rank,
)
from mygpt.tokenizers.batch import BatchEncoder, PairTable
from mygpt.tokenizers.char import unknown_char_error
from mygpt.tokenizers.trainer import train_bpe

BOOK_PATTERN = r"\s*\S+|\s+"
_BOOK_RE = re.compile(BOOK_PATTERN)


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, chars: Sequence[str], merges: Sequence[Sequence[str]]):
        chars = list(chars)
        if not chars:
            raise corrupt("a bpe tokenizer needs a non-empty alphabet")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise corrupt(f"bpe alphabet entry {c!r} is not a single character")
        if chars != sorted(set(chars)):
            raise corrupt("the bpe alphabet must be sorted and without duplicates")
        pairs: list[tuple[str, str]] = []
        vocab = list(chars)
        known = set(chars)
        for m in merges:
            if (
                not isinstance(m, (list, tuple))
                or len(m) != 2
                or not all(isinstance(x, str) and x for x in m)
            ):
                raise corrupt(f"bpe merge {m!r} is not a pair of strings")
            a, b = m
            if a not in known or b not in known:
                raise corrupt(f"bpe merge {m!r} uses a token that no earlier merge made")
            pairs.append((a, b))
            vocab.append(a + b)
            known.add(a + b)
        self.chars = chars
        self.merges = pairs
        self.vocab = vocab
        # Symbols are unique strings; the output id of a symbol is its last vocabulary position.
        self._sym: dict[str, int] = {}
        for t in vocab:
            self._sym.setdefault(t, len(self._sym))
        self._sym_out = [0] * len(self._sym)
        for pos, t in enumerate(vocab):
            self._sym_out[self._sym[t]] = pos
        self._table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(pairs):
            self._table.setdefault((self._sym[a], self._sym[b]), (rank, self._sym[a + b]))
        self._cache_strict: dict[str, list[int]] = {}
        self._cache_skip: dict[str, list[int]] = {}
        self._batch: BatchEncoder | None = None

    # --- training -----------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        text: str,
        num_merges: int,
        *,
        on_merge: Callable[[], None] | None = None,
    ) -> tuple[BPETokenizer, int]:
        """Train as the book does (on all of ``text``); returns the tokenizer and merges done."""
        if not text:
            raise MygptError("the BPE training text is empty — pass a file with some text in it")
        if num_merges < 0:
            raise MygptError(f"--num-merges must be >= 0, got {num_merges}")
        words = Counter(_BOOK_RE.findall(text))
        chars = sorted(set(text))
        sid = {c: i for i, c in enumerate(chars)}
        seqs = [[sid[c] for c in w] for w in words]
        res = train_bpe(seqs, list(words.values()), chars, num_merges, on_merge=on_merge)
        merges = [(res.values[a], res.values[b]) for a, b, _c, _new in res.merges]
        return cls(chars, merges), len(merges)

    # --- encoding -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _encode_word(self, word: str, skip: bool) -> list[int]:
        sym = self._sym
        if skip:
            toks = [sym[c] for c in word if c in sym]
        else:
            toks = []
            for c in word:
                s = sym.get(c)
                if s is None:
                    raise unknown_char_error(c, self.kind)
                toks.append(s)
        out = self._sym_out
        return [out[s] for s in merge_all_by_rank(toks, self._table)]

    def _encode_pieces(self, pieces: list[str], skip: bool) -> Sequence[list[int]]:
        cache = self._cache_skip if skip else self._cache_strict
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        for w in dict.fromkeys(pieces):
            if w not in cache:
                cache[w] = self._encode_word(w, skip)
        return [cache[w] for w in pieces]

    def encode(self, text: str) -> list[int]:
        return list(chain.from_iterable(self._encode_pieces(_BOOK_RE.findall(text), False)))

    def encode_corpus(self, text: str) -> np.ndarray:
        # all of the chunk's new distinct words at once, in numpy (batch.py): the per-word
        # path's ids, 4-5x the book's cached encoder on a fresh process
        if self._batch is None:
            self._batch = BatchEncoder(
                np.array([ord(c) for c in self.chars], dtype=np.uint32),
                PairTable(self._table, len(self._sym)),
                np.array(self._sym_out, dtype=np.int64),
                max_words=CACHE_LIMIT,
            )
        return self._batch.encode(_BOOK_RE.findall(text))

    def decode(self, ids: Sequence[int]) -> str:
        vocab = self.vocab
        return "".join(vocab[i] for i in self._check_ids(ids))

    def token_str(self, id: int) -> str:
        return self.vocab[self._check_ids([id])[0]]

    # --- formats ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "kind": "bpe",
            "version": FORMAT_VERSION,
            "pattern": BOOK_PATTERN,
            "chars": list(self.chars),
            "merges": [[a, b] for a, b in self.merges],
        }

    def to_book_fields(self) -> dict:
        # The book stores merges as a list of tuples and repeats the alphabet in tokenizer_chars.
        return {
            "tokenizer_chars": list(self.chars),
            "tokenizer_kind": "bpe",
            "tokenizer_state": {"chars": list(self.chars), "merges": list(self.merges)},
        }
