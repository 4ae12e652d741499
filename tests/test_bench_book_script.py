"""scripts/bench_book.py: the calibration footer and one tiny interleaved run of its workers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mygpt.backends import available_backends

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_book.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_book", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calibration_goes_through_the_sdpa_model():
    rows = [
        {"config": "ch17", "variant": "book", "ms_median": 20.0},
        {"config": "ch17", "variant": "sdpa", "ms_median": 20.0},
        {"config": "ch17", "variant": "mygpt-torch", "ms_median": 10.0},
    ]
    text = _module().calibrated(rows, book_ms=38.0, sdpa_ms=29.0)
    # (38 / 29) x (20 / 10) = 2.62: twice the SDPA model's speed, which is 1.31x the book's
    assert "ch17 mygpt-torch: 2.62x" in text
    assert len(text.splitlines()) == 2  # the header, then one line per mygpt variant only


@pytest.mark.skipif("torch" not in available_backends(), reason="needs torch")
def test_a_tiny_run_prints_every_variant(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", "ch17", "--rounds", "1", "--steps", "1",
         "--batch", "2", "--seq", "8", "--no-mlx", "--scratch", "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for variant in ("| book |", "| sdpa |", "| mygpt-torch |", "| scratch |"):
        assert variant in out.stdout
    assert "ch17 mygpt-torch:" in out.stdout
