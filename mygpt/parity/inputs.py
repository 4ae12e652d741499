"""Seeded inputs every check builds on: dtype-exact arrays, the tiny parity model, token batches,
and the copies in and out of a backend that keep an in-place optimizer honest."""

from __future__ import annotations

import numpy as np

from mygpt.backends.base import Ops
from mygpt.config import ModelConfig


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded (to nearest even) to what ``dtype`` can hold, still as float32.

    Both backends then receive bit-identical inputs, and the numpy reference sees the values the
    backends really computed on.
    """
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def rng_for(name: str) -> np.random.Generator:
    # A fixed seed per check name: reruns and both backends see the same numbers.
    return np.random.default_rng(sum(ord(c) * (i + 1) for i, c in enumerate(name)))


KV_HEADS = {"mha": 4, "gqa": 2, "mqa": 1}


def tiny_config(
    norm: str = "layer", position: str = "learned", kv: str = "mha", **kw
) -> ModelConfig:
    """The parity model: small enough that bf16 on a CPU without bf16 units stays fast."""
    base = dict(vocab_size=40, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base, num_kv_heads=KV_HEADS[kv], norm=norm, position=position)


def token_batch(cfg: ModelConfig, seed: int, B: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens from a seeded random bigram chain: learnable structure, so a loss curve moves."""
    rng = np.random.default_rng(seed)
    V = cfg.vocab_size
    nxt = rng.integers(0, V, (V, 3))  # each token is followed by one of 3 tokens
    seq = np.empty((B, T + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(0, V, B)
    for t in range(T):
        seq[:, t + 1] = nxt[seq[:, t], rng.integers(0, 3, B)]
    return seq[:, :-1].copy(), seq[:, 1:].copy()


def snap(ops: Ops, x) -> np.ndarray:
    """A numpy *copy*: torch's ``to_numpy`` can return a view of a tensor an optimizer later
    updates in place (parity_tests/test_parity_backend_bugs.py)."""
    return np.array(ops.to_numpy(x), copy=True)


def snap_all(ops: Ops, tensors: dict) -> dict[str, np.ndarray]:
    return {k: snap(ops, v) for k, v in tensors.items()}


def device_params(ops: Ops, params: dict[str, np.ndarray]) -> dict:
    # Copy first: torch's ``asarray`` can share memory with the numpy input, and its in-place
    # AdamW would then rewrite the caller's arrays (parity_tests/test_parity_backend_bugs.py).
    return ops.trainable({k: ops.asarray(np.array(v, copy=True)) for k, v in params.items()})
