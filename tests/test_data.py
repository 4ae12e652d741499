"""Corpus reading, token cache, split and batch sampling (mygpt.data)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mygpt.cli import cli
from mygpt.data import (
    BatchSampler,
    TokenFile,
    bundled_corpus_path,
    check_utf8,
    corpus_files,
    corpus_tokens,
    read_text,
    split_tail,
    token_dtype,
)
from mygpt.data import cache as cache_mod
from mygpt.data import text as text_mod
from mygpt.errors import MygptError


@pytest.fixture
def tok_api():
    """The tokenizer package the data code calls (another engineer's module, real API)."""
    import mygpt.tokenizers

    return mygpt.tokenizers


def decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids])


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


# ---------------------------------------------------------------- reading text


def test_read_text_file_and_directory_order(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("beta\n", encoding="utf-8")
    assert read_text(tmp_path / "a.txt") == "alpha\n"
    assert read_text(tmp_path) == "alpha\nbeta\n"  # name order without a manifest
    (tmp_path / "corpus.json").write_text(json.dumps({"files": ["b.txt", "a.txt"]}))
    assert read_text(tmp_path) == "beta\nalpha\n"  # the manifest's order wins
    assert [f.name for f in corpus_files(tmp_path)] == ["b.txt", "a.txt"]


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda p: p / "nope.txt", "does not exist"),
        (lambda p: (p / "e.txt").write_bytes(b"") and p / "e.txt" or p / "e.txt", "is empty"),
        (lambda p: (p / "d").mkdir() or p / "d", "no *.txt files"),
    ],
    ids=["missing", "empty", "empty-dir"],
)
def test_read_text_errors_are_one_line(tmp_path, setup, expected):
    path = setup(tmp_path)
    with pytest.raises(MygptError) as e:
        read_text(path)
    msg = str(e.value)
    assert expected in msg and "—" in msg and "\n" not in msg


def test_invalid_utf8_names_offset_line_and_fix(tmp_path):
    data = b"line one\nline two\nta" + b"\xff" + b"il\nmore\n"
    p = tmp_path / "bad.txt"
    p.write_bytes(data)
    offset = data.index(b"\xff")
    for call in (lambda: read_text(p), lambda: check_utf8(p)):
        with pytest.raises(MygptError) as e:
            call()
        msg = str(e.value)
        assert f"byte offset {offset}" in msg
        assert "line 3" in msg and "byte column 3" in msg
        assert "--encoding-errors replace" in msg
    assert read_text(p, encoding_errors="replace") == "line one\nline two\nta\ufffdil\nmore\n"
    assert read_text(p, encoding_errors="ignore") == "line one\nline two\ntail\nmore\n"


def test_check_utf8_streaming_finds_the_same_spot_across_chunk_boundaries(tmp_path, monkeypatch):
    # Tiny chunks put the bad byte (and multi-byte characters) on every side of a boundary.
    monkeypatch.setattr(text_mod, "_CHUNK", 5)
    base = "é\nßx\n€ab\n".encode()
    for k in range(len(base) + 1):
        if k < len(base) and (base[k] & 0xC0) == 0x80:
            continue  # inside a character: inserting there makes a different error
        data = base[:k] + b"\xc3(" + base[k:]
        p = tmp_path / "x.txt"
        p.write_bytes(data)
        with pytest.raises(MygptError) as streamed:
            check_utf8(p)
        with pytest.raises(MygptError) as whole:
            text_mod.decode_bytes(data, p)
        assert str(streamed.value) == str(whole.value)
        assert f"byte offset {k}" in str(whole.value)
        line = data[:k].count(b"\n") + 1
        assert f"line {line}" in str(whole.value)
    p.write_bytes(base * 3)
    assert check_utf8(p) == len(base) * 3


def test_read_prefix_cuts_at_characters(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("ab€déf" * 10, encoding="utf-8")
    for n in (1, 3, 4, 7, 59, 60, 1000):
        assert text_mod.read_prefix(p, n) == ("ab€déf" * 10)[:n]


def test_bundled_corpus_is_tiny_shakespeare():
    p = bundled_corpus_path()
    assert p.is_file() and p.stat().st_size == 1_115_394
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


# ---------------------------------------------------------------- split and batches


def test_split_tail_views_and_errors():
    toks = np.arange(1000, dtype=np.uint16)
    tr, va = split_tail(toks, 0.1)
    assert len(tr) == 900 and len(va) == 100 and va[0] == 900
    assert np.shares_memory(tr, toks) and np.shares_memory(va, toks)
    tr, va = split_tail(toks, 0.0)
    assert len(tr) == 1000 and len(va) == 0
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(MygptError, match="val-split"):
            split_tail(toks, bad)
    with pytest.raises(MygptError, match="validation tokens, fewer than"):
        split_tail(toks, 0.05, seq_len=64)
    with pytest.raises(MygptError, match="training tokens, fewer than"):
        split_tail(toks, 0.95, seq_len=64)


def test_batch_sampler_windows_and_targets():
    toks = np.arange(10_000, dtype=np.uint16)
    s = BatchSampler(toks, batch_size=8, seq_len=16, seed=0)
    x, y = s.sample()
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    # Consecutive windows of the stream, targets shifted by one.
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert np.array_equal(np.diff(x, axis=1), np.ones((8, 15)))
    assert np.array_equal(y[:, -1], x[:, -1] + 1)


def test_batch_sampler_covers_every_start_uniformly():
    # len = seq_len + 3 leaves starts {0, 1, 2}: all must occur, none beyond (targets stay in range).
    toks = np.arange(7, dtype=np.uint16)
    s = BatchSampler(toks, batch_size=3000, seq_len=4, seed=1)
    x, y = s.sample()
    counts = np.bincount(x[:, 0], minlength=4)
    assert counts[3] == 0 and y.max() == 6
    assert all(abs(c - 1000) < 150 for c in counts[:3])


def test_batch_sampler_is_seeded_and_resumes_exactly():
    toks = np.random.default_rng(0).integers(0, 500, 50_000).astype(np.uint16)
    a = BatchSampler(toks, 4, 32, seed=42)
    b = BatchSampler(toks, 4, 32, seed=42)
    for _ in range(3):
        xa, _ = a.sample()
        xb, _ = b.sample()
        assert np.array_equal(xa, xb)
    state = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    expected = [a.sample()[0] for _ in range(5)]
    c = BatchSampler(toks, 4, 32, seed=7)  # other seed: the state overrides it
    c.load_state_dict(state)
    assert all(np.array_equal(c.sample()[0], e) for e in expected)
    assert not np.array_equal(BatchSampler(toks, 4, 32, seed=43).sample()[0], xa)


def test_batch_sampler_errors():
    with pytest.raises(MygptError, match="shorter --seq-len"):
        BatchSampler(np.arange(10, dtype=np.uint16), 2, seq_len=10, seed=0)
    s = BatchSampler(np.arange(100, dtype=np.uint16), 2, 8, seed=0)
    with pytest.raises(MygptError, match="seq_len 8 -> 9"):
        BatchSampler(np.arange(100, dtype=np.uint16), 2, 9, seed=0).load_state_dict(s.state_dict())
    with pytest.raises(MygptError, match="incomplete"):
        s.load_state_dict({"seed": 1})


def test_batch_sampler_reads_a_memmap(tmp_path):
    p = tmp_path / "t.bin"
    np.arange(5000, dtype="<u2").tofile(p)
    tf = TokenFile(p, np.uint16, 5000)
    mm = tf.open()
    assert isinstance(mm, np.memmap) and not mm.flags.writeable
    tr, va = split_tail(mm, 0.1, seq_len=16)
    x, y = BatchSampler(tr, 4, 16, seed=3).sample()
    assert x.max() < 4500 - 1 and type(x) is np.ndarray


def test_token_dtype_by_vocab():
    assert token_dtype(3046) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4")


# ---------------------------------------------------------------- token cache


def _count_calls(monkeypatch, module, name):
    calls = []
    orig = getattr(module, name)

    def wrapper(*a, **k):
        calls.append(a)
        return orig(*a, **k)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_corpus_tokens_builds_then_reuses(tmp_path, tok_api, monkeypatch, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    cache = tmp_path / "cache"
    encodes = _count_calls(monkeypatch, cache_mod, "_encode_into")
    trains = _count_calls(monkeypatch, tok_api, "train_tokenizer")
    tok, tf = corpus_tokens(corpus, tokenizer_kind="char", cache_dir=cache)
    assert tf.num_tokens == len(TEXT) and tf.dtype == np.dtype("<u2")
    assert decode(tok, tf.open()) == TEXT
    meta = json.loads((tf.path.parent / (tf.path.name + ".json")).read_text())
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint()
    assert meta["source"]["sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert (len(encodes), len(trains)) == (1, 1)

    tok2, tf2 = corpus_tokens(corpus, tokenizer_kind="char", cache_dir=cache)
    assert (len(encodes), len(trains)) == (1, 1)  # neither retrained nor re-encoded
    assert tf2 == tf and tok2.fingerprint() == tok.fingerprint()
    assert "reusing token cache" in capsys.readouterr().err

    # Another tokenizer setting: a different token file, never the old one.
    tok3, tf3 = corpus_tokens(corpus, tokenizer_kind="bpe", num_merges=8, cache_dir=cache)
    assert tf3.path != tf.path and (len(encodes), len(trains)) == (2, 2)

    # The corpus changes: both the tokenizer and the tokens are rebuilt.
    corpus.write_text(TEXT + "Zebra!\n", encoding="utf-8")
    tok4, tf4 = corpus_tokens(corpus, tokenizer_kind="char", cache_dir=cache)
    assert tf4.num_tokens == len(TEXT) + 7 and (len(encodes), len(trains)) == (3, 3)
    assert "Z" in decode(tok4, tf4.open())


def test_token_file_of_another_tokenizer_is_rebuilt(tmp_path, tok_api, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "tokens.bin"
    tok_a = tok_api.train_tokenizer("char", TEXT)
    tok_b = tok_api.train_tokenizer("char", TEXT + "XYZ")  # other alphabet, other ids
    assert tok_a.fingerprint() != tok_b.fingerprint()
    tf_a, reused = cache_mod.prepare_tokens(corpus, tok_a, output=out)
    assert not reused
    ids_a = np.array(tf_a.open())
    tf_b, reused = cache_mod.prepare_tokens(corpus, tok_b, output=out)
    err = capsys.readouterr().err
    assert not reused and "built by another tokenizer" in err
    ids_b = np.array(tf_b.open())
    assert not np.array_equal(ids_a, ids_b)  # the ids really were re-encoded
    assert decode(tok_b, ids_b) == TEXT
    # And back again: a is rebuilt too, not reused from b's file.
    tf_a2, reused = cache_mod.prepare_tokens(corpus, tok_a, output=out)
    assert not reused and np.array_equal(np.array(tf_a2.open()), ids_a)


def test_damaged_token_file_is_rebuilt(tmp_path, tok_api, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    tok = tok_api.train_tokenizer("char", TEXT)
    tf, _ = cache_mod.prepare_tokens(corpus, tok, cache_dir=tmp_path)
    with open(tf.path, "r+b") as f:
        f.truncate(10)
    tf2, reused = cache_mod.prepare_tokens(corpus, tok, cache_dir=tmp_path)
    assert not reused and "bytes, the sidecar says" in capsys.readouterr().err
    assert tf2.open().shape == (len(TEXT),)
    with open(tf.path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(MygptError, match="damaged"):
        tf2.open()


def test_corpus_tokens_invalid_utf8(tmp_path, tok_api):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"hello\nw\xe9rld\n")
    with pytest.raises(MygptError, match=r"byte offset 7 \(line 2.*--encoding-errors replace"):
        corpus_tokens(p, cache_dir=tmp_path / "c")
    tok, tf = corpus_tokens(p, cache_dir=tmp_path / "c", encoding_errors="replace")
    assert decode(tok, tf.open()) == "hello\nw\ufffdrld\n"


def test_corpus_tokens_directory_and_tokenizer_file(tmp_path, tok_api):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "train.txt").write_text("abc abc\n", encoding="utf-8")
    (d / "valid.txt").write_text("cab\n", encoding="utf-8")
    (d / "corpus.json").write_text(json.dumps({"files": ["train.txt", "valid.txt"]}))
    tok, tf = corpus_tokens(d, cache_dir=tmp_path / "c")
    assert decode(tok, tf.open()) == "abc abc\ncab\n"
    tok.save(tmp_path / "tok.json")
    tok2, tf2 = corpus_tokens(d, tokenizer_file=tmp_path / "tok.json", cache_dir=tmp_path / "c")
    assert tok2.fingerprint() == tok.fingerprint() and tf2.path == tf.path
    with pytest.raises(MygptError, match="does not exist"):
        corpus_tokens(d, tokenizer_file=tmp_path / "nope.json", cache_dir=tmp_path / "c")


def test_default_cache_dir_honours_env(tmp_path, monkeypatch, tok_api):
    monkeypatch.setenv("MYGPT_CACHE_DIR", str(tmp_path / "root"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    _, tf = corpus_tokens(corpus, progress=False)
    assert tf.path.parent == tmp_path / "root" / "tokens"


# ---------------------------------------------------------------- CLI


def test_cli_prepare_twice(tmp_path, tok_api):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    args = ["data", "prepare", str(corpus), "--cache-dir", str(tmp_path / "cache")]
    r1 = CliRunner().invoke(cli, args)
    assert r1.exit_code == 0, r1.output
    assert "token file:" in r1.stdout and "encoded in" in r1.stdout
    assert f"tokens: {len(TEXT):,}" in r1.stdout
    r2 = CliRunner().invoke(cli, args)
    assert (
        r2.exit_code == 0
        and "reused from cache" in r2.stdout
        and "tokenizer: char reused" in r2.stdout
    )


def test_cli_prepare_errors(tmp_path, tok_api):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    r = CliRunner().invoke(cli, ["data", "prepare", str(bad), "--cache-dir", str(tmp_path)])
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "byte offset 3 (line 2" in r.stderr and "--encoding-errors replace" in r.stderr
    tok = tok_api.train_tokenizer("char", "ok\n")
    tok.save(tmp_path / "t.json")
    args = [
        "data",
        "prepare",
        str(bad),
        "--tokenizer",
        "bpe",
        "--tokenizer-file",
        str(tmp_path / "t.json"),
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "--tokenizer-file replaces --tokenizer" in r.stderr


# ---------------------------------------------------------------- the 4.9 MB Wikipedia sample

WIKI = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "wikipedia_vital4_summaries_en.txt"
)


@pytest.mark.slow
@pytest.mark.skipif(not WIKI.is_file(), reason="needs ../shared/data (the project's shared files)")
def test_wikipedia_sample_prepared_with_ch28_settings_then_reused(tmp_path, tok_api, monkeypatch):
    """End to end with the Ch.28 tokenizer settings; the second prepare retrains and re-encodes
    nothing. (Measured: ~9 s first, ~0.01 s second in-process on 2 cores.)"""
    import time

    args = [
        "data",
        "prepare",
        str(WIKI),
        "--tokenizer",
        "bpe",
        "--num-merges",
        "1024",
        "--bpe-train-bytes",
        "50000000",
        "--cache-dir",
        str(tmp_path),
        "-q",
    ]
    t0 = time.perf_counter()
    r1 = CliRunner().invoke(cli, args)
    first = time.perf_counter() - t0
    assert r1.exit_code == 0, r1.output
    text = WIKI.read_text(encoding="utf-8")
    tf = TokenFile.from_sidecar(r1.stdout.split("token file: ")[1].split("\n")[0])
    meta = json.loads(Path(str(tf.path) + ".json").read_text())
    assert meta["tokenizer"]["kind"] == "bpe"
    assert meta["tokenizer"]["vocab_size"] == len(set(text)) + 1024
    tok = tok_api.load_tokenizer(next(tmp_path.glob("tok-*-bpe-m1024-b50000000.json")))
    ids = tf.open()
    assert tf.num_tokens < len(text) / 2  # 1024 merges compress English well below 0.5 tok/char
    assert decode(tok, ids) == text  # trained on all of it: nothing dropped, exact round trip

    monkeypatch.setattr(tok_api, "train_tokenizer", lambda *a, **k: pytest.fail("retrained"))
    monkeypatch.setattr(cache_mod, "_encode_into", lambda *a, **k: pytest.fail("re-encoded"))
    t0 = time.perf_counter()
    r2 = CliRunner().invoke(cli, args)
    second = time.perf_counter() - t0
    assert r2.exit_code == 0, r2.output
    assert "tokens reused from cache" in r2.stdout and str(tf.path) in r2.stdout
    assert second < first / 5, (first, second)
