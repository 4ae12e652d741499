"""scripts/time_to_loss.py's reading of runs: steps and seconds to a target, loss within a budget."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "time_to_loss.py"
_spec = importlib.util.spec_from_file_location("time_to_loss", _PATH)
ttl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ttl)


def _run(name: str, val: dict, startup: float = 2.0) -> dict:
    return dict(
        name=name,
        seed=0,
        wall=startup + max(e for _, e in val.values()),
        startup=startup,
        val=val,
        flags="",
    )


def test_first_evaluation_at_target_and_loss_within_budget():
    run = _run("a", {50: (2.5, 5.0), 100: (2.0, 10.0), 150: (1.9, 15.0)})
    assert ttl.first_at(run, 2.0) == (100, 12.0)  # process seconds: start-up + loop time
    assert ttl.first_at(run, 1.0) == (None, None)
    assert ttl.within(run, 12.5) == 2.0 and ttl.within(run, 3.0) is None


def test_report_rows():
    runs = [_run("base", {50: (2.0, 9.0)}), _run("fast", {50: (1.8, 3.0)})]
    table = ttl.report(runs, ["base", "fast"], target=2.0, budget=6.0)
    lines = table.splitlines()
    assert lines[0].endswith("val within 6 s |") and len(lines) == 4
    assert lines[3].startswith("| fast | 1.8 | 50 | 5 | 5 | 1/1 | 1.8 |")
