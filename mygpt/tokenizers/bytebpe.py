"""Byte-level BPE: 256 byte tokens, GPT-4 (cl100k) pre-tokenisation, explicit special tokens.

JSON form (``kind: "bytebpe"``)::

    {"kind": "bytebpe", "version": 1, "pattern": "<regex>", "bytes": 256,
     "merges": [[a, b], ...],              # merge i makes token id 256 + i from token ids a, b
     "special_tokens": {"<|endoftext|>": 256 + len(merges), ...}}

Ids 0..255 are the single bytes; special tokens come after the merged tokens. Every token's bytes
are unique, so the vocabulary is also a tiktoken ``mergeable_ranks`` table (rank = id), and the
encoder follows tiktoken's rule: repeatedly merge the leftmost adjacent pair whose concatenation is
the lowest-ranked token. (When training re-creates bytes that already are a token, the merge is
applied to the training words but adds no token: tiktoken's rule re-does it when encoding.)

Special tokens are matched only where the caller allows them (``allowed_special``); otherwise
``"<|endoftext|>"`` in text is ordinary text, so a document cannot inject control tokens. Decoding
never raises: bytes that are not valid UTF-8 (e.g. a multi-byte character cut in two while
streaming) become U+FFFD.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from itertools import chain

import numpy as np
import regex

from mygpt.errors import MygptError
from mygpt.tokenizers.base import (
    CACHE_LIMIT,
    FORMAT_VERSION,
    Tokenizer,
    corrupt,
    merge_leftmost_by_rank,
)
from mygpt.tokenizers.trainer import train_bpe

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"
DEFAULT_SPECIAL_TOKENS = (ENDOFTEXT,)


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (legal in a Python str) still round-trips exactly.
    return text.encode("utf-8", "surrogatepass")


def _split_special(text: str, specials: Collection[str]) -> list[tuple[str, bool]]:
    """Split ``text`` into (segment, is_special) around occurrences of ``specials``."""
    if not specials or not any(s in text for s in specials):
        return [(text, False)]
    alt = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in regex.finditer(alt, text):
        if m.start() > pos:
            out.append((text[pos : m.start()], False))
        out.append((m.group(), True))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], False))
    return out


class ByteBPETokenizer(Tokenizer):
    kind = "bytebpe"

    def __init__(
        self,
        merges: Sequence[Sequence[int]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT4_PATTERN,
    ):
        try:
            self._re = regex.compile(pattern)
        except (regex.error, TypeError) as e:
            raise corrupt(f"bad pre-tokenisation pattern ({e})") from None
        self.pattern = pattern
        token_bytes = [bytes([i]) for i in range(256)]
        index = {b: i for i, b in enumerate(token_bytes)}
        pairs: list[tuple[int, int]] = []
        for i, m in enumerate(merges):
            nid = 256 + i
            if (
                not isinstance(m, (list, tuple))
                or len(m) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in m)
                or not all(0 <= x < nid for x in m)
            ):
                raise corrupt(f"bytebpe merge {i} = {m!r} is not a pair of earlier token ids")
            b = token_bytes[m[0]] + token_bytes[m[1]]
            if b in index:
                raise corrupt(f"bytebpe merge {i} re-creates token {index[b]}")
            index[b] = nid
            token_bytes.append(b)
            pairs.append((m[0], m[1]))
        special_tokens = dict(special_tokens or {})
        base = 256 + len(pairs)
        if sorted(special_tokens.values()) != list(
            range(base, base + len(special_tokens))
        ) or not all(isinstance(s, str) and s for s in special_tokens):
            raise corrupt(f"special token ids must be non-empty strings numbered from {base} up")
        self.merges = pairs
        self.special_tokens = special_tokens
        self._special_by_id = {i: s for s, i in special_tokens.items()}
        self._bytes = token_bytes + [
            _utf8(self._special_by_id[i]) for i in range(base, base + len(special_tokens))
        ]
        # tiktoken's rule: a pair merges if its concatenation is a token; rank = that token's id.
        self._table: dict[tuple[int, int], tuple[int, int]] = {}
        for t in range(256, base):
            tb = token_bytes[t]
            for k in range(1, len(tb)):
                x, y = index.get(tb[:k]), index.get(tb[k:])
                if x is not None and y is not None:
                    self._table[(x, y)] = (t, t)
        self._cache: dict[str, list[int]] = {}

    # --- training -----------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        text: str,
        num_merges: int,
        *,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        on_merge: Callable[[], None] | None = None,
    ) -> tuple[ByteBPETokenizer, int]:
        if not text:
            raise MygptError("the BPE training text is empty — pass a file with some text in it")
        if num_merges < 0:
            raise MygptError(f"--num-merges must be >= 0, got {num_merges}")
        specials = list(dict.fromkeys(special_tokens))
        pat = regex.compile(GPT4_PATTERN)
        words: Counter[bytes] = Counter()
        for seg, is_special in _split_special(text, specials):
            if not is_special:  # special tokens are boundaries, never learned from
                words.update(_utf8(p) for p in pat.findall(seg))
        seqs = [list(w) for w in words]
        values = [bytes([i]) for i in range(256)]
        res = train_bpe(
            seqs,
            list(words.values()),
            values,
            num_merges,
            count_duplicates=False,
            on_merge=on_merge,
        )
        # Symbol ids of new values are exactly token ids (values are appended in merge order).
        merges = [(a, b) for a, b, _c, new in res.merges if new]
        base = 256 + len(merges)
        tok = cls(merges, {s: base + i for i, s in enumerate(specials)})
        return tok, len(merges)

    # --- encoding -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    def _resolve_allowed(self, allowed_special: str | Collection[str]) -> Collection[str]:
        if allowed_special == "all":
            return self.special_tokens.keys()
        allowed = set(allowed_special)
        unknown = allowed - self.special_tokens.keys()
        if unknown:
            raise MygptError(
                f"unknown special token(s) {sorted(unknown)} — this tokenizer has "
                f"{sorted(self.special_tokens)}"
            )
        return allowed

    def _encode_ordinary(self, text: str) -> list[list[int]]:
        cache = self._cache
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        pieces = self._re.findall(text)
        table = self._table
        for p in dict.fromkeys(pieces):
            if p not in cache:
                cache[p] = merge_leftmost_by_rank(list(_utf8(p)), table)
        return [cache[p] for p in pieces]

    def _encode_parts(self, text: str, allowed_special: str | Collection[str]) -> list[list[int]]:
        allowed = self._resolve_allowed(allowed_special)
        parts: list[list[int]] = []
        for seg, is_special in _split_special(text, allowed):
            if is_special:
                parts.append([self.special_tokens[seg]])
            else:
                parts.extend(self._encode_ordinary(seg))
        return parts

    def encode(self, text: str, allowed_special: str | Collection[str] = ()) -> list[int]:
        """Never fails on text: every string is bytes. Specials match only if allowed."""
        return list(chain.from_iterable(self._encode_parts(text, allowed_special)))

    def encode_corpus(self, text: str, allowed_special: str | Collection[str] = ()) -> np.ndarray:
        parts = self._encode_parts(text, allowed_special)
        n = sum(map(len, parts))
        return np.fromiter(chain.from_iterable(parts), dtype=np.int32, count=n)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        tb = self._bytes
        return b"".join(tb[i] for i in self._check_ids(ids))

    def decode(self, ids: Sequence[int]) -> str:
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")

    def token_bytes(self, id: int) -> bytes:
        return self._bytes[self._check_ids([id])[0]]

    def token_str(self, id: int) -> str:
        return self.token_bytes(id).decode("utf-8", "backslashreplace")

    def mergeable_ranks(self) -> dict[bytes, int]:
        """The tiktoken view of this vocabulary (rank = id), special tokens excluded."""
        return {b: i for i, b in enumerate(self._bytes[: 256 + len(self.merges)])}

    # --- formats ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "kind": "bytebpe",
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "bytes": 256,
            "merges": [[a, b] for a, b in self.merges],
            "special_tokens": dict(self.special_tokens),
        }


def check_special(tok: Tokenizer, allowed: Collection[str]) -> None:
    if allowed and not isinstance(tok, ByteBPETokenizer):
        raise MygptError(
            f"special tokens are a bytebpe feature; this tokenizer is {tok.kind} — drop the option"
        )
