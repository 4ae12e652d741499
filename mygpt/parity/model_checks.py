"""Whole-model checks: logits, loss and gradients across backends, cached decoding, AdamW + clip."""

from __future__ import annotations

import numpy as np

from mygpt.backends.base import Ops
from mygpt.cache import GrowingCache
from mygpt.config import ModelConfig
from mygpt.generate import DECODE_ROWS, Decoder, Stream, batch_invariance_check
from mygpt.model import forward, init_params, loss_fn
from mygpt.optim import AdamWConfig, adamw
from mygpt.parity.compare import (
    compare_close,
    compare_logits,
    compare_loss,
    compare_rel_max,
    f64,
    flat,
)
from mygpt.parity.core import DTYPES, GRAD_TOL, NUMPY, ParityCheck, Row, label
from mygpt.parity.inputs import device_params, snap, snap_all, tiny_config, token_batch
from mygpt.parity.reference import NumpyAdamW, np_clip_grad_norm


def _forward_and_grads(ops: Ops, cfg: ModelConfig, params, x, y, dtype: str):
    P = device_params(ops, params)
    ids, tgt = ops.asarray(x), ops.asarray(y)
    # Not under ops.inference(): see parity_tests/test_parity_backend_bugs.py (torch's rope table).
    logits = forward(ops, cfg, P, ids, dtype=dtype)
    vg = ops.value_and_grad(lambda p, a, b: loss_fn(ops, cfg, p, a, b, dtype))
    loss, grads = vg(P, ids, tgt)
    ops.eval(logits, loss, grads)
    return snap(ops, logits), ops.item(loss), snap_all(ops, grads)


#: --quick keeps a covering subset: every norm, position and kv-head option at least once
_QUICK_MODELS = {
    ("layer", "learned", "mha", "gelu"),
    ("rms", "rope", "gqa", "gelu"),
    ("layer", "rope", "mqa", "gelu"),
    ("rms", "rope", "gqa", "swiglu"),
}


#: what real open-weight models add (Llama 3, Qwen2, Qwen3), one row each on the Llama shape
REAL_FEATURES: dict[str, dict] = {
    "biases": dict(attn_bias=True, attn_out_bias=True, mlp_bias=True),
    "qk-norm": dict(qk_norm=True),
    "llama3-rope": dict(
        rope_base=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),  # fmt: skip
    "untied": dict(tie_embeddings=False),
    "head-dim": dict(head_dim=12),
}
ALL_REAL = {k: v for f in REAL_FEATURES.values() for k, v in f.items()}

#: what GPT-2, Gemma 3, Mistral's window and OLMo 2 add: (the MLP, the features), one row each
FAMILY_FEATURES: dict[str, tuple[str, dict]] = {
    "gelu-tanh": ("gelu", dict(activation="gelu_tanh")),  # GPT-2's gelu_new
    "window": ("swiglu", dict(sliding_window=3)),  # Mistral: every layer within the window
    "gemma": (
        "geglu",
        dict(
            activation="gelu_tanh",
            norm_offset=1.0,
            scale_embeddings=True,
            sandwich_norm=True,
            qk_norm=True,
            query_pre_attn_scalar=12,
            sliding_window=3,
            window_pattern=2,
            rope_base=1e6,
            rope_local_base=10000.0,
        ),
    ),  # fmt: skip
    "olmo2": (
        "swiglu",
        dict(pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_per_head=False),
    ),  # fmt: skip
}


def _features(feature: str | None) -> dict:
    if feature is None:
        return {}
    return REAL_FEATURES[feature] if feature in REAL_FEATURES else FAMILY_FEATURES[feature][1]


def model_check(
    norm: str, position: str, kv: str, mlp: str = "gelu", feature: str | None = None,
    dtypes: tuple[str, ...] = DTYPES,
) -> ParityCheck:  # fmt: skip
    name = f"model {norm}/{position}/{kv}" + ("" if mlp == "gelu" else f"/{mlp}")
    name += f" +{feature}" if feature else ""
    features = _features(feature)

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        if ref is None:
            return []
        cfg = tiny_config(norm, position, kv, mlp=mlp, **features)
        params = init_params(cfg, seed=1)
        x, y = token_batch(cfg, seed=2, B=2, T=8 if dtype == "float32" else 6)
        lc, fc, gc = _forward_and_grads(cand, cfg, params, x, y, dtype)
        lr, fr, gr = _forward_and_grads(ref, cfg, params, x, y, dtype)
        vs = label(ref)
        return [
            compare_logits(f"{name} logits", dtype, cand, vs, lc, lr),
            compare_loss(f"{name} loss", dtype, cand, vs, [fc], [fr]),
            compare_rel_max(f"{name} grads", dtype, cand, vs, gc, gr, GRAD_TOL[dtype]),
        ]

    quick = (norm, position, kv, mlp) in _QUICK_MODELS and feature is None
    return ParityCheck(name, check, dtypes, quick=quick, kind="model")


def kv_cache_check(
    position: str, kv: str, mlp: str = "gelu", real: bool = False, family: str | None = None
) -> ParityCheck:
    """Prefix with a cache, then a 3-token chunk, then token by token == one full forward.

    ``real``: with every feature of ``REAL_FEATURES`` at once (biases, q/k norm, llama3 rope,
    untied head, a wider head); ``family``: a ``FAMILY_FEATURES`` row (its own MLP)."""
    mlp = FAMILY_FEATURES[family][0] if family else mlp
    name = f"kv-cache decode {position}/{kv}" + ("" if mlp == "gelu" else f"/{mlp}")
    name += " +real" if real else f" +{family}" if family else ""

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        norm = "rms" if position == "rope" else "layer"
        features = ALL_REAL if real else _features(family)
        cfg = tiny_config(norm, position, kv, mlp=mlp, **features)
        params = init_params(cfg, seed=6)
        x, _ = token_batch(cfg, seed=7, B=2, T=12)
        P = {k: cand.asarray(v) for k, v in params.items()}
        # Plain (non-trainable) arrays: no autograd graph, and no ops.inference() (torch would
        # cache its rope table as inference tensors; see parity_tests/test_parity_backend_bugs.py).
        full = forward(cand, cfg, P, cand.asarray(x), dtype=dtype)
        cache = GrowingCache(cfg.num_layers, cfg.max_seq_len)
        parts = []
        for a, b in ((0, 6), (6, 9), (9, 10), (10, 11), (11, 12)):
            parts.append(forward(cand, cfg, P, cand.asarray(x[:, a:b]), cache=cache, dtype=dtype))
        stepped = cand.concat(parts, axis=1)
        cand.eval(full, stepped)
        got, want = cand.to_numpy(stepped), cand.to_numpy(full)
        return [compare_logits(name, dtype, cand, "full forward", got, want)]

    return ParityCheck(name, check, quick=(position == "rope"), kind="cache")


def decode_rows(name: str, cand: Ops, cfg: ModelConfig, P: dict, x, dtype: str) -> list[Row]:
    """The fixed-shape decoder stepped through ``x`` (1, 12) == one full forward, and streams
    decoded together == each decoded alone, bit for bit (what ``mygpt serve`` needs)."""
    full = cand.to_numpy(forward(cand, cfg, P, cand.asarray(x), dtype=dtype))[0]
    dec = Decoder(cand, cfg, P, DECODE_ROWS, dtype)
    stream = Stream(list(x[0, :6]), temperature=0)
    row = dec.add(stream)
    stepped = [dec.logits([row])[row]]
    for t in range(6, x.shape[1]):
        stream.ids.append(int(x[0, t]))
        stepped.append(dec.logits([row])[row])
    drift = batch_invariance_check(cand, cfg, P, dtype, steps=3)
    solo = Row(
        f"{name}: batched == solo", dtype, label(cand), drift, drift, "bit-exact",
        drift == 0.0, "itself, decoded alone",
    )  # fmt: skip
    return [compare_logits(name, dtype, cand, "full forward", np.stack(stepped), full[5:]), solo]


def batched_decode_check(position: str, kv: str, family: str | None = None) -> ParityCheck:
    """The fixed-shape decoder (a RowCache step: per-row rope, write_kv, length mask) == one full forward, and
    streams decoded together == each decoded alone, bit for bit (what ``mygpt serve`` needs).
    ``family``: a ``FAMILY_FEATURES`` row (a sliding window: its rows keep a ring of it)."""
    name = f"batched decode {position}/{kv}" + (f" +{family}" if family else "")

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        norm = "rms" if position == "rope" else "layer"
        mlp, features = FAMILY_FEATURES[family] if family else ("gelu", {})
        cfg = tiny_config(norm, position, kv, mlp=mlp, **features)
        params = init_params(cfg, seed=8)
        x, _ = token_batch(cfg, seed=9, B=1, T=12)
        P = {k: cand.asarray(v) for k, v in params.items()}
        return decode_rows(name, cand, cfg, P, x, dtype)

    return ParityCheck(name, check, quick=(position == "rope"), kind="cache")


# --- the optimizer, isolated: clip then AdamW on identical gradients -----------------------------

_OPT_CFG, _LRS, _MAX_NORM = AdamWConfig(weight_decay=0.1), (3e-3, 1e-3), 1.0


def _optimizer_inputs() -> tuple[dict, list[dict]]:
    """Parameters and two steps of numpy gradients: large (clipped), then tiny (not clipped)."""
    cfg = tiny_config("rms", "rope", "gqa", num_layers=1)
    rng = np.random.default_rng(3)
    params = init_params(cfg, seed=4)
    grad_steps = [
        {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32) for k, v in params.items()},
        {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in params.items()},
    ]
    return params, grad_steps


def _optimizer_run(ops: Ops, params: dict, grad_steps: list[dict]):
    """(per step: (norm, clipped grads, params)), final moments, on a backend."""
    P = device_params(ops, params)
    opt = adamw(ops, P, _OPT_CFG)
    trace = []
    for g, lr in zip(grad_steps, _LRS):
        clipped, norm = ops.clip_grad_norm({k: ops.asarray(v) for k, v in g.items()}, _MAX_NORM)
        P = opt.step(P, clipped, lr)
        ops.eval(P, norm, opt.arrays())
        trace.append((ops.item(norm), snap_all(ops, clipped), snap_all(ops, P)))
    return trace, opt.state_dict()[1]


def _optimizer_numpy(params: dict, grad_steps: list[dict]):
    P = {k: f64(v) for k, v in params.items()}
    opt = NumpyAdamW(P, _OPT_CFG)
    trace = []
    for g, lr in zip(grad_steps, _LRS):
        clipped, norm = np_clip_grad_norm(g, _MAX_NORM)
        P = opt.step(P, clipped, lr)
        trace.append((norm, clipped, dict(P)))
    return trace, opt.state()


def adamw_check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
    """Clip then AdamW on identical gradients (two steps: clipped, then unclipped).

    The gradients come from numpy, not from a backward pass, so this isolates the optimizer:
    bias correction, decoupled decay, eps placement, and the clip's scale and reported norm.
    """
    params, grad_steps = _optimizer_inputs()
    got, got_state = _optimizer_run(cand, params, grad_steps)
    wants = [(NUMPY, _optimizer_numpy(params, grad_steps))]
    if ref is not None:
        wants.append((label(ref), _optimizer_run(ref, params, grad_steps)))
    rows = []
    for vs, (trace, state) in wants:
        for step, ((gn, gc, gp), (wn, wc, wp)) in enumerate(zip(got, trace), start=1):
            what = "clipped" if step == 1 else "unclipped"
            rows += [
                compare_close(f"clip_grad_norm {step} norm", dtype, cand, vs, gn, wn),
                compare_close(f"clip_grad_norm {step} grads", dtype, cand, vs, flat(gc), flat(wc)),
                compare_close(
                    f"adamw step {step} ({what}) params", dtype, cand, vs, flat(gp), flat(wp)
                ),
            ]
        # second moments are ~g^2 ~ 1e-7: compare relative to each tensor's max, not atol 1e-5
        rows.append(
            compare_rel_max(
                "adamw state m/v", dtype, cand, vs, got_state, state, GRAD_TOL[dtype] / 10
            )
        )
    return rows
