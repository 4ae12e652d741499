"""Data-parallel training on the frameworks' launchers: N processes change the speed, never the result.

Each test launches real processes with ``torchrun`` (gloo) or ``mlx.launch --backend ring`` on this
machine and compares them with a single-process run of the same settings.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mygpt.checkpoint import load_checkpoint
from mygpt.cli import main
from tests.conftest import subprocess_env

BIN = Path(sys.executable).parent
# The Ch.27 modern configuration (RMSNorm, RoPE, GQA, cosine + warmup, clipping), fp32, with
# validation every 10 steps. MLX's bundled CPU BLAS is ~30x slower than torch's here, so its runs
# use a global batch of 4 instead of 16 (same model, same schedule).
CH27 = ["--recipe", "ch27-modern", "--precision", "fp32", "--val-split", "0.1"]
CH27 += ["--val-every", "10", "--print-every", "10", "--eval-batches", "2"]
BATCH = {"torch": ["--batch-size", "16"], "mlx": ["--batch-size", "4"]}
TOL = 1e-5
MYGPT_FRAME = f'File "{Path(__file__).resolve().parents[1] / "mygpt"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(backend: str, n: int) -> list[str]:
    if backend == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
            "--nproc-per-node",
            str(n),
            "-m",
            "mygpt",
        ]
    return [str(BIN / "mlx.launch"), "-n", str(n), "--backend", "ring"] + [
        "--starting-port",
        str(free_port()),
        "--",
        sys.executable,
        "-m",
        "mygpt",
    ]


def train_args(backend: str, out: Path, *extra: str) -> list[str]:
    return ["train", *CH27, *BATCH[backend], "--backend", backend, "--device", "cpu"] + [
        "--output",
        str(out),
        *extra,
    ]


def launch(
    backend: str, n: int, args: list[str], timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        launcher(backend, n) + args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
    )


def single(args: list[str]) -> None:
    assert main(args) == 0


def logged(out: Path) -> dict[tuple[int, str], float]:
    recs = [json.loads(line) for line in out.with_name(out.stem + ".metrics.jsonl").open()]
    return {(r["step"], k): r[k] for r in recs for k in ("loss", "val_loss") if k in r}


def weights(out: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in load_file(out).items() if not k.startswith("optimizer.")}


def assert_same_run(a: Path, b: Path, steps: int) -> None:
    la, lb = logged(a), logged(b)
    assert la.keys() == lb.keys()
    assert {s for s, k in la if k == "loss"} == set(range(1, steps + 1))
    assert any(k == "val_loss" for _, k in la)
    diff = max(abs(la[k] - lb[k]) for k in la)
    assert diff <= TOL, f"logged losses differ by {diff}"
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    wdiff = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert wdiff <= TOL, f"final weights differ by {wdiff}"


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the python process that is ``rank`` under the launcher, if running."""
    for pid in descendants(launcher_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_rank = f"RANK={rank}".encode() in env or f"MLX_RANK={rank}".encode() in env
        if is_rank and b"mygpt" in argv and Path(argv[0].decode()).name.startswith("python"):
            return pid
    return None


def check_launch(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-process runs, one per (backend, grad_accum), made on first use."""
    root = tmp_path_factory.mktemp("ddp-ref")
    made: dict[tuple[str, int], Path] = {}

    def get(backend: str, grad_accum: int = 1) -> Path:
        if (backend, grad_accum) not in made:
            out = root / f"{backend}-ga{grad_accum}.safetensors"
            single(train_args(backend, out, "--steps", "50", "--grad-accum", str(grad_accum)))
            made[backend, grad_accum] = out
        return made[backend, grad_accum]

    return get


@pytest.mark.parametrize("grad_accum", [1, 2])
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_two_processes_reproduce_one(backend, grad_accum, reference, tmp_path):
    out = tmp_path / "dp.safetensors"
    args = train_args(backend, out, "--steps", "50", "--grad-accum", str(grad_accum))
    proc = launch(backend, 2, args)
    check_launch(proc)
    engine = "torchrun, gloo" if backend == "torch" else "mlx.launch, ring"
    assert f"rank 0 of 2 ({engine})" in proc.stderr
    # rank 0 alone prints: each result line once
    assert proc.stdout.count("step 50: loss") == 1, proc.stdout
    assert_same_run(reference(backend, grad_accum), out, 50)


def spawn(cmd: list[str]) -> subprocess.Popen:
    """``cmd`` in its own session (so a signal can go to its whole process group)."""
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _interrupt_at(cmd: list[str], out: Path, after_step: int) -> subprocess.CompletedProcess:
    """Start ``cmd`` in its own process group and Ctrl-C it (SIGINT to the group, as a terminal
    does) once the metrics log has passed ``after_step``."""
    metrics = out.with_name(out.stem + ".metrics.jsonl")
    proc = spawn(cmd)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and any(
            json.loads(line).get("step", 0) >= after_step
            for line in metrics.read_text().splitlines()
            if line.strip()
        ):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize(("backend", "first", "then"), [("torch", 2, 1), ("mlx", 1, 2)])
def test_resume_across_world_sizes(backend, first, then, tmp_path):
    """2 processes stopped mid-run and resumed on 1 (and 1 stopped and resumed on 2) end at the
    uninterrupted run's weights. Each direction on one backend, to keep CI short."""
    steps = {"torch": "150", "mlx": "60"}[backend]  # long enough to interrupt mid-run
    whole = tmp_path / "whole.safetensors"
    single(train_args(backend, whole, "--steps", steps))
    out = tmp_path / f"{first}to{then}.safetensors"
    args = train_args(backend, out, "--steps", steps)
    cmd = launcher(backend, first) + args if first > 1 else [sys.executable, "-m", "mygpt"] + args
    stopped = _interrupt_at(cmd, out, after_step=20)
    # (torchrun itself prints a traceback when it gets SIGINT; no rank may)
    assert MYGPT_FRAME not in stopped.stderr, stopped.stderr[-3000:]
    hints = (stopped.stdout + stopped.stderr).count("resume with --resume")
    assert hints == 1, stopped.stdout + stopped.stderr
    at = load_checkpoint(out).train_state["step"]
    assert 20 <= at < int(steps)
    resume = ["train", "--resume", str(out), "--backend", backend, "--device", "cpu"]
    if then == 1:
        single(resume)
    else:
        check_launch(launch(backend, 2, resume))
    assert load_checkpoint(out).train_state["step"] == int(steps)
    wa, wb = weights(whole), weights(out)
    wdiff = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert wdiff <= TOL, f"{first}->{then} processes: weights differ by {wdiff}"


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_killed_rank_ends_the_run_with_one_line(backend, tmp_path):
    """SIGKILL to rank 1 mid-run: rank 0 exits non-zero within 60 s with a one-line error, and the
    checkpoint saved before stays loadable."""
    out = tmp_path / "k.safetensors"
    args = train_args(backend, out, "--steps", "100000", "--checkpoint-every", "5")
    proc = spawn(launcher(backend, 2) + args)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not out.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert elapsed < 60
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors and "lost contact with rank 1" in errors[0], stderr[-3000:]
    assert len(errors) == 1
    assert MYGPT_FRAME not in stderr  # (torchrun's own report of the dead child is a traceback)
    ckpt = load_checkpoint(out)
    assert ckpt.train_state["step"] % 5 == 0


def test_ranks_that_disagree_are_refused(tmp_path):
    """Ranks launched with different settings (here: the seed) stop before training."""
    out = tmp_path / "x.safetensors"
    args = train_args("torch", out, "--steps", "5")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--no-python", "bash", "-c", 'exec "$0" -m mygpt "$@" --seed "$RANK"', sys.executable]
    proc = subprocess.run(
        cmd + args, capture_output=True, text=True, timeout=240, env=subprocess_env()
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors, proc.stderr[-3000:]
    assert "rank 1 has different settings (flags) from rank 0" in errors[0]
    assert not out.exists()


def test_batch_the_world_does_not_divide_is_refused(tmp_path):
    out = tmp_path / "x.safetensors"
    proc = launch("mlx", 2, train_args("mlx", out, "--steps", "5", "--batch-size", "5"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --batch-size 5 does not split evenly across 2 processes — use a multiple of 2 "
        "(it is the global batch)"
    ], proc.stderr
    assert not out.exists()
