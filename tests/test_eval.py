"""``mygpt eval``: windows, units, cross-backend agreement, and agreement with training's val loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import mygpt
from mygpt import model as model_lib
from mygpt.checkpoint import save_checkpoint
from mygpt.cli import main
from mygpt.config import ModelConfig
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
