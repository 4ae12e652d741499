"""Training through the real ``mygpt.train.make_train_step``: the step ``mygpt train`` runs.

Two kinds of row:

* ``train N steps``: both backends train the same tiny model from the same weights on the same
  batches (clipping on); loss curve and final parameters must agree across backends.
* ``step <variant>``: one backend's real step (gradient accumulation, clipping, dropout,
  ``--compile``) against a reference built from that same backend's own per-micro-batch gradients
  (eager ``value_and_grad``, same params, same dropout seed) composed in float64 numpy: mean over
  micro-batches, clip, AdamW. The step is shared code, so a mistake in it (accumulation summed
  instead of averaged, a clip that never runs, dropout off in training) is made identically on
  both backends and a cross-backend comparison can't see it; this reference can. Dropout masks
  come from each framework's own RNG and have no cross-backend parity, which is why dropout is
  checked this way: the reference re-seeds the framework RNG to the step's seed, so it draws the
  very masks the step draws, in the same order.

The gradient-sync hook of data-parallel training slots in as one more ``StepVariant`` (its
``step_kwargs`` go to ``make_train_step``; ``reference_sync`` is its numpy counterpart).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mygpt.train as train_mod  # looked up at call time: the negative tests patch the step
from mygpt.backends.base import Ops
from mygpt.backends.distributed import ProcessGroup
from mygpt.config import ModelConfig
from mygpt.model import init_params, loss_fn
from mygpt.optim import AdamWConfig
from mygpt.optim.muon import MuonConfig, make_optimizer
from mygpt.parity.compare import compare_close, compare_loss, compare_rel_max, flat
from mygpt.parity.core import GRAD_TOL, TRAIN_PARAM_TOL, ParityCheck, Row, label
from mygpt.parity.inputs import device_params, snap_all, tiny_config, token_batch
from mygpt.parity.reference import NumpyAdamW, NumpyMuonAdamW, np_clip_grad_norm, np_mean_grads

# --- cross-backend training runs -----------------------------------------------------------------


def _train(ops: Ops, cfg: ModelConfig, dtype: str, steps: int, lr: float, optimizer: str = "adamw"):
    """``steps`` real training steps (clip 1.0, one micro-batch): the loss curve, final params."""
    P = device_params(ops, init_params(cfg, seed=5))
    opt = make_optimizer(ops, P, optimizer)
    step = train_mod.make_train_step(ops, cfg, opt, dtype=dtype, max_grad_norm=1.0)
    losses = []
    for s in range(steps):
        x, y = token_batch(cfg, seed=100 + s, B=4, T=cfg.max_seq_len)
        P, loss = step(P, [(ops.asarray(x), ops.asarray(y))], lr)
        losses.append(ops.item(loss))
    return losses, snap_all(ops, P)


def train_check(steps: int, quick: bool, optimizer: str = "adamw") -> ParityCheck:
    name = f"train {steps} steps" + ("" if optimizer == "adamw" else f" {optimizer}")

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        if ref is None:
            return []
        vs = label(ref)
        if dtype == "float32":
            cfg = tiny_config("layer", "learned", "mha")
            lc, pc = _train(cand, cfg, dtype, steps, 3e-3, optimizer)
            lr_, pr = _train(ref, cfg, dtype, steps, 3e-3, optimizer)
            return [
                compare_loss(f"{name} loss curve", dtype, cand, vs, lc, lr_),
                compare_rel_max(f"{name} params", dtype, cand, vs, pc, pr, TRAIN_PARAM_TOL),
            ]
        # bf16: only the loss curve, on an even smaller model (bf16 matmuls are slow on CPUs
        # without bf16 units)
        cfg = tiny_config("rms", "rope", "gqa", num_layers=1, embed_dim=16, max_seq_len=8)
        lc, _ = _train(cand, cfg, dtype, steps, 3e-3, optimizer)
        lr_, _ = _train(ref, cfg, dtype, steps, 3e-3, optimizer)
        return [compare_loss(f"{name} loss curve", dtype, cand, vs, lc, lr_)]

    return ParityCheck(name, check, quick=quick, kind="train")


# --- one backend's real step against its own float64 composition -------------------------------


@dataclass(frozen=True)
class StepVariant:
    """A configuration of the real training step (the flags ``mygpt train`` would get)."""

    name: str
    grad_accum: int = 1
    max_grad_norm: float = 0.0
    dropout: float = 0.0
    compile: bool = False
    optimizer: str = "adamw"  # or "muon" (--optimizer)
    #: further keywords for ``make_train_step``, built for the backend under test
    #: (e.g. ``lambda ops: {"grad_sync": ...}``)
    step_kwargs: Callable[[Ops], Mapping[str, Any]] | None = None
    #: the numpy counterpart of ``step_kwargs``' effect, applied to the averaged gradients
    reference_sync: Callable[[dict], dict] | None = None


_STEPS, _LR = 3, 3e-3


@dataclass
class _Trace:
    """Per step: the loss, the gradients the optimizer was handed, the parameters after."""

    losses: list[float] = field(default_factory=list)
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    params: list[np.ndarray] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)

    def add(self, step: int, loss: float, grads: dict, params: dict) -> None:
        self.losses.append(loss)
        self.grads.update({f"{step}.{k}": v for k, v in grads.items()})
        self.params.append(flat(params))


class _Recorder:
    """The optimizer ``make_train_step`` is handed: notes the gradients it receives, then steps."""

    def __init__(self, ops: Ops, opt: Any) -> None:
        self.ops, self.opt, self.grads = ops, opt, None

    def step(self, params: dict, grads: dict, lr: float) -> dict:
        self.grads = snap_all(self.ops, grads)
        return self.opt.step(params, grads, lr)

    def arrays(self) -> list:
        return self.opt.arrays()


def _micro_batches(ops: Ops, cfg: ModelConfig, step: int, n: int) -> list[tuple]:
    return [
        tuple(ops.asarray(a) for a in token_batch(cfg, seed=200 + step * n + i, B=2, T=12))
        for i in range(n)
    ]


def _reference_step(ops, eager, params, micro, variant: StepVariant, np_opt, trace, step) -> None:
    """The step composed in float64 from this backend's eager per-micro-batch gradients."""
    losses, grads = [], []
    before = snap_all(ops, params)
    for x, y in micro:
        loss, g = eager(params, x, y)
        ops.eval(loss, g)
        losses.append(ops.item(loss))
        grads.append(snap_all(ops, g))
    mean = np_mean_grads(grads)
    if variant.reference_sync is not None:
        mean = variant.reference_sync(mean)
    if variant.max_grad_norm > 0:
        mean, norm = np_clip_grad_norm(mean, variant.max_grad_norm)
        trace.norms.append(norm)
    trace.add(step, float(np.mean(losses)), mean, np_opt.step(before, mean, _LR))


def run_step_variant(ops: Ops, variant: StepVariant) -> tuple[_Trace, _Trace, ModelConfig]:
    """(what the real step did, what it should have done) over a few steps, and the model."""
    cfg = tiny_config("rms", "rope", "gqa", dropout=variant.dropout)
    params0 = init_params(cfg, seed=5)
    P = device_params(ops, params0)
    rec = _Recorder(ops, make_optimizer(ops, P, variant.optimizer))
    real = train_mod.make_train_step(
        ops,
        cfg,
        rec,
        dtype="float32",
        max_grad_norm=variant.max_grad_norm,
        compile=variant.compile,
        **(variant.step_kwargs(ops) if variant.step_kwargs else {}),
    )
    eager = ops.value_and_grad(lambda p, x, y: loss_fn(ops, cfg, p, x, y, "float32", train=True))
    np_opt = (
        NumpyMuonAdamW(params0, MuonConfig())
        if variant.optimizer == "muon"
        else NumpyAdamW(params0, AdamWConfig())
    )
    got, want = _Trace(), _Trace()
    for s in range(_STEPS):
        micro = _micro_batches(ops, cfg, s, variant.grad_accum)
        # the same seed before each: dropout draws the same masks in the same order
        ops.seed(train_mod.dropout_seed(0, s + 1))
        _reference_step(ops, eager, P, micro, variant, np_opt, want, s)
        ops.seed(train_mod.dropout_seed(0, s + 1))
        P, loss = real(P, micro, _LR)
        got.add(s, ops.item(loss), rec.grads, snap_all(ops, P))
    return got, want, cfg


def _engaged(name: str, cand: Ops, what: str, measured: float, threshold: float) -> Row:
    """A row saying the variant really exercised its feature (else its comparison proves little):
    ``measured`` must exceed ``threshold``; max rel err is their ratio, passing below 1."""
    ratio = threshold / measured if measured > 0 else math.inf
    return Row(name, "float32", label(cand), measured, ratio, what, measured > threshold, "itself")


def _feature_rows(cand: Ops, variant: StepVariant, want: _Trace, cfg: ModelConfig) -> list[Row]:
    rows, name = [], f"step {variant.name}"
    if variant.max_grad_norm > 0:
        low = min(want.norms)
        rows.append(
            _engaged(
                f"{name} clip engaged",
                cand,
                f"norm > {variant.max_grad_norm:g} each step",
                low,
                variant.max_grad_norm,
            )
        )
    if variant.dropout > 0:
        # the first step's micro-batches without dropout must give another mean loss
        P = device_params(cand, init_params(cfg, seed=5))
        micro = _micro_batches(cand, cfg, 0, variant.grad_accum)
        plain = np.mean(
            [cand.item(loss_fn(cand, cfg, P, x, y, "float32", train=False)) for x, y in micro]
        )
        gap = abs(want.losses[0] - plain)
        rows.append(_engaged(f"{name} dropout engaged", cand, "loss moves > 1e-4", gap, 1e-4))
    return rows


def step_check(variant: StepVariant, quick: bool = True, slow: bool = False) -> ParityCheck:
    name = f"step {variant.name}"
    vs = "own grads, numpy-f64 step"

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        got, want, cfg = run_step_variant(cand, variant)
        # compiled kernels round differently from the eager reference: compare the parameters
        # relative to each tensor's scale there, elementwise otherwise
        params = (
            compare_rel_max(
                f"{name} params",
                dtype,
                cand,
                vs,
                dict(enumerate(got.params)),
                dict(enumerate(want.params)),
                TRAIN_PARAM_TOL,
            )
            if variant.compile
            else compare_close(f"{name} params", dtype, cand, vs, got.params, want.params)
        )
        return [
            compare_loss(f"{name} loss", dtype, cand, vs, got.losses, want.losses),
            compare_rel_max(
                f"{name} grads", dtype, cand, vs, got.grads, want.grads, GRAD_TOL[dtype]
            ),
            params,
            *_feature_rows(cand, variant, want, cfg),
        ]

    return ParityCheck(name, check, dtypes=("float32",), quick=quick, kind="step", slow=slow)


class _SimulatedRanks(ProcessGroup):
    """Rank 0 of a 2-rank world whose peer computed 3x this rank's gradients: the data-parallel
    all-reduce (buckets, flattening, the collective's sum, the division by the world size,
    splitting back) must hand the optimizer exactly their mean, 2x, before the clip."""

    world_size = 2

    def _all_sum(self, x):
        return x * 4.0  # mine + the peer's 3x

    def _all_sum_host(self, x):
        return x * 4.0


def _simulated_sync(ops: Ops) -> Mapping[str, Any]:
    return {"grad_sync": _SimulatedRanks(ops).all_reduce_grads}


#: the step variants the gate runs
STEP_VARIANTS = (
    StepVariant("grad-accum 2", grad_accum=2),
    StepVariant("clip 0.5", max_grad_norm=0.5),
    StepVariant("muon grad-accum 2 clip 0.5", grad_accum=2, max_grad_norm=0.5, optimizer="muon"),
    StepVariant("dropout 0.1 grad-accum 2", grad_accum=2, dropout=0.1),
    StepVariant(
        "data-parallel sync grad-accum 2 clip 0.5",
        grad_accum=2,
        max_grad_norm=0.5,
        step_kwargs=_simulated_sync,
        reference_sync=lambda g: {k: 2.0 * v for k, v in g.items()},
    ),
)
COMPILE_VARIANT = StepVariant(
    "compile grad-accum 2 clip 0.5", grad_accum=2, max_grad_norm=0.5, compile=True
)


def step_checks() -> list[ParityCheck]:
    return [
        *(step_check(v) for v in STEP_VARIANTS),
        step_check(COMPILE_VARIANT, quick=False, slow=True),
    ]
