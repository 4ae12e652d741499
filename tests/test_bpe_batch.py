"""The batch corpus encoder (tokenizers/batch.py) gives the per-word encoder's ids exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mygpt.tokenizers import batch, train_tokenizer
from mygpt.tokenizers.bpe import _BOOK_RE, BPETokenizer
from mygpt.tokenizers.reference import cached_book_encode, plain_book_encode
from tests.conftest import SHARED


def _per_word(tok: BPETokenizer, text: str) -> list[int]:
    return [i for part in tok._encode_pieces(_BOOK_RE.findall(text), True) for i in part]


@pytest.fixture(scope="module")
def wiki_tok():
    text = (SHARED / "data" / "wikipedia_vital4_summaries_en.txt").read_text(encoding="utf-8")
    return train_tokenizer("bpe", text[:300_000], 500), text


@pytest.mark.parametrize("dense", [True, False])
def test_batch_equals_per_word_on_wikipedia(wiki_tok, dense, monkeypatch):
    tok, text = wiki_tok
    if not dense:  # the binary-search table used for large vocabularies
        monkeypatch.setattr(batch, "DENSE_MAX_SYMBOLS", 0)
    fresh = BPETokenizer(tok.chars, tok.merges)
    part = text[1_000_000:1_400_000] + " Zürich ☃☃ \n\n  x"
    ids = fresh.encode_corpus(part)
    assert ids.dtype == np.int32
    assert ids.tolist() == _per_word(fresh, part) == cached_book_encode(part, tok.chars, tok.merges)


# Overlapping pairs ("aaaa" with the merge (a, a)), merges spelling the same string twice
# ((a, bc) and (ab, c)), characters outside the alphabet, empty and whitespace-only pieces.
_MERGES = [("a", "a"), ("a", "b"), ("b", "c"), ("aa", "aa"), ("a", "bc"), ("ab", "c"),
           ("c", "a"), (" ", "a"), ("aa", "a"), ("abc", "abc"), (" ", "aa")]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aabbc  \nz", max_size=60), st.integers(0, len(_MERGES)))
def test_batch_equals_reference_on_generated_text(text, n_merges):
    tok = BPETokenizer(["\n", " ", "a", "b", "c"], _MERGES[:n_merges])
    want = plain_book_encode(text, tok.chars, tok.merges)
    assert tok.encode_corpus(text).tolist() == want == _per_word(tok, text)


def test_batch_edge_cases():
    tok = BPETokenizer(["a", "b"], [("a", "b")])
    assert tok.encode_corpus("").tolist() == []
    assert tok.encode_corpus("zzz yy").tolist() == []  # every character unknown
    assert tok.encode_corpus("ab").tolist() == [2]
    no_merges = BPETokenizer(["a", "b"], [])
    assert no_merges.encode_corpus("ab ba").tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("max_words", [10**6, 50])  # remembered across chunks, or reset often
def test_words_remembered_across_chunks_give_the_same_ids(wiki_tok, max_words):
    tok, text = wiki_tok
    enc = BPETokenizer(tok.chars, tok.merges)
    enc.encode_corpus("warm up")
    enc._batch.max_words = max_words
    for part in (text[2_000_000:2_020_000], text[2_010_000:2_030_000], "x", "", text[:5000]):
        assert enc.encode_corpus(part).tolist() == _per_word(
            BPETokenizer(tok.chars, tok.merges), part
        )
    assert len(enc._batch.index) <= max(max_words, 6000)
