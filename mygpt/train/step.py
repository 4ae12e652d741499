"""One optimizer step, the same function on every backend and for any number of processes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from mygpt import model
from mygpt.config import ModelConfig

GradSync = Callable[[dict], dict]


def make_train_step(
    ops: Any,
    cfg: ModelConfig,
    opt: Any,
    *,
    dtype: str = "float32",
    max_grad_norm: float = 0.0,
    compile: bool = False,
    grad_sync: GradSync | None = None,
    base: dict | None = None,
    lora: Any = None,
) -> Callable[[dict, list[tuple[Any, Any]], float], tuple[dict, Any]]:
    """One optimizer step: ``step(params, micro_batches, lr) -> (params, mean loss)``.

    Gradients of the micro-batches (backend arrays ``(x, y)`` or ``(x, y, mask)``) are averaged, which is gradient
    accumulation, in the memory of one micro-batch (the running sum is evaluated after each);
    ``grad_sync`` then averages them across data-parallel ranks (each rank holds
    equal shares of every global batch, so the mean of the ranks' means is the global mean);
    then clipping (fp32 global norm, the same on every rank after the sync) and the optimizer.
    The loss stays a device array, so nothing here waits for the device: the caller decides when
    to read it back. It is this rank's loss; the logger averages it over ranks.

    ``compile``: the forward and backward pass (per micro-batch) and clipping + the optimizer
    update (when ``opt`` has the functional form, ``state``/``hyper``/``update``, as
    ``make_optimizer(..., functional=True)`` builds) are each one compiled graph, the optimizer
    state an input and an output of the second. (The gradient all-reduce between them is not
    compiled.)

    With ``lora`` (a :class:`mygpt.lora.LoraConfig`), ``params`` are the adapters and ``base``
    the frozen weights: only the adapters are differentiated, synced and stepped.
    """

    def loss_of(p, x, y, mask=None):
        if lora is None:
            return model.loss_fn(ops, cfg, p, x, y, dtype=dtype, train=True, mask=mask)
        adapters = model.LoraWeights(p, lora.scale, lora.dropout)
        return model.loss_fn(
            ops, cfg, base, x, y, dtype=dtype, train=True, lora=adapters, mask=mask
        )

    grad_fn = ops.value_and_grad(loss_of, compile=compile)

    def step(params: dict, micro_batches: list[tuple[Any, Any]], lr: float) -> tuple[dict, Any]:
        # (x, y), or (x, y, mask) for chat data
        results = (grad_fn(params, *batch) for batch in micro_batches)
        loss, grads = mean_of_micro_batches(ops, results, len(micro_batches))
        if grad_sync is not None:
            grads = grad_sync(grads)
        params = apply(params, grads, lr)
        ops.eval(loss, params, opt.arrays())
        return params, loss

    apply = make_update(ops, opt, max_grad_norm, compile)
    return step


def mean_of_micro_batches(
    ops: Any, results: Iterable[tuple[Any, dict]], n: int, *keep: Any
) -> tuple[Any, dict]:
    """The mean loss and gradients of ``n`` micro-batches' ``(loss, grads)``, summed as they come.

    A lazy backend (MLX) would otherwise build every micro-batch's graph before one evaluation,
    holding all their activations at once: evaluating the running sum (and ``keep``, what the
    caller collects per micro-batch) after each frees its activations before the next starts
    (a no-op on torch)."""
    loss, grads = None, None
    for l_i, g_i in results:
        if grads is None:
            loss, grads = l_i, g_i
        else:
            loss = loss + l_i
            grads = {k: grads[k] + g_i[k] for k in grads}
        if n > 1:
            ops.eval(loss, grads, *keep)
    if n > 1:
        loss = loss / n
        grads = {k: g / n for k, g in grads.items()}
    return loss, grads


Update = Callable[[dict, dict, float], dict]


def make_update(ops: Any, opt: Any, max_grad_norm: float, compile: bool = False) -> Update:
    """``apply(params, grads, lr)``: clipping and the optimizer step, one compiled graph where
    ``compile`` and ``opt`` has the functional form (``state``/``hyper``/``update``)."""
    functional = all(hasattr(opt, a) for a in ("state", "set_state", "hyper", "update"))
    update = _compiled_update if compile and functional else _eager_update
    return update(ops, opt, max_grad_norm)


def _eager_update(ops: Any, opt: Any, max_grad_norm: float) -> Update:
    def apply(params: dict, grads: dict, lr: float) -> dict:
        if max_grad_norm > 0:
            grads, _ = ops.clip_grad_norm(grads, max_grad_norm)
        return opt.step(params, grads, lr)

    return apply


def _compiled_update(ops: Any, opt: Any, max_grad_norm: float) -> Update:
    """Clip + the optimizer's pure update as one compiled graph. The step's scalars (learning
    rate, bias corrections) go in as 0-d arrays: as Python floats the compilers would bake them
    in and recompile at every step."""

    def update(params: dict, grads: dict, state: Any, hyper: dict) -> tuple[dict, Any]:
        if max_grad_norm > 0:
            grads, _ = ops.clip_grad_norm(grads, max_grad_norm)
        return opt.update(params, grads, state, hyper)

    compiled = ops.compile(update)

    def apply(params: dict, grads: dict, lr: float) -> dict:
        hyper = {k: ops.asarray(np.float32(v)) for k, v in opt.hyper(lr).items()}
        params, state = compiled(params, grads, opt.state(), hyper)
        opt.set_state(state)
        return params

    return apply


def dropout_seed(seed: int, step: int, rank: int = 0) -> int:
    """The framework RNG seed for a step's dropout masks: a function of the run seed, the step
    and the data-parallel rank (ranks hold different rows, so they draw different masks)."""
    return (seed * 1_000_003 + step + rank * 7_919_000_003) % 2**31
