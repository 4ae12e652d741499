"""``mygpt parity``: prints the table, exits 0 when everything agrees and 1 when anything doesn't."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

import mygpt.parity as parity_mod
from mygpt.parity import ParityCheck, Row, format_table, label
from mygpt.parity_cli import parity

HEADER = ("op", "dtype", "device", "max abs err", "max rel err", "tolerance", "pass")


def _run(args):
    """Through the real ``mygpt`` entry point once the command is registered there."""
    from mygpt.cli import cli

    if "parity" in cli.commands:
        return CliRunner().invoke(cli, ["parity", *args])
    return CliRunner().invoke(parity, args)


def test_quick_prints_the_table_and_exits_zero():
    result = _run(["--quick"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    head = out.splitlines()[0]
    assert all(col in head for col in HEADER)
    assert "all passed" in out and "FAIL" not in out
    for must in (
        "layer_norm",
        "rope",
        "attention",
        "softmax",
        "gelu",
        "cross_entropy",
        "model",
        "adamw",
        "train 8 steps",
        "kv-cache",
    ):
        assert must in out
    assert "float32" in out and "bfloat16" in out


def test_filters_select_backend_and_dtype():
    result = _run(["--backend", "torch", "--device", "cpu", "--dtype", "float32", "--quick"])
    if "not installed" in result.output:
        pytest.skip("torch is not installed")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines()[2:] if line.strip() and "  " in line]
    body = [r for r in rows if r.split()[-1] in ("ok", "FAIL")]
    assert body and all("torch:cpu" in r and "float32" in r for r in body)
    assert "bfloat16" not in result.stdout


def test_a_failing_check_exits_one_and_says_so(monkeypatch):
    def bad(ref, cand, dtype):
        return [Row("deliberately wrong", dtype, label(cand), 1.0, 1.0, "rtol 1e-05", False)]

    monkeypatch.setattr(
        parity_mod, "checks", lambda quick=False: [ParityCheck("bad", bad, ("float32",))]
    )
    result = _run(["--quick", "--dtype", "float32"])
    assert result.exit_code == 1
    assert "deliberately wrong" in result.stdout and "FAIL" in result.stdout


def test_a_crashing_check_is_a_failing_row_not_a_traceback(monkeypatch):
    def crash(ref, cand, dtype):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(
        parity_mod, "checks", lambda quick=False: [ParityCheck("boom", crash, ("float32",))]
    )
    result = _run(["--dtype", "float32"])
    assert result.exit_code == 1
    assert "boom [RuntimeError: kernel exploded]" in result.stdout


def test_format_table_marks_failures_and_counts():
    rows = [
        Row("gelu", "float32", "mlx:cpu", 1e-7, 1e-7, "rtol 1e-05", True, "numpy-f64"),
        Row("rope", "bfloat16", "mlx:cpu", math.inf, math.inf, "-", False, "torch:cpu"),
    ]
    text = format_table(rows)
    assert "FAIL" in text and "ok" in text and "2 comparisons, 1 failed" in text
