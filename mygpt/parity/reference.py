"""Independent float64 numpy references: what each op, the optimizers and a training step compute.

Written from the definitions (the book's, torch's documented formulas), not from either backend,
so a mistake both frameworks happen to share (a rope pair layout, a GQA head mapping, a causal mask
aligned the wrong way, a gradient summed where it should be averaged) still fails.
"""

from __future__ import annotations

import math

import numpy as np

from mygpt.optim import AdamWConfig
from mygpt.optim.muon import NS_COEFFICIENTS, MuonConfig, is_muon_param
from mygpt.parity.compare import f64


def np_layer_norm(x, w, b, eps: float) -> np.ndarray:
    x = f64(x)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased variance, as torch and the book
    return (x - mu) / np.sqrt(var + eps) * f64(w) + f64(b)


def np_rms_norm(x, w, eps: float) -> np.ndarray:
    x = f64(x)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * f64(w)


def np_rope(x, offset: int, base: float) -> np.ndarray:
    """Rotate interleaved pairs (2i, 2i+1) by ``pos * base**(-2i/D)``, pos = offset + t."""
    x = f64(x)
    T, D = x.shape[-2], x.shape[-1]
    theta = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = (offset + np.arange(T, dtype=np.float64))[:, None] * theta[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def np_attention(q, k, v, scale: float, lengths=None, window: int | None = None) -> np.ndarray:
    """Causal GQA attention, head h reading K/V head h // (H / Hkv), mask aligned to the last key
    (or to each row's ``lengths`` valid keys); ``window``: only the last ``window`` keys."""
    q, k, v = f64(q), f64(k), f64(v)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = H // Hkv
    out = np.empty((B, H, Tq, v.shape[-1]))
    # query i of row b sits at position lengths[b] - Tq + i and sees keys 0 .. that position
    lengths = np.full(B, Tk) if lengths is None else np.asarray(lengths)
    last = (lengths[:, None] - Tq + np.arange(Tq))[:, :, None]  # (B, Tq, 1)
    allowed = np.arange(Tk) <= last
    if window is not None:
        allowed &= np.arange(Tk) > last - window
    for h in range(H):
        kh, vh = k[:, h // group], v[:, h // group]
        s = np.einsum("btd,bsd->bts", q[:, h], kh) * scale
        s = np.where(allowed, s, -np.inf)
        out[:, h] = np.einsum("bts,bsd->btd", np_softmax(s, -1), vh)
    return out


def np_softmax(x, axis: int = -1) -> np.ndarray:
    x = f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_silu(x) -> np.ndarray:
    """SiLU, ``x * sigmoid(x)``: SwiGLU's gate (``--mlp swiglu``)."""
    x = f64(x)
    return x / (1.0 + np.exp(-x))


def np_gelu(x) -> np.ndarray:
    """The exact GELU, ``x * Phi(x)`` with the error function (not the tanh approximation)."""
    x = f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_gelu_tanh(x) -> np.ndarray:
    """The tanh-approximated GELU (GPT-2's ``gelu_new``), in float64."""
    x = f64(x)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_cross_entropy(logits, targets) -> float:
    z = f64(logits).reshape(-1, np.shape(logits)[-1])
    t = np.asarray(targets).reshape(-1)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return float((lse - z[np.arange(len(t)), t]).mean())


def np_masked_cross_entropy(logits, targets, mask) -> float:
    """The mean over the positions ``mask`` marks (a chat's assistant tokens)."""
    z = f64(logits).reshape(-1, np.shape(logits)[-1])
    t, m = np.asarray(targets).reshape(-1), f64(mask).reshape(-1)
    mx = z.max(-1, keepdims=True)
    lse = (mx + np.log(np.exp(z - mx).sum(-1, keepdims=True)))[:, 0]
    return float(((lse - z[np.arange(len(t)), t]) * m).sum() / max(m.sum(), 1.0))


def np_clip_grad_norm(grads: dict, max_norm: float) -> tuple[dict, float]:
    total = math.sqrt(sum(float((f64(g) ** 2).sum()) for g in grads.values()))
    scale = min(1.0, max_norm / (total + 1e-6))
    return {k: f64(g) * scale for k, g in grads.items()}, total


def np_mean_grads(micro_grads: list[dict]) -> dict:
    """Gradient accumulation as the book's loss means it: the mean over micro-batches."""
    return {k: sum(f64(g[k]) for g in micro_grads) / len(micro_grads) for k in micro_grads[0]}


class NumpyAdamW:
    """torch's AdamW in float64: decoupled decay ``p *= 1 - lr*wd``, then the bias-corrected step."""

    def __init__(self, params: dict, config: AdamWConfig) -> None:
        self.c = config
        self.t = 0
        self.m = {k: np.zeros_like(f64(v)) for k, v in params.items()}
        self.v = {k: np.zeros_like(f64(v)) for k, v in params.items()}

    def step(self, params: dict, grads: dict, lr: float) -> dict:
        b1, b2 = self.c.betas
        self.t += 1
        out = {}
        for k, p in params.items():
            g = f64(grads[k])
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            p = f64(p) * (1 - lr * self.c.weight_decay)
            out[k] = p - lr * m_hat / (np.sqrt(v_hat) + self.c.eps)
        return out

    def state(self) -> dict[str, np.ndarray]:
        """The moments under the names ``Optimizer.state_dict`` uses."""
        return {f"m.{k}": v for k, v in self.m.items()} | {f"v.{k}": v for k, v in self.v.items()}


def np_newton_schulz(g, steps: int = 5, eps: float = 1e-7) -> np.ndarray:
    """Muon's quintic Newton-Schulz orthogonalisation (Keller Jordan's), in float64."""
    a, b, c = NS_COEFFICIENTS
    x = f64(g)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.sqrt((x * x).sum()) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class NumpyMuonAdamW:
    """``--optimizer muon`` in float64: Nesterov momentum, Newton-Schulz, decoupled decay and the
    0.2 sqrt(max(rows, cols)) step on the blocks' matrices; torch's AdamW on the rest."""

    def __init__(self, params: dict, config: MuonConfig, adamw_lr_ratio: float = 1.0) -> None:
        self.c, self.ratio = config, adamw_lr_ratio
        self.muon = [k for k, v in params.items() if is_muon_param(k, np.shape(v))]
        rest = {k: v for k, v in params.items() if k not in self.muon}
        self.adamw = NumpyAdamW(rest, AdamWConfig(weight_decay=config.weight_decay))
        self.buf = {k: np.zeros_like(f64(params[k])) for k in self.muon}

    def step(self, params: dict, grads: dict, lr: float) -> dict:
        mu, wd = self.c.momentum, self.c.weight_decay
        rest = [k for k in params if k not in self.buf]
        out = self.adamw.step(
            {k: params[k] for k in rest}, {k: grads[k] for k in rest}, lr * self.ratio
        )
        for k in self.muon:
            g = f64(grads[k])
            self.buf[k] = mu * self.buf[k] + (1 - mu) * g
            o = np_newton_schulz((1 - mu) * g + mu * self.buf[k], self.c.ns_steps, self.c.eps)
            rows, cols = o.shape
            out[k] = f64(params[k]) * (1 - lr * wd) - lr * 0.2 * math.sqrt(max(rows, cols)) * o
        return {k: out[k] for k in params}

    def state(self) -> dict[str, np.ndarray]:
        """AdamW's moments and the momentum buffers under ``Optimizer.state_dict``'s names."""
        return self.adamw.state() | {f"muon.{k}": v for k, v in self.buf.items()}
