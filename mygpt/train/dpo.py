"""DPO (``mygpt train PAIRS.jsonl --dpo``): the loss, the reference model, the step, validation.

The loss is trl's ``DPOTrainer``'s. With ``pi`` and ``ref`` the policy's and the reference's
log-probabilities of a pair's responses (the sum over the response tokens; their mean for IPO,
as trl does), ``z = (pi_c - pi_r) - (ref_c - ref_r)``:

* ``sigmoid``: ``-log sigmoid(beta z)``, computed as the cross-entropy of the two logits
  ``[0, beta z]`` against class 1 (``log(1 + e^-beta z)``, the backends' stable fp32 kernel);
* ``ipo``: ``(z - 1 / (2 beta))^2``;

each averaged over the pairs. The metrics are trl's: ``rewards/chosen`` = mean ``beta (pi_c -
ref_c)``, ``rewards/rejected`` likewise, ``rewards/accuracies`` the share of pairs whose chosen
reward is the larger, ``rewards/margins`` their mean difference, ``logps/chosen`` and
``logps/rejected`` the policy's mean log-probabilities.

Per-row log-probabilities come from the ops the model already has: each row's masked
cross-entropy (the mean over its response tokens) times its token count. The step returns the
policy's log-probabilities without a second forward pass: the loss adds ``sum(probe * pi)`` for
a zero ``probe`` (adding exactly 0 to the loss and to every other gradient), and the gradient
with respect to ``probe`` is ``pi`` itself.

The reference: with ``--lora-rank``, the base with the adapters off (no second copy); in full
training, a frozen copy of the ``--init-from`` weights, or (``--dpo-precompute-ref``) their
log-probabilities computed once at the start and the copy dropped. A resumed full run reloads
the ``--init-from`` weights, checked against the digest the run saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from mygpt import model
from mygpt.config import ModelConfig
from mygpt.console import console
from mygpt.errors import MygptError
from mygpt.train.config import DPO_LOSSES

#: trl's metric names, in the order a stats vector holds them
STATS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
         "logps/chosen", "logps/rejected")  # fmt: skip
PROBE = "__dpo_policy_logps__"


@dataclasses.dataclass(frozen=True)
class DpoSpec:
    beta: float = 0.1
    loss_type: str = "sigmoid"  # one of DPO_LOSSES

    def __post_init__(self) -> None:
        if self.loss_type not in DPO_LOSSES or self.beta <= 0:
            raise MygptError(
                f"--dpo-loss {self.loss_type} / --dpo-beta {self.beta}: use one of "
                f"{', '.join(DPO_LOSSES)} and a positive beta"
            )

    def logps(self, nll: Any, count: Any) -> Any:
        """Per-row log-probabilities from the rows' mean response NLL: the sum over the response
        tokens, or (IPO) their mean."""
        return -nll if self.loss_type == "ipo" else -(nll * count)

    def loss(self, ops: Any, policy: Any, ref: Any) -> Any:
        """Mean DPO loss of the pairs whose rows are ``policy`` / ``ref`` (chosen, then rejected)."""
        b = policy.shape[0] // 2
        z = (policy[:b] - policy[b:]) - (ref[:b] - ref[b:])
        if self.loss_type == "ipo":
            d = z - 1.0 / (2.0 * self.beta)
            return (d * d).sum() / b
        two = ops.concat([ops.zeros((b, 1), "float32"), ops.reshape(z * self.beta, (b, 1))], 1)
        return ops.cross_entropy(two, ops.asarray(np.ones(b, np.int64)))


def row_nll(ops: Any, cfg: ModelConfig, params: dict, batch: dict, *, dtype: str, train: bool,
            lora: model.LoraWeights | None = None) -> Any:  # fmt: skip
    """Each row's mean NLL over its response tokens, (rows,) fp32, from one forward pass."""
    logits = model.forward(ops, cfg, params, batch["x"], dtype=dtype, train=train, lora=lora)
    y, mask = batch["y"], batch["mask"]
    rows = [
        ops.reshape(ops.cross_entropy(logits[i : i + 1], y[i : i + 1], mask[i : i + 1]), (1,))
        for i in range(y.shape[0])
    ]
    return ops.concat(rows, 0)


def stats_of(spec: DpoSpec, policy: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """trl's six metrics (``STATS``) of rows ``policy`` / ``ref``, in float64."""
    policy, ref = policy.astype(np.float64), ref.astype(np.float64)
    b = len(policy) // 2
    rc, rr = spec.beta * (policy[:b] - ref[:b]), spec.beta * (policy[b:] - ref[b:])
    return np.array([rc.mean(), rr.mean(), (rc > rr).mean(), (rc - rr).mean(),
                     policy[:b].mean(), policy[b:].mean()])  # fmt: skip


# --- the reference ----------------------------------------------------------------------------


class Reference:
    """The reference log-probabilities of a batch's rows (no gradient)."""

    def __init__(self, ops: Any, cfg: ModelConfig, spec: DpoSpec, dtype: str,
                 weights: dict | None, kind: str) -> None:  # fmt: skip
        self.ops, self.cfg, self.spec, self.dtype = ops, cfg, spec, dtype
        self.weights, self.kind = weights, kind
        self.tables: dict[int, np.ndarray] = {}  # precomputed: id(PairSet) -> (N, 2)

    def logps(self, batch: dict) -> Any:
        table = self.tables.get(id(batch["set"]))
        if table is not None:
            idx = batch["idx"]
            return self.ops.asarray(np.concatenate([table[idx, 0], table[idx, 1]]))
        with self.ops.no_grad():
            nll = row_nll(self.ops, self.cfg, self.weights, batch, dtype=self.dtype, train=False)
            out = self.spec.logps(nll, batch["count"])
        self.ops.eval(out)
        return out

    def precompute(self, pairs: Any, chunk: int) -> None:
        """Every pair's reference log-probabilities, once, in batches of ``chunk`` pairs (the last
        padded to the same shape): afterwards the reference weights are no longer needed."""
        from mygpt.train.dpo_data import DpoData

        n, out = len(pairs), np.zeros((len(pairs), 2), np.float32)
        with self.ops.inference():
            for start in range(0, n, chunk):
                idx = np.minimum(np.arange(start, start + chunk), n - 1)
                rows = self.ops.to_numpy(self.logps(DpoData.batch(self.ops, pairs, idx)))
                keep = min(chunk, n - start)
                out[start : start + keep, 0] = rows[:keep]
                out[start : start + keep, 1] = rows[chunk : chunk + keep]
        self.tables[id(pairs)] = out


def reference_digest(tc: Any, np_params: dict) -> dict:
    from mygpt.lora import base_digest, base_reference

    return {"source": base_reference(tc.init_from), "digest": base_digest(np_params)}


def reference_weights(tc: Any, init: Any) -> dict:
    """A full run's reference weights (numpy): the --init-from model's; a resumed run reloads
    them and checks them against the digest it saved."""
    from mygpt.lora import base_digest
    from mygpt.train.init_from import load_init_source

    if init is not None:
        return init.params
    saved = tc.extra.get("dpo_reference") or {}
    if not saved:
        raise MygptError(
            "the checkpoint has no DPO reference (it was not a --dpo run) — resume without --dpo"
        )
    params = load_init_source(saved["source"]).params
    if base_digest(params) != saved["digest"]:
        raise MygptError(
            f"{saved['source']} is not the model this DPO run started from (its weights changed) "
            "— the reference must be the same; restore that model to resume"
        )
    return params


def make_reference(run: Any, tc: Any, rd: Any, state: Any, init: Any) -> Reference:
    ops, cfg = run.ops, dataclasses.replace(state.cfg, dropout=0.0)
    spec = DpoSpec(tc.dpo_beta, tc.dpo_loss)
    if state.lora is not None:  # the base, adapters off: the arrays the policy already uses
        ref, what = (
            Reference(ops, cfg, spec, run.dtype, state.base, "base"),
            "the base model, adapters off",
        )
    else:
        np_ref = reference_weights(tc, init)
        weights = {k: ops.asarray(v) for k, v in np_ref.items()}
        ref, what = (
            Reference(ops, cfg, spec, run.dtype, weights, "frozen"),
            "a frozen copy of --init-from",
        )
    if tc.dpo_precompute_ref:
        chunk = tc.batch_size // run.dist.world_size
        for pairs in (rd.train, rd.val_sampler.pairs if rd.val_sampler else None):
            if pairs is not None:
                ref.precompute(pairs, chunk)
        if state.lora is None:
            ref.weights = None  # the copy is dropped: that is the memory it saves
        what += ", log-probs precomputed"
    console.status(f"dpo: {tc.dpo_loss} loss, beta {tc.dpo_beta} · reference: {what}")
    return ref


# --- the step and validation -------------------------------------------------------------------


def make_dpo_step(ops: Any, cfg: ModelConfig, opt: Any, spec: DpoSpec, reference: Reference, *,
                  dtype: str = "float32", max_grad_norm: float = 0.0, compile: bool = False,
                  grad_sync: Callable | None = None, base: dict | None = None,
                  lora: Any = None) -> Callable:  # fmt: skip
    """``step(params, micro_batches, lr) -> (params, loss, (policy, ref))``: the DPO loss's
    gradients averaged over micro-batches (and ranks, by ``grad_sync``), then clipping and the
    optimizer, as :func:`mygpt.train.step.make_train_step`; ``policy`` and ``ref`` are each
    micro-batch's per-row log-probabilities (device arrays) for the metrics."""
    from mygpt.train.step import make_update, mean_of_micro_batches

    cfg = dataclasses.replace(cfg, dropout=0.0)  # trl disables dropout: the policy = the reference

    def loss_of(p, x, y, mask, count, ref):
        w = {k: v for k, v in p.items() if k != PROBE}
        params, adapters = (
            (w, None) if lora is None else (base, model.LoraWeights(w, lora.scale, lora.dropout))
        )
        batch = {"x": x, "y": y, "mask": mask}
        pol = spec.logps(
            row_nll(ops, cfg, params, batch, dtype=dtype, train=True, lora=adapters), count
        )
        return spec.loss(ops, pol, ref) + (p[PROBE] * pol).sum()  # + exactly 0: see the docstring

    grad_fn = ops.value_and_grad(loss_of, compile=compile)
    apply = make_update(ops, opt, max_grad_norm, compile)

    def step(params: dict, micro_batches: list[dict], lr: float):
        pols, refs = [], []

        def results():
            for batch in micro_batches:
                ref = reference.logps(batch)
                probe = ops.zeros((batch["y"].shape[0],), "float32")
                args = (batch["x"], batch["y"], batch["mask"], batch["count"], ref)
                l_i, g_i = grad_fn({**params, PROBE: probe}, *args)
                pols.append(g_i.pop(PROBE))
                refs.append(ref)
                yield l_i, g_i

        loss, grads = mean_of_micro_batches(ops, results(), len(micro_batches), pols)
        if grad_sync is not None:
            grads = grad_sync(grads)
        params = apply(params, grads, lr)
        ops.eval(loss, params, opt.arrays(), pols)
        return params, loss, (pols, refs)

    return step


def read_stats(ops: Any, spec: DpoSpec, pending: tuple[list, list]) -> list[float]:
    """A step's metrics (``STATS``) from its micro-batches' log-probabilities (a host sync)."""
    pols, refs = pending  # per micro-batch (each its chosen rows, then its rejected): equal sizes
    each = [stats_of(spec, ops.to_numpy(p), ops.to_numpy(r)) for p, r in zip(pols, refs)]
    return np.mean(each, axis=0).tolist()


def evaluate_dpo(run: Any, tc: Any, rd: Any, state: Any, params: dict, reference: Reference):
    """(Mean DPO loss, its metrics) over the held-out pairs, averaged over ranks."""
    ops, spec = run.ops, reference.spec
    cfg = dataclasses.replace(state.cfg, dropout=0.0)
    losses, pols, refs = [], [], []
    with ops.inference():
        for batch in rd.val_batches(ops):
            ref = reference.logps(batch)
            nll = row_nll(ops, cfg, state.weights(params), batch, dtype=run.dtype, train=False,
                          lora=state.lora_weights(params))  # fmt: skip
            pol = spec.logps(nll, batch["count"])
            losses.append(spec.loss(ops, pol, ref))
            pols.append(pol)
            refs.append(ref)
        ops.eval(*losses, *pols)
        local = [
            float(np.mean([ops.item(v) for v in losses])),
            *read_stats(ops, spec, (pols, refs)),
        ]
    loss, *stats = run.dist.mean(local)
    return loss, dict(zip(STATS, stats))
