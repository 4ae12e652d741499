"""One optimizer step, the same function on every backend and for any number of processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
) -> Callable[[dict, list[tuple[Any, Any]], float], tuple[dict, Any]]:
    """One optimizer step: ``step(params, micro_batches, lr) -> (params, mean loss)``.

    Gradients of the micro-batches (backend arrays ``(x, y)``) are averaged, which is gradient
    accumulation, in the memory of one micro-batch (the running sum is evaluated after each);
    ``grad_sync`` then averages them across data-parallel ranks (each rank holds
    equal shares of every global batch, so the mean of the ranks' means is the global mean);
    then clipping (fp32 global norm, the same on every rank after the sync) and AdamW. The loss
    stays a device array, so nothing here waits for the device: the caller decides when to read
    it back. It is this rank's loss; the logger averages it over ranks.
    """

    def loss_of(p, x, y):
        return model.loss_fn(ops, cfg, p, x, y, dtype=dtype, train=True)

    grad_fn = ops.value_and_grad(loss_of, compile=compile)

    def step(params: dict, micro_batches: list[tuple[Any, Any]], lr: float) -> tuple[dict, Any]:
        loss, grads = None, None
        for x, y in micro_batches:
            l_i, g_i = grad_fn(params, x, y)
            if grads is None:
                loss, grads = l_i, g_i
            else:
                loss = loss + l_i
                grads = {k: grads[k] + g_i[k] for k in grads}
            if len(micro_batches) > 1:
                # a lazy backend (MLX) would otherwise build every micro-batch's graph before one
                # evaluation, holding all their activations at once: evaluating the running sum
                # here frees each micro-batch's before the next starts (a no-op on torch)
                ops.eval(loss, grads)
        if len(micro_batches) > 1:
            loss = loss / len(micro_batches)
            grads = {k: g / len(micro_batches) for k, g in grads.items()}
        if grad_sync is not None:
            grads = grad_sync(grads)
        if max_grad_norm > 0:
            grads, _ = ops.clip_grad_norm(grads, max_grad_norm)
        params = opt.step(params, grads, lr)
        ops.eval(loss, params, opt.arrays())
        return params, loss

    return step


def dropout_seed(seed: int, step: int, rank: int = 0) -> int:
    """The framework RNG seed for a step's dropout masks: a function of the run seed, the step
    and the data-parallel rank (ranks hold different rows, so they draw different masks)."""
    return (seed * 1_000_003 + step + rank * 7_919_000_003) % 2**31
