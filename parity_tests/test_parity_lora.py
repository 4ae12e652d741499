"""LoRA rows: the adapted forward and gradients against the float64-merged model, one and 30
real steps (accumulation, a simulated data-parallel sync) against a float64
composition, the base frozen bit for bit; and the rows failing when LoRA is broken."""

from __future__ import annotations

import pytest

import mygpt.train as train_mod
from mygpt import model
from mygpt.parity import CHECKS, run_check

LORA_CHECKS = [c for c in CHECKS if c.kind == "lora"]


def _failed(rows) -> set[str]:
    assert rows, "the check made no comparison"
    return {r.name for r in rows if not r.passed}


def test_lora_rows_are_registered():
    names = {c.name for c in LORA_CHECKS}
    assert "lora forward+grads" in names
    assert any(n.startswith("lora 1 step") for n in names)
    assert any(n.startswith("lora 30 steps") for n in names)


@pytest.mark.parametrize("check", LORA_CHECKS, ids=lambda c: c.name)
def test_lora_rows_pass(check, pair, check_rows):
    ref, cand = pair
    for dtype in check.dtypes:
        rows = run_check(check, ref, cand, dtype)
        check_rows(rows)
        if dtype == "float32" and check.name.startswith("lora forward"):
            assert {"lora forward", "lora loss", "lora grads"} <= {r.name for r in rows}


def test_an_unscaled_adapter_fails_the_forward_row(pair, monkeypatch):
    _, cand = pair
    delta = model.Adapter.delta

    def unscaled(self, ops, x, train):
        return delta(self, ops, x, train) / self.scale  # alpha / r forgotten

    monkeypatch.setattr(model.Adapter, "delta", unscaled)
    check = next(c for c in LORA_CHECKS if c.name == "lora forward+grads")
    assert {"lora forward", "lora grads"} <= _failed(run_check(check, None, cand, "float32"))


def test_a_step_that_skips_the_data_parallel_sync_fails(pair, monkeypatch):
    _, cand = pair
    real = train_mod.make_train_step

    def unsynced(*args, **kwargs):
        kwargs.pop("grad_sync", None)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "make_train_step", unsynced)
    check = next(c for c in LORA_CHECKS if c.name.startswith("lora 1 step"))
    # Adam hides a gradient's scale in the update: the handed-over gradients show it
    assert any(n.endswith("grads") for n in _failed(run_check(check, None, cand, "float32")))
