"""``--optimizer muon`` isolated: Muon + AdamW on identical gradients, one step and 30 steps.

Every backend against the float64 numpy composition (``NumpyMuonAdamW``), and against the reference
backend when there is one. The gradients come from numpy, not from a backward pass, so the rows
see the optimizer alone: the Nesterov momentum, the Newton-Schulz iteration (both orientations: the
MLP's fc1 is tall, fc2 and W_K/W_V wide), the shape factor, the decoupled decay, and the AdamW
group's own learning rate (``adamw_lr_ratio``). The model has every kind of parameter: learned
positions, norm and MLP biases (AdamW), GQA-shaped K/V matrices (Muon).
"""

from __future__ import annotations

import numpy as np

from mygpt.backends.base import Ops
from mygpt.model import init_params
from mygpt.optim.muon import MuonConfig, make_optimizer
from mygpt.parity.compare import compare_close, compare_rel_max, f64, flat
from mygpt.parity.core import GRAD_TOL, NUMPY, TRAIN_PARAM_TOL, ParityCheck, Row, label
from mygpt.parity.inputs import device_params, snap_all, tiny_config
from mygpt.parity.reference import NumpyMuonAdamW

_WD, _RATIO, _LR = 0.1, 0.5, 3e-3


def _inputs(steps: int) -> tuple[dict, list[dict]]:
    cfg = tiny_config("layer", "learned", "gqa")
    rng = np.random.default_rng(11)
    params = init_params(cfg, seed=12)
    grads = [
        {k: (rng.standard_normal(v.shape) * 0.3).astype(np.float32) for k, v in params.items()}
        for _ in range(steps)
    ]
    return params, grads


def _lr(step: int) -> float:
    return _LR * (1 - step / 60)  # a schedule: the learning rate changes every step


def _run(ops: Ops, params: dict, grads: list[dict]) -> tuple[dict, dict]:
    P = device_params(ops, params)
    opt = make_optimizer(ops, P, "muon", weight_decay=_WD, adamw_lr_ratio=_RATIO)
    for s, g in enumerate(grads):
        P = opt.step(P, {k: ops.asarray(v) for k, v in g.items()}, _lr(s))
        ops.eval(P, opt.arrays())
    return snap_all(ops, P), opt.state_dict()[1]


def _numpy(params: dict, grads: list[dict]) -> tuple[dict, dict]:
    P = {k: f64(v) for k, v in params.items()}
    opt = NumpyMuonAdamW(P, MuonConfig(weight_decay=_WD), adamw_lr_ratio=_RATIO)
    for s, g in enumerate(grads):
        P = opt.step(P, g, _lr(s))
    return P, opt.state()


def muon_check(steps: int) -> ParityCheck:
    name = f"muon+adamw {steps} step" + ("s" if steps > 1 else "")

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        params, grads = _inputs(steps)
        got, got_state = _run(cand, params, grads)
        wants = [(NUMPY, _numpy(params, grads))]
        if ref is not None:
            wants.append((label(ref), _run(ref, params, grads)))
        rows = []
        for vs, (want, state) in wants:
            if steps == 1:
                rows.append(compare_close(f"{name} params", dtype, cand, vs, flat(got), flat(want)))
            else:
                rows.append(
                    compare_rel_max(f"{name} params", dtype, cand, vs, got, want, TRAIN_PARAM_TOL)
                )
            rows.append(
                compare_rel_max(
                    f"{name} state", dtype, cand, vs, got_state, state, GRAD_TOL[dtype] / 10
                )
            )
        return rows

    return ParityCheck(name, check, dtypes=("float32",), quick=steps == 1, kind="optimizer")
