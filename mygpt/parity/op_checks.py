"""Op-level checks: one op, identical (dtype-rounded) inputs, each backend against numpy f64."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mygpt.backends.base import Mask, Ops
from mygpt.parity.compare import compare_close, compare_loss, f64
from mygpt.parity.core import NUMPY, Check, ParityCheck, Row, label
from mygpt.parity.inputs import rng_for, round_to_dtype, snap
from mygpt.parity.reference import (
    np_attention,
    np_cross_entropy,
    np_gelu,
    np_gelu_tanh,
    np_layer_norm,
    np_masked_cross_entropy,
    np_rms_norm,
    np_rope,
    np_silu,
    np_softmax,
)

Inputs = dict[str, np.ndarray]


def _on(ops: Ops, inputs: Inputs, dtype: str, run: Callable[[Ops, dict], object]) -> np.ndarray:
    """``run`` on ``ops`` with float inputs in ``dtype`` and integer ones (ids) as they are."""
    arrays = {
        k: ops.asarray(v, dtype) if np.issubdtype(v.dtype, np.floating) else ops.asarray(v)
        for k, v in inputs.items()
    }
    out = run(ops, arrays)
    ops.eval(out)
    return snap(ops, out)


def op_check(
    name: str,
    make: Callable[[np.random.Generator], Inputs],
    run: Callable[[Ops, dict], object],
    reference: Callable[[Inputs], np.ndarray],
    compare: str = "close",
) -> ParityCheck:
    """A check that feeds one op identical inputs on the candidate, the reference and numpy.

    ``make`` returns named inputs; float ones are rounded to the dtype and handed to the backend in
    it, integer ones (ids, targets) pass through. ``run(ops, arrays)`` calls the op under test.
    """

    def check(ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        inputs = {
            k: round_to_dtype(v, dtype) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in make(rng_for(name)).items()
        }
        got = _on(cand, inputs, dtype, run)
        pairs = [(NUMPY, reference(inputs))]
        if ref is not None:
            pairs.append((label(ref), _on(ref, inputs, dtype, run)))
        if compare == "loss":
            return [
                compare_loss(name, dtype, cand, vs, [float(got)], [float(w)]) for vs, w in pairs
            ]
        return [compare_close(name, dtype, cand, vs, got, w) for vs, w in pairs]

    return ParityCheck(name, check, kind="op")


def attention_check(
    H: int, Hkv: int, Tq: int, Tk: int, lengths: tuple[int, ...] | None = None,
    window: int | None = None,
) -> ParityCheck:  # fmt: skip
    """The one attention op under one mask kind: causal (``lengths`` None), causal per row
    (each row its own number of valid keys: batched decoding), with a sliding ``window``."""
    D, B = 8, 2 if lengths is None else len(lengths)
    scale = 1.0 / math.sqrt(D)
    kind = "" if lengths is None else f" lengths {','.join(map(str, lengths))}"
    kind += "" if window is None else f" window {window}"

    def make(rng):
        return {
            "q": rng.standard_normal((B, H, Tq, D)),
            "k": rng.standard_normal((B, Hkv, Tk, D)),
            "v": rng.standard_normal((B, Hkv, Tk, D)),
        }

    def run(ops, a):
        mask = None
        if lengths is not None or window is not None:
            mask = Mask(lengths=None if lengths is None else np.array(lengths), window=window)
        return ops.attention(a["q"], a["k"], a["v"], scale, mask=mask)

    return op_check(
        f"attention H{H}/kv{Hkv} Tq{Tq}/Tk{Tk}{kind}",
        make,
        run,
        lambda i: np_attention(i["q"], i["k"], i["v"], scale, lengths, window),
    )


def _norm_checks(C: int = 48, eps: float = 1e-5) -> list[ParityCheck]:
    def make(r):
        # an offset mean and a spread of scales: a population-variance slip shows
        return {
            "x": r.standard_normal((3, 5, C)) * 2.0 + 0.5,
            "w": 1.0 + 0.1 * r.standard_normal(C),
            "b": 0.1 * r.standard_normal(C),
        }

    return [
        op_check(
            "layer_norm",
            make,
            lambda ops, a: ops.layer_norm(a["x"], a["w"], a["b"], eps),
            lambda i: np_layer_norm(i["x"], i["w"], i["b"], eps),
        ),
        op_check(
            "rms_norm",
            lambda r: {k: v for k, v in make(r).items() if k != "b"},
            lambda ops, a: ops.rms_norm(a["x"], a["w"], eps),
            lambda i: np_rms_norm(i["x"], i["w"], eps),
        ),
    ]


def _rope_check(offset: int, T: int) -> ParityCheck:
    return op_check(
        f"rope offset {offset}",
        lambda r: {"x": r.standard_normal((2, 3, T, 16))},
        lambda ops, a: ops.rope(a["x"], offset, 10000.0),
        lambda i: np_rope(i["x"], offset, 10000.0),
    )


def _pointwise_checks(C: int = 48) -> list[ParityCheck]:
    """softmax, GELU, cross-entropy and linear: the ops between the norms and the attention."""
    return [
        op_check(
            "softmax",
            lambda r: {"x": r.standard_normal((4, 6, 33)) * 4.0},
            lambda ops, a: ops.softmax(a["x"], axis=-1),
            lambda i: np_softmax(i["x"], -1),
        ),
        op_check(
            "gelu",
            # wide range: erf and tanh GELU differ most around |x| ~ 2-3
            lambda r: {"x": r.uniform(-6.0, 6.0, (4, 257))},
            lambda ops, a: ops.gelu(a["x"]),
            lambda i: np_gelu(i["x"]),
        ),
        op_check(
            "gelu_tanh",  # GPT-2's gelu_new, Gemma's gelu_pytorch_tanh (--activation gelu_tanh)
            lambda r: {"x": r.uniform(-6.0, 6.0, (4, 257))},
            lambda ops, a: ops.gelu_tanh(a["x"]),
            lambda i: np_gelu_tanh(i["x"]),
        ),
        op_check(
            "silu",  # SwiGLU's gate (--mlp swiglu)
            lambda r: {"x": r.uniform(-8.0, 8.0, (4, 257))},
            lambda ops, a: ops.silu(a["x"]),
            lambda i: np_silu(i["x"]),
        ),
        op_check(
            "cross_entropy",
            lambda r: {
                "logits": r.standard_normal((3, 7, 40)) * 3.0,
                "targets": r.integers(0, 40, (3, 7)).astype(np.int64),
            },
            lambda ops, a: ops.cross_entropy(a["logits"], a["targets"]),
            lambda i: np_cross_entropy(i["logits"], i["targets"]),
            compare="loss",
        ),
        op_check(  # chat data: only the assistant's tokens count
            "cross_entropy masked",
            lambda r: {
                "logits": r.standard_normal((3, 7, 40)) * 3.0,
                "targets": r.integers(0, 40, (3, 7)).astype(np.int64),
                "mask": (r.random((3, 7)) < 0.4).astype(np.float32),
            },
            lambda ops, a: ops.cross_entropy(a["logits"], a["targets"], a["mask"]),
            lambda i: np_masked_cross_entropy(i["logits"], i["targets"], i["mask"]),
            compare="loss",
        ),
        op_check(
            "linear",
            lambda r: {
                "x": r.standard_normal((3, 5, C)),
                "w": r.uniform(-0.15, 0.15, (24, C)),
                "b": r.uniform(-0.15, 0.15, 24),
            },
            lambda ops, a: ops.linear(a["x"], a["w"], a["b"]),
            lambda i: f64(i["x"]) @ f64(i["w"]).T + f64(i["b"]),
        ),
    ]


def op_checks() -> list[ParityCheck]:
    """Every op check, in table order."""
    return [
        *_norm_checks(),
        _rope_check(0, T=7),
        _rope_check(9, T=4),  # the positions a KV-cached decode step sees
        attention_check(4, 4, 6, 6),  # MHA
        attention_check(4, 2, 6, 6),  # GQA
        attention_check(4, 1, 6, 6),  # MQA
        attention_check(4, 2, 3, 8),  # a cached chunk: Tq < Tk, mask aligned to the last key
        attention_check(4, 1, 1, 9),  # one decode step
        attention_check(4, 2, 1, 9, lengths=(3, 9, 1)),  # a batched decode step: keys per row
        attention_check(4, 2, 2, 9, lengths=(4, 9)),  # two tokens a row, per-row lengths
        attention_check(4, 2, 6, 6, window=3),  # a sliding window
        attention_check(4, 2, 1, 9, lengths=(5, 9), window=4),  # a window in a decode step
        *_pointwise_checks(),
    ]


__all__ = ["Check", "attention_check", "op_check", "op_checks"]
