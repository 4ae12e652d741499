"""``--precision``: fp32, bf16, or auto (bf16 only where the hardware computes it natively)."""

from __future__ import annotations

import time

import numpy as np

from mygpt.errors import MygptError

PRECISIONS = ("auto", "fp32", "bf16")


def _matmul_seconds(ops, dtype: str, n: int = 256, reps: int = 4) -> float:
    a = ops.cast(ops.asarray(np.ones((n, n), np.float32)), dtype)
    ops.eval(ops.linear(a, a))  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        ops.eval(ops.linear(a, a))
    ops.synchronize()
    return time.perf_counter() - t


def resolve_precision(ops, precision: str) -> tuple[str, str]:
    """The compute dtype for ``precision`` on ``ops``'s device, and the reason, for the start line."""
    if precision == "fp32":
        return "float32", "requested"
    if precision == "bf16":
        native, why = ops.native_bf16()
        return "bfloat16", "requested" if native else f"requested, though {why.split(':')[0]}"
    if precision != "auto":
        raise MygptError(f"unknown precision {precision!r} — use one of: {', '.join(PRECISIONS)}")
    native, why = ops.native_bf16()
    if native and ops.device == "cpu":
        # CPU flags say bf16 units exist, but whether the framework's kernels use them varies
        # (measured here: torch's bf16 step 27x slower than fp32 on an AMX Xeon). A 256^3 matmul
        # probe, a few milliseconds, settles it on the machine at hand.
        bf16_s, fp32_s = _matmul_seconds(ops, "bfloat16"), _matmul_seconds(ops, "float32")
        if bf16_s >= fp32_s:
            return (
                "float32",
                f"{why}, but {ops.name}'s bf16 matmul is {bf16_s / fp32_s:.1f}x slower: using fp32",
            )
    return ("bfloat16", why) if native else ("float32", why)
