"""Learning-rate schedules: a plain Python float per step, identical on every backend."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    schedule: str = "constant",
    warmup: int = 0,
    min_lr: float = 0.0,
) -> float:
    """The learning rate for 1-based ``step``.

    Warmup is the book's linear ramp ``lr * step / warmup``; after it, ``cosine`` decays from
    ``lr`` to ``min_lr`` exactly at ``total_steps`` (the book's schedule has min_lr = 0).
    """
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
