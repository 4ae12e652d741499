"""Comparators: each turns (what a candidate computed, what it should have) into one ``Row``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mygpt.backends.base import Ops
from mygpt.parity.core import LOSS_TOL, OP_TOL, Row, label


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def compare_close(
    name: str, dtype: str, cand: Ops, vs: str, got, want, tol: tuple[float, float] | None = None
) -> Row:
    """Elementwise ``allclose``: passes iff every ``|err| <= atol + rtol * |want|``."""
    atol, rtol = tol or OP_TOL[dtype]
    got, want = f64(got), f64(want)
    if got.shape != want.shape:
        return Row(name, dtype, label(cand), math.inf, math.inf, f"shape {want.shape}", False, vs)
    err = np.abs(got - want)
    # err <= atol + rtol*|want|  <=>  err / (|want| + atol/rtol) <= rtol: so a row passes exactly
    # when its max_rel is at most rtol, and max_rel stays meaningful where |want| is near zero
    rel = err / (np.abs(want) + atol / rtol)
    ok = bool(np.all(rel <= rtol)) and bool(np.all(np.isfinite(got)))
    return Row(
        name,
        dtype,
        label(cand),
        float(err.max(initial=0.0)),
        float(rel.max(initial=0.0)),
        f"rtol {rtol:.1e} atol {atol:.1e}",
        ok,
        vs,
    )


def compare_logits(name: str, dtype: str, cand: Ops, vs: str, got, want) -> Row:
    """A whole network's logits: elementwise in fp32; in bf16, 2 ulp of the largest logit.

    Through a network, bf16 rounding differs by an ulp or so per op between two computations of
    the same thing: MLX's bf16 layer_norm and GELU round intermediates where torch's round once
    from fp32, and a cached decode's chunks meet kernels tuned to other shapes (on AVX2 CPUs
    without bf16 units: one ulp of a logit near 30, 0.125). So an elementwise 2-ulp bound can't
    hold; measured ~1.5e-3 and ~4e-3 of the largest logit, while a wiring error (mask, head
    mapping, rope layout, cache alignment) is O(1).
    """
    if dtype == "float32":
        return compare_close(name, dtype, cand, vs, got, want)
    return compare_rel_max(
        name, dtype, cand, vs, {"logits": got}, {"logits": want}, OP_TOL[dtype][1]
    )


def _rel_to_max(got, want) -> tuple[float, float]:
    """(max |err|, max |err| / max |want|) of one tensor; inf for a shape mismatch or a NaN."""
    g, w = f64(got), f64(want)
    if g.shape != w.shape:
        return math.inf, math.inf
    err = float(np.abs(g - w).max(initial=0.0))
    scale = float(np.abs(w).max(initial=0.0))
    rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    return err, (rel if np.all(np.isfinite(g)) else math.inf)


def compare_rel_max(
    name: str, dtype: str, cand: Ops, vs: str, got: dict, want: dict, tol: float
) -> Row:
    """Per tensor ``max|err| / max|want|``; the row reports the worst tensor."""
    worst_abs, worst_rel = 0.0, 0.0
    for k in want.keys() & got.keys():
        err, rel = _rel_to_max(got[k], want[k])
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
    ok = set(got) == set(want) and worst_rel <= tol
    return Row(name, dtype, label(cand), worst_abs, worst_rel, f"{tol:.1e} of max", ok, vs)


def compare_loss(
    name: str, dtype: str, cand: Ops, vs: str, got: Sequence[float], want: Sequence[float]
) -> Row:
    """Scalars (a loss or a loss curve): ``|err| / max(|want|, 1)`` against LOSS_TOL."""
    tol = LOSS_TOL[dtype]
    g, w = f64(got).ravel(), f64(want).ravel()
    if g.shape != w.shape:
        return Row(name, dtype, label(cand), math.inf, math.inf, f"{tol:.1e} rel", False, vs)
    err = np.abs(g - w)
    rel = err / np.maximum(np.abs(w), 1.0)
    ok = bool(np.all(np.isfinite(g))) and bool(np.all(rel <= tol))
    return Row(
        name,
        dtype,
        label(cand),
        float(err.max(initial=0.0)),
        float(rel.max(initial=0.0)),
        f"{tol:.1e} rel",
        ok,
        vs,
    )


def flat(tensors: dict) -> np.ndarray:
    """A parameter dict as one vector (sorted by name), for elementwise comparison."""
    return np.concatenate([f64(tensors[k]).ravel() for k in sorted(tensors)])
