"""KVCache against the obvious reference: concatenate everything, keep the newest max_len."""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.model import KVCache

BACKENDS = available_backends()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "chunks", [[1] * 40, [5, 1, 1, 7, 3, 1, 8, 2, 1, 1, 6, 4], [12, 8, 1, 12], [3, 8, 8, 8]]
)
def test_cache_sees_the_newest_max_len_entries(backend, chunks):
    ops = get_backend(backend, "cpu")
    rng = np.random.default_rng(0)
    max_len, layers = 8, 2
    cache = KVCache(layers, max_len)
    seen_k = [np.zeros((1, 2, 0, 4), np.float32) for _ in range(layers)]
    seen_v = [np.zeros((1, 2, 0, 4), np.float32) for _ in range(layers)]
    with ops.inference():
        for t in chunks:
            for layer in range(layers):
                k = rng.standard_normal((1, 2, t, 4)).astype(np.float32)
                v = rng.standard_normal((1, 2, t, 4)).astype(np.float32)
                seen_k[layer] = np.concatenate([seen_k[layer], k], axis=2)
                seen_v[layer] = np.concatenate([seen_v[layer], v], axis=2)
                got_k, got_v = cache.update(ops, layer, ops.asarray(k), ops.asarray(v))
                np.testing.assert_array_equal(ops.to_numpy(got_k), seen_k[layer][:, :, -max_len:])
                np.testing.assert_array_equal(ops.to_numpy(got_v), seen_v[layer][:, :, -max_len:])
    assert sum(chunks) > 2 * max_len  # the buffer wrapped at least once
