"""The ops a RowCache step uses, against numpy: ``write_kv`` (one step, and a prefill copied in),
``rope`` at a position per row, and ``attention`` under the per-row length and window masks, on
each installed backend."""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.backends.base import Mask, Positions

BACKENDS = available_backends()


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("name", BACKENDS)
def test_write_kv_puts_keys_and_values_at_each_rows_positions(name, t):
    ops = get_backend(name, "cpu")
    B, hkv, T, D = 4, 2, 8, 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2 * hkv, t, D)).astype(np.float32)
    rows, starts = [2, 0, 3], np.array([4, 0, 1])  # a list of rows, as a prefill passes them
    want = np.zeros((2, B, hkv, T, D), np.float32)
    for i, (r, s) in enumerate(zip(rows, starts)):
        want[0, r, :, s : s + t] = x[i, :hkv]
        want[1, r, :, s : s + t] = x[i, hkv:]
    at = Positions(starts, t)
    for _ in range(2):  # the second write reuses the step's tables
        kv = ops.write_kv(ops.zeros((2, B, hkv, T, D), "float32"), ops.asarray(x), rows, at)
        np.testing.assert_array_equal(ops.to_numpy(kv), want)
    moved = Positions(starts + 1, t)  # a new step's positions land elsewhere
    kv = ops.write_kv(ops.zeros((2, B, hkv, T, D), "float32"), ops.asarray(x), rows, moved)
    assert not np.array_equal(ops.to_numpy(kv), want)


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("name", BACKENDS)
def test_rope_at_a_position_per_row_matches_float64(name, t):
    ops = get_backend(name, "cpu")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, t, 8)).astype(np.float32)
    positions = np.array([0, 7, 30])
    at = Positions(positions, t)
    got = ops.to_numpy(ops.rope(ops.asarray(x), at, 10000.0))
    again = ops.to_numpy(ops.rope(ops.asarray(x), at, 10000.0))  # the step's tables, reused
    np.testing.assert_array_equal(got, again)
    # float64 reference: interleaved pairs turned by position * base^(-2i/D)
    inv = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    ang = (positions[:, None] + np.arange(t))[:, None, :, None] * inv  # (B, 1, t, D/2)
    a, b = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    c, s = np.cos(ang), np.sin(ang)
    ref = np.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(x.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # one offset for every row is the same rotation as a per-row array of that offset
    same = ops.to_numpy(ops.rope(ops.asarray(x), Positions(7, t), 10000.0))
    np.testing.assert_allclose(same, ops.to_numpy(ops.rope(ops.asarray(x), 7, 10000.0)), 0, 0)


def _attention_f64(q, k, v, sees):
    """Softmax attention in float64 with GQA and a boolean (B, 1, tq, tk) mask."""
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(sees, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("tq", [1, 2])
@pytest.mark.parametrize("name", BACKENDS)
def test_attention_under_a_length_or_window_mask_matches_float64(name, tq, window):
    ops = get_backend(name, "cpu")
    rng = np.random.default_rng(2)
    B, H, hkv, tk, D = 3, 4, 2, 9, 8
    q = rng.standard_normal((B, H, tq, D))
    k, v = rng.standard_normal((2, B, hkv, tk, D))
    lengths = np.array([2, 9, 5])
    last = lengths[:, None, None, None] - tq + np.arange(tq)[:, None]
    sees = np.arange(tk) <= last
    if window is not None:
        sees &= np.arange(tk) > last - window
    mask = Mask(lengths=lengths, window=window)
    f32 = [ops.asarray(a.astype(np.float32)) for a in (q, k, v)]
    got = ops.to_numpy(ops.attention(*f32, 1 / np.sqrt(D), mask=mask))
    np.testing.assert_allclose(got, _attention_f64(q, k, v, sees), rtol=1e-5, atol=1e-5)
    # a leak across rows or a key past a row's length moves the result: the mask is not inert
    wide = Mask(lengths=np.full(B, tk))
    other = ops.to_numpy(ops.attention(*f32, 1 / np.sqrt(D), mask=wide))
    assert not np.allclose(other, got)


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("name", BACKENDS)
def test_rope_of_the_first_heads_leaves_the_others_as_they_are(name, per_row):
    """``heads=n``: Q|K|V heads in one call, Q and K turned exactly as alone, V untouched."""
    ops = get_backend(name, "cpu")
    x = np.random.default_rng(2).standard_normal((3, 6, 1, 8)).astype(np.float32)
    at = Positions(np.array([0, 7, 30]), 1) if per_row else Positions(5, 1)
    got = ops.to_numpy(ops.rope(ops.asarray(x), at, 10000.0, heads=4))
    alone = ops.to_numpy(ops.rope(ops.asarray(x[:, :4]), at, 10000.0))
    np.testing.assert_array_equal(got[:, :4], alone)
    np.testing.assert_array_equal(got[:, 4:], x[:, 4:])
    assert not np.allclose(got[:, 1:4], x[:, 1:4])  # (position 0's first head is its own)
