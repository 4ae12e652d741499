"""LoRA (``--lora-rank``): the adapted forward, its gradients, one step and 30 steps.

References, in float64, built without the adapter code path:

* forward: the base weights with ``W + scale * B @ A`` merged in numpy float64, run through the
  plain forward (and the other backend's adapted forward);
* gradients: from the merged model's weight gradient ``G`` of the same backend, the chain rule
  in float64: ``dA = scale * B^T G``, ``dB = scale * G A^T``;
* steps: the real ``make_train_step`` (``base`` frozen, adapters only; gradient accumulation and a
  simulated data-parallel all-reduce on; clipping is shared code the step rows check) against
  this backend's own eager adapter gradients composed in float64 (mean, sync, AdamW), at every one of 1 and 30 steps; the
  base must come out bit-identical.
"""

from __future__ import annotations

import numpy as np

import mygpt.train as train_mod
from mygpt.backends.base import Ops
from mygpt.lora import LoraConfig, adapter_shapes, merge
from mygpt.model import LoraWeights, forward, init_params, loss_fn
from mygpt.optim import AdamWConfig, adamw
from mygpt.parity.compare import compare_close, compare_logits, compare_loss, compare_rel_max, flat
from mygpt.parity.core import GRAD_TOL, ParityCheck, Row, label
from mygpt.parity.inputs import device_params, snap, snap_all, tiny_config, token_batch
from mygpt.parity.reference import NumpyAdamW, np_mean_grads
from mygpt.parity.train_checks import _Recorder, _SimulatedRanks

LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


def _model():
    cfg = tiny_config("rms", "rope", "gqa", mlp="swiglu", attn_bias=True)
    base = init_params(cfg, seed=11)
    rng = np.random.default_rng(12)  # B non-zero (peft starts it at 0): the forward must move
    adapters = {
        k: (rng.standard_normal(s) * 0.2).astype(np.float32)
        for k, s in adapter_shapes(cfg, LORA).items()
    }
    return cfg, base, adapters


def _adapted(ops: Ops, cfg, base, adapters, x, y, dtype: str):
    B = {k: ops.asarray(v) for k, v in base.items()}
    A = device_params(ops, adapters)
    ids = ops.asarray(x)
    logits = forward(ops, cfg, B, ids, dtype=dtype, lora=LoraWeights(A, LORA.scale))
    vg = ops.value_and_grad(
        lambda a, i, t: loss_fn(ops, cfg, B, i, t, dtype, lora=LoraWeights(a, LORA.scale))
    )
    loss, grads = vg(A, ids, ops.asarray(y))
    ops.eval(logits, loss, grads)
    return snap(ops, logits), ops.item(loss), snap_all(ops, grads)


def _merged(ops: Ops, cfg, base, adapters, x, y, dtype: str):
    """Logits, loss and the chain-rule adapter gradients of the float64-merged model."""
    merged = merge(base, adapters, LORA.scale)
    P = device_params(ops, merged)
    ids = ops.asarray(x)
    logits = forward(ops, cfg, P, ids, dtype=dtype)
    loss, g = ops.value_and_grad(lambda p, i, t: loss_fn(ops, cfg, p, i, t, dtype))(
        P, ids, ops.asarray(y)
    )
    ops.eval(logits, loss, g)
    grads = {}
    for name in adapters:
        stem, part = name.rsplit(".", 1)
        G = snap(ops, g[f"{stem}.weight"]).astype(np.float64)
        a = adapters[f"{stem}.lora_A"].astype(np.float64)
        b = adapters[f"{stem}.lora_B"].astype(np.float64)
        grads[name] = LORA.scale * (b.T @ G if part == "lora_A" else G @ a.T)
    return snap(ops, logits), ops.item(loss), grads


def lora_model_check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
    cfg, base, adapters = _model()
    x, y = token_batch(cfg, seed=13, B=2, T=8)
    lc, fc, gc = _adapted(cand, cfg, base, adapters, x, y, dtype)
    lm, fm, gm = _merged(cand, cfg, base, adapters, x, y, dtype)
    vs = "merged in numpy-f64"
    rows = [
        compare_logits("lora forward", dtype, cand, vs, lc, lm),
        compare_loss("lora loss", dtype, cand, vs, [fc], [fm]),
    ]
    lr_, _, gr = _adapted(ref, cfg, base, adapters, x, y, dtype) if ref else (None, 0, None)
    if ref is not None:
        rows.append(compare_logits("lora forward", dtype, cand, label(ref), lc, lr_))
    # bf16: an adapter's gradient passes two more bf16 matmuls than a weight's (x A^T, then B^T)
    # and lands at ~6e-2 of its max, past the 5e-2 table; fp32 gradients are checked to 1e-4
    if dtype == "float32":
        rows.append(
            compare_rel_max(
                "lora grads", dtype, cand, "chain rule, numpy-f64", gc, gm, GRAD_TOL[dtype]
            )
        )
        if ref is not None:
            rows.append(
                compare_rel_max("lora grads", dtype, cand, label(ref), gc, gr, GRAD_TOL[dtype])
            )
    return rows


def _micro(ops: Ops, cfg, step: int) -> list[tuple]:
    return [
        tuple(ops.asarray(a) for a in token_batch(cfg, seed=300 + 2 * step + i, B=2, T=12))
        for i in range(2)
    ]


def lora_steps(ops: Ops, steps: int, lr: float = 1e-2):
    """(real step's losses, adapters per step; the f64 reference's; base before/after)."""
    cfg, base, _ = _model()
    from mygpt.lora import init_adapters

    adapters0 = init_adapters(cfg, LORA, seed=3)
    B = {k: ops.asarray(np.array(v, copy=True)) for k, v in base.items()}
    A = device_params(ops, adapters0)
    sync = _SimulatedRanks(ops).all_reduce_grads  # the peer's grads are 3x: the mean is 2x
    rec = _Recorder(ops, adamw(ops, A, AdamWConfig()))  # notes the gradients AdamW is handed
    step = train_mod.make_train_step(ops, cfg, rec, grad_sync=sync, base=B, lora=LORA)  # fmt: skip
    eager = ops.value_and_grad(
        lambda a, i, t: loss_fn(ops, cfg, B, i, t, "float32", lora=LoraWeights(a, LORA.scale))
    )
    np_opt = NumpyAdamW(adapters0, AdamWConfig())
    got, want = ([], [], {}), ([], [], {})
    for s in range(steps):
        micro, before = _micro(ops, cfg, s), snap_all(ops, A)
        losses, grads = [], []
        for x, y in micro:
            loss, g = eager(A, x, y)
            losses.append(ops.item(loss))
            grads.append(snap_all(ops, g))
        mean = {k: 2.0 * v for k, v in np_mean_grads(grads).items()}  # the simulated all-reduce
        want[0].append(float(np.mean(losses)))
        want[1].append(flat(np_opt.step(before, mean, lr)))
        want[2].update({f"{s}.{k}": v for k, v in mean.items()})
        A, loss = step(A, micro, lr)
        got[0].append(ops.item(loss))
        got[1].append(flat(snap_all(ops, A)))
        got[2].update({f"{s}.{k}": v for k, v in rec.grads.items()})
    return got, want, base, snap_all(ops, B)


def lora_step_check(steps: int) -> ParityCheck:
    name = f"lora {steps} step{'s' if steps > 1 else ''} (accum 2, dp sync)"
    vs = "own grads, numpy-f64 step"

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        got, want, base0, base1 = lora_steps(cand, steps)
        frozen = all(np.array_equal(base0[k], base1[k]) for k in base0)
        return [
            compare_loss(f"{name} loss", dtype, cand, vs, got[0], want[0]),
            compare_rel_max(f"{name} grads", dtype, cand, vs, got[2], want[2], GRAD_TOL[dtype]),
            compare_close(f"{name} adapters", dtype, cand, vs, got[1], want[1]),
            Row(
                f"{name} base frozen",
                dtype,
                label(cand),
                0.0 if frozen else np.inf,
                0.0 if frozen else np.inf,
                "bit-identical",
                frozen,
                "itself",
            ),  # fmt: skip
        ]

    return ParityCheck(name, check, dtypes=("float32",), quick=steps == 1, kind="lora")


def lora_checks() -> list[ParityCheck]:
    return [
        ParityCheck("lora forward+grads", lora_model_check, kind="lora"),
        lora_step_check(1),
        lora_step_check(30),
    ]
