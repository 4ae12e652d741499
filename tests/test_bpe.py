"""The fast BPE trainer against a plain implementation of the book's algorithm, and the book fixture."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mygpt.tokenizers import BPETokenizer, from_book_fields, train_tokenizer
from mygpt.tokenizers.reference import plain_book_encode, plain_book_train, plain_merges
from mygpt.tokenizers.trainer import train_bpe

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "book"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
WIKI = SHARED / "data" / "wikipedia_vital4_summaries_en.txt"


def _corpora() -> list[tuple[str, int]]:
    rng = random.Random(1234)
    wiki = WIKI.read_text(encoding="utf-8")
    shakespeare = SHAKESPEARE.read_text(encoding="utf-8")
    out = []
    for _ in range(4):
        s = rng.randrange(len(wiki) - 20_000)
        out.append((wiki[s : s + rng.randrange(2_000, 20_000)], rng.randrange(50, 250)))
    for _ in range(2):
        s = rng.randrange(len(shakespeare) - 10_000)
        out.append((shakespeare[s : s + 10_000], 200))
    for _ in range(6):  # tiny alphabets: many count ties, repeated strings, long runs "aaaa"
        alpha = rng.choice(["ab c\n", "aab ", "ab", "a a\tb"])
        out.append(("".join(rng.choice(alpha) for _ in range(rng.randrange(5, 600))), 400))
    out.append(("aaaaaaaaaaaaaaaaaaaaaaaa aaa aa", 50))
    return out


@pytest.mark.parametrize("text,num_merges", _corpora())
def test_fast_trainer_equals_plain_book_algorithm(text: str, num_merges: int) -> None:
    chars, merges = plain_book_train(text, num_merges)
    tok = train_tokenizer("bpe", text, num_merges=num_merges)
    assert tok.chars == chars
    assert tok.merges == merges


def test_merge_that_recreates_an_existing_symbol_matches_plain() -> None:
    """The general path: a merge spells a string that already is a symbol (here a starting one)."""
    rng = random.Random(7)
    hits = 0
    for _ in range(30):
        values = ["a", "b", "c", "ab", "bc"]
        words: dict[tuple, int] = {}
        for _ in range(rng.randrange(3, 30)):
            w = tuple(rng.choice(values) for _ in range(rng.randrange(1, 9)))
            words[w] = words.get(w, 0) + rng.randrange(1, 4)
        sid = {v: i for i, v in enumerate(values)}
        res = train_bpe([[sid[v] for v in w] for w in words], list(words.values()), values, 40)
        got = [(res.values[a], res.values[b]) for a, b, _c, _n in res.merges]
        assert got == plain_merges(words, 40)
        hits += sum(not new for *_, new in res.merges)
    assert hits > 0, "no case re-created an existing symbol"


def test_byte_level_trainer_equals_plain_algorithm_on_bytes() -> None:
    import regex

    from mygpt.tokenizers import GPT4_PATTERN

    text = SHAKESPEARE.read_text(encoding="utf-8")[:20_000] + " naïve café — 東京 東京 🤖🤖"
    words = Counter(p.encode("utf-8") for p in regex.findall(GPT4_PATTERN, text))
    ref = plain_merges(
        {tuple(bytes([x]) for x in w): c for w, c in words.items()}, 300, count_duplicates=False
    )
    tok = train_tokenizer("bytebpe", text, num_merges=300)
    tb = [bytes([i]) for i in range(256)]
    for a, b in tok.merges:
        tb.append(tb[a] + tb[b])
    assert [(tb[a], tb[b]) for a, b in tok.merges] == ref


# --- the book's own checkpoint --------------------------------------------------------------------
@pytest.fixture(scope="module")
def book_ckpt() -> dict:
    torch = pytest.importorskip("torch")
    return torch.load(FIXTURES / "ch28_bpe.ckpt", map_location="cpu", weights_only=True)


def test_reproduces_book_merges_on_tiny_shakespeare(book_ckpt: dict) -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = train_tokenizer("bpe", text, num_merges=128, bpe_train_bytes=300_000)
    fields = tok.to_book_fields()
    assert fields["tokenizer_state"]["merges"] == book_ckpt["tokenizer_state"]["merges"]
    assert fields["tokenizer_state"]["chars"] == book_ckpt["tokenizer_state"]["chars"]
    assert fields["tokenizer_chars"] == book_ckpt["tokenizer_chars"]
    assert fields["tokenizer_kind"] == book_ckpt["tokenizer_kind"] == "bpe"
    # Same Python types as the book stores (list of tuples of str).
    assert all(type(m) is tuple for m in fields["tokenizer_state"]["merges"])
    assert tok.vocab_size == book_ckpt["config"]["vocab_size"] == 190


def test_book_checkpoint_tokenizer_encodes_like_the_book(book_ckpt: dict) -> None:
    tok = from_book_fields(
        book_ckpt["tokenizer_chars"], book_ckpt["tokenizer_kind"], book_ckpt["tokenizer_state"]
    )
    assert isinstance(tok, BPETokenizer)
    meta = json.loads((FIXTURES / "ch28_bpe.json").read_text())
    arrays = np.load(FIXTURES / "ch28_bpe.npz")
    assert tok.encode(meta["text"]) == arrays["input_ids"][0].tolist()
    assert tok.encode_corpus(meta["text"]).tolist() == arrays["input_ids"][0].tolist()
    assert tok.decode(arrays["greedy_ids"][0].tolist()) == meta["greedy_text"]
    assert tok.to_book_fields()["tokenizer_state"] == book_ckpt["tokenizer_state"]


@pytest.mark.parametrize("name", ["part1_ch18", "ch27_modern"])
def test_book_char_checkpoints_round_trip(name: str) -> None:
    torch = pytest.importorskip("torch")
    ck = torch.load(FIXTURES / f"{name}.ckpt", map_location="cpu", weights_only=True)
    tok = from_book_fields(
        ck["tokenizer_chars"], ck.get("tokenizer_kind"), ck.get("tokenizer_state")
    )
    assert tok.kind == "char"
    assert tok.vocab_size == ck["config"]["vocab_size"]
    fields = tok.to_book_fields()
    assert fields["tokenizer_chars"] == ck["tokenizer_chars"]
    if "tokenizer_state" in ck:
        assert fields["tokenizer_state"] == ck["tokenizer_state"]
        assert fields["tokenizer_kind"] == ck["tokenizer_kind"]
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    arrays = np.load(FIXTURES / f"{name}.npz")
    ids = arrays["input_ids"][0].tolist()  # the prompt, cropped to the model's max_seq_len
    assert tok.encode(meta["text"])[: len(ids)] == ids
    assert tok.decode(arrays["greedy_ids"][0].tolist()) == meta["greedy_text"]


# --- encoder semantics --------------------------------------------------------------------------
def test_corpus_encoding_matches_plain_encoder_and_skips_unknown_chars() -> None:
    train = SHAKESPEARE.read_text(encoding="utf-8")[:50_000]
    tok = train_tokenizer("bpe", train, num_merges=200)
    tail = " Zürich §5 ok€!\n"
    text = SHAKESPEARE.read_text(encoding="utf-8")[500_000:540_000] + tail
    ids = tok.encode_corpus(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == plain_book_encode(text, tok.chars, tok.merges)
    # The unknown characters are gone (book's corpus policy), the rest survives.
    assert "ü" not in tok.chars and "§" not in tok.chars
    kept = "".join(c for c in tail if c in tok.chars)
    assert kept == " rich  ok!\n"  # Z, ü, §, 5 and € are not in the first 50,000 characters
    assert tok.decode(ids.tolist()).endswith(kept)


def test_prompt_with_unknown_char_is_a_clear_error() -> None:
    from mygpt.errors import MygptError

    tok = train_tokenizer("bpe", "hello world, hello there", num_merges=10)
    with pytest.raises(MygptError, match=r"'é' \(U\+00E9\).*not in the bpe tokenizer's alphabet"):
        tok.encode("héllo")
    assert tok.encode_corpus("héllo").tolist() == tok.encode("hllo")


def test_bpe_train_bytes_uses_the_first_n_characters() -> None:
    text = "abab abab " * 20 + "xyz"
    tok = train_tokenizer("bpe", text, num_merges=5, bpe_train_bytes=40)
    assert tok.chars == sorted(set(text[:40]))
    assert "x" not in tok.chars
    assert tok.merges == plain_book_train(text[:40], 5)[1]
