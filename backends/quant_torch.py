"""Quantized weights on PyTorch: int8 codes (Q8_0) or packed 4-bit codes (Q4_0), fp16 scales.

A matmul dequantizes its weight and calls ``F.linear``: d·q in fp32 is exact; bf16 activations
are multiplied in fp32 with those exact weights and the product rounded to bf16 (as MLX's
``quantized_matmul`` does). An embedding lookup dequantizes the rows it gathers. (See docs/quantization.md for the
kernels measured against this one.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mygpt.backends.quant import QuantizedWeight
from mygpt.backends.types import Array
from mygpt.errors import MygptError
from mygpt.quant import BLOCK, QuantizedTensor, from_codes

#: ``MYGPT_QUANT_KERNEL=compiled``: decode-sized matmuls (at most ``_FUSED_ROWS`` rows) through
#: one ``torch.compile``d loop that reads the codes once (no float copy of the weight); it
#: compiles for ~40 s on a small CPU the first time (inductor caches it on disk after that)
_FUSED_ROWS = 8
_fused_kernels: dict[str, Any] = {}


def kernel_choice() -> str:
    choice = os.environ.get("MYGPT_QUANT_KERNEL", "eager")
    if choice not in ("eager", "compiled"):
        raise MygptError(f"MYGPT_QUANT_KERNEL={choice!r}: use eager or compiled")
    return choice


def _fused_product(x: Array, codes: Array, scales: Array, kind: str) -> Array:
    """``x @ W.T`` for (M, K) fp32 ``x`` with W = d·q never materialised: each block's dot
    product of codes and activations, times its d, summed; inductor fuses the conversion,
    products and sums into one pass over the codes. (Q4_0's low and high nibbles meet the
    block's first and second 16 activations separately: unpacking them into one array first
    ran 2.7x slower at 8 rows.)"""
    n, nb = scales.shape
    if kind == "Q8_0":
        xb = x.view(x.shape[0], 1, nb, BLOCK)
        per_block = (codes.view(n, nb, BLOCK).float().unsqueeze(0) * xb).sum(-1)
    else:
        xb = x.view(x.shape[0], 1, nb, 2, BLOCK // 2)
        low = ((codes & 15).float() - 8).unsqueeze(0) * xb[..., 0, :]
        high = ((codes >> 4).float() - 8).unsqueeze(0) * xb[..., 1, :]
        per_block = (low + high).sum(-1)
    return (per_block * scales.float()).sum(-1)


def _fused(kind: str):
    if kind not in _fused_kernels:
        if not torch.cuda.is_available():  # inductor's "No CUDA runtime is found": nothing wrong
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        _fused_kernels[kind] = torch.compile(_fused_product, dynamic=True)
    return _fused_kernels[kind]


class _QuantizedMatmul(torch.autograd.Function):
    """``x @ W.T`` whose backward dequantizes W again instead of saving it: autograd would
    otherwise keep every layer's float weight alive until the backward pass (a frozen base's
    whole float copy during a LoRA step), which is the memory QLoRA is for."""

    @staticmethod
    def forward(ctx, x: Array, weight: TorchQuantized) -> Array:
        ctx.weight = weight
        return weight._product(x)

    @staticmethod
    def backward(ctx, grad: Array):
        w = ctx.weight.cast(torch.float32).dequantize()
        return (grad.float() @ w).to(grad.dtype), None


class TorchQuantized(QuantizedWeight):
    """``codes``: int8 (rows, cols) for Q8_0; uint8 (rows, cols/32, 16) for Q4_0, ggml's nibble
    order (element i low, 16+i high). ``scales``: d as fp16 (rows, cols/32), as the blocks hold it (34 or 18 bytes a block in memory)."""

    def __init__(self, kind: str, shape, codes: Array, scales: Array, dtype: Any) -> None:
        self.kind, self.shape = kind, (int(shape[0]), int(shape[1]))
        self.codes, self.scales, self.dtype = codes, scales, dtype
        self.kernel = kernel_choice()

    @classmethod
    def from_record(cls, qt: QuantizedTensor, device: torch.device) -> TorchQuantized:
        rows, cols = qt.shape
        by_block = qt.blocks.reshape(rows, cols // BLOCK, -1)
        if qt.kind == "Q8_0":
            codes = torch.from_numpy(by_block[..., 2:].copy().view("i1").reshape(rows, cols))
        else:
            codes = torch.from_numpy(by_block[..., 2:].copy())
        scales = torch.from_numpy(qt.scales().astype(np.float16))  # exact: d is an fp16
        return cls(qt.kind, qt.shape, codes.to(device), scales.to(device), torch.float32)

    def cast(self, dtype: Any) -> TorchQuantized:
        if dtype == self.dtype:
            return self
        return TorchQuantized(self.kind, self.shape, self.codes, self.scales, dtype)

    @classmethod
    def concat_rows(cls, weights: Sequence[TorchQuantized]) -> TorchQuantized:
        first = weights[0]
        rows = sum(w.shape[0] for w in weights)
        codes = torch.cat([w.codes for w in weights], dim=0)
        scales = torch.cat([w.scales for w in weights], dim=0)
        return cls(first.kind, (rows, first.shape[1]), codes, scales, first.dtype)

    def _values(self, codes: Array, scales: Array) -> Array:
        """Rows of codes and their scales as weights (..., cols) in ``self.dtype``."""
        # in place on the one fp32 copy: a 49152-row head is 113 MB a copy
        if self.kind == "Q8_0":
            q = codes.unflatten(-1, (-1, BLOCK)).float()
        else:  # low nibbles are a block's elements 0-15, high nibbles 16-31
            q = torch.cat([codes & 15, codes >> 4], dim=-1).float().sub_(8)
        w = q.mul_(scales.float().unsqueeze(-1)).flatten(-2)  # d·q: exact in fp32
        return w if self.dtype == torch.float32 else w.to(self.dtype)

    def dequantize(self) -> Array:
        return self._values(self.codes, self.scales)

    def linear(self, x: Array, bias: Array | None = None) -> Array:
        rows = x.numel() // self.shape[1]
        if self.kernel == "compiled" and rows <= _FUSED_ROWS and not torch.is_grad_enabled():
            flat = x.reshape(rows, self.shape[1])
            y = _fused(self.kind)(flat.float(), self.codes, self.scales, self.kind)
            y = y.view(*x.shape[:-1], self.shape[0]).to(x.dtype)
            return y if bias is None else y + bias
        if x.requires_grad:  # QLoRA: keep the float weight out of the saved graph
            y = _QuantizedMatmul.apply(x, self)
        elif x.dtype == torch.float32:
            return F.linear(x, self.dequantize(), bias)
        else:
            y = self._product(x)
        return y if bias is None else y + bias

    def _product(self, x: Array) -> Array:
        """``x @ W.T``: bf16 activations meet the exact fp32 weights and the product is rounded
        once, as MLX's quantized_matmul computes it (rounding d·q to bf16 first would round
        every weight: the backends would then differ by more than bf16's own rounding)."""
        w = self.cast(torch.float32).dequantize()
        return F.linear(x, w) if x.dtype == torch.float32 else F.linear(x.float(), w).to(x.dtype)

    def embedding(self, ids: Array) -> Array:
        return self._values(self.codes[ids], self.scales[ids])

    def to_record(self) -> QuantizedTensor:
        rows, cols = self.shape
        if self.kind == "Q8_0":
            codes = self.codes.cpu().numpy()
        else:
            b = self.codes.cpu().numpy()
            codes = (np.concatenate([b & 15, b >> 4], axis=-1).astype(np.int8) - 8).reshape(
                rows, cols
            )
        return from_codes(self.kind, codes, self.scales.float().cpu().numpy())

    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def to_numpy(self):
        return self.cast(torch.float32).dequantize().detach().cpu().numpy().copy()
