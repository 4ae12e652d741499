"""The book's character tokenizer: vocabulary = sorted set of the training text's characters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mygpt.errors import MygptError
from mygpt.tokenizers.base import FORMAT_VERSION, Tokenizer, corrupt, describe_char


def unknown_char_error(ch: str, kind: str) -> MygptError:
    return MygptError(
        f"character {describe_char(ch)} is not in the {kind} tokenizer's alphabet — remove it from "
        "the text, or train a tokenizer on text that contains it"
    )


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise corrupt("a char tokenizer needs at least one character")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise corrupt(f"char tokenizer entry {c!r} is not a single character")
        if chars != sorted(set(chars)):
            raise corrupt("the char alphabet must be sorted and without duplicates")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        # Code points sorted (same order as the chars) for a vectorised corpus lookup.
        self._cps = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        if not text:
            raise MygptError("the training text is empty — pass a file with some text in it")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError as e:
            raise unknown_char_error(e.args[0], self.kind) from None

    def encode_corpus(self, text: str) -> np.ndarray:
        # The book's char tokenizer errors on an unknown character, in a corpus too.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        idx = np.searchsorted(self._cps, codes)
        idx_c = np.minimum(idx, len(self._cps) - 1)
        bad = self._cps[idx_c] != codes
        if bad.any():
            raise unknown_char_error(chr(int(codes[np.argmax(bad)])), self.kind)
        return idx_c.astype(np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in self._check_ids(ids))

    def token_str(self, id: int) -> str:
        return self.chars[self._check_ids([id])[0]]

    def to_dict(self) -> dict:
        return {"kind": "char", "version": FORMAT_VERSION, "chars": list(self.chars)}

    def to_book_fields(self) -> dict:
        return {
            "tokenizer_chars": list(self.chars),
            "tokenizer_kind": "char",
            "tokenizer_state": {"chars": list(self.chars)},
        }
