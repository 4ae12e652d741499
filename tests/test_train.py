"""The training loop: it learns, resumes exactly, survives Ctrl-C and SIGKILL, refuses bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mygpt.checkpoint import load_checkpoint
from mygpt.errors import MygptError
from mygpt.schedule import lr_at
from mygpt.train import TrainConfig, train
from tests.conftest import subprocess_env

SMALL = dict(embed_dim=32, num_heads=4, num_layers=2, max_seq_len=32, seq_len=32, batch_size=8)


def losses(metrics_path) -> dict[int, float]:
    out = {}
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def metrics_of(output) -> object:
    return output.with_name(output.stem + ".metrics.jsonl")


def test_cosine_schedule_is_the_books():
    kw = dict(lr=1e-3, total_steps=100, schedule="cosine", warmup=10)
    assert lr_at(1, **kw) == pytest.approx(1e-4)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(55, **kw) == pytest.approx(5e-4)
    assert lr_at(100, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(100, **kw, min_lr=1e-5) == pytest.approx(1e-5)
    assert lr_at(50, lr=1e-3, total_steps=100) == 1e-3  # constant


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_short_run_learns_and_logs(backend, small_corpus, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    tc = TrainConfig.from_flags(
        dict(
            data=str(small_corpus),
            output=str(out),
            steps=150,
            print_every=50,
            lr=1e-2,
            val_split=0.1,
            backend=backend,
            device="cpu",
            **SMALL,
        )
    )
    result = train(tc)
    seen = losses(metrics_of(out))
    assert sorted(seen) == list(range(1, 151))
    assert seen[1] > 20  # the book's N(0,1) tied embedding starts far above ln(vocab)
    assert np.mean([seen[s] for s in range(141, 151)]) < 3.0  # and it learns from there
    assert result.val_loss is not None and result.val_loss < 3.2
    printed = capsys.readouterr().out
    assert "step 1: loss = " in printed and "step 150: loss = " in printed and "val loss" in printed
    ckpt = load_checkpoint(out)
    assert ckpt.train_state["step"] == 150 and ckpt.optimizer_state


def _interrupt_at(step: int):
    """An on_log hook that sends this process SIGINT once ``step`` is logged (a scripted Ctrl-C)."""
    sent = []

    def hook(rec):
        if rec["step"] >= step and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    return hook


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_interrupted_then_resumed_equals_uninterrupted(backend, dropout, small_corpus, tmp_path):
    common = dict(
        dropout=dropout,
        data=str(small_corpus),
        steps=40,
        print_every=5,
        schedule="cosine",
        warmup=5,
        max_grad_norm=1.0,
        val_split=0.1,
        val_every=10,
        backend=backend,
        device="cpu",
        **SMALL,
    )
    full = tmp_path / "full.safetensors"
    train(TrainConfig.from_flags(dict(output=str(full), **common)))

    part = tmp_path / "part.safetensors"
    first = train(
        TrainConfig.from_flags(dict(output=str(part), **common)), on_log=_interrupt_at(12)
    )
    assert first.interrupted and first.steps < 40
    assert load_checkpoint(part).train_state["step"] == first.steps
    second = train(TrainConfig.from_flags(dict(output=str(part), **common)), resume=str(part))
    assert not second.interrupted and second.steps == 40

    a, b = losses(metrics_of(full)), losses(metrics_of(part))
    assert sorted(b) == list(range(1, 41))  # the resumed log continues without gaps or repeats
    assert [a[s] for s in range(1, 41)] == [b[s] for s in range(1, 41)]  # bit-exact in fp32
    pa, pb = load_checkpoint(full).params, load_checkpoint(part).params
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def test_resume_on_the_other_backend(small_corpus, tmp_path):
    common = dict(
        data=str(small_corpus), steps=30, print_every=10, backend="mlx", device="cpu", **SMALL
    )
    full = tmp_path / "full.safetensors"
    train(TrainConfig.from_flags(dict(output=str(full), **common)))
    part = tmp_path / "part.safetensors"
    train(TrainConfig.from_flags(dict(output=str(part), **{**common, "steps": 15})))
    resumed = train(
        TrainConfig.from_flags(dict(output=str(part), **{**common, "backend": "torch"})),
        resume=str(part),
    )
    assert resumed.steps == 30
    assert load_checkpoint(part).train_state["backend"] == "torch"
    a, b = losses(metrics_of(full)), losses(metrics_of(part))
    # same weights, batches and optimizer state: the curves agree to parity tolerance
    np.testing.assert_allclose(
        [b[s] for s in range(16, 31)], [a[s] for s in range(16, 31)], atol=2e-3
    )


def test_grad_accum_and_book_format_output(small_corpus, tmp_path):
    out = tmp_path / "m.ckpt"
    train(
        TrainConfig.from_flags(
            dict(
                data=str(small_corpus),
                output=str(out),
                steps=5,
                grad_accum=2,
                backend="torch",
                device="cpu",
                **SMALL,
            )
        )
    )
    ckpt = load_checkpoint(out)
    assert ckpt.format == "book" and ckpt.train_state["step"] == 5
    # the book's own loader reads only its keys: they are all there, as it wrote them
    from mygpt.backends.torch_io import read_torch_checkpoint

    raw = read_torch_checkpoint(out)
    book_keys = ["model_state_dict", "tokenizer_chars", "tokenizer_kind", "tokenizer_state"]
    assert list(raw)[:5] == [*book_keys, "config"]
    assert set(raw) - {*book_keys, "config"} == {"mygpt_train_state", "mygpt_optimizer_state"}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_corpus, tmp_path):
    out = tmp_path / "m.safetensors"
    common = dict(data=str(small_corpus), output=str(out), backend="torch", device="cpu", **SMALL)
    train(TrainConfig.from_flags(dict(steps=5, **common)))
    before = load_checkpoint(out).params
    with pytest.raises(MygptError, match="loss became"):
        train(
            TrainConfig.from_flags(dict(steps=50, lr=1e30, checkpoint_every=100, **common)),
            resume=None,
        )
    after = load_checkpoint(out)
    for k in before:  # the NaN run never overwrote the good file
        np.testing.assert_array_equal(before[k], after.params[k])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_kv_heads=3), "does not divide --num-heads"),
        (dict(seq_len=64, max_seq_len=32), "longer than --max-seq-len"),
        (dict(val_split=1.5), "--val-split"),
        (dict(steps=0), "--steps"),
        (dict(norm="batch"), "norm"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message, small_corpus, tmp_path):
    base = dict(
        data=str(small_corpus),
        output=str(tmp_path / "m.safetensors"),
        backend="torch",
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        **SMALL,
    )
    with pytest.raises(MygptError, match=message) as err:
        train(TrainConfig.from_flags(dict(**{**base, **kwargs})))
    assert "\n" not in str(err.value)
    # refused before any corpus work: on a large corpus that is minutes of encoding
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_resume_from_weights_only_file_is_refused(tmp_path):
    from tests.conftest import BOOK_FIXTURES

    with pytest.raises(MygptError, match="weights only"):
        train(
            TrainConfig.from_flags(dict(output=str(tmp_path / "x.safetensors"))),
            resume=str(BOOK_FIXTURES / "part1_ch18.ckpt"),
        )


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mygpt.cli", *args]


def _wait_for(path, proc, timeout=120.0):
    t = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t > timeout:
            out, err = proc.communicate()
            pytest.fail(f"no checkpoint appeared; rc={proc.returncode} stderr={err[-2000:]}")
        time.sleep(0.1)


def _small_flags(corpus, out):
    return [
        "train",
        str(corpus),
        "--output",
        str(out),
        "--embed-dim",
        "32",
        "--num-layers",
        "2",
        "--max-seq-len",
        "32",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--steps",
        "1000000",
        "--print-every",
        "50",
    ]


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(small_corpus, tmp_path):
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen(
        _cli(*_small_flags(small_corpus, out), "--checkpoint-every", "100"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    _wait_for(out, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "resume with --resume" in stdout + stderr
    step = load_checkpoint(out).train_state["step"]
    assert step > 0 and step % 100 != 0  # saved at the interrupt, not just at a scheduled step


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_interrupted_run_resumes_with_the_printed_command(suffix, small_corpus, tmp_path):
    """Every checkpoint `mygpt train` writes resumes, the book's .ckpt format included, and the
    hint it prints on Ctrl-C is a command that works."""
    import re
    import shlex

    out = tmp_path / f"m{suffix}"
    flags = _small_flags(small_corpus, out)
    flags[flags.index("1000000")] = "400"
    proc = subprocess.Popen(
        _cli(*flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    _wait_metrics = out.with_name(out.stem + ".metrics.jsonl")
    _wait_for(_wait_metrics, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    hint = re.search(r"resume with (--resume \S+)", stdout + stderr)
    assert hint, stdout + stderr
    stopped = load_checkpoint(out).train_state["step"]
    assert 0 < stopped < 400
    done = subprocess.run(
        _cli("train", *shlex.split(hint.group(1))),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out).train_state["step"] == 400
    assert load_checkpoint(out).format == ("book" if suffix == ".ckpt" else "native")


def test_sigkill_while_checkpointing_every_step_leaves_a_loadable_file(small_corpus, tmp_path):
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen(
        _cli(*_small_flags(small_corpus, out), "--checkpoint-every", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    _wait_for(out, proc)
    rng = np.random.default_rng(0)
    for _ in range(3):  # let it save many times, then kill it at a random moment
        time.sleep(float(rng.uniform(0.2, 0.6)))
    proc.kill()
    proc.communicate()
    ckpt = load_checkpoint(out)
    assert ckpt.train_state["step"] >= 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    from mygpt.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = [
        (["train", str(tmp_path / "missing.txt"), "--steps", "1"], "does not exist"),
        (["train", str(empty), "--steps", "1"], "empty"),
        (["train", "--num-kv-heads", "3", "--steps", "1", "--backend", "torch"], "does not divide"),
        (["train", "--device", "cuda", "--backend", "torch", "--steps", "1"], "no CUDA"),
        (["train", "--recipe", "no-such-recipe"], "recipe"),
    ]
    for argv, message in cases:
        assert main(argv) != 0, argv
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1]  # status lines (backend, device) may come first
        assert last.startswith("error: ") and message in last, (argv, err)
        assert "Traceback" not in err


def test_corpus_that_is_not_utf8(tmp_path, capsys):
    from mygpt.cli import main

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 200)
    small = ["--seq-len", "8", "--max-seq-len", "8", "--steps", "2", "--backend", "torch"]
    assert main(["train", str(bad), *small, "--output", str(tmp_path / "m.safetensors")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not valid UTF-8" in last and "byte offset 3" in last and "--encoding-errors" in last
    # the fix the message names works on the train command itself
    argv = [
        "train",
        str(bad),
        *small,
        "--encoding-errors",
        "replace",
        "--output",
        str(tmp_path / "m.safetensors"),
    ]
    assert main(argv) == 0


def test_missing_backend_is_a_clear_error(monkeypatch):
    from mygpt import backends

    monkeypatch.setattr(backends, "is_installed", lambda name: False)
    backends._cache.clear()
    with pytest.raises(MygptError, match="pip install"):
        backends.get_backend("mlx", "cpu")
    with pytest.raises(MygptError, match="no backend is installed"):
        backends.get_backend("auto", "cpu")


def test_default_train_uses_the_bundled_corpus_and_the_books_model(tmp_path, monkeypatch, capsys):
    from mygpt.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--steps", "3", "--print-every", "1", "--backend", "torch"]) == 0
    out = capsys.readouterr()
    assert "step 3: loss = " in out.out
    assert "207,296 parameters" in out.err  # the book's Ch.17 model on its 65-character alphabet
    ckpt = load_checkpoint(tmp_path / "model.safetensors")
    assert ckpt.config.vocab_size == 65 and ckpt.train_state["step"] == 3
    assert (tmp_path / "model.metrics.jsonl").is_file()


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_bf16_mixed_precision_keeps_fp32_master_weights(backend, small_corpus, tmp_path):
    out = tmp_path / "m.safetensors"
    tiny = {**SMALL, "embed_dim": 16, "num_layers": 1, "batch_size": 2}
    result = train(
        TrainConfig.from_flags(
            dict(
                data=str(small_corpus),
                output=str(out),
                steps=3,
                precision="bf16",
                backend=backend,
                device="cpu",
                **tiny,
            )
        )
    )
    assert np.isfinite(result.final_loss) and result.final_loss > 1.0
    ckpt = load_checkpoint(out)
    assert all(p.dtype == np.float32 for p in ckpt.params.values())
    assert all(t.dtype == np.float32 for t in ckpt.optimizer_state.values())
    end = [json.loads(line) for line in metrics_of(out).read_text().splitlines()][-1]
    assert end["precision"] == "bfloat16"


def test_precision_auto_is_fp32_on_cpu():
    from mygpt.backends import get_backend
    from mygpt.precision import resolve_precision

    for name in ("torch", "mlx"):
        dtype, why = resolve_precision(get_backend(name, "cpu"), "auto")
        assert dtype == "float32" and why


def test_python_api_and_cli_resume_identically(small_corpus, tmp_path):
    """`mygpt train --resume X --steps N` and `train(..., resume=X)` continue the same run the
    same way: the saved settings, the given overrides on top, into the same file."""
    import shutil

    from mygpt.cli import main

    first = tmp_path / "first.safetensors"
    tc = TrainConfig.from_flags(
        dict(
            data=str(small_corpus),
            output=str(first),
            steps=6,
            lr=3e-3,
            schedule="cosine",
            warmup=2,
            backend="torch",
            device="cpu",
            **SMALL,
        )
    )
    train(tc)
    copies = [tmp_path / f"{name}.safetensors" for name in ("cli", "overrides", "config")]
    for c in copies:
        shutil.copy(first, c)
    assert main(["train", "--resume", str(copies[0]), "--steps", "12"]) == 0
    train(None, resume=str(copies[1]), overrides={"steps": 12})
    train(TrainConfig(steps=12), resume=str(copies[2]))  # fields differing from the defaults
    results = [load_checkpoint(c) for c in copies]
    for r in results:
        assert r.train_state["step"] == 12
        assert r.train_state["args"]["lr"] == 3e-3 and r.train_state["args"]["schedule"] == "cosine"
    for r in results[1:]:
        for k in r.params:
            np.testing.assert_array_equal(r.params[k], results[0].params[k])
