"""The tokenizer interface and the pieces the three kinds share (per-word BPE encoding, JSON I/O)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from mygpt.errors import MygptError
from mygpt.fileio import atomic_write_text

FORMAT_VERSION = 1
# Bound the per-word caches: a 500 MB corpus has millions of distinct pre-tokens, and a worker
# process should not grow without limit. Clearing is cheap and the hit rate recovers at once.
CACHE_LIMIT = 500_000


def warn(msg: str) -> None:
    """Status for the user goes to stderr (results go to stdout)."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def describe_char(ch: str) -> str:
    name = repr(ch)
    return f"{name} (U+{ord(ch):04X})"


class Tokenizer:
    """Base class: text <-> token ids, plus a JSON-able description of itself."""

    kind: str = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Encode a prompt strictly: an unknown character is a :class:`MygptError`."""
        raise NotImplementedError

    def encode_corpus(self, text: str) -> np.ndarray:
        """Encode training text (int32). The book's BPE silently skips unknown characters here."""
        raise NotImplementedError

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_str(self, id: int) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_book_fields(self) -> dict:
        raise MygptError(
            f"a {self.kind} tokenizer cannot be stored in the book's checkpoint format — "
            "save the checkpoint in the native format instead"
        )

    # --- shared -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict` (keys token caches)."""
        canon = json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the readable JSON form atomically (a crash never leaves half a file)."""
        atomic_write_text(path, readable_json(self.to_dict()))

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        n = self.vocab_size
        out = [int(i) for i in ids]
        for i in out:
            if not 0 <= i < n:
                raise MygptError(
                    f"token id {i} is outside this {self.kind} tokenizer's vocabulary (0..{n - 1})"
                    " — decode with the tokenizer the ids were encoded with"
                )
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind} vocab_size={self.vocab_size}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())


def readable_json(d: dict) -> str:
    """One top-level field per line and one merge per line: diffable and easy to read."""
    fields = []
    for k, v in d.items():
        if isinstance(v, list) and v and isinstance(v[0], list):
            body = "[\n" + ",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in v) + "\n ]"
        else:
            body = json.dumps(v, ensure_ascii=False)
        fields.append(f" {json.dumps(k)}: {body}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def merge_all_by_rank(toks: list[int], table: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """Book-style BPE on one word: merge every occurrence of the lowest-rank pair, left to right.

    ``table`` maps a pair of symbol ids to ``(rank, merged id)``. Equivalent to applying the merges
    in training order, but only looks at pairs that are present.
    """
    while len(toks) > 1:
        best = None
        best_rank = None
        for p in zip(toks, toks[1:]):
            e = table.get(p)
            if e is not None and (best_rank is None or e[0] < best_rank):
                best_rank, best = e[0], p
        if best is None:
            break
        a, b = best
        c = table[best][1]
        out: list[int] = []
        i, n = 0, len(toks)
        while i < n:
            if toks[i] == a and i + 1 < n and toks[i + 1] == b:
                out.append(c)
                i += 2
            else:
                out.append(toks[i])
                i += 1
        toks = out
    return toks


def merge_leftmost_by_rank(
    toks: list[int], table: dict[tuple[int, int], tuple[int, int]]
) -> list[int]:
    """tiktoken-style BPE on one word: merge the leftmost adjacent pair of lowest rank, repeat."""
    toks = list(toks)
    while len(toks) > 1:
        best_i = -1
        best_rank = None
        best_c = 0
        for i in range(len(toks) - 1):
            e = table.get((toks[i], toks[i + 1]))
            if e is not None and (best_rank is None or e[0] < best_rank):
                best_rank, best_i, best_c = e[0], i, e[1]
        if best_i < 0:
            break
        toks[best_i : best_i + 2] = [best_c]
    return toks


def corrupt(what: str) -> MygptError:
    return MygptError(
        f"not a valid tokenizer: {what} — re-create it with `mygpt tokenizer train` "
        "(or pass the file that was saved with the model)"
    )
