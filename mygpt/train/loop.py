"""The training loop: book semantics, plus resume, validation, NaN guards, clean interrupts and
data parallelism on the frameworks' launchers.

Everything that must match across backends, across an interruption and across world sizes is
host-side and seeded: weights come from ``model.init_params`` (numpy), batches from
``data.BatchSampler`` (numpy, the global batch on every rank), the learning rate from
``schedule.lr_at``. A checkpoint saved for resume holds the weights, the AdamW moments, the step
and both samplers' RNG states, so a resumed run (on any number of processes) draws the same
batches and reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mygpt import model
from mygpt.backends.distributed import PeerLost
from mygpt.checkpoint import Checkpoint
from mygpt.console import console
from mygpt.errors import MygptError
from mygpt.fileio import check_output_path
from mygpt.metrics import MetricsLog, metrics_path_for
from mygpt.train.checkpointing import Saver, load_resumable, require_resumable
from mygpt.train.config import TrainConfig, TrainResult, flag, resume_config
from mygpt.train.data import RunData, load_data
from mygpt.train.init_from import init_checkpoint
from mygpt.train.monitor import RunLog, agree
from mygpt.train.setup import Run, start_run
from mygpt.train.signals import StopFlag
from mygpt.train.state import TrainState, init_state
from mygpt.train.step import dropout_seed, make_train_step


def train(
    tc: TrainConfig | None,
    resume: str | os.PathLike | Checkpoint | None = None,
    on_log: Callable[[dict], None] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainResult:
    """Run (or resume) a training run and return its summary. See ``mygpt train --help``.

    With ``resume`` (a path or a loaded checkpoint) the checkpoint's run continues, into the same
    file unless ``output`` is given, with the settings the caller gives on top: ``overrides``
    (flat flag names, e.g. ``{"steps": 4000}``), or else the fields passed to ``tc``'s
    constructor (``TrainConfig(steps=4000)``; never "the fields that differ from the default").
    An architecture or tokenizer setting that contradicts the checkpoint is refused.
    ``mygpt train --resume X --steps 4000`` is ``train(None, resume="X", overrides={"steps": 4000})``.
    """
    if isinstance(resume, Checkpoint):
        ckpt = require_resumable(resume)
    else:
        ckpt = load_resumable(resume) if resume is not None else None
    try:
        if ckpt is not None:
            given = overrides if overrides is not None else tc.given_flags() if tc else {}
            tc = continued_config(ckpt, given)
        elif tc is None:
            raise MygptError("train() needs a TrainConfig or a checkpoint to resume")
        # --init-from: weights, architecture and tokenizer of a checkpoint, a fresh optimizer
        init = init_checkpoint(tc) if ckpt is None else None
        if init is not None:
            tc = tc.replace(model=init.config)
        tc.validate()  # the architecture too, before minutes of corpus encoding
        if console.is_main:  # refuse an output that cannot be written before minutes of work
            check_output_path(tc.output, "--output")
            MetricsLog(metrics_path_for(tc.output)).check()
        source = ckpt or init  # where the weights, architecture and tokenizer come from
        run = start_run(tc, source.config if source is not None else None)
    except MygptError as e:
        e.every_rank = True  # the same settings on every rank: one rank says so
        raise
    try:
        rd = _load(run, tc, _tokenizer_of(source))
        if tc.dpo and init is not None and not tc.lora_rank:  # what a resume reloads and checks
            from mygpt.train.dpo import reference_digest

            tc.extra["dpo_reference"] = reference_digest(tc, init.params)
        state = init_state(run, tc, rd, ckpt, init)
        ref = None
        if tc.dpo:
            from mygpt.train.dpo import make_reference

            ref = make_reference(run, tc, rd, state, init)
        result = _train_loop(run, tc, rd, state, ckpt is not None, on_log, ref)
        # every rank leaves together: a rank tearing its process group down while a peer's last
        # collective is still in flight can abort the peer at exit (gloo's worker threads)
        run.dist.barrier("the end of the run")
        return result
    except PeerLost as e:
        raise MygptError(str(e)) from None
    finally:
        run.dist.close()


def continued_config(ckpt: Checkpoint, given: Mapping[str, Any] | None = None) -> TrainConfig:
    """A resumed run's settings: the saved ones with the flags in ``given`` on top; the start
    line says what changed (see :func:`mygpt.train.config.resume_config`)."""
    saved = TrainConfig.from_dict(ckpt.train_state.get("args", {}))
    output = str(ckpt.path) if ckpt.path is not None else saved.output
    source = f"--resume {ckpt.path or output}"
    tc, changes = resume_config(saved, ckpt.config, ckpt.tokenizer, given or {}, output, source)
    if changes:
        listed = ", ".join(f"{flag(k)} {old} → {new}" for k, (old, new) in changes.items())
        console.status(f"resuming with changed settings: {listed}")
    return tc


def _load(run: Run, tc: TrainConfig, tokenizer: Any) -> RunData:
    if tc.dpo:  # preference pairs (mygpt.train.dpo_data): RunData's interface
        from mygpt.train.dpo_data import load_pairs

        return load_pairs(run, tc, tokenizer)
    return load_data(run, tc, tokenizer)


def _tokenizer_of(ckpt: Checkpoint | None):
    if ckpt is None:
        return None
    from mygpt.tokenizers import tokenizer_from_dict

    return tokenizer_from_dict(ckpt.tokenizer)


@dataclass
class _When:
    print: bool
    eval: bool
    ckpt: bool


def _schedule(tc: TrainConfig, step: int, has_val: bool) -> _When:
    """Which of printing, evaluating and saving happen after ``step`` (the same on every rank)."""
    is_print = step == 1 or step % tc.print_every == 0 or step == tc.steps
    is_eval = has_val and (
        (tc.val_every > 0 and step % tc.val_every == 0)
        or (tc.val_every == 0 and is_print and step > 1)
        or step == tc.steps
    )
    is_ckpt = (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0) or step == tc.steps
    return _When(is_print, is_eval, is_ckpt)


def evaluate(run: Run, tc: TrainConfig, rd: RunData, state: TrainState, params: dict) -> float:
    """Mean validation loss over ``--eval-batches`` global batches, each split across ranks."""
    ops = run.ops
    with ops.inference():
        losses = []
        for _ in range(tc.eval_batches):
            x, y, *mask = rd.val_batch(ops)
            losses.append(model.loss_fn(ops, state.cfg, state.weights(params), x, y,
                                        dtype=run.dtype, train=False, lora=state.lora_weights(params),
                                        mask=mask[0] if mask else None))  # fmt: skip
        ops.eval(*losses)
        local = float(np.mean([ops.item(v) for v in losses]))
    return run.dist.mean([local])[0]


def _make_step(run: Run, tc: TrainConfig, state: TrainState, ref: Any, log: RunLog):
    """The run's step: next-token prediction, or DPO (``ref``: its reference; the log then
    carries trl's metrics)."""
    ops, dist = run.ops, run.dist
    kwargs = dict(dtype=run.dtype, max_grad_norm=tc.max_grad_norm, compile=tc.compile,
                  grad_sync=dist.all_reduce_grads if dist.world_size > 1 else None,
                  base=state.base, lora=state.lora)  # fmt: skip
    if ref is None:
        return make_train_step(ops, state.cfg, state.opt, **kwargs)
    from mygpt.train.dpo import STATS, make_dpo_step, read_stats

    log.stat_names = STATS
    log.tokens_per_step *= 2  # a pair is two rows of --seq-len tokens (chosen, rejected)
    log.read_stats = lambda pending: read_stats(ops, ref.spec, pending)
    return make_dpo_step(ops, state.cfg, state.opt, ref.spec, ref, **kwargs)


def _evaluate(run, tc, rd, state, params, ref) -> tuple[float, dict | None]:
    if ref is None:
        return evaluate(run, tc, rd, state, params), None
    from mygpt.train.dpo import evaluate_dpo

    return evaluate_dpo(run, tc, rd, state, params, ref)


def _train_loop(run, tc, rd, state, resumed, on_log, ref=None) -> TrainResult:
    ops, dist = run.ops, run.dist
    log = RunLog(run, tc, state.start_step, resumed, on_log)
    train_step = _make_step(run, tc, state, ref, log)
    saver = Saver(run, tc, rd, state)
    params, step, interrupted = state.params, state.start_step, False
    with StopFlag() as stop:
        try:
            for step in range(state.start_step + 1, tc.steps + 1):
                lr = tc.lr_at(step)
                if state.cfg.dropout > 0 or (state.lora is not None and state.lora.dropout > 0):
                    # masks depend on (seed, step, rank) only, so a resumed run draws the same
                    ops.seed(dropout_seed(tc.seed, step, dist.rank))
                params, loss, *stats = train_step(params, rd.micro_batches(ops, tc.grad_accum), lr)
                log.add(step, loss, lr, *stats)
                when = _schedule(tc, step, rd.val_sampler is not None)
                # one process stops at once; several agree at the next flush, a fixed step
                alone_stopping = dist.world_size == 1 and stop.requested
                stopping = False
                if when.print or when.eval or when.ckpt or log.due or alone_stopping:
                    losses, stopping = agree(dist, log.read_back(), stop.requested)
                    log.flush(step, losses, saver.last_good_step)
                if when.eval:
                    val_loss, val_stats = _evaluate(run, tc, rd, state, params, ref)
                    log.val(step, val_loss, lr, val_stats)
                if when.print:
                    log.print_step(step, lr)
                if when.ckpt or stopping:
                    saver.save(step, params, log.last_loss)
                if stopping:
                    interrupted = True
                    log.progress.write(
                        f"saved {saver.output} at step {step}; resume with --resume {saver.output}"
                    )
                    break
        except BaseException:
            log.close(error=True)
            raise
        finally:
            log.progress.close()
    extra = {
        "params": model.count_params(state.cfg),
        "backend": ops.name,
        "device": ops.device,
        "precision": run.dtype,
        "world_size": dist.world_size,
    }
    wall, tps = log.finish(step, state.start_step, interrupted, extra)
    console.status(
        f"{'interrupted' if interrupted else 'done'}: {step - state.start_step} steps in "
        f"{wall:.1f} s ({tps:,.0f} tokens/s) · checkpoint {saver.output}"
    )
    return TrainResult(step, log.last_loss, log.last_val, wall, tps, saver.output, interrupted)
