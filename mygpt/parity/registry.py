"""The check registry: every parity check in table order, and the subsets ``--quick`` and
``--slow`` select."""

from __future__ import annotations

from mygpt.parity.core import ParityCheck
from mygpt.parity.dpo_checks import dpo_checks
from mygpt.parity.lora_checks import lora_checks
from mygpt.parity.model_checks import (
    FAMILY_FEATURES,
    REAL_FEATURES,
    adamw_check,
    batched_decode_check,
    kv_cache_check,
    model_check,
)
from mygpt.parity.muon_checks import muon_check
from mygpt.parity.op_checks import op_checks
from mygpt.parity.quant_checks import quant_checks
from mygpt.parity.train_checks import step_checks, train_check


def _all_checks() -> list[ParityCheck]:
    return [
        *op_checks(),
        *[
            model_check(n, p, k)
            for n in ("layer", "rms")
            for p in ("learned", "rope")
            for k in ("mha", "gqa", "mqa")
        ],
        # --mlp swiglu: the Llama combination with every K/V layout, and once with the book's
        # norm and positions (the MLP is independent of them)
        *[model_check("rms", "rope", k, "swiglu") for k in ("mha", "gqa", "mqa")],
        model_check("layer", "learned", "mha", "swiglu"),
        # what real open-weight models add, each on the Llama shape (GQA)
        *[model_check("rms", "rope", "gqa", "swiglu", f) for f in REAL_FEATURES],
        # GPT-2's tanh GELU on the book's shape; Mistral's window, Gemma 3 and OLMo 2 on GQA
        model_check("layer", "learned", "mha", "gelu", "gelu-tanh"),
        *[model_check("rms", "rope", "gqa", FAMILY_FEATURES[f][0], f) for f in ("window", "gemma")],
        # fp32 only: in bf16 the q/k-norm weights' gradients are 3.9% (torch) and 7.6% (MLX) of
        # their max away from fp32's, so the two differ by 5.8% against a 5% tolerance (MLX's
        # bf16 gradients are ~1.5-2x further from fp32 than torch's on every q/k-norm row;
        # per-head norms stay at 3.2%). The bf16 forward is checked by its kv-cache row.
        model_check("rms", "rope", "gqa", "swiglu", "olmo2", dtypes=("float32",)),
        ParityCheck("adamw+clip", adamw_check, dtypes=("float32",), kind="optimizer"),
        muon_check(1),
        muon_check(30),
        kv_cache_check("learned", "mha"),
        kv_cache_check("rope", "gqa"),
        kv_cache_check("rope", "mqa"),
        kv_cache_check("rope", "gqa", "swiglu"),
        kv_cache_check("rope", "gqa", "swiglu", real=True),
        kv_cache_check("rope", "gqa", family="gemma"),
        kv_cache_check("rope", "gqa", family="olmo2"),
        batched_decode_check("learned", "mha"),
        batched_decode_check("rope", "gqa"),
        batched_decode_check("rope", "gqa", family="gemma"),
        train_check(30, quick=False),
        train_check(30, quick=False, optimizer="muon"),
        train_check(8, quick=True),
        *step_checks(),
        *lora_checks(),
        *dpo_checks(),
        *quant_checks(),
    ]


def checks(quick: bool = False, slow: bool = False) -> list[ParityCheck]:
    """The checks to run, in table order.

    ``quick``: the covering subset ``--quick`` runs (8 training steps instead of 30); ``slow``
    adds the checks that compile a graph (25-50 s each on a small CPU).
    """
    full = [c for c in _all_checks() if slow or not c.slow]
    if quick:
        return [c for c in full if c.quick or c.slow]
    return [c for c in full if c.name != "train 8 steps"]


#: every check of a full run, the slow ones included (the tests look checks up here by name)
CHECKS: list[ParityCheck] = checks(slow=True)
