"""The checks can fail: a candidate with a plausible, wrong implementation is caught.

Each broken backend wraps a real one and replaces one op with a classic porting mistake (rope on
the half-split layout, tanh GELU, causal mask aligned to the first key, tiled GQA heads, a clip
that doesn't clip). The check for that op must fail, both against numpy and against the reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mygpt.backends.base import Positions
from mygpt.parity import checks, run_check


class Broken:
    """A backend with some ops replaced; everything else is delegated to ``inner``."""

    def __init__(self, inner, **ops):
        self.inner = inner
        self._ops = ops

    def __getattr__(self, name):
        if name in self._ops:
            return lambda *a, **k: self._ops[name](self.inner, *a, **k)
        return getattr(self.inner, name)


def _unscaled_rope(ops, x, offset, base, inv_freq=None, heads=None):
    """Ignore Llama 3's rescaled frequencies (plain RoPE at the same base)."""
    return ops.rope(x, offset, base, heads=heads)


def _half_split_rope(ops, x, offset, base, inv_freq=None, heads=None):
    """Rotate pairs (i, i + D/2) (the GPT-NeoX layout) instead of (2i, 2i+1)."""
    B, H, T, D = x.shape
    # interleave the halves, rotate with the real kernel, and undo: all through the interface so
    # it still differentiates on both backends
    y = ops.reshape(ops.transpose(ops.reshape(x, (B, H, T, 2, D // 2)), (0, 1, 2, 4, 3)), x.shape)
    y = ops.rope(y, offset, base, inv_freq, heads=heads)  # (heads not turned: permuted and back)
    y = ops.transpose(ops.reshape(y, (B, H, T, D // 2, 2)), (0, 1, 2, 4, 3))
    return ops.reshape(y, x.shape)


def _tanh_gelu(ops, x):
    v = ops.to_numpy(x).astype(np.float64)
    y = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
    return ops.asarray(y.astype(np.float32), ops.dtype_of(x))


def _upper_left_causal(ops, q, k, v, scale, dropout=0.0, mask=None):
    """torch's ``is_causal`` alignment: query i sees keys 0..i, wrong once Tq < Tk."""
    tq = q.shape[2]
    return ops.attention(q, k[:, :, :tq], v[:, :, :tq], scale, dropout, mask)


def _tiled_gqa(ops, q, k, v, scale, dropout=0.0, mask=None):
    """Query head h reads K/V head h % Hkv (``repeat``, not ``repeat_interleave``)."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = ops.concat([k] * group, axis=1), ops.concat([v] * group, axis=1)
    return ops.attention(q, k, v, scale, dropout, mask)


def _gelu_for_silu(ops, x):
    """SwiGLU's gate with the GPT MLP's activation (a Llama port's classic slip)."""
    return ops.gelu(x)


def _no_clip(ops, grads, max_norm):
    _, norm = ops.clip_grad_norm(grads, max_norm)
    return grads, norm


def _check(name):
    return next(c for c in [*checks(), *checks(quick=True)] if c.name == name)


def _failures(rows):
    assert rows, "the check made no comparison"
    return {r.vs for r in rows if not r.passed}


@pytest.mark.parametrize(
    "broken_op, check_name, dtype",
    [
        (dict(rope=_half_split_rope), "rope offset 9", "float32"),
        (dict(rope=_half_split_rope), "rope offset 0", "bfloat16"),
        (dict(gelu=_tanh_gelu), "gelu", "float32"),
        (dict(attention=_upper_left_causal), "attention H4/kv2 Tq3/Tk8", "float32"),
        (dict(attention=_upper_left_causal), "attention H4/kv1 Tq1/Tk9", "bfloat16"),
        (dict(attention=_tiled_gqa), "attention H4/kv2 Tq6/Tk6", "float32"),
        (dict(clip_grad_norm=_no_clip), "adamw+clip", "float32"),
    ],
    ids=[
        "rope-layout",
        "rope-layout-bf16",
        "tanh-gelu",
        "causal-align",
        "causal-align-bf16",
        "gqa-tiled",
        "no-clip",
    ],
)
def test_op_check_catches_a_wrong_candidate(broken_op, check_name, dtype, pair):
    ref, cand = pair
    rows = run_check(_check(check_name), ref, Broken(cand, **broken_op), dtype)
    failed = _failures(rows)
    assert "numpy-f64" in failed  # the independent reference catches it
    if ref is not None:
        assert len(failed) == 2  # and so does the other backend


def test_a_mistake_shared_by_both_backends_is_caught_by_numpy(pair):
    """Both backends wrong the same way agree with each other; numpy still fails them."""
    ref, cand = pair
    if ref is None:
        pytest.skip("needs two backends")
    bad = dict(attention=_tiled_gqa)
    rows = run_check(
        _check("attention H4/kv2 Tq6/Tk6"), Broken(ref, **bad), Broken(cand, **bad), "float32"
    )
    assert {r.vs: r.passed for r in rows} == {"numpy-f64": False, ref.name + ":cpu": True}


@pytest.mark.parametrize(
    "broken_op, check_name",
    [
        (dict(rope=_half_split_rope), "model rms/rope/gqa"),
        (dict(attention=_tiled_gqa), "model layer/learned/gqa"),
        (dict(attention=_upper_left_causal), "kv-cache decode rope/gqa"),
        (dict(clip_grad_norm=_no_clip), "train 8 steps"),
        (dict(silu=_gelu_for_silu), "model rms/rope/gqa/swiglu"),
        (dict(rope=_unscaled_rope), "model rms/rope/gqa/swiglu +llama3-rope"),
    ],
    ids=[
        "model-rope-layout",
        "model-gqa-tiled",
        "cache-causal-align",
        "train-no-clip",
        "swiglu-gate",
        "llama3-rope-unscaled",
    ],
)
def test_model_check_catches_a_wrong_candidate(broken_op, check_name, pair):
    ref, cand = pair
    check = _check(check_name)
    if ref is None and check.kind != "cache":
        pytest.skip("model-level checks need two backends")
    rows = run_check(check, ref, Broken(cand, **broken_op), "float32")
    assert _failures(rows), "a broken candidate passed"
    # the crash path is not what failed: these rows carry real measurements
    assert all(math.isfinite(r.max_abs) for r in rows)


def test_cache_check_in_bf16_still_catches_a_misaligned_mask(pair):
    """The bf16 cache row is bounded relative to the largest logit; a real cache bug is far
    outside that bound too."""
    _, cand = pair
    check = _check("kv-cache decode rope/gqa")
    good = run_check(check, None, cand, "bfloat16")
    assert good and not _failures(good)
    bad = run_check(check, None, Broken(cand, attention=_upper_left_causal), "bfloat16")
    assert _failures(bad), "a misaligned causal mask passed in bf16"


def _rows_leak(ops, q, k, v, scale, dropout=0.0, mask=None):
    """Batched decoding whose attention mixes rows: each row also sees row 0's keys."""
    if mask is not None and mask.lengths is not None:
        k = k + k[:1] * 1e-3
    return ops.attention(q, k, v, scale, dropout, mask)


def _row_zero_positions(ops, kv, k, v, rows, at):
    """A decode step that writes every row's key and value at index 0 (ignores the positions)."""
    return ops.write_kv(kv, k, v, rows, Positions(np.zeros_like(at.start), at.length))


@pytest.mark.parametrize("broken", [dict(attention=_rows_leak),
                                    dict(write_kv=_row_zero_positions)], ids=["leak", "write"])  # fmt: skip
def test_batched_decode_check_catches_rows_that_depend_on_each_other(pair, broken):
    _, cand = pair
    rows = run_check(_check("batched decode rope/gqa"), None, Broken(cand, **broken), "float32")
    assert _failures(rows), "a batched decoder whose rows interact passed"
