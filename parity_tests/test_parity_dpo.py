"""DPO rows: the loss (sigmoid, IPO) and its gradient against a float64 recomputation from the
backend's own logits and the other backend; and the rows failing when the loss is wrong."""

from __future__ import annotations

import pytest

from mygpt.parity import CHECKS, run_check
from mygpt.train import dpo

DPO_CHECKS = [c for c in CHECKS if c.kind == "dpo"]


def test_dpo_rows_are_registered():
    assert {c.name for c in DPO_CHECKS} == {"dpo sigmoid loss+grads", "dpo ipo loss+grads"}


@pytest.mark.parametrize("check", DPO_CHECKS, ids=lambda c: c.name)
def test_dpo_rows_pass(check, pair, check_rows):
    ref, cand = pair
    for dtype in check.dtypes:
        rows = run_check(check, ref, cand, dtype)
        check_rows(rows)
        if dtype == "float32":
            kind = check.name.split()[1]
            assert {f"dpo {kind} loss", f"dpo {kind} grads"} <= {r.name for r in rows}


def test_a_loss_without_the_reference_fails_both_rows(pair, monkeypatch):
    _, cand = pair
    real = dpo.DpoSpec.loss

    def forgetful(self, ops, policy, ref):
        return real(self, ops, policy, ref * 0.0)  # the reference's log-probs dropped

    monkeypatch.setattr(dpo.DpoSpec, "loss", forgetful)
    check = next(c for c in DPO_CHECKS if c.name.startswith("dpo sigmoid"))
    failed = {r.name for r in run_check(check, None, cand, "float32") if not r.passed}
    assert {"dpo sigmoid loss", "dpo sigmoid grads"} <= failed
