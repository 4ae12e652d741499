"""Tokenizers: char, formats and files, bad input, the parallel corpus encoder, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from mygpt.errors import MygptError
from mygpt.tokenizers import (
    BPETokenizer,
    ByteBPETokenizer,
    CharTokenizer,
    Tokenizer,
    encode_file,
    from_book_fields,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def sample() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")[:60_000]


@pytest.fixture(scope="module")
def toks(sample: str) -> dict[str, Tokenizer]:
    return {
        "char": train_tokenizer("char", sample),
        "bpe": train_tokenizer("bpe", sample, num_merges=150),
        "bytebpe": train_tokenizer("bytebpe", sample, num_merges=150),
    }


# --- char -------------------------------------------------------------------------------------
def test_char_vocab_is_sorted_set_and_round_trips() -> None:
    tok = train_tokenizer("char", "hello world\n")
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == ["\n", " ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.encode("hello") == [4, 3, 5, 5, 6]
    assert tok.decode(tok.encode("world\n")) == "world\n"
    assert tok.encode_corpus("hello").tolist() == [4, 3, 5, 5, 6]
    assert tok.encode_corpus("hello").dtype == np.int32


def test_char_unknown_character_is_an_error_in_prompt_and_corpus() -> None:
    tok = train_tokenizer("char", "abc")
    with pytest.raises(MygptError, match=r"'z' \(U\+007A\) is not in the char tokenizer"):
        tok.encode("abz")
    with pytest.raises(MygptError, match=r"'é' \(U\+00E9\)"):
        tok.encode_corpus("abcé")


# --- formats ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "bpe", "bytebpe"])
def test_save_load_round_trip_and_fingerprint(
    kind: str, toks: dict, sample: str, tmp_path: Path
) -> None:
    tok = toks[kind]
    path = tmp_path / "tok.json"
    tok.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["kind"] == kind and d["version"] == 1
    back = load_tokenizer(path)
    assert type(back) is type(tok)
    assert back.to_dict() == tok.to_dict()
    assert back.fingerprint() == tok.fingerprint()
    assert len(tok.fingerprint()) == 64
    text = sample[1000:3000]
    assert back.encode(text) == tok.encode(text)
    assert tokenizer_from_dict(tok.to_dict()).encode(text) == tok.encode(text)
    assert back.decode(back.encode(text)) == text


def test_documented_dict_formats(toks: dict) -> None:
    c = toks["char"].to_dict()
    assert set(c) == {"kind", "version", "chars"}
    b = toks["bpe"].to_dict()
    assert set(b) == {"kind", "version", "pattern", "chars", "merges"}
    assert b["pattern"] == r"\s*\S+|\s+"
    assert all(isinstance(m, list) and len(m) == 2 for m in b["merges"])
    y = toks["bytebpe"].to_dict()
    assert set(y) == {"kind", "version", "pattern", "bytes", "merges", "special_tokens"}
    assert y["special_tokens"] == {"<|endoftext|>": 256 + len(y["merges"])}
    assert toks["bytebpe"].vocab_size == 256 + len(y["merges"]) + 1
    json.dumps([c, b, y])  # JSON-able


def test_fingerprints_differ_between_tokenizers(toks: dict) -> None:
    fps = {t.fingerprint() for t in toks.values()}
    assert len(fps) == 3
    other = train_tokenizer("bpe", "some other text entirely", num_merges=3)
    assert other.fingerprint() not in fps


def test_book_fields_round_trip(toks: dict) -> None:
    for kind in ("char", "bpe"):
        f = toks[kind].to_book_fields()
        assert set(f) == {"tokenizer_chars", "tokenizer_kind", "tokenizer_state"}
        assert f["tokenizer_kind"] == kind
        assert isinstance(f["tokenizer_chars"], list)
        back = from_book_fields(**f)
        assert back == toks[kind]
    # Part-I checkpoints carry only the chars: that means a char tokenizer.
    assert from_book_fields(["a", "b"]).kind == "char"
    with pytest.raises(MygptError, match="book's checkpoint format"):
        toks["bytebpe"].to_book_fields()


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"kind": "wordpiece", "version": 1}', "unknown kind 'wordpiece'"),
        ('{"kind": "char", "version": 7, "chars": ["a"]}', "unsupported char format version 7"),
        ('{"kind": "char", "version": 1}', "missing field 'chars'"),
        ('{"kind": "char", "version": 1, "chars": ["b", "a"]}', "sorted"),
        ('{"kind": "char", "version": 1, "chars": ["ab"]}', "not a single character"),
        (
            '{"kind": "bpe", "version": 1, "chars": ["a", "b"], "merges": [["a", "c"]]}',
            "no earlier",
        ),
        ('{"kind": "bpe", "version": 1, "chars": ["a"], "merges": [["a"]]}', "not a pair"),
        ('{"kind": "bpe", "version": 1, "chars": ["a"], "merges": "x"}', "should be a list"),
        (
            '{"kind": "bytebpe", "version": 1, "pattern": "\\\\s+", "merges": [[1, 300]],'
            ' "special_tokens": {}}',
            "not a pair of earlier token ids",
        ),
        (
            '{"kind": "bytebpe", "version": 1, "pattern": "(", "merges": [], "special_tokens": {}}',
            "bad pre-tokenisation pattern",
        ),
        (
            '{"kind": "bytebpe", "version": 1, "pattern": "\\\\s+", "merges": [],'
            ' "special_tokens": {"<|x|>": 5}}',
            "special token ids",
        ),
    ],
)
def test_corrupt_tokenizer_file_is_one_line_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MygptError, match=match) as e:
        load_tokenizer(path)
    assert "\n" not in str(e.value)
    assert "bad.json" in str(e.value)


def test_missing_and_binary_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(MygptError, match="not found — check the path"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MygptError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path / "bin.json")


def test_truncated_tokenizer_file(toks: dict, tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    toks["bpe"].save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MygptError, match="not a valid tokenizer file"):
        load_tokenizer(path)


# --- bad training input -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "bpe", "bytebpe"])
def test_empty_corpus_is_an_error(kind: str) -> None:
    with pytest.raises(MygptError, match="empty"):
        train_tokenizer(kind, "", num_merges=10)


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(MygptError, match="unknown tokenizer kind 'words'"):
        train_tokenizer("words", "abc")


@pytest.mark.parametrize("kind", ["bpe", "bytebpe"])
def test_more_merges_than_the_text_allows_stops_early_and_says_so(
    kind: str, capsys: pytest.CaptureFixture
) -> None:
    tok = train_tokenizer(kind, "abcd abcd", num_merges=50, progress=kind == "bpe")
    err = capsys.readouterr().err
    # "abcd" and " abcd" have 3 + 4 pairs; everything merges into the two words after 4 merges.
    assert "stopped after 4 of 50 merges" in err
    assert len(tok.merges) == 4
    assert tok.encode("abcd abcd") == tok.encode("abcd") + tok.encode(" abcd")
    assert len(tok.encode("abcd abcd")) == 2


def test_decode_rejects_invalid_ids(toks: dict) -> None:
    for tok in toks.values():
        with pytest.raises(MygptError, match="outside"):
            tok.decode([0, tok.vocab_size])
        with pytest.raises(MygptError, match="outside"):
            tok.decode([-1])


# --- the parallel corpus encoder ----------------------------------------------------------------
TRICKY = (
    "Hello world. It's 2024!\n\n  Tabs\tand   spaces  \r\n"
    "Numbers 1234567 and punct...\n\nÜnïcödé wörds 東京 tokyo 🤖 emoji\n"
    "<|endoftext|> next doc\u00a0nbsp\u2028line sep x  \n"
)


@pytest.mark.parametrize("kind", ["char", "bpe", "bytebpe"])
def test_encode_file_equals_encode_corpus(
    kind: str, toks: dict, sample: str, tmp_path: Path
) -> None:
    tok = toks[kind] if kind != "char" else train_tokenizer("char", sample + TRICKY)
    text = (sample[:20_000] + (TRICKY if kind != "char" else "")) * 2
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8", newline="")
    out = io.BytesIO()
    # chunk_chars small: many chunks, so every boundary case is exercised.
    n = encode_file(tok, path, out, workers=1, progress=False, chunk_chars=97)
    whole = tok.encode_corpus(path.read_text(encoding="utf-8"))  # universal newlines, like open()
    assert n == len(whole)
    assert np.array_equal(np.frombuffer(out.getvalue(), dtype="<u2"), whole)


def test_encode_file_parallel_uint32_and_special(toks: dict, sample: str, tmp_path: Path) -> None:
    tok: ByteBPETokenizer = toks["bytebpe"]
    text = (sample[:30_000] + "<|endoftext|>") * 3
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    out = io.BytesIO()
    n = encode_file(
        tok,
        path,
        out,
        dtype=np.uint32,
        workers=2,
        progress=True,
        allowed_special="all",
        chunk_chars=5_000,
    )
    ids = np.frombuffer(out.getvalue(), dtype="<u4")
    assert n == len(ids)
    assert ids.tolist() == tok.encode(text, allowed_special="all")
    assert int((ids == tok.special_tokens["<|endoftext|>"]).sum()) == 3


def test_encode_file_errors(toks: dict, tmp_path: Path) -> None:
    with pytest.raises(MygptError, match="not found"):
        encode_file(toks["bpe"], tmp_path / "missing.txt", io.BytesIO(), progress=False)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ".encode("latin-1") * 10)
    with pytest.raises(MygptError, match="not UTF-8"):
        encode_file(toks["bpe"], bad, io.BytesIO(), progress=False)
    big = ByteBPETokenizer([(97, 97)] * 0, {f"<|s{i}|>": 256 + i for i in range(70_000)})
    with pytest.raises(MygptError, match="cannot hold ids"):
        encode_file(big, bad, io.BytesIO(), dtype=np.uint16, progress=False)
    with pytest.raises(MygptError, match="special tokens are a bytebpe feature"):
        encode_file(toks["bpe"], bad, io.BytesIO(), progress=False, allowed_special=("<|x|>",))
    with pytest.raises(MygptError, match="special tokens are a bytebpe feature"):
        encode_file(toks["char"], bad, io.BytesIO(), progress=False, allowed_special="all")


# --- CLI --------------------------------------------------------------------------------------
def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from mygpt.cli import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", ["char", "bpe", "bytebpe"])
def test_cli_train_encode_decode_info(
    kind: str, tmp_path: Path, sample: str, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "in.txt"
    src.write_text(sample[:20_000], encoding="utf-8")
    tokf, ids = tmp_path / "tok.json", tmp_path / "ids.bin"
    code, out, err = _run(
        ["tokenizer", "train", str(src), "--tokenizer", kind, "--num-merges", "40",
         "--output", str(tokf), "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "vocab size" in err
    tok = load_tokenizer(tokf)
    assert tok.kind == kind
    code, out, err = _run(
        ["tokenizer", "encode", str(src), "--tokenizer-file", str(tokf), "--output", str(ids),
         "--workers", "1", "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert (
        np.frombuffer(ids.read_bytes(), "<u2").tolist()
        == tok.encode_corpus(sample[:20_000]).tolist()
    )
    code, out, err = _run(["tokenizer", "decode", str(ids), "--tokenizer-file", str(tokf)], capsys)
    assert code == 0, err
    assert out == sample[:20_000]
    code, out, err = _run(["tokenizer", "info", str(tokf)], capsys)
    assert code == 0, err
    assert f"kind:        {kind}" in out
    assert f"vocab size:  {tok.vocab_size}" in out
    assert "longest tokens:" in out


def test_cli_bpe_train_bytes_and_errors(
    tmp_path: Path, sample: str, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "in.txt"
    src.write_text(sample, encoding="utf-8")
    tokf = tmp_path / "tok.json"
    code, _, err = _run(
        ["tokenizer", "train", str(src), "--tokenizer", "bpe", "--num-merges", "20",
         "--bpe-train-bytes", "5000", "--output", str(tokf), "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert load_tokenizer(tokf) == train_tokenizer("bpe", sample[:5000], num_merges=20)

    code, _, err = _run(["tokenizer", "train", str(tmp_path / "nope.txt"), "-o", "x"], capsys)
    assert code == 1 and "error: text file" in err and "not found" in err
    assert "Traceback" not in err
    code, _, err = _run(["tokenizer", "info", str(tmp_path / "nope.json")], capsys)
    assert code == 1 and "error: tokenizer file" in err
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    code, _, err = _run(
        ["tokenizer", "encode", str(src), "--tokenizer-file", str(tmp_path / "bad.json"),
         "--output", str(tmp_path / "o.bin")],
        capsys,
    )  # fmt: skip
    assert code == 1 and "not a valid tokenizer file" in err
    assert not (tmp_path / "o.bin").exists()
    code, _, err = _run(
        ["tokenizer", "train", str(src), "--tokenizer", "bpe", "--num-merges", "-1", "-o", "x"],
        capsys,
    )
    assert code == 2 and "--num-merges must be >= 0" in err
    code, _, err = _run(
        ["tokenizer", "encode", str(src), "--tokenizer-file", str(tokf), "-o", "x",
         "--allow-special"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "--allow-special needs a bytebpe tokenizer" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    code, _, err = _run(["tokenizer", "train", str(empty), "-o", str(tmp_path / "e.json")], capsys)
    assert code == 1 and "empty" in err


def test_bpe_tokenizer_type(toks: dict) -> None:
    assert isinstance(toks["bpe"], BPETokenizer)
    assert toks["bpe"].vocab_size == len(toks["bpe"].chars) + 150
