"""``--precision``: fp32, bf16, or auto (bf16 where the hardware computes it natively *and* it pays).

On GPUs with native bf16 (CUDA compute capability >= 8, Apple GPUs) auto picks bf16. On a CPU the
flags (AVX512-BF16, AMX) only say bf16 *can* be fast: whether it is depends on the model's size.
On an AMX-BF16 Xeon the Ch.28 shape (C=192, T=256) trains 1.25x faster in bf16, while the Ch.17
shape (C=64, T=64) is slower (casts, norms and small ops dominate). So there auto times a few
training steps of the run's own model in both dtypes and keeps the faster, and says so.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from mygpt.errors import MygptError
from mygpt.settings import PRECISIONS

# bf16 must win by this much: a tie is noise, and fp32 is the exact, reproducible choice
_BF16_MARGIN = 0.95


def resolve_precision(
    ops: Any,
    precision: str,
    workload: Callable[[], dict[str, float]] | None = None,
) -> tuple[str, str]:
    """The compute dtype for ``precision`` on ``ops``'s device, and the reason, for the start line.

    ``workload()`` (called only when auto must decide on a bf16-capable CPU) returns seconds per
    training step for "float32" and "bfloat16"; without it auto keeps fp32 there.
    """
    if precision == "fp32":
        return "float32", "requested"
    if precision == "bf16":
        native, why = ops.native_bf16()
        return "bfloat16", "requested" if native else f"requested, though {why.split(':')[0]}"
    if precision != "auto":
        raise MygptError(f"unknown precision {precision!r} — use one of: {', '.join(PRECISIONS)}")
    native, why = ops.native_bf16()
    if not native:
        return "float32", why
    if ops.device != "cpu":
        return "bfloat16", why
    if workload is None:
        return (
            "float32",
            f"{why}, but on a CPU bf16 is faster only for larger models (not measured)",
        )
    t = workload()
    bf, fp = t["bfloat16"], t["float32"]
    measured = f"a training step of this model measured {bf * 1e3:.0f} ms in bf16, {fp * 1e3:.0f} ms in fp32"
    if bf < _BF16_MARGIN * fp:
        return "bfloat16", f"{why}; {measured}"
    return "float32", f"{why}, but {measured}"


def time_dtypes(make_step: Callable[[str], Callable[[], Any]], steps: int = 3) -> dict[str, float]:
    """Median seconds of ``make_step(dtype)()`` for float32 and bfloat16, interleaved so that
    load from other processes hits both alike. The caller supplies the workload (a training step
    of the run's own model), so this module needs nothing from training or benchmarking."""
    runs = {dt: make_step(dt) for dt in ("float32", "bfloat16")}
    for step in runs.values():
        step()  # warm-up: allocation, kernel selection
    times: dict[str, list[float]] = {dt: [] for dt in runs}
    for _ in range(steps):
        for dt, step in runs.items():
            t0 = time.perf_counter()
            step()
            times[dt].append(time.perf_counter() - t0)
    return {dt: statistics.median(v) for dt, v in times.items()}
