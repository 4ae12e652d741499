"""``mygpt eval``: windows, units, cross-backend agreement, and agreement with training's val loss."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import mygpt
from mygpt import model as model_lib
from mygpt.checkpoint import save_checkpoint
from mygpt.cli import main
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.eval import evaluate_file, evaluate_tokens, plan_windows
from mygpt.tokenizers.bytebpe import ByteBPETokenizer
from tests.conftest import BOOK_FIXTURES, TINY_SHAKESPEARE


@pytest.mark.parametrize("n", [2, 3, 17, 64, 65, 66, 200])
@pytest.mark.parametrize("T,S", [(16, None), (16, 16), (16, 5), (16, 1), (1, None)])
def test_windows_score_every_target_exactly_once(n, T, S):
    scored = []
    for i, (start, length, k) in enumerate(plan_windows(n, T, S)):
        assert 1 <= k <= length <= T and start + length <= n - 1
        targets = list(range(start + 1, start + length + 1))[-k:]
        if i > 0 and S is not None:  # every later target sees at least T - S tokens of context
            assert min(t - start for t in targets) >= min(T - S, targets[0] - start)
            assert length < T or targets[0] - start >= T - S
        scored += targets
    assert scored == list(range(1, n))


def _text(n: int = 1500) -> str:
    return TINY_SHAKESPEARE.read_text(encoding="utf-8")[:n]


@pytest.mark.parametrize("name", ["part1_ch18", "ch27_modern", "ch28_bpe"])
def test_book_checkpoints_give_the_same_loss_on_both_backends(name, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(_text(), encoding="utf-8")
    results = [
        evaluate_file(mygpt.load(BOOK_FIXTURES / f"{name}.ckpt", backend=b, device="cpu"), path)
        for b in ("torch", "mlx")
    ]
    a, b = results
    assert (a.tokens, a.bytes, a.chars, a.windows) == (b.tokens, b.bytes, b.chars, b.windows)
    assert abs(a.mean_ce - b.mean_ce) < 1e-5
    assert a.mean_ce < math.log(a.tokens)  # a trained model, not noise
    if name == "ch28_bpe":  # bpe: fewer tokens than characters, bits per byte < bits per token
        assert a.tokens < a.chars and a.bits_per_byte < a.mean_ce / math.log(2)


def test_loss_equals_training_validation_loss_on_the_same_window(small_corpus, tmp_path, capsys):
    T = 16
    # A validation file of exactly T + 1 tokens has one window (start 0): every batch the
    # trainer's val sampler draws is that window, so its val loss is the loss of that window.
    val = tmp_path / "val.txt"
    val.write_text(small_corpus.read_text(encoding="utf-8")[: T + 1], encoding="utf-8")
    out = tmp_path / "m.safetensors"
    args = ["train", str(small_corpus), "--output", str(out), "--steps", "6", "--seq-len", str(T),
            "--max-seq-len", str(T), "--embed-dim", "32", "--num-layers", "2", "--batch-size", "4",
            "--print-every", "3", "--val-file", str(val), "--eval-batches", "2",
            "--backend", "torch", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    metrics = [
        json.loads(line)
        for line in out.with_name("m.metrics.jsonl").read_text().split("\n")
        if line
    ]
    val_losses = {r["step"]: r["val_loss"] for r in metrics if "val_loss" in r}
    assert set(val_losses) == {3, 6}
    capsys.readouterr()
    assert main(["eval", str(val), "--checkpoint", str(out), "--json", "--backend", "torch"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["tokens"], r["windows"], r["seq_len"]) == (T, 1, T)
    assert abs(r["mean_ce"] - val_losses[6]) < 1e-5
    assert abs(val_losses[6] - val_losses[3]) > 1e-3  # the check can tell checkpoints apart


def test_strided_windows_give_each_target_the_longest_context(tmp_path):
    m = mygpt.load(BOOK_FIXTURES / "part1_ch18.ckpt", backend="torch", device="cpu")
    tokens = np.asarray(m.encode(_text(90)), dtype=np.int64)
    T = 16
    r = evaluate_tokens(m, tokens, seq_len=T, stride=1, batch_size=4)
    want = 0.0
    for j in range(1, len(tokens)):  # brute force: target j after tokens[max(0, j - T) : j]
        logits = m.logits(tokens[max(0, j - T) : j])[-1].astype(np.float64)
        want += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[tokens[j]]
    assert r.tokens == len(tokens) - 1 and r.windows == len(tokens) - T
    assert abs(r.nats - want) < 1e-6 * len(tokens)
    same = evaluate_tokens(m, tokens, seq_len=T, stride=T)
    plain = evaluate_tokens(m, tokens, seq_len=T)
    assert same.nats == plain.nats and plain.windows == math.ceil((len(tokens) - 1) / T)
    assert r.mean_ce < plain.mean_ce  # more context, lower loss


def test_characters_outside_the_alphabet_are_dropped_and_counted(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text("ROMEO: caf\u00e9 \u00e9t\u00e9 \u20ac\n" * 3, encoding="utf-8")
    ckpt = BOOK_FIXTURES / "part1_ch18.ckpt"
    assert main(["eval", str(path), "--checkpoint", str(ckpt), "--json", "--backend", "torch"]) == 0
    r = json.loads(capsys.readouterr().out)
    kept = len("ROMEO: caf t \n") * 3
    assert (r["dropped_chars"], r["chars_read"], r["tokens"]) == (12, 54, kept - 1)
    assert r["bits_per_char"] == pytest.approx(r["bits_per_token"])  # 1 char = 1 token
    assert main(["eval", str(path), "--checkpoint", str(ckpt), "--json", "--max-tokens", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 19


def test_invalid_utf8_is_refused_or_replaced_and_counted(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_bytes(b"ROMEO: my lord\xff\xfe, good morrow\n")
    ckpt = str(BOOK_FIXTURES / "ch28_bpe.ckpt")
    assert main(["eval", str(path), "--checkpoint", ckpt, "--backend", "torch"]) == 1
    assert "not valid UTF-8" in capsys.readouterr().err
    args = ["eval", str(path), "--checkpoint", ckpt, "--json", "--encoding-errors", "replace"]
    assert main([*args, "--backend", "torch"]) == 0
    r = json.loads(capsys.readouterr().out)
    # the book's BPE has no U+FFFD: replaced, then dropped
    assert (r["replaced_bytes"], r["dropped_chars"]) == (2, 2)


def test_bits_per_byte_counts_the_utf8_bytes_of_byte_level_tokens(tmp_path):
    text = "na\u00efve caf\u00e9 \u20ac5 \U0001f600 done. " * 4
    tok, _ = ByteBPETokenizer.train(text, 20, special_tokens=[])
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, embed_dim=16, num_heads=2, num_layers=1, max_seq_len=8
    )
    path = tmp_path / "b.safetensors"
    save_checkpoint(path, cfg, model_lib.init_params(cfg, seed=1), tok.to_dict())
    m = mygpt.load(path, backend="torch", device="cpu")
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    r = evaluate_tokens(m, ids)
    first = tok.decode_bytes([int(ids[0])])  # the first token is context, never a target
    assert r.bytes == len(text.encode("utf-8")) - len(first)
    assert r.chars == len(text) - len(first.decode("utf-8"))
    assert r.bits_per_byte == pytest.approx(r.nats / math.log(2) / r.bytes)


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--seq-len", "65"], "--seq-len must be in 1..64"),
        (["--stride", "0"], "--stride must be in 1..64"),
        (["--max-tokens", "1"], "--max-tokens must be at least 2"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, words, tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text(_text(300), encoding="utf-8")
    ckpt = str(BOOK_FIXTURES / "part1_ch18.ckpt")
    assert main(["eval", str(path), "--checkpoint", ckpt, "--backend", "torch", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and words in err[-1]


# --- streaming: the same numbers as the whole-file evaluation, in bounded memory ----------------

WIKI = TINY_SHAKESPEARE.with_name("wikipedia_vital4_summaries_en.txt")


def _old_whole_file(m, path, max_tokens, errors, seq_len, stride, batch_size=3):
    """The evaluation before streaming, verbatim in substance: read and decode the whole file,
    drop characters outside the alphabet, tokenize it at once, plan every window, score."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors=errors)
    tok = m.tokenizer
    if tok.kind in ("char", "bpe"):
        unknown = {c for c in set(text) if c not in set(tok.chars)}
        text = "".join(c for c in text if c not in unknown)
    tokens = np.asarray(tok.encode_corpus(text), dtype=np.int64)[:max_tokens]
    n, T = len(tokens), seq_len
    windows, scored_end, start = [], 1, 0
    while scored_end < n:
        length = min(T, n - 1 - start)
        windows.append((start, length, start + length + 1 - scored_end))
        scored_end, start = start + length + 1, start + (stride or T)
    full = [w for w in windows if w[1] == windows[0][1]]
    rest = [w for w in windows if w[1] != windows[0][1]]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    nbytes = [len(tok.decode_bytes([i])) for i in range(tok.vocab_size)]
    nchars = [sum(1 for x in tok.decode_bytes([i]) if x & 0xC0 != 0x80) for i in range(tok.vocab_size)]  # fmt: skip
    nats, b, c, k = 0.0, 0, 0, 0
    for batch in [*batches, *([w] for w in rest)]:
        rows = np.stack([tokens[s : s + ln + 1] for s, ln, _ in batch])
        logits = m.logits(rows[:, :-1]).astype(np.float64)
        for r, (_, _, sc) in enumerate(batch):
            z = logits[r]
            lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
            nll = lse - z[np.arange(len(z)), rows[r, 1:]]
            nats += float(nll[-sc:].sum())
            b += sum(nbytes[t] for t in rows[r, -sc:])
            c += sum(nchars[t] for t in rows[r, -sc:])
            k += sc
    return dict(tokens=k, windows=len(windows), nats=nats, bytes=b, chars=c, text=text)


@pytest.fixture(scope="module")
def stream_models(tmp_path_factory):
    text = WIKI.read_text(encoding="utf-8")[:20_000]
    byte_tok, _ = ByteBPETokenizer.train(text, 200, special_tokens=[])
    cfg = ModelConfig(vocab_size=byte_tok.vocab_size, embed_dim=16, num_heads=2, num_layers=1,
                      max_seq_len=32)  # fmt: skip
    path = tmp_path_factory.mktemp("bytebpe") / "b.safetensors"
    save_checkpoint(path, cfg, model_lib.init_params(cfg, seed=1), byte_tok.to_dict())
    paths = {"char": BOOK_FIXTURES / "part1_ch18.ckpt", "bpe": BOOK_FIXTURES / "ch28_bpe.ckpt",
             "bytebpe": path}  # fmt: skip
    return {k: mygpt.load(p, backend="torch", device="cpu") for k, p in paths.items()}


@pytest.mark.parametrize("kind", ["char", "bpe", "bytebpe"])
@pytest.mark.parametrize(
    "errors,max_tokens,stride",
    [("strict", None, None), ("replace", None, 5), ("ignore", 700, None), ("replace", 701, 7)],
)
def test_streamed_eval_equals_the_whole_file_eval(
    kind, errors, max_tokens, stride, stream_models, tmp_path
):
    m = stream_models[kind]
    text = (
        WIKI.read_text(encoding="utf-8")[5_000:8_000] + " caf\u00e9 \u20ac5 \U0001f600 na\u00efve"
    )
    data = text.encode("utf-8")
    if errors != "strict":  # bad bytes, some of them where a small read splits the file
        data = b"".join(data[i : i + 97] + b"\xff" * (i % 3 == 0) for i in range(0, len(data), 97))
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    old = _old_whole_file(m, path, max_tokens, errors, 16, stride)
    # 61 bytes at a time: reads split characters, cuts fall every few words
    r = evaluate_file(m, path, max_tokens=max_tokens, encoding_errors=errors, chunk=61,
                      seq_len=16, stride=stride, batch_size=3)  # fmt: skip
    assert (r.tokens, r.windows, r.bytes, r.chars) == (
        old["tokens"], old["windows"], old["bytes"], old["chars"]
    )  # fmt: skip
    assert r.windows > 20 and r.nats == pytest.approx(old["nats"], rel=1e-12)
    whole = evaluate_file(m, path, max_tokens=max_tokens, encoding_errors=errors,
                          seq_len=16, stride=stride, batch_size=3)  # fmt: skip
    assert (whole.nats, whole.bits_per_char, whole.bits_per_byte) == (
        r.nats,
        r.bits_per_char,
        r.bits_per_byte,
    )  # fmt: skip  (one read or many: the same floats)
    if max_tokens is None:  # the counts of what decoding and the alphabet changed, whole file
        decoded = data.decode("utf-8", errors)
        assert r.text.chars_read == len(decoded)
        assert r.text.dropped_chars == len(decoded) - len(old["text"])
        if errors == "replace":
            assert r.text.replaced_bytes == data.count(b"\xff") > 5


def test_streamed_strict_eval_locates_bad_utf8_split_across_reads(stream_models, tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_bytes(b"ROMEO: good " * 20 + "caf\u00e9".encode()[:-1] + b" morrow\n")
    with pytest.raises(MygptError, match=r"not valid UTF-8: byte c3 at byte offset 243 \(line 1"):
        evaluate_file(stream_models["bpe"], path, chunk=122)  # c3 ends the second read


_RSS = """
import resource, sys
import mygpt
from mygpt.eval import evaluate_file
m = mygpt.load(sys.argv[1], backend="torch", device="cpu")
r = evaluate_file(m, sys.argv[2], max_tokens=int(sys.argv[3]))
print(r.tokens, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_max_tokens_on_a_big_file_costs_no_more_memory_than_on_a_small_one(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    wiki = WIKI.read_bytes()
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_bytes(wiki * 4)  # ~20 MB
    small.write_bytes(wiki[:100_000])
    ckpt = str(BOOK_FIXTURES / "part1_ch18.ckpt")
    peak = {}
    for p in (small, big):
        out = subprocess.run(
            [sys.executable, "-c", _RSS, ckpt, str(p), "3000"], capture_output=True, text=True,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "MYGPT_THREADS": "1"},
            check=True,
        ).stdout.split()  # fmt: skip
        assert out[0] == "2999"
        peak[p.name] = int(out[1])  # kB
    assert peak["big.txt"] < 1.3 * peak["small.txt"], peak


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
def test_decoding_counts_do_not_depend_on_where_reads_split(chunk, tmp_path):
    from mygpt.eval import TextStats, iter_eval_text

    data = (
        "a\ufffdb \u20ac\ufffd".encode() + b"\xff\xc3(" + "\ufffd\U0001f600".encode() + b"\xe2\x82"
    )
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    for errors in ("replace", "ignore"):
        stats = TextStats(0, 0, 0, 0)
        text = "".join(iter_eval_text(path, stats, errors, chunk))
        assert text == data.decode("utf-8", errors)
        assert stats.chars_read == len(text)
        assert (stats.replaced_bytes, stats.ignored_bytes) == (
            (3, 0) if errors == "replace" else (0, 4)
        )
