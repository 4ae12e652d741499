"""Issue 14's eight findings, one test (or more) each; every one failed on main before its fix.

The full-disk, read-only and killed-writer cases of every write path are in test_faults.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from mygpt.cli import main
from mygpt.errors import MygptError
from tests import faults

TINY = faults.TINY


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert " — " in lines[0], lines[0]
    return lines[0]


# --- 1. a missing output directory is refused before any work, by every command that writes ----


def _writers(tmp_path: Path, small_corpus: Path) -> dict[str, list[str]]:
    miss = tmp_path / "missing" / "dir"
    tok = tmp_path / "tok.json"
    from mygpt.tokenizers import train_tokenizer

    train_tokenizer("char", small_corpus.read_text()).save(tok)
    metrics = tmp_path / "run.metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n')
    return {
        "train": ["train", str(small_corpus), "--output", str(miss / "m.safetensors"), *TINY],
        "plot": ["plot", str(metrics), "--output", str(miss / "loss.png")],
        "tokenizer train": ["tokenizer", "train", str(small_corpus), "--output", str(miss / "t.json")],
        "tokenizer encode": ["tokenizer", "encode", str(small_corpus), "--tokenizer-file",
                             str(tok), "--output", str(miss / "ids.bin")],
        "data prepare": ["data", "prepare", str(small_corpus), "--output", str(miss / "ids.bin")],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["train", "plot", "tokenizer train", "tokenizer encode", "data prepare"]
)
def test_missing_output_directory_is_refused_before_work(command, tmp_path, small_corpus, capsys):
    argv = _writers(tmp_path, small_corpus)[command]
    rc, err = _run(capsys, argv)
    assert rc == 1
    line = _one_error_line(err)
    assert "does not exist" in line and "mkdir -p" in line
    assert not (tmp_path / "missing").exists()
    # before any work: no backend chosen, no tokenizer trained, nothing encoded
    assert "backend:" not in err and "training" not in err and "wrote" not in err


def test_convert_to_a_missing_directory_is_refused(tmp_path, small_corpus, capsys):
    src = tmp_path / "m.safetensors"
    assert main(["train", str(small_corpus), "--output", str(src), "--steps", "1", *TINY]) == 0
    capsys.readouterr()
    rc, err = _run(capsys, ["convert", str(src), str(tmp_path / "no" / "m.ckpt")])
    assert rc == 1 and "does not exist" in _one_error_line(err)


# --- 2. a full disk: the save and the resume's metrics rewrite -------------------------------


@pytest.mark.skipif(not faults.HAS_PROC, reason="the patched os.write reads /proc")
def test_resume_metrics_rewrite_on_full_disk_keeps_the_log(tmp_path):
    from mygpt.metrics import MetricsLog

    path = tmp_path / "m.metrics.jsonl"
    good = b"".join(json.dumps({"step": s, "loss": 1.0}).encode() + b"\n" for s in range(1, 50))
    path.write_bytes(good + b'{"event": "end", "step": 49}\n')
    before = path.read_bytes()
    with faults.patched_enospc(tmp_path, 100), pytest.raises(MygptError) as e:
        MetricsLog(path).open(resume_step=20)
    assert "no space left" in str(e.value) and " — " in str(e.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.metrics.jsonl"]


@pytest.mark.skipif(not faults.HAS_PROC, reason="the patched os.write reads /proc")
def test_append_on_full_disk_cuts_back_to_whole_lines(tmp_path):
    from mygpt.metrics import MetricsLog

    path = tmp_path / "m.metrics.jsonl"
    log = MetricsLog(path).open()
    log.append({"step": 1, "loss": 2.0})
    log.flush()
    kept = path.read_bytes()
    for s in range(2, 200):
        log.append({"step": s, "loss": 2.0})
    with faults.patched_enospc(tmp_path, 300), pytest.raises(MygptError, match="no space left"):
        log.flush()
    log.close_after_error()
    assert path.read_bytes() == kept


@pytest.mark.skipif(not faults.HAS_PROC, reason="the patched os.write reads /proc")
def test_checkpoint_save_on_full_disk_is_one_line(tmp_path):
    from mygpt.checkpoint import load_checkpoint, save_checkpoint
    from mygpt.config import ModelConfig
    from mygpt.model import init_params

    cfg = ModelConfig(vocab_size=50, embed_dim=32, num_heads=2, num_layers=1, max_seq_len=16)
    tok = {"kind": "char", "version": 1, "chars": [chr(65 + i) for i in range(50)]}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, cfg, init_params(cfg, 0), tok, train_state={"step": 10})
    before = path.read_bytes()
    with faults.patched_enospc(tmp_path, 5000), pytest.raises(MygptError) as e:
        save_checkpoint(path, cfg, init_params(cfg, 1), tok, train_state={"step": 20})
    assert str(e.value).startswith("no space left writing") and "unchanged" in str(e.value)
    assert path.read_bytes() == before
    assert load_checkpoint(path).train_state["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# --- 3. new files get the umask's mode; a replaced file keeps its own -------------------------


@pytest.fixture
def umask027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_written_files_get_the_umask_mode(tmp_path, small_corpus, umask027):
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", str(small_corpus), "--output", str(ckpt), "--steps", "1", *TINY]) == 0
    assert _mode(ckpt) == umask027
    assert _mode(tmp_path / "m.metrics.jsonl") == umask027
    assert main(["convert", str(ckpt), str(tmp_path / "m.ckpt")]) == 0
    assert _mode(tmp_path / "m.ckpt") == umask027
    tok = tmp_path / "t.json"
    assert main(["tokenizer", "train", str(small_corpus), "--output", str(tok)]) == 0
    assert _mode(tok) == umask027
    png = tmp_path / "loss.png"
    assert main(["plot", str(ckpt), "--output", str(png)]) == 0
    assert _mode(png) == umask027


def test_replacing_a_file_keeps_its_mode(tmp_path):
    from mygpt.fileio import atomic_write_bytes

    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    p.chmod(0o604)
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and _mode(p) == 0o604


# --- 4. every progress bar follows the training progress's rule: none in a log ----------------


def test_encoding_and_merge_bars_stay_out_of_logs(tmp_path, monkeypatch):
    from mygpt.tokenizers import encode_file, train_tokenizer

    text = faults.REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
    corpus = tmp_path / "c.txt"
    corpus.write_text(text.read_text()[:50_000])
    tok = train_tokenizer("bpe", corpus.read_text(), 20)

    def shown(tty: bool) -> str:
        err = io.StringIO()
        err.isatty = lambda: tty  # type: ignore[method-assign]
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setattr(sys.stdout, "isatty", lambda: tty, raising=False)
        train_tokenizer("bpe", corpus.read_text(), 20, progress=True)
        encode_file(tok, corpus, io.BytesIO(), progress=True)
        return err.getvalue()

    assert "encoding" not in shown(False) and "merges" not in shown(False)
    on_terminal = shown(True)  # the rule does draw where it should
    assert "encoding" in on_terminal and "merges" in on_terminal


# --- 5. smoothing does not invent shape --------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 5, 20, 21, 500])
def test_smoothing_keeps_a_straight_line_straight(window):
    from mygpt.plot import _smooth

    line = [3.0 - 0.01 * i for i in range(300)]
    out = _smooth(line, window)
    assert len(out) == len(line)
    assert max(abs(a - b) for a, b in zip(out, line)) < 1e-9


def test_smoothing_still_smooths():
    from mygpt.plot import _smooth

    noisy = [(-1.0) ** i for i in range(200)]
    out = _smooth(noisy, 21)
    assert max(abs(v) for v in out[10:-10]) < 0.05


# --- 6. an MFU over 100% cannot be printed ---------------------------------------------------


def test_mfu_over_one_is_a_failed_probe():
    from mygpt.bench import format_table, mfu_of

    mfu, note = mfu_of(129e9, 0.7e9)
    assert mfu is None and "probe failed" in note
    assert mfu_of(50e9, 100e9) == (0.5, None)
    table = format_table([{"backend": "torch", "flops_per_s": 129e9, "mfu": None}])
    assert "%" not in table


def test_bf16_peak_probe_reaches_the_hardware_rate():
    """Measured in a fresh process, as `mygpt bench` runs it: in this one, a test that left a
    generator suspended inside `ops.inference()` would leave oneDNN off for the rest of it."""
    import subprocess
    import sys

    code = (
        "from mygpt.backends import get_backend; from mygpt.bench import measure_peak_flops\n"
        "ops = get_backend('torch', 'cpu'); ops.activate()\n"
        "if not ops.native_bf16()[0]: print('skip'); raise SystemExit\n"
        "print(measure_peak_flops(ops, 'float32', n=512, repeats=2),"
        " measure_peak_flops(ops, 'bfloat16', n=512, repeats=2))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    if out == ["skip"]:
        pytest.skip("this CPU has no native bf16 (AVX512-BF16/AMX): nothing to reach")
    fp32, bf16 = map(float, out)
    # on main the probe ran with oneDNN off: 0.9 GFLOP/s in bf16 against 134 in fp32
    assert bf16 > fp32, (bf16, fp32)


# --- 7. --precision auto decides bf16 on a CPU from a measurement, and says why ----------------


class _FakeCPU:
    device = "cpu"

    def native_bf16(self):
        return True, "AMX-BF16"


@pytest.mark.parametrize(("bf16_s", "want"), [(0.488, "bfloat16"), (0.7, "float32")])
def test_precision_auto_follows_the_measurement(bf16_s, want):
    from mygpt.precision import resolve_precision

    dtype, why = resolve_precision(
        _FakeCPU(), "auto", lambda: {"bfloat16": bf16_s, "float32": 0.609}
    )
    assert dtype == want
    assert "measured" in why and f"{bf16_s * 1e3:.0f} ms in bf16" in why


def test_precision_auto_measures_the_run_on_a_bf16_cpu():
    from mygpt.backends import get_backend
    from mygpt.train import TrainConfig
    from mygpt.train.setup import _precision

    ops = get_backend("torch", "cpu")
    ops.activate()
    tc = TrainConfig.from_flags(dict(precision="auto", embed_dim=16, num_heads=2, num_layers=1, max_seq_len=16,
                     seq_len=16, batch_size=2))  # fmt: skip
    dtype, why = _precision(ops, ops.init_distributed(), tc, None)
    if ops.native_bf16()[0]:
        assert "measured" in why and dtype in ("float32", "bfloat16")
    else:
        assert dtype == "float32" and "measured" not in why


# --- 8. MLX's reference BLAS: train says so once, at the start --------------------------------


def test_mlx_train_warns_about_the_reference_blas_once(tmp_path, small_corpus, capsys):
    from mygpt.blas import mlx_blas

    if not sys.platform.startswith("linux") or mlx_blas()[0] != "reference":
        pytest.skip("MLX is not on its bundled reference BLAS here")
    out = tmp_path / "m.safetensors"
    argv = ["train", str(small_corpus), "--output", str(out), "--steps", "1",
            *[a if a != "torch" else "mlx" for a in TINY]]  # fmt: skip
    rc, err = _run(capsys, argv)
    assert rc == 0
    warnings = [ln for ln in err.splitlines() if "reference BLAS" in ln]
    assert len(warnings) == 1 and "LD_PRELOAD" in warnings[0]
    assert err.index("reference BLAS") < err.index("model:")  # at the start


def test_no_blas_warning_for_torch():
    from mygpt.backends import get_backend
    from mygpt.blas import reference_blas_warning

    assert reference_blas_warning(get_backend("torch", "cpu")) is None


def test_oserror_messages_are_one_line_with_a_fix(tmp_path):
    from mygpt.fileio import write_error

    for code in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.ENOENT, errno.EIO, errno.EISDIR):
        msg = str(write_error(OSError(code, os.strerror(code)), tmp_path / "x"))
        assert "\n" not in msg and " — " in msg and str(tmp_path / "x") in msg, msg


def test_data_download_to_a_missing_parent_is_refused(tmp_path, small_corpus, capsys):
    out = tmp_path / "missing" / "corpus"
    rc, err = _run(capsys, ["data", "download", str(small_corpus), "--out", str(out)])
    assert rc == 1 and "does not exist" in _one_error_line(err)
    assert not (tmp_path / "missing").exists()
    # the output directory itself is created when its parent exists
    assert main(["data", "download", str(small_corpus), "--out", str(tmp_path / "c"), "-q"]) == 0
    assert (tmp_path / "c").is_dir()


def test_plot_to_an_unknown_format_is_one_line(tmp_path, capsys):
    metrics = tmp_path / "run.metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 3.0}\n')
    rc, err = _run(capsys, ["plot", str(metrics), "--output", str(tmp_path / "loss.txt")])
    assert rc == 1 and ".png" in _one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.metrics.jsonl"]


def test_metrics_with_a_torn_last_line_still_read(tmp_path):
    from mygpt.plot import read_metrics

    p = tmp_path / "run.metrics.jsonl"
    p.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 3, "lo')
    assert read_metrics(p)[0] == [(1, 3.0), (2, 2.5)]  # what a SIGKILL mid-append leaves
    p.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo\n{"step": 3, "loss": 2.0}\n')
    with pytest.raises(MygptError, match=r":2 is not a JSON line"):
        read_metrics(p)
