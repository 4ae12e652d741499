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
