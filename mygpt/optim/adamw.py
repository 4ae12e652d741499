"""AdamW with torch's semantics on every backend: bias correction on, decoupled weight decay."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mygpt.backends.base import AdamWConfig, Ops, Optimizer
from mygpt.backends.types import Array, Params


def adamw(ops: Ops, params: Params, config: AdamWConfig, functional: bool = False) -> Optimizer:
    """The backend's fused AdamW where it has one (torch), else :class:`OpsAdamW`; always
    :class:`OpsAdamW` when ``functional`` (``--compile`` compiles its step with the model)."""
    fused = None if functional else ops.fused_adamw(params, config)
    return fused if fused is not None else OpsAdamW(ops, params, config)


class OpsAdamW(Optimizer):
    """torch's AdamW formula written against ``Ops``: MLX's AdamW, and everyone's under
    ``--compile``, whose step (``state``/``hyper``/``update``) is a pure function the framework
    compiles with the model. Checkpoints hold ``m.<name>`` and ``v.<name>``, as torch's does, so
    they move between the two."""

    def __init__(self, ops: Ops, params: Params, config: AdamWConfig) -> None:
        self.ops, self.config, self.steps = ops, config, 0
        self.m = {k: ops.zeros(v.shape, "float32") for k, v in params.items()}
        self.v = {k: ops.zeros(v.shape, "float32") for k, v in params.items()}

    def step(self, params: Params, grads: Params, lr: float) -> Params:
        out, state = self.update(params, grads, self.state(), self.hyper(lr))
        self.set_state(state)
        return out

    def state(self) -> dict[str, Params]:
        return {"m": self.m, "v": self.v}

    def set_state(self, state: dict[str, Params]) -> None:
        self.m, self.v = state["m"], state["v"]

    def hyper(self, lr: float) -> dict[str, float]:
        b1, b2 = self.config.betas
        self.steps += 1
        return {
            "lr": lr,
            "step_size": lr / (1 - b1**self.steps),
            "bc2_sqrt": math.sqrt(1 - b2**self.steps),
        }

    def update(
        self, params: Params, grads: Params, state: dict[str, Params], hyper: dict[str, Any]
    ) -> tuple[Params, dict[str, Params]]:
        (b1, b2), eps, wd = self.config.betas, self.config.eps, self.config.weight_decay
        out, m_new, v_new = {}, {}, {}
        with self.ops.no_grad():
            for k, p in params.items():
                g = grads[k]
                m = b1 * state["m"][k] + (1 - b1) * g
                v = b2 * state["v"][k] + (1 - b2) * (g * g)
                denom = self.ops.sqrt(v) / hyper["bc2_sqrt"] + eps
                out[k] = p * (1 - hyper["lr"] * wd) - hyper["step_size"] * m / denom
                m_new[k], v_new[k] = m, v
        return out, {"m": m_new, "v": v_new}

    def arrays(self) -> list[Array]:
        return [self.m, self.v]

    def state_dict(self) -> tuple[int, dict[str, np.ndarray]]:
        to_np = self.ops.to_numpy
        tensors = {f"m.{k}": to_np(v) for k, v in self.m.items()}
        return self.steps, tensors | {f"v.{k}": to_np(v) for k, v in self.v.items()}

    def load_state_dict(self, steps: int, tensors: dict[str, np.ndarray]) -> None:
        self.steps = int(steps)
        if steps:
            self.m = {k: self.ops.asarray(tensors[f"m.{k}"]) for k in self.m}
            self.v = {k: self.ops.asarray(tensors[f"v.{k}"]) for k in self.v}
