"""MLX implementation of ``Ops``: ``mx.fast`` kernels, lazy evaluation, unified memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from mygpt.backends.base import Array, Mask, Ops, Params, Positions
from mygpt.backends.cpu import cpu_has_native_bf16
from mygpt.backends.quant import QuantizedWeight
from mygpt.backends.quant import concat as quantized_concat


def _quantized(x) -> bool:
    """Whether ``x`` is a quantized weight (a plain array answers without the ABC's slow check,
    which a decoded token would otherwise pay at every linear)."""
    return type(x) is not mx.array and isinstance(x, QuantizedWeight)


def _gpu_available() -> bool:
    try:
        return mx.is_available(mx.gpu)
    except (AttributeError, TypeError):  # older MLX
        return bool(getattr(mx.metal, "is_available", lambda: False)())


class MLXOps(Ops):
    name = "mlx"
    FRAMEWORK_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}

    def __init__(self, device: str = "auto") -> None:
        # MLX has one GPU device: Metal on Apple Silicon, CUDA with mlx[cuda]; --device cuda or
        # mps mean it too
        self.device = self._resolve_device(
            device,
            [("gpu", _gpu_available(), "GPU")],
            "use --device cpu (or install mlx with Metal on Apple Silicon / mlx[cuda] on Linux)",
        )
        self._mx_device = mx.gpu if self.device == "gpu" else mx.cpu
        self.activate()

    def activate(self) -> None:
        mx.set_default_device(self._mx_device)

    # --- precision policy ----------------------------------------------------------------------
    def init_distributed(self):
        from mygpt.backends import mlx_dist

        if not mlx_dist.launched():
            return super().init_distributed()
        self.dist = mlx_dist.MLXProcessGroup(self)
        return self.dist

    def native_bf16(self) -> tuple[bool, str]:
        if self.device == "gpu":
            return True, "the GPU computes bf16 natively"
        ok, why = cpu_has_native_bf16()
        return ok, why

    # --- data ------------------------------------------------------------------------------
    def _from_numpy(self, x: np.ndarray) -> Array:
        return mx.array(x)

    def _astype(self, x: Array, target) -> Array:
        if _quantized(x):
            return x.cast(target)
        return x.astype(target)

    def quantized(self, qt) -> QuantizedWeight:
        """A :class:`mygpt.quant.QuantizedTensor` on this device, kept in its blocks."""
        from mygpt.backends.quant_mlx import MLXQuantized

        return MLXQuantized.from_record(qt)

    def _host_numpy(self, x: Array) -> np.ndarray:
        if _quantized(x):
            return x.to_numpy()
        return np.array(x)

    def transpose(self, x: Array, axes: Sequence[int]) -> Array:
        return x.transpose(axes)

    def concat(self, xs: Sequence[Array], axis: int) -> Array:
        if _quantized(xs[0]):
            return quantized_concat(xs, axis)
        return mx.concatenate(list(xs), axis=axis)

    def zeros(self, shape: Sequence[int], dtype: str) -> Array:
        return mx.zeros(tuple(shape), dtype=self.framework_dtype(dtype))

    def write(self, buf: Array, x: Array, axis: int, start: int) -> Array:
        index = (slice(None),) * axis + (slice(start, start + x.shape[axis]),)
        buf[index] = x
        return buf

    def write_kv(self, buf: Array, kv: Array, rows: Sequence[int], at: Positions) -> Array:
        n, heads, t, d = kv.shape
        hkv = heads // 2
        if t == 1:  # a decode step: one scatter for every row, keys and values
            index = at.tables.get("kv")
            if index is None:  # the step's indices, made by its first layer: row i's keys,
                half = mx.array(np.tile(np.arange(2, dtype=np.int32), n))  # then its values
                r = mx.array(np.repeat(np.asarray(rows, np.int32), 2))
                s = mx.array(np.repeat(np.asarray(at.start, np.int32), 2))
                index = at.tables["kv"] = (half, r, s)
            half, r, s = index
            buf[half, r, :, s] = kv.reshape(2 * n, hkv, d)
            return buf
        for i, (r, s) in enumerate(zip(rows, np.asarray(at.start))):
            buf[0, r, :, s : s + t] = kv[i, :hkv]
            buf[1, r, :, s : s + t] = kv[i, hkv:]
        return buf

    # --- layers ----------------------------------------------------------------------------
    def linear(self, x: Array, weight: Array, bias: Array | None = None) -> Array:
        if _quantized(weight):
            return weight.linear(x, bias)
        if bias is None:
            return x @ weight.T
        return mx.addmm(bias, x, weight.T)

    def embedding(self, weight: Array, ids: Array) -> Array:
        if _quantized(weight):
            return weight.embedding(ids)
        return weight[ids]

    def layer_norm(self, x: Array, weight: Array, bias: Array, eps: float) -> Array:
        return mx.fast.layer_norm(x, weight, bias, eps)

    def rms_norm(self, x: Array, weight: Array, eps: float) -> Array:
        return mx.fast.rms_norm(x, weight, eps)

    def rope(
        self, x: Array, positions: Positions | int, base: float, inv_freq: np.ndarray | None = None,
        heads: int | None = None,
    ) -> Array:  # fmt: skip
        if heads is not None and heads < x.shape[1]:
            turned = self.rope(x[:, :heads], positions, base, inv_freq)
            return mx.concatenate([turned, x[:, heads:]], axis=1)
        offset = positions
        if isinstance(positions, Positions):
            offset = positions.start
            if positions.per_row:  # mx.fast.rope takes an offset per row as an array
                offset = positions.tables.get("offsets")
                if offset is None:
                    offset = mx.array(np.asarray(positions.start, dtype=np.int32))
                    positions.tables["offsets"] = offset
        if inv_freq is None:
            return mx.fast.rope(
                x, x.shape[-1], traditional=True, base=base, scale=1.0, offset=offset
            )
        # mx.fast.rope's freqs are periods: the angle is position / freqs
        periods = mx.array(np.float32(1.0) / inv_freq)
        return mx.fast.rope(
            x, x.shape[-1], traditional=True, base=None, scale=1.0, offset=offset, freqs=periods
        )

    def _mask_array(self, mask: Mask, batch: int, tq: int, tk: int) -> Array:
        """``mask`` as a boolean (B, 1, tq, tk) array (True: the key is seen), made once per step."""
        sees = mask.tables.get((tq, tk))
        if sees is None:
            sees = mask.tables[(tq, tk)] = mx.array(mask.sees(batch, tq, tk))
        return sees

    def attention(
        self, q: Array, k: Array, v: Array, scale: float, dropout: float = 0.0,
        mask: Mask | None = None,
    ) -> Array:  # fmt: skip
        if mask is not None and (mask.lengths is not None or mask.window is not None):
            if dropout > 0:
                raise ValueError("a length or window mask is for inference: no dropout")
            sees = self._mask_array(mask, q.shape[0], q.shape[2], k.shape[2])
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=sees)
        if dropout > 0:  # the fused kernel has no dropout: spell it out
            return self._attention_with_dropout(q, k, v, scale, dropout)
        # MLX's causal mask is aligned lower-right, which is what cached decoding needs.
        causal = "causal" if q.shape[2] > 1 else None
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=causal)

    def _attention_with_dropout(
        self, q: Array, k: Array, v: Array, scale: float, dropout: float
    ) -> Array:
        B, H, tq, D = q.shape
        hkv, tk = k.shape[1], k.shape[2]
        # query head j*rep + r reads K/V head j: group the query heads under their K/V head
        qg = q.reshape(B, hkv, H // hkv, tq, D)
        scores = (qg * scale) @ mx.swapaxes(k, -1, -2)[:, :, None]
        visible = mx.tril(mx.ones((tq, tk), dtype=mx.bool_), k=tk - tq)  # aligned to the last key
        scores = mx.where(visible, scores.astype(mx.float32), -mx.inf)
        probs = self.dropout(mx.softmax(scores, axis=-1, precise=True), dropout).astype(v.dtype)
        return (probs @ v[:, :, None]).reshape(B, H, tq, D)

    def sqrt(self, x: Array) -> Array:
        return mx.sqrt(x)

    def softmax(self, x: Array, axis: int = -1) -> Array:
        return mx.softmax(x, axis=axis, precise=True)

    def gelu(self, x: Array) -> Array:
        return x * (1 + mx.erf(x * (1 / math.sqrt(2)))) * 0.5

    def gelu_tanh(self, x: Array) -> Array:
        # in fp32 whatever the input (torch computes bf16's in fp32 too), then back
        y = x.astype(mx.float32)
        inner = math.sqrt(2 / math.pi) * (y + 0.044715 * y * y * y)
        return (0.5 * y * (1 + mx.tanh(inner))).astype(x.dtype)

    def silu(self, x: Array) -> Array:
        return x * mx.sigmoid(x)

    def dropout(self, x: Array, p: float) -> Array:
        if p <= 0:
            return x
        keep = mx.random.bernoulli(1 - p, x.shape)
        return mx.where(keep, x / (1 - p), mx.zeros_like(x))

    def cross_entropy(self, logits: Array, targets: Array, mask: Array | None = None) -> Array:
        logits = logits.astype(mx.float32)
        picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        per_token = mx.logsumexp(logits, axis=-1) - picked
        if mask is not None:
            m = mask.astype(mx.float32)
            return (per_token * m).sum() / mx.maximum(m.sum(), 1.0)
        return per_token.mean(axis=-1).mean() if per_token.ndim > 1 else per_token.mean()

    # --- training --------------------------------------------------------------------------
    def value_and_grad(
        self, fn: Callable[..., Array], compile: bool = False
    ) -> Callable[..., tuple[Array, Params]]:
        vg = mx.value_and_grad(fn)
        if not compile:
            return vg
        # The RNG state is an input and output of the compiled graph: otherwise the key is baked
        # in as a constant and dropout draws the same mask at every step.
        state = [mx.random.state]
        return mx.compile(vg, inputs=state, outputs=state)

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return mx.compile(fn)

    def clip_grad_norm(self, grads: Params, max_norm: float) -> tuple[Params, Array]:
        total = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in grads.values()))
        scale = mx.minimum(1.0, max_norm / (total + 1e-6))
        return {k: (g * scale).astype(g.dtype) for k, g in grads.items()}, total

    def eval(self, *xs) -> None:
        mx.eval(*xs)

    def synchronize(self) -> None:
        mx.synchronize()

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()

    def peak_memory(self) -> int | None:
        return int(mx.get_peak_memory())

    def seed(self, seed: int) -> None:
        mx.random.seed(seed)
