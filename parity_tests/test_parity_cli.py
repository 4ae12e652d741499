"""``mygpt parity``: prints the table, exits 0 when everything agrees and 1 when anything doesn't."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

import mygpt.parity.runner as parity_mod
from mygpt.parity import ParityCheck, Row, format_table, label
from mygpt.parity.cli import parity

HEADER = ("op", "dtype", "device", "max abs err", "max rel err", "tolerance", "pass")


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def run(capsys):
    """``mygpt parity ARGS`` through the real entry point (``mygpt.cli.main``)."""
    from mygpt.cli import main

    def invoke(args: list[str]) -> Result:
        capsys.readouterr()
        code = main(["parity", *args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return invoke


def test_parity_is_registered_once_from_its_package():
    from mygpt.cli import cli

    assert cli.commands["parity"] is parity
    assert {"bench", "recipes", "data", "tokenizer"} <= set(cli.commands)


def test_quick_prints_the_table_and_exits_zero(run):
    result = run(["--quick"])
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
        "step grad-accum 2",
        "step clip 0.5 clip engaged",
        "step dropout 0.1 grad-accum 2 dropout engaged",
    ):
        assert must in out
    assert "float32" in out and "bfloat16" in out


def test_filters_select_backend_and_dtype(run):
    result = run(["--backend", "torch", "--device", "cpu", "--dtype", "float32", "--quick"])
    if "not installed" in result.output:
        pytest.skip("torch is not installed")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines()[2:] if line.strip() and "  " in line]
    body = [r for r in rows if r.split()[-1] in ("ok", "FAIL")]
    assert body and all("torch:cpu" in r and "float32" in r for r in body)
    assert "bfloat16" not in result.stdout


def test_a_failing_check_exits_one_and_says_so(monkeypatch, run):
    def bad(ref, cand, dtype):
        return [Row("deliberately wrong", dtype, label(cand), 1.0, 1.0, "rtol 1e-05", False)]

    monkeypatch.setattr(
        parity_mod,
        "checks",
        lambda quick=False, slow=False: [ParityCheck("bad", bad, ("float32",))],
    )
    result = run(["--quick", "--dtype", "float32"])
    assert result.exit_code == 1
    assert "deliberately wrong" in result.stdout and "FAIL" in result.stdout


def test_a_crashing_check_is_a_failing_row_not_a_traceback(monkeypatch, run):
    def crash(ref, cand, dtype):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(
        parity_mod,
        "checks",
        lambda quick=False, slow=False: [ParityCheck("boom", crash, ("float32",))],
    )
    result = run(["--dtype", "float32"])
    assert result.exit_code == 1
    assert "boom [RuntimeError: kernel exploded]" in result.stdout


def test_format_table_marks_failures_and_counts():
    rows = [
        Row("gelu", "float32", "mlx:cpu", 1e-7, 1e-7, "rtol 1e-05", True, "numpy-f64"),
        Row("rope", "bfloat16", "mlx:cpu", math.inf, math.inf, "-", False, "torch:cpu"),
    ]
    text = format_table(rows)
    assert "FAIL" in text and "ok" in text and "2 comparisons, 1 failed" in text


def test_one_backend_is_checked_against_numpy_only(monkeypatch, run):
    """Without torch, MLX is the reference and meets numpy (its own full forward, and its own
    gradients composed in numpy for the training step) only."""
    if "mlx" not in parity_mod.available_backends():
        pytest.skip("mlx is not installed")
    monkeypatch.setattr(parity_mod, "available_backends", lambda: ["mlx"])
    result = run(["--quick", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    body = [line for line in result.stdout.splitlines() if line.rstrip().endswith(" ok")]
    assert body and all("mlx:" in line for line in body)
    assert all(any(vs in line for vs in ("numpy-f64", "full forward", "itself")) for line in body)
    assert any("step grad-accum 2" in line for line in body)
    assert "torch:cpu" not in result.stdout


def test_no_matching_backend_is_a_one_line_error(monkeypatch, run):
    monkeypatch.setattr(parity_mod, "available_backends", lambda: [])
    result = run(["--quick"])
    assert result.exit_code == 1
    assert "error: no backend is installed" in result.output
    assert "Traceback" not in result.output
