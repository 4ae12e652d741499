"""``--precision``: fp32, bf16, or auto (bf16 only where the hardware computes it natively)."""

from __future__ import annotations

from mygpt.errors import MygptError

PRECISIONS = ("auto", "fp32", "bf16")


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
        # CPU flags can promise bf16 units that small models don't benefit from: on a Xeon with
        # AMX and AVX512-BF16 a 256^3 bf16 matmul beat fp32, yet a whole Ch.17 training step was
        # 3x slower in bf16 on torch and no faster on MLX (casts, norms and small ops dominate).
        return "float32", f"{why}, but bf16 training steps measured slower than fp32 on CPU"
    return ("bfloat16", why) if native else ("float32", why)
