"""The one-stream caches against the obvious reference: concatenate everything, keep the newest
max_len (SlidingCache); GrowingCache refuses to pass its context instead."""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.cache import GrowingCache, SlidingCache
from mygpt.errors import MygptError

BACKENDS = available_backends()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "chunks", [[1] * 40, [5, 1, 1, 7, 3, 1, 8, 2, 1, 1, 6, 4], [12, 8, 1, 12], [3, 8, 8, 8]]
)
def test_cache_sees_the_newest_max_len_entries(backend, chunks):
    _check_cache(backend, chunks, max_len=8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunks", [[200, 1, 60, 1, 130, 250, 1, 5], [1] * 20 + [300] * 3])
def test_a_long_context_cache_grows_then_wraps(backend, chunks):
    """A real model's context (here 300) starts with a small buffer that doubles: no gigabytes
    preallocated for a 32k context; growing, then wrapping, keeps exactly the newest entries."""
    _check_cache(backend, chunks, max_len=300)


def _check_cache(backend, chunks, max_len):
    ops = get_backend(backend, "cpu")
    rng = np.random.default_rng(0)
    layers = 2
    cache = SlidingCache(layers, max_len)
    seen_k = [np.zeros((1, 2, 0, 4), np.float32) for _ in range(layers)]
    seen_v = [np.zeros((1, 2, 0, 4), np.float32) for _ in range(layers)]
    with ops.inference():
        for t in chunks:
            for layer in range(layers):
                k = rng.standard_normal((1, 2, t, 4)).astype(np.float32)
                v = rng.standard_normal((1, 2, t, 4)).astype(np.float32)
                seen_k[layer] = np.concatenate([seen_k[layer], k], axis=2)
                seen_v[layer] = np.concatenate([seen_v[layer], v], axis=2)
                got_k, got_v = cache.update(ops, layer, ops.asarray(np.concatenate([k, v], axis=1)))
                np.testing.assert_array_equal(ops.to_numpy(got_k), seen_k[layer][:, :, -max_len:])
                np.testing.assert_array_equal(ops.to_numpy(got_v), seen_v[layer][:, :, -max_len:])
    assert sum(chunks) > 2 * max_len  # the buffer wrapped at least once
    if max_len > 128:
        assert cache.keys[0].shape[2] == 2 * max_len  # grown from 256 to its full size


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_growing_cache_refuses_to_pass_its_context(backend):
    """The exact generator refills from the cropped window; a growing cache that silently
    rotated would give other tokens than the book's loop."""
    ops = get_backend(backend, "cpu")
    cache = GrowingCache(1, 8)
    kv = ops.asarray(np.zeros((1, 4, 5, 4), np.float32))
    cache.update(ops, 0, kv)
    with pytest.raises(MygptError, match="context of 8"):
        cache.update(ops, 0, kv)
