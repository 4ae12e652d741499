"""The decode-step ops against numpy: ``write_kv`` (one step, and a prefill copied in) and
``rope_at`` with ``rotated`` heads, on each installed backend."""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend

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
    for _ in range(2):  # the second write reuses the backend's tables
        kv = ops.write_kv(ops.zeros((2, B, hkv, T, D), "float32"), ops.asarray(x), rows, starts)
        np.testing.assert_array_equal(ops.to_numpy(kv), want)
    moved = starts + 1  # a new step's positions land elsewhere
    kv = ops.write_kv(ops.zeros((2, B, hkv, T, D), "float32"), ops.asarray(x), rows, moved)
    assert not np.array_equal(ops.to_numpy(kv), want)


@pytest.mark.parametrize("name", BACKENDS)
def test_rope_at_rotated_turns_the_first_heads_and_passes_the_rest(name):
    ops = get_backend(name, "cpu")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 1, 8)).astype(np.float32)
    positions = np.array([0, 7, 30])
    whole = ops.to_numpy(ops.rope_at(ops.asarray(x), positions, 10000.0))
    part = ops.to_numpy(ops.rope_at(ops.asarray(x), positions, 10000.0, rotated=3))
    np.testing.assert_array_equal(part[:, 3:], x[:, 3:])  # exactly as they came
    np.testing.assert_allclose(part[:, :3], whole[:, :3], rtol=1e-6, atol=1e-6)
    # float64 reference: interleaved pairs turned by position * base^(-2i/D)
    inv = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    ang = positions[:, None] * inv
    a, b = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    c, s = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    ref = np.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(x.shape)
    np.testing.assert_allclose(part[:, :3], ref[:, :3], rtol=1e-5, atol=1e-5)
