"""Fault injection for every command that writes: a reusable harness.

A :class:`WriteCase` says how to make a *previous good* output in a directory, which ``mygpt``
command writes it again, and how to load it. :func:`run_fault` puts the output directory in a
fault, runs the command, and reports a :class:`Outcome`: exit code, the ``error:`` line, whether
the previous file is still there bit for bit (and loads), how many temporary files are left, and
whether a traceback appeared. The faults:

``enospc``
    the disk fills part-way through the write. As root: a real small tmpfs mounted on the output
    directory, filled until only about half of the new file fits (the OS returns a short write,
    then ENOSPC). Otherwise: ``os.write`` patched to do the same for files in that directory.
``eacces_dir``
    the directory cannot be written. Root ignores permission bits, so as root the tmpfs is
    remounted read-only (the OS answers EROFS), or without a mount ``os.open`` is patched to
    answer EACCES; not as root, the directory is ``chmod 0555`` (a real EACCES).
``missing_dir``
    the output path's directory does not exist.
``readonly_file``
    the output file is there and ``chmod 0444``.
``killed``
    the command runs in a subprocess whose ``os.write`` stalls half-way through a write into the
    output directory; the parent sends SIGKILL while it is stalled.

Plug in a new writer by adding a ``WriteCase``; its target may be a directory (the Hugging Face
export), whose files are compared by name and bytes, and ``readonly_file`` then means a ``0555``
directory.
``scripts/fault_matrix.py`` prints the whole matrix as a Markdown table.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAULTS = ("enospc", "eacces_dir", "missing_dir", "readonly_file", "killed")
HAS_PROC = Path("/proc/self/fd").is_dir()  # how the faults tell which file a write goes to
_PAGE = 4096


# --- the cases ------------------------------------------------------------------------------

TINY = [
    "--backend", "torch", "--embed-dim", "16", "--num-heads", "2", "--num-layers", "1",
    "--max-seq-len", "16", "--seq-len", "16", "--batch-size", "4",
]  # fmt: skip


@dataclass
class WriteCase:
    """One write path. ``setup(inp, out)`` makes the inputs in ``inp`` and the previous good
    output in ``out``; ``argv(inp, out)`` is the command that writes ``target(out)`` again;
    ``load(path)`` raises if the file does not load."""

    name: str
    setup: Callable[[Path, Path], None]
    argv: Callable[[Path, Path], list[str]]
    target: Callable[[Path], Path]
    load: Callable[[Path], object]
    # "same bytes" for whole-file writes; for an append-only log, "the previous lines are a prefix
    # of the new file and every line is whole"
    intact: Callable[[bytes, bytes], bool] = lambda before, after: before == after
    leave: int | None = None  # bytes left free for ENOSPC (default: half the file, in pages)


def _corpus(inp: Path, n: int = 20_000, offset: int = 0) -> Path:
    src = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
    p = inp / f"corpus{offset}.txt"
    p.write_text(src.read_text(encoding="utf-8")[offset : offset + n], encoding="utf-8")
    return p


def _cli(argv: list[str]) -> None:
    from mygpt.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    if rc not in (0, None):
        raise RuntimeError(f"setup command failed: {argv}: {err.getvalue()}")


def _load_ckpt(p: Path) -> object:
    from mygpt.checkpoint import load_checkpoint

    return load_checkpoint(p)


def _load_metrics(p: Path) -> object:
    from mygpt.plot import read_metrics

    return read_metrics(p)


def _load_tokens(p: Path) -> object:
    import numpy as np

    return np.fromfile(p, dtype="<u2")


def _load_tokenizer(p: Path) -> object:
    from mygpt.tokenizers import load_tokenizer

    return load_tokenizer(p)


def _load_png(p: Path) -> object:
    if not p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG")
    return True


def _log_intact(before: bytes, after: bytes) -> bool:
    """The previous run's lines (its end event aside) still start the log, every line is whole."""
    keep = [ln for ln in before.splitlines(keepends=True) if b'"event"' not in ln]
    lines = after.splitlines(keepends=True)
    ok = all(ln.endswith(b"\n") for ln in lines) and all(json.loads(ln) for ln in lines)
    return ok and lines[: len(keep)] == keep


def _train_setup(inp: Path, out: Path, steps: int = 2) -> None:
    _corpus(inp)
    _cli(["train", str(inp / "corpus0.txt"), "--output", str(out / "model.safetensors"),
          "--steps", str(steps), "--cache-dir", str(inp / "cache"), *TINY])  # fmt: skip


def _train_argv(inp: Path, out: Path) -> list[str]:
    return ["train", str(inp / "corpus0.txt"), "--output", str(out / "model.safetensors"),
            "--steps", "4", "--seed", "1", "--cache-dir", str(inp / "cache"), *TINY]  # fmt: skip


def _resume_argv(inp: Path, out: Path) -> list[str]:
    return ["train", "--resume", str(out / "model.safetensors"), "--steps", "4"]


def _metrics_setup(inp: Path, out: Path) -> None:
    _train_setup(inp, out, steps=2)


def _metrics_argv(inp: Path, out: Path) -> list[str]:
    # many small appends before the next checkpoint: the log is what meets the fault first
    return ["train", "--resume", str(out / "model.safetensors"), "--steps", "400",
            "--print-every", "1"]  # fmt: skip


def _tokens_setup(inp: Path, out: Path) -> None:
    _corpus(inp, 60_000, 0)
    _corpus(inp, 60_000, 100_000)
    _cli(["data", "prepare", str(inp / "corpus0.txt"), "--output", str(out / "tokens.bin"),
          "--cache-dir", str(inp / "cache"), "-q"])  # fmt: skip


def _tokens_argv(inp: Path, out: Path) -> list[str]:
    return ["data", "prepare", str(inp / "corpus100000.txt"), "--output", str(out / "tokens.bin"),
            "--cache-dir", str(inp / "cache"), "-q"]  # fmt: skip


def _tok_setup(inp: Path, out: Path) -> None:
    _corpus(inp, 60_000)
    _cli(["tokenizer", "train", str(inp / "corpus0.txt"), "--tokenizer", "bpe", "--num-merges",
          "300", "--output", str(out / "tok.json"), "--no-progress"])  # fmt: skip


def _tok_argv(inp: Path, out: Path) -> list[str]:
    return ["tokenizer", "train", str(inp / "corpus0.txt"), "--tokenizer", "bpe", "--num-merges",
            "400", "--output", str(out / "tok.json"), "--no-progress"]  # fmt: skip


def _plot_setup(inp: Path, out: Path) -> None:
    lines = [json.dumps({"step": s, "loss": 4.0 / s**0.3 + 0.01 * (s % 7)}) for s in range(1, 400)]
    (inp / "run.metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _cli(["plot", str(inp / "run.metrics.jsonl"), "--output", str(out / "loss.png"),
          "--smooth", "1"])  # fmt: skip


def _plot_argv(inp: Path, out: Path) -> list[str]:
    return ["plot", str(inp / "run.metrics.jsonl"), "--output", str(out / "loss.png")]


def _load_hf(p: Path) -> object:
    from safetensors.numpy import load_file

    json.loads((p / "config.json").read_text(encoding="utf-8"))
    return load_file(p / "model.safetensors")


def _export_setup(inp: Path, out: Path) -> None:
    _convert_setup(inp, inp)
    _cli(["export", str(inp / "src0.safetensors"), str(out / "hf")])


def _export_argv(inp: Path, out: Path) -> list[str]:
    return ["export", str(inp / "src1.safetensors"), str(out / "hf"), "--force"]


_LLAMA = ["--norm", "rms", "--position", "rope", "--mlp", "swiglu"]


def _gguf_setup(inp: Path, out: Path) -> None:
    _corpus(inp)
    for seed in ("0", "1"):
        _cli(["train", str(inp / "corpus0.txt"), "--output", str(inp / f"src{seed}.safetensors"),
              "--steps", "1", "--seed", seed, "--cache-dir", str(inp / "cache"), *TINY,
              *_LLAMA])  # fmt: skip
    _cli(["export", str(inp / "src0.safetensors"), str(out / "model.gguf")])


def _gguf_argv(inp: Path, out: Path) -> list[str]:
    return ["export", str(inp / "src1.safetensors"), str(out / "model.gguf")]


def _load_gguf(p: Path) -> object:
    from mygpt.interop.gguf_import import import_gguf

    return import_gguf(p)


def _ollama_setup(inp: Path, out: Path) -> None:
    """Two models whose Modelfiles differ (num_ctx is the trained context), the first exported
    with its Modelfile as the previous good pair."""
    _corpus(inp)
    for seed, ctx in (("0", "16"), ("1", "32")):
        tiny = [*TINY]
        tiny[tiny.index("--max-seq-len") + 1] = ctx
        _cli(["train", str(inp / "corpus0.txt"), "--output", str(inp / f"src{seed}.safetensors"),
              "--steps", "1", "--seed", seed, "--cache-dir", str(inp / "cache"), *tiny,
              *_LLAMA])  # fmt: skip
    _cli(["export", str(inp / "src0.safetensors"), str(out / "model.gguf"), "--ollama"])


def _ollama_argv(inp: Path, out: Path) -> list[str]:
    return ["export", str(inp / "src1.safetensors"), str(out / "model.gguf"), "--ollama"]


def _load_modelfile(p: Path) -> object:
    """The Modelfile parses as Ollama parses it and the GGUF it names loads."""
    from tests.ollama import parse_modelfile

    model = dict(parse_modelfile(p.read_text(encoding="utf-8")))["model"]
    return _load_gguf(p.parent / model)


def _convert_setup(inp: Path, out: Path) -> None:
    _corpus(inp)
    for seed in ("0", "1"):
        _cli(["train", str(inp / "corpus0.txt"), "--output", str(inp / f"src{seed}.safetensors"),
              "--steps", "1", "--seed", seed, "--cache-dir", str(inp / "cache"), *TINY])  # fmt: skip
    _cli(["convert", str(inp / "src0.safetensors"), str(out / "model.ckpt")])


def _convert_argv(inp: Path, out: Path) -> list[str]:
    return ["convert", str(inp / "src1.safetensors"), str(out / "model.ckpt")]


CASES = [
    WriteCase("checkpoint save", _train_setup, _train_argv,
              lambda o: o / "model.safetensors", _load_ckpt),
    WriteCase("resume", _train_setup, _resume_argv, lambda o: o / "model.safetensors", _load_ckpt),
    WriteCase("metrics log", _metrics_setup, _metrics_argv,
              lambda o: o / "model.metrics.jsonl", _load_metrics, _log_intact, 2 * _PAGE),
    WriteCase("token cache", _tokens_setup, _tokens_argv, lambda o: o / "tokens.bin", _load_tokens),
    WriteCase("tokenizer JSON", _tok_setup, _tok_argv, lambda o: o / "tok.json", _load_tokenizer),
    WriteCase("plot", _plot_setup, _plot_argv, lambda o: o / "loss.png", _load_png),
    WriteCase("converted checkpoint", _convert_setup, _convert_argv,
              lambda o: o / "model.ckpt", _load_ckpt),
    # a directory: "intact" compares every file's name and bytes
    WriteCase("HF export directory", _export_setup, _export_argv, lambda o: o / "hf", _load_hf),
    WriteCase("GGUF export", _gguf_setup, _gguf_argv, lambda o: o / "model.gguf", _load_gguf),
    # the Modelfile beside a GGUF: written once the new GGUF is complete, before it is published
    WriteCase("Ollama Modelfile", _ollama_setup, _ollama_argv, lambda o: o / "Modelfile",
              _load_modelfile),
]  # fmt: skip


# --- the faults -----------------------------------------------------------------------------


@dataclass
class Outcome:
    case: str
    fault: str
    source: str  # where the fault came from: "tmpfs", "patched os.write", "chmod", ...
    exit_code: int | None
    message: str  # the error: line, or what happened instead
    intact: bool
    temp_files: int
    traceback: bool

    @property
    def ok(self) -> bool:
        one_line = self.message.startswith("error: ") and " — " in self.message
        if self.fault == "killed":
            one_line = True  # a SIGKILLed process prints nothing
        return (
            self.exit_code not in (0, None)
            and one_line
            and self.intact
            and self.temp_files == 0
            and not self.traceback
        )


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    d = tempfile.mkdtemp(prefix="mygpt-mnt-")
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                            capture_output=True).returncode == 0  # fmt: skip
        if ok:
            subprocess.run(["umount", d], check=True)
        return ok
    finally:
        os.rmdir(d)


@contextlib.contextmanager
def tmpfs(d: Path, size: int) -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d: Path, leave: int) -> Path:
    """Fill the filesystem holding ``d`` until about ``leave`` bytes are free."""
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    filler = d / ".filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def _in_dir(fd: int, d: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(str(d) + "/")
    except OSError:
        return False


@contextlib.contextmanager
def patched_enospc(d: Path, budget: int) -> Iterator[None]:
    """``os.write`` into files under ``d`` writes ``budget`` bytes in all, then fails ENOSPC."""
    real = os.write
    left = [budget]

    def write(fd, data):
        if not _in_dir(fd, d):
            return real(fd, data)
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(memoryview(data)[: left[0]]))
        left[0] -= n
        return n

    os.write = write
    try:
        yield
    finally:
        os.write = real


@contextlib.contextmanager
def patched_eacces(d: Path) -> Iterator[None]:
    """``os.open`` for writing under ``d`` fails with EACCES (for root, whom mode bits don't stop)."""
    real = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)

    def open_(path, flags, *args, **kw):
        if flags & writing and os.path.abspath(os.fspath(path)).startswith(str(d)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, flags, *args, **kw)

    os.open = open_
    try:
        yield
    finally:
        os.open = real


def run_cli(argv: list[str]) -> tuple[int | None, str, bool]:
    """(exit code, stderr, traceback seen) of ``mygpt argv`` run in this process."""
    from mygpt.cli import main

    err = io.StringIO()
    tb = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException as e:  # noqa: BLE001 - anything escaping main is a traceback
            import traceback

            traceback.print_exc(file=err)
            rc, tb = 1, True
            if isinstance(e, KeyboardInterrupt):
                raise
    text = err.getvalue()
    return rc, text, tb or "Traceback (most recent call last)" in text


_STALL = """
import os, sys, time
d, marker = sys.argv[1], sys.argv[2]
real = os.write
def write(fd, data):
    try:
        inside = os.readlink(f"/proc/self/fd/{fd}").startswith(d + "/")
    except OSError:
        inside = False
    if inside and len(data) > 1:
        real(fd, bytes(memoryview(data)[: len(data) // 2]))
        open(marker, "w").close()
        time.sleep(600)
    return real(fd, data)
os.write = write
from mygpt.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_killed(argv: list[str], out: Path, inp: Path, timeout: float = 120) -> int | None:
    """Run ``mygpt argv`` in a subprocess, SIGKILL it half-way through a write into ``out``."""
    marker = inp / "MIDWRITE"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MYGPT_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALL, str(out), str(marker), *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    stalled = marker.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.returncode if stalled else None  # None: it never reached a write


def read_target(p: Path) -> bytes:
    """A file's bytes; a directory's files' names and bytes, in name order."""
    if not p.is_dir():
        return p.read_bytes() if p.exists() else b""
    return b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in sorted(p.iterdir()))


def _size(p: Path) -> int:
    return (
        sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        if p.is_dir()
        else p.stat().st_size
    )


def _snapshot(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()} if d.exists() else set()


def prepare(case: WriteCase, base: Path) -> tuple[Path, Path]:
    """Make ``case``'s inputs and previous good output once: ``(inputs dir, golden dir)``."""
    inp, golden = base / "in", base / "golden"
    inp.mkdir(parents=True, exist_ok=True)
    golden.mkdir(exist_ok=True)
    case.setup(inp, golden)
    return inp, golden


def run_fault(
    case: WriteCase,
    fault: str,
    inp: Path,
    golden: Path,
    out: Path,
    *,
    real_fs: bool | None = None,
) -> Outcome:
    """Copy ``golden`` into a fresh ``out``, inject ``fault``, run the command, report."""
    if real_fs is None:
        real_fs = can_mount()
    out.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        if real_fs:
            size = sum(_size(p) for p in golden.iterdir()) * 3 + 64 * _PAGE
            stack.enter_context(tmpfs(out, size))
        for p in golden.iterdir():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, out / p.name)
        target = case.target(out)
        before = read_target(target)
        names = _snapshot(out)
        filler = None
        source = "tmpfs" if real_fs else "patched os.write"
        argv = case.argv(inp, out)
        rc, err, tb = None, "", False
        if fault == "enospc":
            leave = case.leave if case.leave is not None else len(before) // 2 // _PAGE * _PAGE
            if real_fs:
                filler = _fill(out, leave)
                names.add(filler.name)
                rc, err, tb = run_cli(argv)
            else:
                with patched_enospc(out, max(leave, 1)):
                    rc, err, tb = run_cli(argv)
        elif fault == "eacces_dir":
            if real_fs:
                source = "tmpfs remounted read-only (EROFS; root ignores mode bits)"
                subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
                try:
                    rc, err, tb = run_cli(argv)
                finally:
                    subprocess.run(["mount", "-o", "remount,rw", str(out)], check=True)
            elif os.geteuid() == 0:
                source = "patched os.open (EACCES; root ignores mode bits)"
                with patched_eacces(out):
                    rc, err, tb = run_cli(argv)
            else:
                source = "chmod 0555 (EACCES)"
                out.chmod(0o555)
                try:
                    rc, err, tb = run_cli(argv)
                finally:
                    out.chmod(0o755)
        elif fault == "missing_dir":
            source = "path"
            missing = out / "no" / "such"
            argv = [a.replace(str(out), str(missing)) if a.startswith(str(out)) else a
                    for a in argv]  # fmt: skip
            if "--resume" in argv:  # the run's own checkpoint must exist: --output moves instead
                argv = case.argv(inp, out) + ["--output", str(missing / "model.safetensors")]
            rc, err, tb = run_cli(argv)
        elif fault == "readonly_file":
            is_dir = target.is_dir()
            source = "chmod 0555 (a directory)" if is_dir else "chmod 0444"
            target.chmod(0o555 if is_dir else 0o444)
            rc, err, tb = run_cli(argv)
            target.chmod(0o755 if is_dir else 0o644)
        elif fault == "killed":
            source = "SIGKILL mid-write (os.write stalled)"
            rc = run_killed(argv, out, inp)
            err = "(killed: no output)" if rc is not None else "(never reached a write)"
        else:
            raise ValueError(fault)
        if filler is not None:
            filler.unlink()
        after = read_target(target)
        try:
            case.load(target)
            loads = True
        except Exception:  # noqa: BLE001 - any failure to load means not intact
            loads = False
        now = _snapshot(out)
        left, lost = now - names, names - now - {".filler"}
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        message = errors[-1] if len(errors) == 1 else (err.strip().splitlines() or [""])[-1]
        if len(errors) > 1:
            message = f"{len(errors)} error lines: {errors[-1]}"
        return Outcome(
            case.name, fault, source, rc, message,
            intact=loads and not lost and case.intact(before, after), temp_files=len(left),
            traceback=tb,
        )  # fmt: skip


def matrix_table(outcomes: list[Outcome]) -> str:
    """The fault matrix as Markdown: write path x fault -> exit code, message, intact, temps."""
    rows = ["| write path | fault | source | exit | message | intact | temp files | ok |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for o in outcomes:
        msg = o.message.replace("|", "\\|")
        rows.append(f"| {o.case} | {o.fault} | {o.source} | {o.exit_code} | {msg} | "
                    f"{'yes' if o.intact else 'NO'} | {o.temp_files} | "
                    f"{'yes' if o.ok else 'NO'} |")  # fmt: skip
    return "\n".join(rows)
