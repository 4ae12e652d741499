"""PyTorch implementation of ``Ops``: fused functional kernels on CUDA, MPS or CPU."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mygpt.backends.base import AdamWConfig, Array, Mask, Ops, Optimizer, Params, Positions
from mygpt.backends.cpu import compute_threads, cpu_has_native_bf16, physical_cores
from mygpt.backends.quant import QuantizedWeight
from mygpt.backends.quant import concat as quantized_concat

# Up to this many keys, multi-threaded CPU training attention uses plain batched matmuls instead
# of SDPA's flash kernel (faster at short lengths; at 256 they tie, beyond it flash wins and saves
# memory).
_CPU_MATH_ATTENTION_MAX_LEN = 128


def _quantized(x) -> bool:
    """Whether ``x`` is a quantized weight (a plain array answers without the ABC's slow check,
    which a decoded token would otherwise pay at every linear)."""
    return type(x) is not torch.Tensor and isinstance(x, QuantizedWeight)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def _quiet_inductor() -> None:
    if not torch.cuda.is_available():
        # a CUDA build of torch on a machine without CUDA warns "No CUDA runtime is found" when
        # inductor first builds a CPU kernel; nothing is wrong
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _rotate(x: Array, rotations: Array) -> Array:
    """Interleaved pairs (2i, 2i+1) of ``x`` as complex numbers times ``rotations`` (in fp32)."""
    shape = x.shape
    pairs = x if x.dtype == torch.float32 else x.float()
    turned = torch.view_as_real(torch.view_as_complex(pairs.view(*shape[:-1], -1, 2)) * rotations)
    return turned.view(shape) if x.dtype == torch.float32 else turned.view(shape).to(x.dtype)


def _grouped_attention(q: Array, k: Array, v: Array, scale: float, bias: Array) -> Array:
    """Softmax attention of (n, tq, D) queries on (n, tk, D) keys and values, one matrix per
    (row, K/V head), ``bias`` (n, tq, tk) the additive mask. Scores and softmax in fp32."""
    if q.dtype != torch.float32:  # as SDPA keeps them
        scores = (torch.bmm(q, k.transpose(1, 2)) * scale).float() + bias
        return torch.bmm(torch.softmax(scores, dim=-1).to(v.dtype), v)
    return torch.bmm(torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), -1), v)


class TorchOps(Ops):
    name = "torch"
    writes_in_place = True
    FRAMEWORK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

    def __init__(self, device: str = "auto", threads: int | None = None) -> None:
        device = self._resolve_device(
            device,
            [("cuda", torch.cuda.is_available(), "CUDA"), ("mps", _mps_available(), "MPS")],
            "use --device cpu or auto",
        )
        self.device = device
        self._dev = torch.device(device)
        self._rope_cache: dict[tuple, Array] = {}
        self._causal_bias: dict[tuple[int, torch.dtype], Array] = {}
        self._constants: dict[float, Array] = {}
        self._norm_constants: dict[tuple[float, int], tuple[Array, Array]] = {}
        self._tables: dict[tuple, Array] = {}  # per shape: what the decode steps index
        # training attention: "auto" picks per call; "sdpa" or "bmm" force one (parity tests)
        self.attention_kernel = "auto"
        if device == "cpu":
            self.threads, self.threads_reason = compute_threads(threads)
            torch.set_num_threads(self.threads)

    def init_distributed(self):
        from mygpt.backends import torch_dist

        if not torch_dist.launched():
            return super().init_distributed()
        self.dist = torch_dist.TorchProcessGroup(self)
        if self.device == "cpu" and not os.environ.get("MYGPT_THREADS"):
            # ranks on one host share its cores: an OpenMP pool per rank as wide as the machine
            # spins at its barriers against the other ranks' pools
            cores = physical_cores()
            self.threads = max(1, cores // self.dist.local_world_size)
            self.threads_reason = (
                f"{cores} physical cores shared by {self.dist.local_world_size} ranks"
            )
            torch.set_num_threads(self.threads)
        return self.dist

    def native_bf16(self) -> tuple[bool, str]:
        if self.device == "cuda":
            major, _ = torch.cuda.get_device_capability()
            if major >= 8:
                return True, f"CUDA compute capability {major}.x has bf16 tensor cores"
            return False, f"CUDA compute capability {major}.x has no fast bf16: using fp32"
        if self.device == "mps":
            return True, "the Apple GPU computes bf16 natively"
        return cpu_has_native_bf16()

    # --- data ------------------------------------------------------------------------------
    def _from_numpy(self, x: np.ndarray) -> Array:
        # a copy, never a view: the in-place optimizer must not write into the caller's numpy arrays
        if self.device == "cpu" and x.flags.writeable and x.dtype.isnative and x.dtype.kind != "O":
            # half the cost of torch.tensor, which a decode step pays for its tokens
            # (0-d arrays are contiguous: ascontiguousarray would make them 1-d)
            return torch.from_numpy(x if x.flags.c_contiguous else np.ascontiguousarray(x)).clone()
        return torch.tensor(x, device=self._dev)

    def asarray_for_one_row(self, x: np.ndarray) -> Array:
        if self.device != "cpu" or x.ndim != 2 or x.dtype != np.float32:
            return self.asarray(x)
        # Stored transposed (a column-major view): one row times it is then MKL's plain
        # (1, in) x (in, out) product, which streams the weight at 16-23 GB/s on a 2-core EPYC
        # against 11 GB/s for (1, in) x (out, in)^T, and a real model's decoding is that stream.
        return torch.from_numpy(np.ascontiguousarray(x.T)).t()

    def _astype(self, x: Array, target) -> Array:
        if _quantized(x):
            return x.cast(target)
        return x.to(target)

    def quantized(self, qt) -> QuantizedWeight:
        """A :class:`mygpt.quant.QuantizedTensor` on this device, kept in its blocks."""
        from mygpt.backends.quant_torch import TorchQuantized

        return TorchQuantized.from_record(qt, self._dev)

    def _host_numpy(self, x: Array) -> np.ndarray:
        if _quantized(x):
            return x.to_numpy()
        return (
            x.detach().cpu().numpy().copy()
        )  # a snapshot, not a view of a tensor that will change

    def transpose(self, x: Array, axes: Sequence[int]) -> Array:
        return x.permute(*axes)

    def concat(self, xs: Sequence[Array], axis: int) -> Array:
        if _quantized(xs[0]):
            return quantized_concat(xs, axis)
        if axis == 0 and all(x.dim() == 2 and not x.is_contiguous() and x.t().is_contiguous()
                             for x in xs):  # fmt: skip
            # weights held transposed (asarray_for_one_row) stay so: fused Q|K|V included
            return torch.cat([x.t() for x in xs], dim=1).t()
        return torch.cat(list(xs), dim=axis)

    def zeros(self, shape: Sequence[int], dtype: str) -> Array:
        return torch.zeros(tuple(shape), dtype=self.framework_dtype(dtype), device=self._dev)

    def write(self, buf: Array, x: Array, axis: int, start: int) -> Array:
        buf.narrow(axis, start, x.shape[axis]).copy_(x)
        return buf

    def write_kv(self, buf: Array, kv: Array, rows: Sequence[int], at: Positions) -> Array:
        index = at.tables.get("kv")  # a decode step's flat indices, made by its first layer
        if index is None and kv.shape[2] == 1 and buf.is_contiguous():  # (every layer's buffer
            index = self._kv_indices(buf.shape, rows, self._positions(at))  # has one shape)
            index = at.tables["kv"] = index[:, :, None]  # (rows, 2 Hkv, 1): as K|V come
        if index is not None:  # one index_put_ for every row and head
            buf.view(-1, buf.shape[-1]).index_put_((index,), kv)
            return buf
        t, hkv = kv.shape[2], buf.shape[2]
        for i, (r, s) in enumerate(zip(rows, np.asarray(at.start))):
            buf[:, r, :, s : s + t] = kv[i].unflatten(0, (2, hkv))
        return buf

    # --- layers ----------------------------------------------------------------------------
    def linear(self, x: Array, weight: Array, bias: Array | None = None) -> Array:
        if type(weight) is not torch.Tensor and _quantized(weight):
            return weight.linear(x, bias)
        return F.linear(x, weight, bias)

    def residual_linear(
        self, residual: Array, x: Array, weight: Array, bias: Array | None = None
    ) -> Array:
        if type(weight) is not torch.Tensor and _quantized(weight):
            return residual + weight.linear(x, bias)
        if bias is None and x.dim() == 2:  # the matmul adds into the residual (decode rows)
            return torch.addmm(residual, x, weight.t())
        return residual + F.linear(x, weight, bias)

    def embedding(self, weight: Array, ids: Array) -> Array:
        if _quantized(weight):
            return weight.embedding(ids)
        return torch.embedding(weight, ids)  # F.embedding's kernel without its Python wrapper

    def layer_norm(self, x: Array, weight: Array, bias: Array, eps: float) -> Array:
        if x.dtype == torch.float32:
            return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
        y = F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps)
        return y.to(x.dtype)

    def rms_norm(self, x: Array, weight: Array, eps: float) -> Array:
        if x.dtype == torch.float32:
            if self.device == "cpu" and not torch.compiler.is_compiling():
                # torch's CPU rms_norm is a composite behind a slower wrapper; elsewhere it is one
                # fused kernel. Written out, with eps and 1/C as cached 0-dim tensors: a Python
                # float operand (and mean's own divide) costs ~4 us to wrap on every call, which
                # made a decoded token's 9 norms 40 instead of 26 us each
                constants = self._norm_constants.get((eps, x.shape[-1]))
                if constants is None:
                    constants = (self._constant(eps), self._constant(1 / x.shape[-1]))
                    self._norm_constants[(eps, x.shape[-1])] = constants
                # (x * x: the same products as square(), a little cheaper to call; square's
                # backward is kept for training, whose gradients must not move)
                squares = x.square() if x.requires_grad else x * x
                mean_square = torch.addcmul(constants[0], squares.sum(-1, keepdim=True),
                                            constants[1])  # fmt: skip
                return x * torch.rsqrt(mean_square) * weight
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        # bf16: statistics in fp32, then round to bf16 *before* the weight multiply, the order of
        # mx.fast.rms_norm (torch's fused kernel multiplies first, one rounding apart in bf16)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return y.to(x.dtype) * weight

    def _constant(self, value: float) -> Array:
        """A cached fp32 0-dim tensor (made outside inference mode: backward may save it)."""
        t = self._constants.get(value)
        if t is None:
            with torch.inference_mode(False):
                t = self._constants[value] = torch.tensor(value, dtype=torch.float32)
        return t

    def _rope_table(
        self, length: int, dim: int, base: float, inv_freq: np.ndarray | None = None
    ) -> Array:
        """Unit complex numbers ``e^(i * pos * inv_freq)``, (positions, dim/2), grown by doubling."""
        key = (dim, base, None if inv_freq is None else inv_freq.tobytes())
        table = self._rope_cache.get(key)
        if table is None or table.shape[0] < length:
            n = max(length, 2 * table.shape[0] if table is not None else 256)
            # built outside inference mode, so a table first made while sampling still works in
            # a later backward pass
            with torch.inference_mode(False):
                if inv_freq is None:
                    freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
                else:
                    freq = torch.from_numpy(np.asarray(inv_freq, dtype=np.float32).copy())
                angles = torch.arange(n, dtype=torch.float32)[:, None] * freq[None, :]
                table = torch.polar(torch.ones_like(angles), angles).to(self._dev)
            self._rope_cache[key] = table
        return table

    def rope(
        self, x: Array, positions: Positions | int, base: float, inv_freq: np.ndarray | None = None,
        heads: int | None = None,
    ) -> Array:  # fmt: skip
        # Interleaved pairs (2i, 2i+1) are the real and imaginary parts of one complex number, so
        # the rotation is a single complex multiply (faster than slicing and stacking halves).
        if type(positions) is Positions and positions.per_row:  # a batched decoding step
            # its rotations are made by the first layer and found by the others (a model's layers
            # may differ in base and scaling, Gemma 3's sliding and full ones; a layer type's
            # inv_freq is one cached array, so its id names it)
            key = (base, id(inv_freq), heads, x.shape[1])
            rotations = positions.tables.get(key)
            if rotations is None:
                rotations = positions.tables[key] = self._rotations(x.shape, positions, base,
                                                                    inv_freq, heads)  # fmt: skip
            return _rotate(x, rotations)
        if heads is not None and heads < x.shape[1]:
            turned = self.rope(x[:, :heads], positions, base, inv_freq)
            return torch.cat([turned, x[:, heads:]], 1)
        offset = positions.start if isinstance(positions, Positions) else positions
        t, d = x.shape[-2], x.shape[-1]
        rot = self._rope_table(offset + t, d, base, inv_freq)[offset : offset + t]
        xc = torch.view_as_complex(x.float().unflatten(-1, (d // 2, 2)))
        return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)

    def _positions(self, positions: Positions) -> Array:
        """A step's per-row start positions as an int64 tensor on the device, made once."""
        at = positions.tables.get("at")
        if at is None:  # (a copy: callers reuse their arrays)
            at = torch.from_numpy(np.array(positions.start, dtype=np.int64))
            at = positions.tables["at"] = at if self.device == "cpu" else at.to(self._dev)
        return at

    def _kv_indices(self, shape, rows: Sequence[int], starts: Array) -> Array:
        """Flat indices, (rows, 2 * Hkv), of one-token key and value writes into a
        (2, B, Hkv, T, D) buffer: each row's heads at its position in ``starts``."""
        rows = rows if isinstance(rows, range) else tuple(rows)  # a key of the tables
        first = self._tables.get(("kv", shape, rows))
        if first is None:  # each write's index at position 0, made once per shape
            _, B, hkv, T, _ = shape
            half, head = np.divmod(np.arange(2 * hkv), hkv)  # keys' heads, then values'
            r = np.asarray(rows, dtype=np.int64)[:, None]
            first = torch.as_tensor(((half * B + r) * hkv + head) * T, device=self._dev)
            self._tables[("kv", shape, rows)] = first
        return first + starts[:, None]

    def _rotations(self, shape, at: Positions, base, inv_freq, rotated: int | None) -> Array:
        """Row b's rotations ``e^(i (at.start[b] + t) inv_freq)``, (B, heads, t, d/2); heads from
        ``rotated`` on get 1 + 0i, which leaves them as they are: the one complex multiply of the
        step's Q|K|V heads turns Q and K, and K|V stay one array for the cache's one write."""
        t, d = shape[-2], shape[-1]
        n = max(at.start.tolist()) + t  # (numpy's max of a few numbers costs more)
        rotated = shape[1] if rotated is None else min(rotated, shape[1])
        heads = shape[1]  # (not one broadcast row: torch's complex multiply rounds differently
        # when it broadcasts, and a head must turn the same whatever the others do)
        key = ("rope", heads, d, base, None if inv_freq is None else inv_freq.tobytes(), rotated)
        table = self._tables.get(key)
        if table is None or table.shape[0] < n:  # (positions, heads, d/2), grown by doubling
            one_head = self._rope_table(n, d, base, inv_freq)
            table = torch.ones((one_head.shape[0], heads, d // 2), dtype=one_head.dtype,
                               device=one_head.device)  # fmt: skip
            table[:, :rotated] = one_head[:, None]
            self._tables[key] = table
        positions = self._positions(at)
        if t == 1:  # (index_select: advanced indexing's general machinery costs more)
            return torch.index_select(table, 0, positions).unsqueeze(2)
        idx = positions[:, None] + torch.arange(t, device=positions.device)
        return table[idx].transpose(1, 2)  # (B, heads, t, d/2)

    def _mask_bias(self, mask: Mask, batch: int, tq: int, tk: int) -> Array:
        """``mask`` as an additive (B, 1, tq, tk) bias (0 or -inf), made once per step."""
        if mask.window is None and tq == 1:  # a decode step: rows of one cached table
            seen = torch.from_numpy(np.asarray(mask.lengths, dtype=np.int64))
            return torch.index_select(self._mask_rows(tk), 0, seen).view(batch, 1, 1, tk)
        bias = np.where(mask.sees(batch, tq, tk), np.float32(0), np.float32(-np.inf))
        return torch.as_tensor(bias, device=self._dev)

    def _mask_rows(self, tk: int) -> Array:
        """Additive masks (0 or -inf), which attention adds inside its score matmul (baddbmm):
        row L is the mask of a query that sees L of ``tk`` keys. Made once per ``tk``."""
        table = self._tables.get(("mask", tk))
        if table is None:
            sees = np.arange(tk)[None, :] < np.arange(tk + 1)[:, None]
            bias = np.where(sees, np.float32(0), np.float32(-np.inf))
            table = self._tables[("mask", tk)] = torch.as_tensor(bias, device=self._dev)
        return table

    def attention(
        self, q: Array, k: Array, v: Array, scale: float, dropout: float = 0.0,
        mask: Mask | None = None,
    ) -> Array:  # fmt: skip
        if mask is not None and mask.tables:  # every layer of a step after the first
            return self._attention_masked(q, k, v, scale, mask)
        tq, tk = q.shape[2], k.shape[2]
        if mask is not None and (mask.lengths is not None or mask.window is not None):
            if dropout > 0:
                raise ValueError("a length or window mask is for inference: no dropout")
            return self._attention_masked(q, k, v, scale, mask)
        gqa = q.shape[1] != k.shape[1]
        if tq == tk:
            if self._use_bmm_attention(q, tk):
                return self._attention_bmm(q, k, v, scale, dropout)
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, dropout_p=dropout, enable_gqa=gqa
            )
        # torch aligns is_causal upper-left; decoding needs the mask aligned to the last key.
        causal = None
        if tq > 1:
            causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=causal, scale=scale, dropout_p=dropout, enable_gqa=gqa
        )

    def _attention_masked(self, q: Array, k: Array, v: Array, scale: float, mask: Mask) -> Array:
        """Attention under a per-row mask as two batched matmuls around a softmax.

        Query heads are grouped under their K/V head (no repeated K/V); each (row, K/V head) is
        its own matrix of the batch, so a row's arithmetic does not depend on the other rows.
        The mask is added inside the score matmul (baddbmm). For one query per row this is
        several times faster than SDPA with a mask on CPU.
        """
        B, H, tq, D = q.shape
        hkv, tk = k.shape[1], k.shape[2]
        rep = H // hkv
        bias = mask.tables.get(("grouped", tq, tk, hkv))
        if bias is None:  # one (row, K/V head) matrix each, made by the step's first layer
            bias = self._mask_bias(mask, B, tq, tk)[:, :, None].expand(B, hkv, rep, tq, tk)
            bias = bias.reshape(B * hkv, rep * tq, tk)
            mask.tables[("grouped", tq, tk, hkv)] = mask.tables["grouped"] = bias
        out = _grouped_attention(q.reshape(B * hkv, rep * tq, D), k.reshape(B * hkv, tk, D),
                                 v.reshape(B * hkv, tk, D), scale, bias)  # fmt: skip
        return out.view(B, H, tq, D)

    def _use_bmm_attention(self, q: Array, length: int) -> bool:
        if self.attention_kernel != "auto":
            return self.attention_kernel == "bmm"
        if torch.compiler.is_compiling():
            # get_num_threads() below would break the graph (and recompile per call site until
            # dynamo gives up); a compiled graph gets SDPA, which inductor handles as one op
            return False
        return (
            self.device == "cpu"
            and q.dtype == torch.float32  # SDPA keeps bf16 scores in fp32; bmm would not
            and length <= _CPU_MATH_ATTENTION_MAX_LEN
            and torch.get_num_threads() > 1
        )

    def _attention_bmm(
        self, q: Array, k: Array, v: Array, scale: float, dropout: float = 0.0
    ) -> Array:
        """Causal fp32 attention as two batched matmuls around a softmax, for short sequences.

        torch's CPU flash-attention kernel works in query/key blocks and is built for long
        sequences; at the book's sizes (T=64, head_dim 16) it barely gains from a second thread,
        so with two or more threads this plain path is faster (a Ch.17 step: 17.4 vs 18.7 ms on
        2 cores); on one thread flash is slightly faster and is kept. The mask is a cached
        additive -inf bias fused into the score matmul (``baddbmm``). Same math as SDPA's, to
        fp32 rounding (~1e-6).
        """
        B, H, T, D = q.shape
        rep = H // k.shape[1]
        if rep > 1:  # the book's repeat_interleave order: K/V head j serves query heads j*rep+r
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        key = (T, q.dtype)
        bias = self._causal_bias.get(key)
        if bias is None:
            bias = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
            self._causal_bias[key] = bias
        scores = torch.baddbmm(
            bias, q.reshape(B * H, T, D), k.reshape(B * H, T, D).transpose(1, 2), alpha=scale
        )
        probs = self.dropout(torch.softmax(scores, dim=-1), dropout)
        return torch.bmm(probs, v.reshape(B * H, T, D)).view(B, H, T, D)

    def sqrt(self, x: Array) -> Array:
        return torch.sqrt(x)

    def softmax(self, x: Array, axis: int = -1) -> Array:
        return torch.softmax(x.float(), dim=axis).to(x.dtype)

    def gelu(self, x: Array) -> Array:
        return F.gelu(x)

    def gelu_tanh(self, x: Array) -> Array:
        return F.gelu(x, approximate="tanh")

    def silu(self, x: Array) -> Array:
        return F.silu(x)

    def dropout(self, x: Array, p: float) -> Array:
        return F.dropout(x, p=p, training=True) if p > 0 else x

    def cross_entropy(self, logits: Array, targets: Array, mask: Array | None = None) -> Array:
        if mask is not None:
            per_token = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            )
            m = mask.reshape(-1).float()
            return (per_token * m).sum() / m.sum().clamp(min=1.0)
        if targets.dim() < 2:
            return F.cross_entropy(logits.float(), targets)
        per_token = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        return per_token.view(targets.shape).mean(-1).mean()

    # --- training --------------------------------------------------------------------------
    def trainable(self, params: Params) -> Params:
        return {k: v.detach().requires_grad_(True) for k, v in params.items()}

    def value_and_grad(
        self, fn: Callable[..., Array], compile: bool = False
    ) -> Callable[..., tuple[Array, Params]]:
        if compile:  # compile the forward; autograd then differentiates the compiled graph
            _quiet_inductor()
            fn = torch.compile(fn)

        def value_and_grad_fn(params: Params, *args):
            with torch.enable_grad():
                leaves = {
                    k: v if v.requires_grad else v.detach().requires_grad_(True)
                    for k, v in params.items()
                }
                loss = fn(leaves, *args)
                grads = torch.autograd.grad(loss, list(leaves.values()))
            return loss.detach(), dict(zip(leaves, grads))

        return value_and_grad_fn

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        _quiet_inductor()
        return torch.compile(fn)

    def clip_grad_norm(self, grads: Params, max_norm: float) -> tuple[Params, Array]:
        norms = torch._foreach_norm([g.float() for g in grads.values()])
        total = torch.linalg.vector_norm(torch.stack(norms))
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        clipped = torch._foreach_mul(list(grads.values()), scale)  # one multi-tensor kernel
        return dict(zip(grads, clipped)), total

    def fused_adamw(self, params: Params, config: AdamWConfig) -> Optimizer | None:
        return TorchAdamW(params, config)

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        # On CPU, oneDNN runs some kernels (GELU among them) with a fixed setup cost of ~7 us a
        # call; decoding is hundreds of tiny ops per token, so ATen's own kernels are faster
        # there (Ch.27 decoding: 731 -> 601 us/token). Training is unaffected either way.
        mkldnn = torch.backends.mkldnn
        was_enabled = mkldnn.enabled
        if self.device == "cpu":
            mkldnn.enabled = False
        try:
            with torch.inference_mode():
                yield
        finally:
            mkldnn.enabled = was_enabled

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        elif self.device == "mps":
            torch.mps.synchronize()

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return int(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None

    @contextlib.contextmanager
    def no_grad(self) -> Iterator[None]:
        with torch.no_grad():
            yield


class TorchAdamW(Optimizer):
    """``torch.optim.AdamW`` (fused kernel where available) over the parameter leaves."""

    def __init__(self, params: Params, config: AdamWConfig) -> None:
        self.names = list(params)
        self.leaves = [params[k] for k in self.names]
        kwargs = dict(lr=1e-3, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
        try:
            self.opt = torch.optim.AdamW(self.leaves, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # fused not supported for this device/dtype
            self.opt = torch.optim.AdamW(self.leaves, foreach=True, **kwargs)

    def step(self, params: Params, grads: Params, lr: float) -> Params:
        for name, leaf in zip(self.names, self.leaves):
            if params[name] is not leaf:  # a caller replaced a tensor: keep our leaves current
                with torch.no_grad():
                    leaf.copy_(params[name])
            leaf.grad = grads[name]
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        for leaf in self.leaves:
            leaf.grad = None
        return dict(zip(self.names, self.leaves))

    @property
    def steps(self) -> int:
        state = self.opt.state.get(self.leaves[0], {})
        return int(state["step"]) if "step" in state else 0

    def state_dict(self) -> tuple[int, dict[str, np.ndarray]]:
        tensors = {}
        for name, leaf in zip(self.names, self.leaves):
            state = self.opt.state.get(leaf, {})
            zeros = torch.zeros_like(leaf, dtype=torch.float32)
            tensors[f"m.{name}"] = state.get("exp_avg", zeros).detach().float().cpu().numpy()
            tensors[f"v.{name}"] = state.get("exp_avg_sq", zeros).detach().float().cpu().numpy()
        return self.steps, tensors

    def load_state_dict(self, steps: int, tensors: dict[str, np.ndarray]) -> None:
        if steps == 0:
            self.opt.state.clear()
            return
        fused = bool(self.opt.defaults.get("fused"))
        for name, leaf in zip(self.names, self.leaves):
            self.opt.state[leaf] = {
                # fused AdamW keeps its step counter on the parameter's device, foreach on the CPU
                "step": torch.tensor(
                    float(steps), dtype=torch.float32, device=leaf.device if fused else "cpu"
                ),
                "exp_avg": torch.as_tensor(tensors[f"m.{name}"]).to(leaf.device, leaf.dtype),
                "exp_avg_sq": torch.as_tensor(tensors[f"v.{name}"]).to(leaf.device, leaf.dtype),
            }
