"""AdamW with clipping, a 30-step training run, and KV-cached decoding."""

from __future__ import annotations

import pytest

from mygpt.backends.base import DTYPES
from mygpt.parity import CHECKS, run_check


def _check(name: str):
    return next(c for c in CHECKS if c.name == name)


def test_adamw_step_with_clipping(pair, check_rows):
    """Against numpy's float64 AdamW always; against the reference backend when there is one."""
    ref, cand = pair
    rows = run_check(_check("adamw+clip"), ref, cand, "float32")
    check_rows(rows)
    names = {r.name for r in rows}
    assert {"adamw step 1 (clipped) params", "adamw step 2 (unclipped) params"} <= names


@pytest.mark.parametrize("dtype", DTYPES)
def test_thirty_training_steps(dtype, cross_pair, check_rows):
    """fp32: losses and final parameters; bf16: the loss curve (on a tinier model)."""
    rows = run_check(_check("train 30 steps"), *cross_pair, dtype)
    check_rows(rows)
    expected = {"loss curve", "params"} if dtype == "float32" else {"loss curve"}
    assert {r.name.removeprefix("train 30 steps ") for r in rows} == expected


CACHE_CHECKS = [c for c in CHECKS if c.kind == "cache"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("check", CACHE_CHECKS, ids=lambda c: c.name.split(" ")[-1])
def test_cached_decoding_equals_full_forward(check, dtype, pair, check_rows):
    """Prefix with a cache, a 3-token chunk, then token by token == one full forward pass."""
    _, cand = pair
    check_rows(run_check(check, None, cand, dtype))


@pytest.mark.parametrize("steps", [1, 30])
def test_muon_against_float64(steps, pair, check_rows):
    """--optimizer muon on identical gradients: numpy's float64 composition, and the reference."""
    ref, cand = pair
    name = f"muon+adamw {steps} step" + ("s" if steps > 1 else "")
    rows = run_check(_check(name), ref, cand, "float32")
    check_rows(rows)
    assert {f"{name} params", f"{name} state"} <= {r.name for r in rows}


@pytest.mark.parametrize(
    "bug",
    ["keller shape factor", "4 newton-schulz steps", "adamw group at --lr"],
)
def test_a_broken_muon_fails_the_gate(bug, pair, monkeypatch):
    """The rows can fail: each plausible slip in the shared Muon makes the 1-step row fail."""
    from mygpt.optim import muon

    if bug == "keller shape factor":
        monkeypatch.setattr(muon, "shape_scale", lambda s: max(1, s[0] / s[1]) ** 0.5)
    elif bug == "4 newton-schulz steps":
        real_ns = muon.newton_schulz
        monkeypatch.setattr(
            muon, "newton_schulz", lambda ops, g, steps, eps: real_ns(ops, g, steps - 1, eps)
        )
    else:
        real = muon.MuonAdamW.__init__

        def at_lr(self, ops, params, config, adamw_lr_ratio=1.0, functional=False):
            real(self, ops, params, config, 1.0, functional)

        monkeypatch.setattr(muon.MuonAdamW, "__init__", at_lr)
    ref, cand = pair
    rows = run_check(_check("muon+adamw 1 step"), ref, cand, "float32")
    assert not next(r for r in rows if r.vs == "numpy-f64" and r.name.endswith("params")).passed


def test_thirty_muon_training_steps(cross_pair, check_rows):
    """The real step with --optimizer muon: the same losses and weights on both backends."""
    rows = run_check(_check("train 30 steps muon"), *cross_pair, "float32")
    check_rows(rows)
    assert {r.name for r in rows} == {
        "train 30 steps muon loss curve",
        "train 30 steps muon params",
    }
