"""Muon for the blocks' matrices, AdamW for the rest: written once against ``Ops``.

Muon (Keller Jordan's; torch.optim.Muon and mlx.optimizers.Muon are the same algorithm with
different details) takes, for each 2-D weight inside the transformer blocks (attention W_Q, W_K,
W_V, W_O and the MLP matrices):

1. Nesterov momentum 0.95: ``buf = 0.95 buf + 0.05 g``, ``u = 0.05 g + 0.95 buf`` (torch's and
   MLX's ``lerp`` form);
2. an approximate orthogonalisation of ``u``: normalised to unit Frobenius norm (+1e-7), transposed
   so rows <= columns, then 5 steps of the quintic Newton-Schulz iteration ``X <- aX + (bA + cA^2)X``
   with ``A = X X^T`` and (a, b, c) = (3.4445, -4.7750, 2.0315) -- in fp32 (Keller's and torch's
   run it in bf16 on GPUs; fp32 keeps the two backends and the float64 reference within the parity
   tolerances, and the matrices here are small);
3. decoupled weight decay ``p *= 1 - lr * wd`` then ``p -= lr * 0.2 * sqrt(max(rows, cols)) * O``.

The shape factor is Moonshot's "match_rms_adamw" (torch's ``adjust_lr_fn="match_rms_adamw"``): it
gives the update the RMS of a typical AdamW update (~0.2), so ``--lr`` means the same step size for
both optimizers and the AdamW group can share it (``--adamw-lr`` sets its own). Keller's factor
``max(1, rows/cols)^0.5`` needs a learning rate ~20x AdamW's instead.

Embeddings (and the head), norms and biases stay on AdamW (``mygpt.optim.adamw``). Only ``+ - * @``,
``sum``, ``** 0.5`` and ``Ops`` methods are used, so each is one implementation on both backends,
and each has a functional form (``state``/``hyper``/``update``: the update a pure function of
parameters, gradients, state and the step's scalars) that ``--compile`` compiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mygpt.backends.base import AdamWConfig, Ops, Optimizer
from mygpt.backends.types import Array, Params
from mygpt.errors import MygptError
from mygpt.optim.adamw import adamw

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
OPTIMIZERS = ("adamw", "muon")


@dataclass
class MuonConfig:
    momentum: float = 0.95
    weight_decay: float = 0.01
    ns_steps: int = 5
    eps: float = 1e-7


def is_muon_param(name: str, shape: Sequence[int]) -> bool:
    """A 2-D weight inside a block (attention and MLP matrices): what Muon updates."""
    return name.startswith("blocks.") and len(shape) == 2


def shape_scale(shape: Sequence[int]) -> float:
    """Moonshot's factor: the update's RMS becomes AdamW's typical ~0.2."""
    return 0.2 * max(shape[0], shape[1]) ** 0.5


def newton_schulz(ops: Ops, g: Array, steps: int = 5, eps: float = 1e-7) -> Array:
    """The quintic Newton-Schulz approximation of ``U V^T`` (``g = U S V^T``), in fp32."""
    a, b, c = NS_COEFFICIENTS
    x = ops.cast(g, "float32")
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = ops.transpose(x, (1, 0))
    x = x * (1.0 / ((x * x).sum() ** 0.5 + eps))
    for _ in range(steps):
        gram = x @ ops.transpose(x, (1, 0))
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return ops.transpose(x, (1, 0)) if tall else x


class Muon(Optimizer):
    """Muon over a dict of 2-D weights; its state is one momentum buffer per matrix."""

    def __init__(self, ops: Ops, params: Params, config: MuonConfig) -> None:
        self.ops, self.config, self.steps = ops, config, 0
        self.buf = {k: ops.zeros(v.shape, "float32") for k, v in params.items()}

    def step(self, params: Params, grads: Params, lr: float) -> Params:
        out, self.buf = self.update(params, grads, self.buf, self.hyper(lr))
        return out

    # the functional form ``--compile`` compiles: state in, state out, the step's scalars as inputs
    def state(self) -> Params:
        return self.buf

    def set_state(self, state: Params) -> None:
        self.buf = state

    def hyper(self, lr: float) -> dict[str, float]:
        """Count the step; its scalars."""
        self.steps += 1
        return {"lr": lr}

    def update(
        self, params: Params, grads: Params, buf: Params, hyper: dict[str, Any]
    ) -> tuple[Params, Params]:
        """The step as a pure function: (new params, new momentum buffers)."""
        c, ops, lr = self.config, self.ops, hyper["lr"]
        mu = c.momentum
        out, new_buf = {}, {}
        with ops.no_grad():
            for k, p in params.items():
                g = ops.cast(grads[k], "float32")
                b = mu * buf[k] + (1 - mu) * g
                o = newton_schulz(ops, (1 - mu) * g + mu * b, c.ns_steps, c.eps)
                out[k] = p * (1 - lr * c.weight_decay) - (lr * shape_scale(p.shape)) * o
                new_buf[k] = b
        return out, new_buf

    def arrays(self) -> list[Array]:
        return [self.buf]

    def state_dict(self) -> tuple[int, dict[str, np.ndarray]]:
        return self.steps, {f"muon.{k}": self.ops.to_numpy(v) for k, v in self.buf.items()}

    def load_state_dict(self, steps: int, tensors: dict[str, np.ndarray]) -> None:
        self.steps = int(steps)
        self.buf = {k: self.ops.asarray(tensors[f"muon.{k}"]) for k in self.buf}


class MuonAdamW(Optimizer):
    """Muon on the blocks' matrices, the backend's AdamW (at ``adamw_lr_ratio`` x the step's lr)
    on everything else. The checkpoint holds AdamW's ``m.``/``v.`` tensors and ``muon.<name>``."""

    def __init__(
        self,
        ops: Ops,
        params: Params,
        config: MuonConfig,
        adamw_lr_ratio: float = 1.0,
        functional: bool = False,
    ) -> None:
        self.muon_names = [k for k, v in params.items() if is_muon_param(k, v.shape)]
        matrices = set(self.muon_names)
        self.adamw_names = [k for k in params if k not in matrices]
        self.ratio = adamw_lr_ratio
        self.muon = Muon(ops, {k: params[k] for k in self.muon_names}, config)
        rest, adamw_cfg = (
            {k: params[k] for k in self.adamw_names},
            AdamWConfig(weight_decay=config.weight_decay),
        )
        self.adamw = adamw(ops, rest, adamw_cfg, functional)

    def step(self, params: Params, grads: Params, lr: float) -> Params:
        def part(names: list[str], d: Params) -> Params:
            return {k: d[k] for k in names}

        new = self.adamw.step(
            part(self.adamw_names, params), part(self.adamw_names, grads), lr * self.ratio
        )
        new.update(self.muon.step(part(self.muon_names, params), part(self.muon_names, grads), lr))
        return {k: new[k] for k in params}  # the parameter order the caller gave

    @property
    def steps(self) -> int:
        return self.muon.steps

    def state(self) -> dict[str, Any]:
        return {"adamw": self.adamw.state(), "muon": self.muon.state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.adamw.set_state(state["adamw"])
        self.muon.set_state(state["muon"])

    def hyper(self, lr: float) -> dict[str, float]:
        adamw = self.adamw.hyper(lr * self.ratio)
        return {**{f"adamw.{k}": v for k, v in adamw.items()}, **self.muon.hyper(lr)}

    def update(
        self, params: Params, grads: Params, state: dict[str, Any], hyper: dict[str, Any]
    ) -> tuple[Params, dict[str, Any]]:
        adamw_hyper = {k[6:]: v for k, v in hyper.items() if k.startswith("adamw.")}
        a = self.adamw_names
        new, adamw_state = self.adamw.update(
            {k: params[k] for k in a}, {k: grads[k] for k in a}, state["adamw"], adamw_hyper
        )
        m = self.muon_names
        muon_new, muon_state = self.muon.update(
            {k: params[k] for k in m}, {k: grads[k] for k in m}, state["muon"], hyper
        )
        new.update(muon_new)
        return {k: new[k] for k in params}, {"adamw": adamw_state, "muon": muon_state}

    def arrays(self) -> list[Array]:
        return [*self.adamw.arrays(), *self.muon.arrays()]

    def state_dict(self) -> tuple[int, dict[str, np.ndarray]]:
        steps, tensors = self.adamw.state_dict()
        return steps, {**tensors, **self.muon.state_dict()[1]}

    def load_state_dict(self, steps: int, tensors: dict[str, np.ndarray]) -> None:
        missing = [k for k in self.muon_names if f"muon.{k}" not in tensors]
        if steps and missing:
            raise MygptError(
                f"the checkpoint has no Muon momentum for {missing[0]} (it was trained with "
                "another --optimizer) — resume with the checkpoint's --optimizer"
            )
        self.adamw.load_state_dict(steps, tensors)
        if steps:
            self.muon.load_state_dict(steps, tensors)


def make_optimizer(
    ops: Ops,
    params: Params,
    kind: str = "adamw",
    *,
    weight_decay: float = 0.01,
    adamw_lr_ratio: float = 1.0,
    functional: bool = False,
) -> Optimizer:
    """``--optimizer adamw`` (the book's, every parameter) or ``muon`` (see the module doc).

    ``functional`` (``--compile``): AdamW is :class:`OpsAdamW`, whose step is a pure function the
    framework can compile together with the rest of the training step; otherwise the backend's
    own (torch's fused kernel)."""
    if kind == "adamw":
        return adamw(ops, params, AdamWConfig(weight_decay=weight_decay), functional)
    if kind == "muon":
        cfg = MuonConfig(weight_decay=weight_decay)
        return MuonAdamW(ops, params, cfg, adamw_lr_ratio, functional)
    raise MygptError(f"unknown optimizer {kind!r} — use one of: {', '.join(OPTIMIZERS)}")
