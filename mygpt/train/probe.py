"""A training step on random batches: what ``mygpt bench`` times, and what ``--precision auto``
measures in both dtypes on a bf16-capable CPU before a run starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mygpt.config import ModelConfig
from mygpt.model import init_params
from mygpt.optim.muon import make_optimizer
from mygpt.train.step import make_train_step


def _batch(ops: Any, rng: np.random.Generator, vocab: int, batch: int, seq: int) -> tuple:
    ids = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int64)
    return ops.asarray(ids[:, :-1]), ops.asarray(ids[:, 1:])


def synthetic_step(
    ops: Any,
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    dtype: str = "float32",
    *,
    compile: bool = False,
    max_grad_norm: float = 0.0,
    seed: int = 0,
) -> Callable[[], float]:
    """A closure running one full training step on a fixed set of random batches; returns loss.

    The step ends with a host sync on the loss (what a training loop that logs does), which is
    also what makes MLX's lazy graph run, so wall time around it is the step's time.
    """
    state: dict[str, Any] = {
        "params": ops.trainable({k: ops.asarray(v) for k, v in init_params(cfg, seed).items()})
    }
    opt = make_optimizer(ops, state["params"], "adamw", functional=compile)

    train_step = make_train_step(
        ops, cfg, opt, dtype=dtype, max_grad_norm=max_grad_norm, compile=compile
    )
    rng = np.random.default_rng(42)
    batches = [_batch(ops, rng, cfg.vocab_size, batch_size, seq_len) for _ in range(4)]
    counter = [0]

    def step() -> float:
        batch = batches[counter[0] % len(batches)]
        counter[0] += 1
        state["params"], value = train_step(state["params"], [batch], 1e-3)
        out = ops.item(value)
        ops.synchronize()
        return out

    return step
