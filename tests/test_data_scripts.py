"""scripts/project_ch28.py and scripts/ch28_wikipedia.sh, driven by a stand-in trainer.

The real ``mygpt train`` is exercised by the training tests; here a fake trainer that prints the
same ``step N: loss = ...`` lines at a known rate checks the parsing, the timing and the projection.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "scripts" / "project_ch28.py"

FAKE_TRAINER = r"""
import json, sys, time
args = sys.argv[1:]
json.dump(args, open(sys.argv[0] + ".args.json", "w"))
if "--fail" in args:
    print("error: something broke", file=sys.stderr)
    sys.exit(1)
steps = int(args[args.index("--steps") + 1])
print("backend: torch (requested) · device: cpu", file=sys.stderr, flush=True)
time.sleep(0.3)  # start-up, not part of the rate
for s in range(1, steps + 1):
    time.sleep(0.5 if s <= 2 else 0.02)  # slow warm-up steps, then 50 steps/s
    print(f"step {s}: loss = {8.0 - s * 0.01:.4f}, lr = 1.00e-03", flush=True)
"""


def run_project(tmp_path, *extra):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAINER)
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n" * 100)
    cmd = [
        sys.executable,
        str(PROJECT),
        str(corpus),
        "--backend",
        "torch",
        "--train-cmd",
        f"{shlex.quote(sys.executable)} {shlex.quote(str(fake))}",
        *extra,
    ]
    env = {**os.environ, "MYGPT_CACHE_DIR": str(tmp_path / "mygpt-cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    args = json.loads(Path(str(fake) + ".args.json").read_text()) if r.returncode == 0 else None
    return r, args


def test_projection_from_measured_steps(tmp_path):
    r, args = run_project(tmp_path, "--no-prepare", "--steps", "30", "--skip", "3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # The book's command reaches the trainer, with the measurement's own settings.
    flat = " ".join(args)
    assert "--tokenizer bpe --num-merges 1024 --bpe-train-bytes 50000000" in flat
    assert "--norm rms --position rope" in flat and "--backend torch" in flat
    assert "--steps 30" in flat and "--checkpoint-every 0" in flat
    # Steps after the slow warm-up run at ~50/s; sleep overheads only make them slower.
    rate = float(out.split("measured: ")[1].split(" steps/s")[0])
    assert 25 < rate <= 52, out
    assert "projected total for 10,000 steps: 0:0" in out  # ~200 s
    projected = out.split("projected total for 10,000 steps: ")[1].split(" ")[0]
    h, m, s = (int(x) for x in projected.split(":"))
    assert abs((h * 3600 + m * 60 + s) - 10_000 / rate) <= 1
    assert "loss at step 30: 7.7000" in out


def test_projection_prepares_the_corpus_first(tmp_path):
    r, _ = run_project(
        tmp_path, "--steps", "8", "--skip", "2", "--cache-dir", str(tmp_path / "cache")
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("prepare: ") and "tokens (vocab" in r.stdout
    assert list((tmp_path / "cache").glob("c-*.bin"))


def test_projection_reports_a_failed_trainer(tmp_path):
    r, _ = run_project(tmp_path, "--no-prepare", "--", "--fail")
    assert r.returncode != 0 and "the training command failed" in r.stderr
    assert "something broke" in r.stderr


def test_projection_needs_enough_steps(tmp_path):
    r, _ = run_project(tmp_path, "--no-prepare", "--steps", "4", "--skip", "5")
    assert r.returncode != 0 and "raise --steps" in r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_ch28_script_usage():
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ch28_wikipedia.sh")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run(
        ["bash", "-n", str(ROOT / "scripts" / "ch28_wikipedia.sh")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
