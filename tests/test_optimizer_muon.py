"""--optimizer muon in real runs: its momentum is in the checkpoint, so --resume stays bit-exact."""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.checkpoint import load_checkpoint
from mygpt.errors import MygptError
from mygpt.train import TrainConfig, train
from tests.test_train import SMALL, _interrupt_at, losses, metrics_of


def _common(backend: str, corpus) -> dict:
    return dict(
        data=str(corpus),
        steps=30,
        print_every=5,
        schedule="cosine",
        warmup=5,
        max_grad_norm=1.0,
        lr=3e-3,
        optimizer="muon",
        adamw_lr=1e-3,
        init="scaled",
        backend=backend,
        device="cpu",
        **SMALL,
    )


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_muon_run_resumes_bit_exactly(backend, small_corpus, tmp_path):
    common = _common(backend, small_corpus)
    full = tmp_path / "full.safetensors"
    train(TrainConfig.from_flags(dict(output=str(full), **common)))
    part = tmp_path / "part.safetensors"
    first = train(
        TrainConfig.from_flags(dict(output=str(part), **common)), on_log=_interrupt_at(11)
    )
    assert first.interrupted and first.steps < 30
    saved = load_checkpoint(part).optimizer_state
    assert any(k.startswith("muon.blocks.0.mha.W_Q") for k in saved)  # the momentum is saved
    assert "m.token_embedding.embedding.weight" in saved  # and AdamW's moments for the rest
    assert not any(k.startswith("m.blocks.0.mha") for k in saved)
    train(TrainConfig.from_flags(dict(output=str(part), **common)), resume=str(part))
    a, b = losses(metrics_of(full)), losses(metrics_of(part))
    assert [a[s] for s in range(1, 31)] == [b[s] for s in range(1, 31)]
    pa, pb = load_checkpoint(full).params, load_checkpoint(part).params
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    assert a[1] == pytest.approx(np.log(65), abs=0.5)  # --init scaled starts at ~ln(vocab)


def test_resuming_with_another_optimizer_is_one_line(small_corpus, tmp_path):
    common = _common("torch", small_corpus) | dict(steps=4, optimizer="adamw")
    out = tmp_path / "a.safetensors"
    train(TrainConfig.from_flags(dict(output=str(out), **common)))
    with pytest.raises(MygptError, match="another --optimizer"):
        train(None, resume=str(out), overrides={"steps": 8, "optimizer": "muon"})


def test_bad_adamw_lr_is_refused(small_corpus, tmp_path):
    tc = TrainConfig.from_flags(
        dict(output=str(tmp_path / "x.safetensors"), **_common("torch", small_corpus))
    )
    tc.adamw_lr = -1.0
    with pytest.raises(MygptError, match="must not be negative"):
        train(tc)
