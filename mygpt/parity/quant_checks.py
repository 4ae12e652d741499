"""Quantized models (ggml Q8_0 / Q4_0 blocks): torch against MLX on the same blocks.

The dequantized weights are the same numbers on both backends (tests/test_quant.py checks the
bits), so what is left to compare is the model computed on them: the logits and the loss of a
quantized Llama-shaped model, batched decoding on it against its own full forward, and the
gradients of LoRA adapters on a quantized, frozen base (QLoRA). The tolerances are the float
model's: a quantized weight is an exact float weight to both backends.
"""

from __future__ import annotations

import numpy as np

from mygpt.backends.base import Ops
from mygpt.lora import LoraConfig, adapter_shapes
from mygpt.model import LoraWeights, forward, init_params, loss_fn
from mygpt.parity.compare import compare_logits, compare_loss, compare_rel_max
from mygpt.parity.core import GRAD_TOL, ParityCheck, Row, label
from mygpt.parity.inputs import device_params, snap, snap_all, tiny_config, token_batch
from mygpt.parity.model_checks import decode_rows
from mygpt.quant import QuantizedTensor, quantize_params

LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


def _model(bits: int):
    """A Llama-shaped model (RMSNorm, rope, GQA, SwiGLU, q/k/v biases, a tied head) with every weight that
    fits blocks quantized (the 88-wide down projection stays float), and adapters on it."""
    cfg = tiny_config("rms", "rope", "gqa", mlp="swiglu", attn_bias=True)
    params, _ = quantize_params(init_params(cfg, seed=21), bits)
    rng = np.random.default_rng(22)
    adapters = {
        k: (rng.standard_normal(s) * 0.2).astype(np.float32)
        for k, s in adapter_shapes(cfg, LORA).items()
    }
    return cfg, params, adapters


def on_backend(ops: Ops, params: dict) -> dict:
    """Float weights as arrays, quantized ones kept in their blocks."""
    return {
        k: ops.quantized(v) if isinstance(v, QuantizedTensor) else ops.asarray(v)
        for k, v in params.items()
    }


def _run(ops: Ops, bits: int, dtype: str):
    cfg, params, adapters = _model(bits)
    P, A = on_backend(ops, params), device_params(ops, adapters)
    x, y = token_batch(cfg, seed=23, B=2, T=8 if dtype == "float32" else 6)
    ids, tgt = ops.asarray(x), ops.asarray(y)
    logits = forward(ops, cfg, P, ids, dtype=dtype)
    lora = LoraWeights(A, LORA.scale)
    vg = ops.value_and_grad(lambda a, i, t: loss_fn(ops, cfg, P, i, t, dtype, lora=LoraWeights(a, LORA.scale)))  # fmt: skip
    loss, grads = vg(A, ids, tgt)
    adapted = forward(ops, cfg, P, ids, dtype=dtype, lora=lora)
    ops.eval(logits, loss, grads, adapted)
    return snap(ops, logits), ops.item(loss), snap_all(ops, grads), snap(ops, adapted)


def quant_model_check(bits: int) -> ParityCheck:
    kind = "Q8_0" if bits == 8 else "Q4_0"
    name = f"quantized {kind} model"

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        if ref is None:
            return []
        lc, fc, gc, ac = _run(cand, bits, dtype)
        lr, fr, gr, ar = _run(ref, bits, dtype)
        vs = label(ref)
        return [
            compare_logits(f"{name} logits", dtype, cand, vs, lc, lr),
            compare_loss(f"{name} loss", dtype, cand, vs, [fc], [fr]),
            compare_logits(f"{name} +lora logits", dtype, cand, vs, ac, ar),
            compare_rel_max(f"{name} qlora grads", dtype, cand, vs, gc, gr, GRAD_TOL[dtype]),
        ]

    return ParityCheck(name, check, quick=bits == 4, kind="quant")


def quant_decode_check(bits: int) -> ParityCheck:
    """Batched decoding on quantized weights == the full forward on them, and a stream decoded
    with others == decoded alone, bit for bit (``mygpt serve`` on a quantized model)."""
    kind = "Q8_0" if bits == 8 else "Q4_0"
    name = f"quantized {kind} batched decode"

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        cfg, params, _ = _model(bits)
        x, _ = token_batch(cfg, seed=24, B=1, T=12)
        P = on_backend(cand, params)
        return decode_rows(name, cand, cfg, P, x, dtype)

    return ParityCheck(name, check, quick=bits == 4, kind="quant")


def quant_checks() -> list[ParityCheck]:
    return [
        quant_model_check(8),
        quant_model_check(4),
        quant_decode_check(8),
        quant_decode_check(4),
    ]
