"""Cross-backend numerical parity: the checks behind ``parity_tests/`` and ``mygpt parity``.

Every check is a plain function ``check(ref, cand, dtype) -> list[Row]``: it runs the same seeded
inputs through a *candidate* backend and, when given one, a *reference* backend (torch on the CPU,
or MLX when torch is absent), and compares. Op-level checks also compare against an independent
float64 numpy implementation, so a mistake both frameworks happen to share (a rope pair layout, a
GQA head mapping, a causal mask aligned the wrong way) still fails. With ``ref=None`` a check only
does what needs no second backend (numpy comparisons, KV-cache self-consistency).

Tolerances are DESIGN.md's "Parity" table. Nothing here imports a framework: it all goes through
``backends``, exactly like the model does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from backends import BACKENDS, available_backends, get_backend
from backends.base import DTYPES, AdamWConfig, Ops
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.model import KVCache, forward, init_params, loss_fn

# --- tolerances (DESIGN.md "Parity") ---------------------------------------------------------

#: forward ops: |cand - ref| <= atol + rtol * |ref| elementwise
OP_TOL = {"float32": (1e-5, 1e-5), "bfloat16": (2e-2, 1.6e-2)}
#: gradients: max |cand - ref| / max |ref|, per tensor
GRAD_TOL = {"float32": 1e-4, "bfloat16": 5e-2}
#: scalar losses: |cand - ref| / max(|ref|, 1) -- relative for the ~41 first loss of the book's
#: init, absolute once the loss is below 1
LOSS_TOL = {"float32": 1e-5, "bfloat16": 2e-3}
#: parameters after the fp32 training run, max |cand - ref| / max |ref| per tensor
TRAIN_PARAM_TOL = 1e-4

NUMPY = "numpy-f64"


@dataclass(frozen=True)
class Row:
    """One comparison: ``device`` is the candidate (``backend:device``), ``vs`` what it met."""

    name: str
    dtype: str
    device: str
    max_abs: float
    max_rel: float
    tolerance: str
    passed: bool
    vs: str = ""


Check = Callable[[Ops | None, Ops, str], list[Row]]


@dataclass(frozen=True)
class ParityCheck:
    """A named check, the dtypes it applies to, and whether ``--quick`` keeps it."""

    name: str
    fn: Check
    dtypes: tuple[str, ...] = DTYPES
    quick: bool = True
    kind: str = "op"  # "op" | "model" | "optimizer" | "train" | "cache" (for grouping tests)

    def __call__(self, ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        return self.fn(ref, cand, dtype)


def label(ops: Ops) -> str:
    return f"{ops.name}:{ops.device}"


# --- comparisons -----------------------------------------------------------------------------


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def compare_close(
    name: str, dtype: str, cand: Ops, vs: str, got, want, tol: tuple[float, float] | None = None
) -> Row:
    """Elementwise ``allclose``: passes iff every ``|err| <= atol + rtol * |want|``."""
    atol, rtol = tol or OP_TOL[dtype]
    got, want = _f64(got), _f64(want)
    if got.shape != want.shape:
        return Row(name, dtype, label(cand), math.inf, math.inf, f"shape {want.shape}", False, vs)
    err = np.abs(got - want)
    # err <= atol + rtol*|want|  <=>  err / (|want| + atol/rtol) <= rtol: so a row passes exactly
    # when its max_rel is at most rtol, and max_rel stays meaningful where |want| is near zero
    rel = err / (np.abs(want) + atol / rtol)
    ok = bool(np.all(rel <= rtol)) and bool(np.all(np.isfinite(got)))
    return Row(
        name,
        dtype,
        label(cand),
        float(err.max(initial=0.0)),
        float(rel.max(initial=0.0)),
        f"rtol {rtol:.1e} atol {atol:.1e}",
        ok,
        vs,
    )


def compare_logits(name: str, dtype: str, cand: Ops, vs: str, got, want) -> Row:
    """A whole network's logits: elementwise in fp32; in bf16, 2 ulp of the largest logit.

    Through a network, bf16 rounding differs by an ulp or so per op between two computations of
    the same thing: MLX's bf16 layer_norm and GELU round intermediates where torch's round once
    from fp32, and a cached decode's chunks meet kernels tuned to other shapes (on AVX2 CPUs
    without bf16 units: one ulp of a logit near 30, 0.125). So an elementwise 2-ulp bound can't
    hold; measured ~1.5e-3 and ~4e-3 of the largest logit, while a wiring error (mask, head
    mapping, rope layout, cache alignment) is O(1).
    """
    if dtype == "float32":
        return compare_close(name, dtype, cand, vs, got, want)
    return compare_rel_max(
        name, dtype, cand, vs, {"logits": got}, {"logits": want}, OP_TOL[dtype][1]
    )


def compare_rel_max(
    name: str, dtype: str, cand: Ops, vs: str, got: dict, want: dict, tol: float
) -> Row:
    """Per tensor ``max|err| / max|want|``; the row reports the worst tensor."""
    worst_abs, worst_rel = 0.0, 0.0
    ok = set(got) == set(want)
    for k in want:
        if k not in got:
            continue
        g, w = _f64(got[k]), _f64(want[k])
        if g.shape != w.shape:
            ok, worst_abs, worst_rel = False, math.inf, math.inf
            continue
        err = float(np.abs(g - w).max(initial=0.0))
        scale = float(np.abs(w).max(initial=0.0))
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        if not np.all(np.isfinite(g)):
            rel = math.inf
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
    ok = ok and worst_rel <= tol
    return Row(name, dtype, label(cand), worst_abs, worst_rel, f"{tol:.1e} of max", ok, vs)


def compare_loss(
    name: str, dtype: str, cand: Ops, vs: str, got: Sequence[float], want: Sequence[float]
) -> Row:
    """Scalars (a loss or a loss curve): ``|err| / max(|want|, 1)`` against LOSS_TOL."""
    tol = LOSS_TOL[dtype]
    g, w = _f64(got).ravel(), _f64(want).ravel()
    err = np.abs(g - w)
    rel = err / np.maximum(np.abs(w), 1.0)
    ok = g.shape == w.shape and bool(np.all(np.isfinite(g))) and bool(np.all(rel <= tol))
    return Row(
        name,
        dtype,
        label(cand),
        float(err.max(initial=0.0)),
        float(rel.max(initial=0.0)),
        f"{tol:.1e} rel",
        ok,
        vs,
    )


# --- inputs ----------------------------------------------------------------------------------


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded (to nearest even) to what ``dtype`` can hold, still as float32.

    Both backends then receive bit-identical inputs, and the numpy reference sees the values the
    backends really computed on.
    """
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def _rng(name: str) -> np.random.Generator:
    # A fixed seed per check name: reruns and both backends see the same numbers.
    return np.random.default_rng(sum(ord(c) * (i + 1) for i, c in enumerate(name)))


# --- independent float64 references ---------------------------------------------------------


def np_layer_norm(x, w, b, eps: float) -> np.ndarray:
    x = _f64(x)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased variance, as torch and the book
    return (x - mu) / np.sqrt(var + eps) * _f64(w) + _f64(b)


def np_rms_norm(x, w, eps: float) -> np.ndarray:
    x = _f64(x)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * _f64(w)


def np_rope(x, offset: int, base: float) -> np.ndarray:
    """Rotate interleaved pairs (2i, 2i+1) by ``pos * base**(-2i/D)``, pos = offset + t."""
    x = _f64(x)
    T, D = x.shape[-2], x.shape[-1]
    theta = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = (offset + np.arange(T, dtype=np.float64))[:, None] * theta[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def np_attention(q, k, v, scale: float) -> np.ndarray:
    """Causal GQA attention, head h reading K/V head h // (H / Hkv), mask aligned to the last key."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = H // Hkv
    out = np.empty((B, H, Tq, v.shape[-1]))
    # query i sits at absolute position (Tk - Tq) + i and sees keys 0 .. that position
    allowed = np.arange(Tk)[None, :] <= (Tk - Tq + np.arange(Tq))[:, None]
    for h in range(H):
        kh, vh = k[:, h // group], v[:, h // group]
        s = np.einsum("btd,bsd->bts", q[:, h], kh) * scale
        s = np.where(allowed[None], s, -np.inf)
        out[:, h] = np.einsum("bts,bsd->btd", np_softmax(s, -1), vh)
    return out


def np_softmax(x, axis: int = -1) -> np.ndarray:
    x = _f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_gelu(x) -> np.ndarray:
    """The exact GELU, ``x * Phi(x)`` with the error function (not the tanh approximation)."""
    x = _f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_silu(x) -> np.ndarray:
    x = _f64(x)
    return x / (1.0 + np.exp(-x))


def np_cross_entropy(logits, targets) -> float:
    z = _f64(logits).reshape(-1, np.shape(logits)[-1])
    t = np.asarray(targets).reshape(-1)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return float((lse - z[np.arange(len(t)), t]).mean())


def np_clip_grad_norm(grads: dict, max_norm: float) -> tuple[dict, float]:
    total = math.sqrt(sum(float((_f64(g) ** 2).sum()) for g in grads.values()))
    scale = min(1.0, max_norm / (total + 1e-6))
    return {k: _f64(g) * scale for k, g in grads.items()}, total


class NumpyAdamW:
    """torch's AdamW in float64: decoupled decay ``p *= 1 - lr*wd``, then the bias-corrected step."""

    def __init__(self, params: dict, config: AdamWConfig) -> None:
        self.c = config
        self.t = 0
        self.m = {k: np.zeros_like(_f64(v)) for k, v in params.items()}
        self.v = {k: np.zeros_like(_f64(v)) for k, v in params.items()}

    def step(self, params: dict, grads: dict, lr: float) -> dict:
        b1, b2 = self.c.betas
        self.t += 1
        out = {}
        for k, p in params.items():
            g = _f64(grads[k])
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            p = _f64(p) * (1 - lr * self.c.weight_decay)
            out[k] = p - lr * m_hat / (np.sqrt(v_hat) + self.c.eps)
        return out


# --- op-level checks -------------------------------------------------------------------------


def _op_check(
    name: str,
    make: Callable[[np.random.Generator], dict[str, np.ndarray]],
    run: Callable[[Ops, dict], object],
    reference: Callable[[dict], np.ndarray],
    compare: str = "close",
) -> Check:
    """A check that feeds one op identical (dtype-rounded) inputs on each backend and numpy.

    ``make`` returns named inputs; float ones are rounded to the dtype and handed to the backend in
    it, integer ones (ids, targets) pass through. ``run(ops, arrays)`` calls the op under test.
    """

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        raw = make(_rng(name))
        inputs = {
            k: round_to_dtype(v, dtype) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in raw.items()
        }

        def on(ops: Ops) -> np.ndarray:
            arrays = {
                k: ops.asarray(v, dtype) if np.issubdtype(v.dtype, np.floating) else ops.asarray(v)
                for k, v in inputs.items()
            }
            out = run(ops, arrays)
            ops.eval(out)
            return _snap(ops, out)

        got = on(cand)
        pairs = [(NUMPY, reference(inputs))]
        if ref is not None:
            pairs.append((label(ref), on(ref)))
        rows = []
        for vs, want in pairs:
            if compare == "loss":
                rows.append(compare_loss(name, dtype, cand, vs, [float(got)], [float(want)]))
            else:
                rows.append(compare_close(name, dtype, cand, vs, got, want))
        return rows

    return check


def _attention_check(H: int, Hkv: int, Tq: int, Tk: int) -> tuple[str, Check]:
    name = f"attention H{H}/kv{Hkv} Tq{Tq}/Tk{Tk}"
    D, B = 8, 2
    scale = 1.0 / math.sqrt(D)

    def make(rng):
        return {
            "q": rng.standard_normal((B, H, Tq, D)),
            "k": rng.standard_normal((B, Hkv, Tk, D)),
            "v": rng.standard_normal((B, Hkv, Tk, D)),
        }

    return name, _op_check(
        name,
        make,
        lambda ops, a: ops.attention(a["q"], a["k"], a["v"], scale),
        lambda i: np_attention(i["q"], i["k"], i["v"], scale),
    )


def _op_checks() -> list[ParityCheck]:
    C, EPS = 48, 1e-5
    checks: list[tuple[str, Check]] = [
        (
            "layer_norm",
            _op_check(
                "layer_norm",
                # an offset mean and a spread of scales: a population-variance slip shows
                lambda r: {
                    "x": r.standard_normal((3, 5, C)) * 2.0 + 0.5,
                    "w": 1.0 + 0.1 * r.standard_normal(C),
                    "b": 0.1 * r.standard_normal(C),
                },
                lambda ops, a: ops.layer_norm(a["x"], a["w"], a["b"], EPS),
                lambda i: np_layer_norm(i["x"], i["w"], i["b"], EPS),
            ),
        ),
        (
            "rms_norm",
            _op_check(
                "rms_norm",
                lambda r: {
                    "x": r.standard_normal((3, 5, C)) * 2.0 + 0.5,
                    "w": 1.0 + 0.1 * r.standard_normal(C),
                },
                lambda ops, a: ops.rms_norm(a["x"], a["w"], EPS),
                lambda i: np_rms_norm(i["x"], i["w"], EPS),
            ),
        ),
        (
            "rope offset 0",
            _op_check(
                "rope offset 0",
                lambda r: {"x": r.standard_normal((2, 3, 7, 16))},
                lambda ops, a: ops.rope(a["x"], 0, 10000.0),
                lambda i: np_rope(i["x"], 0, 10000.0),
            ),
        ),
        (
            "rope offset 9",  # the positions a KV-cached decode step sees
            _op_check(
                "rope offset 9",
                lambda r: {"x": r.standard_normal((2, 3, 4, 16))},
                lambda ops, a: ops.rope(a["x"], 9, 10000.0),
                lambda i: np_rope(i["x"], 9, 10000.0),
            ),
        ),
        _attention_check(4, 4, 6, 6),  # MHA
        _attention_check(4, 2, 6, 6),  # GQA
        _attention_check(4, 1, 6, 6),  # MQA
        _attention_check(4, 2, 3, 8),  # a cached chunk: Tq < Tk, mask aligned to the last key
        _attention_check(4, 1, 1, 9),  # one decode step
        (
            "softmax",
            _op_check(
                "softmax",
                lambda r: {"x": r.standard_normal((4, 6, 33)) * 4.0},
                lambda ops, a: ops.softmax(a["x"], axis=-1),
                lambda i: np_softmax(i["x"], -1),
            ),
        ),
        (
            "gelu",
            _op_check(
                "gelu",
                # wide range: erf and tanh GELU differ most around |x| ~ 2-3
                lambda r: {"x": r.uniform(-6.0, 6.0, (4, 257))},
                lambda ops, a: ops.gelu(a["x"]),
                lambda i: np_gelu(i["x"]),
            ),
        ),
        (
            "silu",  # SwiGLU's gate (--mlp swiglu)
            _op_check(
                "silu",
                lambda r: {"x": r.uniform(-8.0, 8.0, (4, 257))},
                lambda ops, a: ops.silu(a["x"]),
                lambda i: np_silu(i["x"]),
            ),
        ),
        (
            "cross_entropy",
            _op_check(
                "cross_entropy",
                lambda r: {
                    "logits": r.standard_normal((3, 7, 40)) * 3.0,
                    "targets": r.integers(0, 40, (3, 7)).astype(np.int64),
                },
                lambda ops, a: ops.cross_entropy(a["logits"], a["targets"]),
                lambda i: np_cross_entropy(i["logits"], i["targets"]),
                compare="loss",
            ),
        ),
        (
            "linear",
            _op_check(
                "linear",
                lambda r: {
                    "x": r.standard_normal((3, 5, C)),
                    "w": r.uniform(-0.15, 0.15, (24, C)),
                    "b": r.uniform(-0.15, 0.15, 24),
                },
                lambda ops, a: ops.linear(a["x"], a["w"], a["b"]),
                lambda i: _f64(i["x"]) @ _f64(i["w"]).T + _f64(i["b"]),
            ),
        ),
    ]
    return [ParityCheck(name, fn, kind="op") for name, fn in checks]


# --- model-level checks ----------------------------------------------------------------------

KV_HEADS = {"mha": 4, "gqa": 2, "mqa": 1}


def tiny_config(
    norm: str = "layer", position: str = "learned", kv: str = "mha", **kw
) -> ModelConfig:
    """The parity model: small enough that bf16 on a CPU without bf16 units stays fast."""
    base = dict(vocab_size=40, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base, num_kv_heads=KV_HEADS[kv], norm_type=norm, position_type=position)


def _batch(cfg: ModelConfig, seed: int, B: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens from a seeded random bigram chain: learnable structure, so a loss curve moves."""
    rng = np.random.default_rng(seed)
    V = cfg.vocab_size
    nxt = rng.integers(0, V, (V, 3))  # each token is followed by one of 3 tokens
    seq = np.empty((B, T + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(0, V, B)
    for t in range(T):
        seq[:, t + 1] = nxt[seq[:, t], rng.integers(0, 3, B)]
    return seq[:, :-1].copy(), seq[:, 1:].copy()


def _snap(ops: Ops, x) -> np.ndarray:
    """A numpy *copy*: torch's ``to_numpy`` can return a view of a tensor an optimizer later
    updates in place (parity_tests/test_backend_bugs.py)."""
    return np.array(ops.to_numpy(x), copy=True)


def _device_params(ops: Ops, params: dict[str, np.ndarray]) -> dict:
    # Copy first: torch's ``asarray`` can share memory with the numpy input, and its in-place
    # AdamW would then rewrite the caller's arrays (parity_tests/test_backend_bugs.py).
    return ops.trainable({k: ops.asarray(np.array(v, copy=True)) for k, v in params.items()})


def _forward_and_grads(ops: Ops, cfg: ModelConfig, params, x, y, dtype: str):
    P = _device_params(ops, params)
    ids, tgt = ops.asarray(x), ops.asarray(y)
    # Not under ops.inference(): see parity_tests/test_backend_bugs.py (torch's rope table).
    logits = forward(ops, cfg, P, ids, dtype=dtype)
    vg = ops.value_and_grad(lambda p, a, b: loss_fn(ops, cfg, p, a, b, dtype))
    loss, grads = vg(P, ids, tgt)
    ops.eval(logits, loss, grads)
    return (
        _snap(ops, logits),
        ops.item(loss),
        {k: _snap(ops, g) for k, g in grads.items()},
    )


def _model_check(norm: str, position: str, kv: str, mlp: str = "gelu") -> ParityCheck:
    name = f"model {norm}/{position}/{kv}" + ("" if mlp == "gelu" else f"/{mlp}")

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        if ref is None:
            return []
        cfg = tiny_config(norm, position, kv, mlp_type=mlp)
        params = init_params(cfg, seed=1)
        x, y = _batch(cfg, seed=2, B=2, T=8 if dtype == "float32" else 6)
        lc, fc, gc = _forward_and_grads(cand, cfg, params, x, y, dtype)
        lr, fr, gr = _forward_and_grads(ref, cfg, params, x, y, dtype)
        vs = label(ref)
        return [
            compare_logits(f"{name} logits", dtype, cand, vs, lc, lr),
            compare_loss(f"{name} loss", dtype, cand, vs, [fc], [fr]),
            compare_rel_max(f"{name} grads", dtype, cand, vs, gc, gr, GRAD_TOL[dtype]),
        ]

    # --quick keeps a covering subset: every norm, position and kv-head option at least once
    quick = (norm, position, kv, mlp) in {
        ("layer", "learned", "mha", "gelu"),
        ("rms", "rope", "gqa", "gelu"),
        ("layer", "rope", "mqa", "gelu"),
        ("rms", "rope", "gqa", "swiglu"),
    }
    return ParityCheck(name, check, quick=quick, kind="model")


def _adamw_check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
    """Clip then AdamW on identical gradients (two steps: clipped, then unclipped).

    The gradients come from numpy, not from a backward pass, so this isolates the optimizer:
    bias correction, decoupled decay, eps placement, and the clip's scale and reported norm.
    """
    cfg = tiny_config("rms", "rope", "gqa", num_layers=1)
    rng = np.random.default_rng(3)
    params = init_params(cfg, seed=4)
    grad_steps = [
        {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32) for k, v in params.items()},
        {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in params.items()},
    ]
    opt_cfg, lrs, max_norm = AdamWConfig(weight_decay=0.1), (3e-3, 1e-3), 1.0

    def run(ops: Ops):
        P = _device_params(ops, params)
        opt = ops.adamw(P, opt_cfg)
        trace = []
        for g, lr in zip(grad_steps, lrs):
            clipped, norm = ops.clip_grad_norm({k: ops.asarray(v) for k, v in g.items()}, max_norm)
            P = opt.step(P, clipped, lr)
            ops.eval(P, norm, opt.arrays())
            trace.append(
                (
                    ops.item(norm),
                    {k: _snap(ops, v) for k, v in clipped.items()},
                    {k: _snap(ops, v) for k, v in P.items()},
                )
            )
        _, state = opt.state_dict()
        return trace, state

    def run_numpy():
        P = {k: _f64(v) for k, v in params.items()}
        opt = NumpyAdamW(P, opt_cfg)
        trace = []
        for g, lr in zip(grad_steps, lrs):
            clipped, norm = np_clip_grad_norm(g, max_norm)
            P = opt.step(P, clipped, lr)
            trace.append((norm, clipped, dict(P)))
        state = {f"m.{k}": v for k, v in opt.m.items()} | {f"v.{k}": v for k, v in opt.v.items()}
        return trace, state

    got, got_state = run(cand)
    wants = [(NUMPY, run_numpy())]
    if ref is not None:
        wants.append((label(ref), run(ref)))
    rows = []
    for vs, (trace, state) in wants:
        for step, ((gn, gc, gp), (wn, wc, wp)) in enumerate(zip(got, trace), start=1):
            what = "clipped" if step == 1 else "unclipped"
            rows.append(compare_close(f"clip_grad_norm {step} norm", dtype, cand, vs, gn, wn))
            rows.append(
                compare_close(f"clip_grad_norm {step} grads", dtype, cand, vs, _flat(gc), _flat(wc))
            )
            rows.append(
                compare_close(
                    f"adamw step {step} ({what}) params",
                    dtype,
                    cand,
                    vs,
                    _flat(gp),
                    _flat(wp),
                )
            )
        # second moments are ~g^2 ~ 1e-7: compare relative to each tensor's max, not atol 1e-5
        rows.append(
            compare_rel_max(
                "adamw state m/v", dtype, cand, vs, got_state, state, GRAD_TOL[dtype] / 10
            )
        )
    return rows


def _flat(tensors: dict) -> np.ndarray:
    return np.concatenate([_f64(tensors[k]).ravel() for k in sorted(tensors)])


def _train(ops: Ops, cfg: ModelConfig, dtype: str, steps: int, lr: float):
    params = init_params(cfg, seed=5)
    P = _device_params(ops, params)
    opt = ops.adamw(P, AdamWConfig())
    vg = ops.value_and_grad(lambda p, a, b: loss_fn(ops, cfg, p, a, b, dtype))
    losses = []
    for step in range(steps):
        x, y = _batch(cfg, seed=100 + step, B=4, T=cfg.max_seq_len)
        loss, grads = vg(P, ops.asarray(x), ops.asarray(y))
        grads, _ = ops.clip_grad_norm(grads, 1.0)
        P = opt.step(P, grads, lr)
        ops.eval(loss, P, opt.arrays())
        losses.append(ops.item(loss))
    return losses, {k: _snap(ops, v) for k, v in P.items()}


def _train_check(steps: int) -> Check:
    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        if ref is None:
            return []
        vs = label(ref)
        name = f"train {steps} steps"
        if dtype == "float32":
            cfg = tiny_config("layer", "learned", "mha")
            lc, pc = _train(cand, cfg, dtype, steps, lr=3e-3)
            lr_, pr = _train(ref, cfg, dtype, steps, lr=3e-3)
            return [
                compare_loss(f"{name} loss curve", dtype, cand, vs, lc, lr_),
                compare_rel_max(f"{name} params", dtype, cand, vs, pc, pr, TRAIN_PARAM_TOL),
            ]
        # bf16: only the loss curve, on an even smaller model (bf16 matmuls are slow on CPUs
        # without bf16 units)
        cfg = tiny_config("rms", "rope", "gqa", num_layers=1, embed_dim=16, max_seq_len=8)
        lc, _ = _train(cand, cfg, dtype, steps, lr=3e-3)
        lr_, _ = _train(ref, cfg, dtype, steps, lr=3e-3)
        return [compare_loss(f"{name} loss curve", dtype, cand, vs, lc, lr_)]

    return check


def _kv_cache_check(position: str, kv: str, mlp: str = "gelu") -> ParityCheck:
    """Prefix with a cache, then a 3-token chunk, then token by token == one full forward."""
    name = f"kv-cache decode {position}/{kv}" + ("" if mlp == "gelu" else f"/{mlp}")

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        norm = "rms" if position == "rope" else "layer"
        cfg = tiny_config(norm, position, kv, mlp_type=mlp)
        params = init_params(cfg, seed=6)
        x, _ = _batch(cfg, seed=7, B=2, T=12)
        P = {k: cand.asarray(v) for k, v in params.items()}
        # Plain (non-trainable) arrays: no autograd graph, and no ops.inference() (torch would
        # cache its rope table as inference tensors; see parity_tests/test_backend_bugs.py).
        full = forward(cand, cfg, P, cand.asarray(x), dtype=dtype)
        cache = KVCache(cfg.num_layers, cfg.max_seq_len)
        parts = []
        for a, b in ((0, 6), (6, 9), (9, 10), (10, 11), (11, 12)):
            parts.append(forward(cand, cfg, P, cand.asarray(x[:, a:b]), cache=cache, dtype=dtype))
        stepped = cand.concat(parts, axis=1)
        cand.eval(full, stepped)
        got, want = cand.to_numpy(stepped), cand.to_numpy(full)
        return [compare_logits(name, dtype, cand, "full forward", got, want)]

    return ParityCheck(name, check, quick=(position == "rope"), kind="cache")


def checks(quick: bool = False) -> list[ParityCheck]:
    """Every parity check, in table order (``quick``: the subset ``--quick`` runs)."""
    full = [
        *_op_checks(),
        *[
            _model_check(n, p, k)
            for n in ("layer", "rms")
            for p in ("learned", "rope")
            for k in ("mha", "gqa", "mqa")
        ],
        # --mlp swiglu: the Llama combination with every K/V layout, and once with the book's
        # norm and positions (the MLP is independent of them)
        *[_model_check("rms", "rope", k, "swiglu") for k in ("mha", "gqa", "mqa")],
        _model_check("layer", "learned", "mha", "swiglu"),
        ParityCheck("adamw+clip", _adamw_check, dtypes=("float32",), kind="optimizer"),
        _kv_cache_check("learned", "mha"),
        _kv_cache_check("rope", "gqa"),
        _kv_cache_check("rope", "mqa"),
        _kv_cache_check("rope", "gqa", "swiglu"),
        ParityCheck("train 30 steps", _train_check(30), quick=False, kind="train"),
        ParityCheck("train 8 steps", _train_check(8), quick=True, kind="train"),
    ]
    if quick:
        return [c for c in full if c.quick]
    return [c for c in full if c.name != "train 8 steps"]


CHECKS: list[ParityCheck] = checks()


# --- running ---------------------------------------------------------------------------------

_DEVICES = {"torch": ("cpu", "cuda", "mps"), "mlx": ("cpu", "gpu")}


def available_ops(
    backends: Iterable[str] | None = None, devices: Iterable[str] | None = None
) -> list[Ops]:
    """Every installed backend on every device it can use here (optionally filtered)."""
    wanted_b = set(backends) if backends else set(BACKENDS)
    wanted_d = set(devices) if devices else None
    found = []
    for name in available_backends():
        if name not in wanted_b:
            continue
        for dev in _DEVICES[name]:
            if wanted_d is not None and dev not in wanted_d:
                continue
            try:
                found.append(get_backend(name, dev))
            except MygptError:
                continue  # that device isn't here
    return found


def reference_ops() -> Ops | None:
    """torch on the CPU, or MLX on the CPU when torch isn't installed."""
    for name in ("torch", "mlx"):
        if name in available_backends():
            return get_backend(name, "cpu")
    return None


def _activate(ops: Ops) -> None:
    # MLX keeps one process-wide default device: with MLX on two devices in one process, each
    # backend object re-pins its own before computing. A wrapper exposing ``inner`` (the tests'
    # deliberately broken backends) is activated through what it wraps.
    getattr(ops, "inner", ops).activate()


def run_check(check: ParityCheck, ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
    """One check, with an exception turned into a failing row (the table must still print)."""
    try:
        if ref is not None:
            _activate(ref)
        _activate(cand)
        return check(ref, cand, dtype)
    except Exception as e:  # noqa: BLE001 - any crash in a backend is a parity failure to report
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:60]
        return [Row(f"{check.name} [{msg}]", dtype, label(cand), math.inf, math.inf, "-", False)]


def run_parity(
    backends: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    dtypes: Sequence[str] = DTYPES,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run the checks on the selected backends/devices; returns every comparison made.

    The reference (torch-CPU, else MLX-CPU) is always used as the reference; the filters choose
    which backend/devices are *tested*. A tested backend that is the reference itself is compared
    against numpy and checked for KV-cache consistency only.
    """
    for d in dtypes:
        if d not in DTYPES:
            raise MygptError(f"unknown dtype {d!r} — use one of: {', '.join(DTYPES)}")
    ref = reference_ops()
    if ref is None:
        raise MygptError("no backend is installed — pip install torch, or pip install mlx")
    tested = available_ops(backends, devices)
    if not tested:
        raise MygptError(
            f"no installed backend/device matches --backend {list(backends or [])} "
            f"--device {list(devices or [])} — installed: {', '.join(available_backends())}"
        )
    rows: list[Row] = []
    for cand in tested:
        pair_ref = None if cand is ref else ref
        for check in checks(quick):
            todo = [d for d in dtypes if d in check.dtypes]
            if progress and todo:
                progress(f"{label(cand)}: {check.name} ({', '.join(todo)})")
            for dtype in todo:
                rows.extend(run_check(check, pair_ref, cand, dtype))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table, failures marked, and a one-line summary."""
    head = ("op", "dtype", "device", "vs", "max abs err", "max rel err", "tolerance", "pass")
    body = [
        (
            r.name,
            r.dtype,
            r.device,
            r.vs,
            f"{r.max_abs:.2e}",
            f"{r.max_rel:.2e}",
            r.tolerance,
            "ok" if r.passed else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    numeric = {4, 5}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    failed = sum(not r.passed for r in rows)
    lines.append("")
    lines.append(
        "max rel err: |err| / (|want| + atol/rtol) elementwise, / max|want| per tensor ('of max'),"
        " / max(|want|, 1) for losses; a row passes when max rel err <= its tolerance"
    )
    lines.append(
        f"{len(rows)} comparisons, {failed} failed"
        if failed
        else f"{len(rows)} comparisons, all passed"
    )
    return "\n".join(lines)


__all__ = [
    "CHECKS",
    "GRAD_TOL",
    "LOSS_TOL",
    "OP_TOL",
    "ParityCheck",
    "Row",
    "available_ops",
    "checks",
    "format_table",
    "reference_ops",
    "run_check",
    "run_parity",
    "tiny_config",
]
