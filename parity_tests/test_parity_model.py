"""Whole-model parity: forward logits, loss and gradients for every architecture variant."""

from __future__ import annotations

import pytest

from mygpt.backends.base import DTYPES
from mygpt.parity import CHECKS, run_check

MODEL_CHECKS = [c for c in CHECKS if c.kind == "model"]


def test_all_twelve_variants_are_checked():
    variants = {c.name.split(" ", 1)[1] for c in MODEL_CHECKS}
    assert variants == {
        f"{n}/{p}/{k}"
        for n in ("layer", "rms")
        for p in ("learned", "rope")
        for k in ("mha", "gqa", "mqa")
    } | {f"rms/rope/{k}/swiglu" for k in ("mha", "gqa", "mqa")} | {"layer/learned/mha/swiglu"} | {
        f"rms/rope/gqa/swiglu +{f}"
        for f in ("biases", "qk-norm", "llama3-rope", "untied", "head-dim")
    } | {"layer/learned/mha +gelu-tanh", "rms/rope/gqa/swiglu +window",
         "rms/rope/gqa/geglu +gemma", "rms/rope/gqa/swiglu +olmo2"}  # fmt: skip


def test_family_rows_have_their_features():
    """Each family row's model really has what it is named for (a window that changes the
    mask, (1 + w) norms, norms after the sublayers...)."""
    from mygpt.model import param_shapes
    from mygpt.parity import tiny_config
    from mygpt.parity.model_checks import FAMILY_FEATURES

    for name, (mlp, features) in FAMILY_FEATURES.items():
        cfg = tiny_config("rms", "rope", "gqa", mlp=mlp, **features)
        plain = tiny_config("rms", "rope", "gqa", mlp=mlp)
        assert cfg != plain and (cfg.layer_types is not None or name not in ("window", "gemma"))
        if name == "olmo2":
            assert "blocks.0.ln1.weight" not in param_shapes(cfg)
            assert "blocks.0.ln2_post.weight" in param_shapes(cfg)


def test_real_model_rows_have_their_features():
    """A row named for a feature whose model lacks it would prove nothing."""
    from mygpt.model import param_shapes
    from mygpt.parity import tiny_config
    from mygpt.parity.model_checks import REAL_FEATURES

    base = param_shapes(tiny_config("rms", "rope", "gqa", mlp="swiglu"))
    for name, features in REAL_FEATURES.items():
        cfg = tiny_config("rms", "rope", "gqa", mlp="swiglu", **features)
        changed = param_shapes(cfg) != base or cfg.rope_scaling is not None
        assert changed, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("check", MODEL_CHECKS, ids=lambda c: c.name.split(" ", 1)[1])
def test_model_forward_and_grads(check, dtype, cross_pair, check_rows):
    if dtype not in check.dtypes:
        pytest.skip(f"{check.name} is checked in {', '.join(check.dtypes)} only (see registry)")
    rows = run_check(check, *cross_pair, dtype)
    check_rows(rows)
    assert {r.name.rsplit(" ", 1)[1] for r in rows} == {"logits", "loss", "grads"}


def test_swiglu_rows_run_the_gated_mlp():
    """A swiglu row whose model silently fell back to the GELU MLP would prove nothing."""
    from mygpt.model import param_shapes
    from mygpt.parity import tiny_config

    assert any(c.name.endswith("/swiglu") for c in MODEL_CHECKS)
    shapes = param_shapes(tiny_config("rms", "rope", "gqa", mlp="swiglu"))
    assert "blocks.0.mlp.gate.weight" in shapes and "blocks.0.mlp.fc1.weight" not in shapes
