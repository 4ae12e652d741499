"""Byte-level BPE: exact round-trip on any string, tiktoken-equal encodings, special tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mygpt.tokenizers import (
    ENDOFTEXT,
    GPT4_PATTERN,
    ByteBPETokenizer,
    load_tokenizer,
    train_tokenizer,
)

tiktoken = pytest.importorskip("tiktoken")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WIKI = SHARED / "data" / "wikipedia_vital4_summaries_en.txt"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def tok() -> ByteBPETokenizer:
    text = WIKI.read_text(encoding="utf-8")[:200_000]
    text += " naïve café — 東京 東京 🤖🤖 Привет мир привет 1234567 ...\n\n\t  x"
    t = train_tokenizer("bytebpe", text, num_merges=400)
    assert isinstance(t, ByteBPETokenizer)
    return t


@pytest.fixture(scope="module")
def reference(tok: ByteBPETokenizer):
    """tiktoken built from the same merges (rank = id) and special tokens."""
    return tiktoken.Encoding(
        "mygpt-test",
        pat_str=GPT4_PATTERN,
        mergeable_ranks=tok.mergeable_ranks(),
        special_tokens=tok.special_tokens,
    )


fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(st.text())
def test_round_trip_any_unicode(tok: ByteBPETokenizer, s: str) -> None:
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert tok.decode_bytes(ids) == s.encode("utf-8")
    assert tok.encode_corpus(s).tolist() == ids


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())


@fast
@given(st.lists(st.one_of(st.characters(), SURROGATES)).map("".join))
def test_round_trip_even_lone_surrogates(tok: ByteBPETokenizer, s: str) -> None:
    """A Python str may hold lone surrogates (not valid Unicode text); they still round-trip."""
    assert tok.decode(tok.encode(s)) == s


@fast
@given(st.text())
def test_equals_tiktoken_on_arbitrary_text(tok: ByteBPETokenizer, reference, s: str) -> None:
    assert tok.encode(s) == reference.encode_ordinary(s)


@fast
@given(st.text(alphabet=st.sampled_from(list("ab c1.'\n\t éü東🤖sdmtlvre,!?"))))
def test_equals_tiktoken_on_pattern_edge_cases(tok: ByteBPETokenizer, reference, s: str) -> None:
    assert tok.encode(s) == reference.encode_ordinary(s)


def test_equals_tiktoken_on_real_text(tok: ByteBPETokenizer, reference) -> None:
    for text in (
        WIKI.read_text(encoding="utf-8")[300_000:360_000],
        SHAKESPEARE.read_text(encoding="utf-8")[:60_000],
    ):
        ids = tok.encode(text)
        assert ids == reference.encode_ordinary(text)
        assert len(ids) < len(text.encode("utf-8")) * 0.6  # the merges actually compress


@fast
@given(st.text(), st.text())
def test_special_tokens_only_when_allowed(tok: ByteBPETokenizer, reference, a: str, b: str) -> None:
    eot = tok.special_tokens[ENDOFTEXT]
    text = a + ENDOFTEXT + b
    plain = tok.encode(text)
    assert eot not in plain  # ordinary text, never the control token
    assert tok.decode(plain) == text
    allowed = tok.encode(text, allowed_special="all")
    assert eot in allowed
    assert tok.decode(allowed) == text
    assert allowed == reference.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special={ENDOFTEXT}) == allowed


def test_unknown_allowed_special_is_an_error(tok: ByteBPETokenizer) -> None:
    from mygpt.errors import MygptError

    with pytest.raises(MygptError, match="unknown special token"):
        tok.encode("x", allowed_special={"<|nope|>"})


@fast
@given(st.text(min_size=1))
def test_decode_never_raises_on_partial_utf8(tok: ByteBPETokenizer, s: str) -> None:
    data = s.encode("utf-8")
    ids = list(data)  # single-byte tokens: cut anywhere, even inside a character
    for cut in {1, len(data) // 2, len(data) - 1}:
        out = tok.decode(ids[:cut])
        assert out == data[:cut].decode("utf-8", "replace")
    # a lone continuation byte and a truncated 4-byte sequence become U+FFFD
    assert tok.decode([0x80]) == "\ufffd"
    assert tok.decode(list("🤖".encode())[:3]) == "\ufffd"


def test_streaming_decode_bytes_reassembles_characters(tok: ByteBPETokenizer) -> None:
    text = "東京 🤖 naïve"
    ids = tok.encode(text)
    streamed = b"".join(tok.decode_bytes([i]) for i in ids)
    assert streamed.decode("utf-8") == text


def test_special_tokens_are_not_learned_from_and_are_configurable(tmp_path: Path) -> None:
    text = ("hello world" + ENDOFTEXT) * 50 + "<|pad|> hello"
    t = train_tokenizer("bytebpe", text, num_merges=30, special_tokens=(ENDOFTEXT, "<|pad|>"))
    assert set(t.special_tokens) == {ENDOFTEXT, "<|pad|>"}
    assert sorted(t.special_tokens.values()) == [t.vocab_size - 2, t.vocab_size - 1]
    # No merged token spans the special token's text (it was a boundary while training).
    assert all(b"<|" not in t.token_bytes(i) for i in range(256, 256 + len(t.merges)))
    t.save(tmp_path / "t.json")
    assert load_tokenizer(tmp_path / "t.json").special_tokens == t.special_tokens
    assert t.token_str(t.special_tokens["<|pad|>"]) == "<|pad|>"
