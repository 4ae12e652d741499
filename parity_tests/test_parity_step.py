"""The real training step (``mygpt.train.make_train_step``) against each backend's own gradients
composed in float64, and the gate failing when the step is broken.

The step is shared code: a mistake in it is made identically on both backends, so only the
float64 composition (mean over micro-batches, clip, AdamW) can see it. Each broken step below is a
plausible mistake that a cross-backend comparison would pass.
"""

from __future__ import annotations

import pytest

import mygpt.train as train_mod
from mygpt.model import loss_fn
from mygpt.parity import CHECKS, run_check
from mygpt.parity.registry import checks
from mygpt.parity.train_checks import StepVariant, step_check

STEP_CHECKS = [c for c in CHECKS if c.kind == "step" and not c.slow]


def _failed(rows) -> set[str]:
    assert rows, "the check made no comparison"
    return {r.name for r in rows if not r.passed}


@pytest.mark.parametrize("check", STEP_CHECKS, ids=lambda c: c.name)
def test_the_real_step_matches_its_float64_composition(check, pair, check_rows):
    _, cand = pair
    rows = run_check(check, None, cand, "float32")
    check_rows(rows)
    assert {"loss", "grads", "params"} <= {r.name.rsplit(" ", 1)[-1] for r in rows}


def test_step_rows_are_in_the_quick_gate_and_compile_only_with_slow():
    quick = {c.name for c in checks(quick=True)}
    assert {c.name for c in STEP_CHECKS} <= quick
    assert not any(c.slow for c in checks(quick=True)) and not any(c.slow for c in checks())
    assert any(c.slow and "compile" in c.name for c in checks(slow=True))


def _broken_step(
    *,
    summed: bool = False,
    no_clip: bool = False,
    no_dropout: bool = False,
    sync_after_clip: bool = False,
):
    """``make_train_step`` with one classic mistake (same signature, same everything else)."""

    def make(ops, cfg, opt, *, dtype="float32", max_grad_norm=0.0, compile=False, grad_sync=None):
        def loss_of(p, x, y):
            return loss_fn(ops, cfg, p, x, y, dtype=dtype, train=not no_dropout)

        grad_fn = ops.value_and_grad(loss_of, compile=compile)

        def step(params, micro_batches, lr):
            loss, grads = None, None
            for x, y in micro_batches:
                l_i, g_i = grad_fn(params, x, y)
                loss = l_i if loss is None else loss + l_i
                grads = g_i if grads is None else {k: grads[k] + g_i[k] for k in grads}
            n = len(micro_batches)
            loss = loss / n  # the logged loss is right: only the gradients are wrong
            if not summed:
                grads = {k: g / n for k, g in grads.items()}
            if grad_sync is not None and not sync_after_clip:
                grads = grad_sync(grads)
            if max_grad_norm > 0 and not no_clip:
                grads, _ = ops.clip_grad_norm(grads, max_grad_norm)
            if grad_sync is not None and sync_after_clip:
                grads = grad_sync(grads)  # each rank clipped by its own norm: ranks diverge
            params = opt.step(params, grads, lr)
            ops.eval(loss, params, opt.arrays())
            return params, loss

        return step

    return make


SYNC_ROW = "step data-parallel sync grad-accum 2 clip 0.5"


def _step(name: str):
    return next(c for c in STEP_CHECKS if c.name == name)


@pytest.mark.parametrize(
    "bug, check_name, must_fail",
    [
        (dict(summed=True), "step grad-accum 2", {"grads", "params"}),
        (dict(summed=True), "step dropout 0.1 grad-accum 2", {"grads", "params"}),
        (dict(no_clip=True), "step clip 0.5", {"grads", "params"}),
        (dict(no_dropout=True), "step dropout 0.1 grad-accum 2", {"loss", "grads", "params"}),
        (dict(sync_after_clip=True), SYNC_ROW, {"grads", "params"}),
    ],
    ids=[
        "summed-accumulation",
        "summed-with-dropout",
        "clip-skipped",
        "dropout-off",
        "sync-after-clip",
    ],
)
def test_a_broken_step_fails_the_gate(bug, check_name, must_fail, pair, monkeypatch):
    _, cand = pair
    check = _step(check_name)
    monkeypatch.setattr(train_mod, "make_train_step", _broken_step(**bug))
    failed = _failed(run_check(check, None, cand, "float32"))
    assert {f"{check_name} {what}" for what in must_fail} <= failed
    # and the step written the same way without the mistake passes: the failure is the bug's
    monkeypatch.setattr(train_mod, "make_train_step", _broken_step())
    assert not _failed(run_check(check, None, cand, "float32"))


def test_summed_accumulation_fails_mygpt_parity(monkeypatch, capsys):
    """The whole gate, through the command line: exit 1 and the failing rows printed."""
    from mygpt.cli import main
    from mygpt.parity.runner import available_backends

    backend = available_backends()[-1]  # MLX where installed: the cheaper of the two here
    monkeypatch.setattr(train_mod, "make_train_step", _broken_step(summed=True))
    code = main(["parity", "--quick", "--backend", backend, "--dtype", "float32"])
    out = capsys.readouterr().out
    assert code == 1
    failing = [line.split("  ")[0] for line in out.splitlines() if line.endswith("FAIL")]
    assert "step grad-accum 2 grads" in failing
    # the cross-backend training rows share the bug (one micro-batch, too): they still pass
    assert not any(name.startswith("train ") for name in failing)


def test_a_gradient_sync_the_reference_does_not_know_fails(pair):
    """The data-parallel row's reference applies the mean over ranks; a variant that syncs
    without telling the reference (so the optimizer sees 2x the gradients) fails."""
    from mygpt.parity.train_checks import STEP_VARIANTS

    _, cand = pair
    synced = next(v for v in STEP_VARIANTS if v.step_kwargs is not None)
    unknown = StepVariant("unknown sync", grad_accum=2, step_kwargs=synced.step_kwargs)
    assert "step unknown sync grads" in _failed(
        run_check(step_check(unknown), None, cand, "float32")
    )


@pytest.mark.slow
def test_the_compiled_step_matches_its_float64_composition(pair, check_rows):
    """``--compile`` (mx.compile / torch.compile of the loss): 15-65 s of compiling per backend
    here, so ``mygpt parity`` runs it only with ``--slow``."""
    _, cand = pair
    check = next(c for c in CHECKS if c.slow)
    rows = run_check(check, None, cand, "float32")
    check_rows(rows)
    assert any(r.name.endswith("clip engaged") for r in rows)
