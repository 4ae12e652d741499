"""DPO (``--dpo``): the loss and its gradient, sigmoid and IPO, MLX vs torch and vs float64.

The reference is the policy with 5% noise added, so ``z`` is O(1), not 0. The
references, built without the DPO code path (``row_nll``, ``DpoSpec.loss``):

* the loss: the candidate's own logits, in numpy float64: log-softmax, the response tokens'
  log-probabilities summed (IPO: averaged) per row, then trl's formula;
* the gradient: the chain rule in float64 down to the logits (``dL/dlogits``), then the
  backend's own backward of the plain forward, ``d sum(logits * G) / d params`` (the model's
  backward is what the model rows check).
"""

from __future__ import annotations

import numpy as np

from mygpt.backends.base import Ops
from mygpt.model import forward, init_params
from mygpt.parity.compare import compare_loss, compare_rel_max
from mygpt.parity.core import GRAD_TOL, NUMPY, ParityCheck, Row, label
from mygpt.parity.inputs import device_params, snap, snap_all, tiny_config, token_batch
from mygpt.train.dpo import DpoSpec, row_nll

PAIRS, T = 3, 10


def _inputs():
    cfg = tiny_config("rms", "rope", "gqa", mlp="swiglu")
    x, y = token_batch(cfg, seed=41, B=2 * PAIRS, T=T)
    mask = np.zeros((2 * PAIRS, T), np.float32)
    for i in range(2 * PAIRS):  # a prompt of 3 + i % 3 tokens, the response after it
        mask[i, 2 + i % 3 :] = 1.0
    mask[-1, -2:] = 0.0  # and one shorter response (right padding)
    policy = init_params(cfg, seed=42)
    # the reference near the policy, as after a few DPO steps: z is O(1), not the O(10) of two
    # unrelated models (whose bf16 rounding in the summed log-probs the loss would magnify)
    rng = np.random.default_rng(43)
    reference = {k: (v + 0.05 * v.std() * rng.standard_normal(v.shape)).astype(np.float32)
                 for k, v in policy.items()}  # fmt: skip
    return cfg, policy, reference, x, y, mask


def _dpo(ops: Ops, spec: DpoSpec, dtype: str):
    """(loss, grads, logits) of the real code path on this backend."""
    cfg, policy, reference, x, y, mask = _inputs()
    P, R = device_params(ops, policy), {k: ops.asarray(v) for k, v in reference.items()}
    batch = {k: ops.asarray(v) for k, v in (("x", x), ("y", y), ("mask", mask))}
    count = ops.asarray(mask.sum(-1))
    ref = spec.logps(row_nll(ops, cfg, R, batch, dtype=dtype, train=False), count)

    def loss_of(p):
        pol = spec.logps(row_nll(ops, cfg, p, batch, dtype=dtype, train=False), count)
        return spec.loss(ops, pol, ref)

    loss, grads = ops.value_and_grad(loss_of)(P)
    logits = forward(ops, cfg, P, batch["x"], dtype=dtype)
    ref_logits = forward(ops, cfg, R, batch["x"], dtype=dtype)
    ops.eval(loss, grads, logits, ref_logits)
    return ops.item(loss), snap_all(ops, grads), snap(ops, logits), snap(ops, ref_logits)


def _np_logps(spec: DpoSpec, logits: np.ndarray, y: np.ndarray, mask: np.ndarray):
    """Per-row log-probabilities and d logp / d logits, float64."""
    z = logits.astype(np.float64)
    logsm = (
        z
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - z.max(-1, keepdims=True)
    )
    picked = np.take_along_axis(logsm, y[..., None], -1)[..., 0]
    scale = 1.0 / mask.sum(-1) if spec.loss_type == "ipo" else np.ones(len(mask))
    logps = (picked * mask).sum(-1) * scale
    onehot = np.eye(z.shape[-1])[y]
    dlogits = (onehot - np.exp(logsm)) * (mask * scale[:, None])[..., None]
    return logps, dlogits


def _np_loss(spec: DpoSpec, pol: np.ndarray, ref: np.ndarray) -> tuple[float, np.ndarray]:
    """trl's loss and dL/dpol, float64."""
    b = len(pol) // 2
    z = (pol[:b] - pol[b:]) - (ref[:b] - ref[b:])
    if spec.loss_type == "ipo":
        d = z - 1.0 / (2.0 * spec.beta)
        loss, dz = float(np.mean(d * d)), 2.0 * d / b
    else:
        loss = float(np.mean(np.logaddexp(0.0, -spec.beta * z)))
        dz = -spec.beta / (1.0 + np.exp(spec.beta * z)) / b
    return loss, np.concatenate([dz, -dz])


def _chain_rule_grads(ops: Ops, dtype: str, G: np.ndarray) -> dict:
    """d sum(logits * G) / d params with this backend's backward (G: dL/dlogits, float64)."""
    cfg, policy, _, x, _, _ = _inputs()
    P, ids, g = device_params(ops, policy), ops.asarray(x), ops.asarray(G.astype(np.float32))

    def probe(p):
        return (ops.cast(forward(ops, cfg, p, ids, dtype=dtype), "float32") * g).sum()

    _, grads = ops.value_and_grad(probe)(P)
    ops.eval(grads)
    return snap_all(ops, grads)


def dpo_check(loss_type: str):
    spec = DpoSpec(beta=0.5, loss_type=loss_type)  # beta 0.5: the sigmoid far from linear
    name = f"dpo {loss_type}"

    def check(ref_ops: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        _, _, _, _, y, mask = _inputs()
        loss, grads, logits, ref_logits = _dpo(cand, spec, dtype)
        pol, dpol = _np_logps(spec, logits, y, mask)
        ref, _ = _np_logps(spec, ref_logits, y, mask)
        want, dl = _np_loss(spec, pol, ref)
        rows = [compare_loss(f"{name} loss", dtype, cand, NUMPY, [loss], [want])]
        if dtype == "float32":  # bf16 gradients go through the bf16 backward: the model rows
            G = dl[:, None, None] * dpol
            chain = _chain_rule_grads(cand, dtype, G)
            rows.append(compare_rel_max(f"{name} grads", dtype, cand, "chain rule, numpy-f64",
                                        grads, chain, GRAD_TOL[dtype]))  # fmt: skip
        if ref_ops is not None:
            r_loss, r_grads, _, _ = _dpo(ref_ops, spec, dtype)
            rows.append(compare_loss(f"{name} loss", dtype, cand, label(ref_ops), [loss], [r_loss]))
            rows.append(compare_rel_max(f"{name} grads", dtype, cand, label(ref_ops), grads,
                                        r_grads, GRAD_TOL[dtype]))  # fmt: skip
        return rows

    # fp32 only: DPO's z is a difference of *sums* over the response tokens of two forwards, so
    # the backends' different bf16 roundings of the logits (an ulp of 2^-8) add up to ~3e-2 in
    # the loss, past the table's 2e-3 for a mean over tokens. bf16 DPO is checked where it is
    # exact: step 1's loss is ln 2 (tests/test_dpo.py)
    return ParityCheck(f"{name} loss+grads", check, dtypes=("float32",), kind="dpo")


def dpo_checks() -> list[ParityCheck]:
    return [dpo_check("sigmoid"), dpo_check("ipo")]
