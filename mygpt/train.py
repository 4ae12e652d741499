"""The training loop: book semantics, plus resume, validation, NaN guards and clean interrupts.

Everything that must match across backends and across an interruption is host-side and seeded:
weights come from ``model.init_params`` (numpy), batches from ``data.BatchSampler`` (numpy), the
learning rate from ``schedule.lr_at``. A checkpoint saved for resume holds the weights, the AdamW
moments, the step and both samplers' RNG states, so a resumed run draws the same batches and
reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends import AdamWConfig, get_backend, resolve_backend_name
from mygpt import model
from mygpt.checkpoint import Checkpoint, load_checkpoint, save_book_checkpoint, save_checkpoint
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.fileio import check_output_path
from mygpt.metrics import MetricsLog, metrics_path_for
from mygpt.precision import resolve_training_precision
from mygpt.progress import Progress
from mygpt.schedule import lr_at


@dataclass
class TrainConfig:
    """One run's settings. Saved in every checkpoint, so ``--resume`` continues the same run."""

    data: str | None = None  # corpus path; None = the bundled Tiny Shakespeare
    output: str = "model.safetensors"
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 1e-3
    min_lr: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    max_grad_norm: float = 0.0  # 0 = no clipping (the book's default)
    weight_decay: float = 0.01
    grad_accum: int = 1
    val_split: float = 0.0
    val_file: str | None = None
    val_every: int = 0  # 0 = evaluate at the print steps when there is validation data
    eval_batches: int = 10
    print_every: int = 500
    checkpoint_every: int = 0
    seed: int = 0  # weights use seed, batches seed + 42 (the book's 0 and 42)
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    tokenizer: str = "char"
    num_merges: int = 1024
    bpe_train_bytes: int = 0
    tokenizer_file: str | None = None
    cache_dir: str | None = None
    encoding_errors: str = "strict"  # for corpora that are not valid UTF-8: replace | ignore
    # architecture (ignored on resume: the checkpoint's config wins)
    embed_dim: int = 64
    num_heads: int = 4
    num_layers: int = 4
    max_seq_len: int = 64
    num_kv_heads: int | None = None
    norm: str = "layer"
    position: str = "learned"
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig.from_flags(vocab_size, dataclasses.asdict(self))

    def lr_at(self, step: int) -> float:
        return lr_at(
            step,
            lr=self.lr,
            total_steps=self.steps,
            schedule=self.schedule,
            warmup=self.warmup,
            min_lr=self.min_lr,
        )

    def validate(self) -> None:
        positive = ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "print_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise MygptError(
                    f"--{name.replace('_', '-')} must be at least 1 — pass a positive value"
                )
        if self.lr <= 0:
            raise MygptError(f"--lr must be positive, got {self.lr} — e.g. --lr 1e-3")
        if not 0.0 <= self.val_split < 1.0:
            raise MygptError(
                f"--val-split must be in [0, 1), got {self.val_split} — e.g. --val-split 0.1"
            )
        if self.seq_len > self.max_seq_len:
            raise MygptError(
                f"--seq-len {self.seq_len} is longer than --max-seq-len {self.max_seq_len} — "
                "raise --max-seq-len or lower --seq-len"
            )
        if self.warmup < 0 or self.max_grad_norm < 0 or self.min_lr < 0:
            raise MygptError("--warmup, --max-grad-norm and --min-lr must not be negative")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float | None
    wall_s: float
    tokens_per_s: float
    output: Path
    interrupted: bool = False


def make_train_step(
    ops: Any,
    cfg: ModelConfig,
    opt: Any,
    *,
    dtype: str = "float32",
    max_grad_norm: float = 0.0,
    compile: bool = False,
) -> Callable[[dict, list[tuple[Any, Any]], float], tuple[dict, Any]]:
    """One optimizer step: ``step(params, micro_batches, lr) -> (params, mean loss)``.

    Gradients of the micro-batches (backend arrays ``(x, y)``) are averaged, which is gradient
    accumulation; then clipping (fp32 global norm) and AdamW. The loss stays a device array, so
    nothing here waits for the device: the caller decides when to read it back.
    """

    def loss_of(p, x, y):
        return model.loss_fn(ops, cfg, p, x, y, dtype=dtype, train=True)

    grad_fn = ops.value_and_grad(loss_of, compile=compile)

    def step(params: dict, micro_batches: list[tuple[Any, Any]], lr: float) -> tuple[dict, Any]:
        loss, grads = None, None
        for x, y in micro_batches:
            l_i, g_i = grad_fn(params, x, y)
            if grads is None:
                loss, grads = l_i, g_i
            else:
                loss = loss + l_i
                grads = {k: grads[k] + g_i[k] for k in grads}
        if len(micro_batches) > 1:
            loss = loss / len(micro_batches)
            grads = {k: g / len(micro_batches) for k, g in grads.items()}
        if max_grad_norm > 0:
            grads, _ = ops.clip_grad_norm(grads, max_grad_norm)
        params = opt.step(params, grads, lr)
        ops.eval(loss, params, opt.arrays())
        return params, loss

    return step


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps, so a checkpoint is never saved
    from half-updated weights. A second Ctrl-C aborts at once (the last checkpoint is intact)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            "\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
        )

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def dropout_seed(seed: int, step: int) -> int:
    """The framework RNG seed for a step's dropout masks (a function of the run seed and step)."""
    return (seed * 1_000_003 + step) % 2**31


def _status(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_corpus(tc: TrainConfig, tokenizer=None):
    """The run's tokenizer and token file: built as the book does, or ``tokenizer`` reused (resume)."""
    from mygpt import data

    path = Path(tc.data) if tc.data else data.bundled_corpus_path()
    if tokenizer is not None:
        return tokenizer, data.prepare_tokens(
            path, tokenizer, cache_dir=tc.cache_dir, encoding_errors=tc.encoding_errors
        )[0]
    return data.corpus_tokens(
        path,
        tokenizer_kind=tc.tokenizer,
        num_merges=tc.num_merges,
        bpe_train_bytes=tc.bpe_train_bytes,
        tokenizer_file=tc.tokenizer_file,
        cache_dir=tc.cache_dir,
        encoding_errors=tc.encoding_errors,
    )


def load_resumable(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint that ``--resume`` can continue (weights *and* training state)."""
    ckpt = load_checkpoint(path)
    if ckpt.train_state is None:
        raise MygptError(
            f"{path} holds weights only (no optimizer state or step) — resume from a "
            ".safetensors checkpoint written by `mygpt train`"
        )
    return ckpt


def train(
    tc: TrainConfig,
    resume: str | os.PathLike | Checkpoint | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Run (or resume) a training run and return its summary. See ``mygpt train --help``."""
    from mygpt import data
    from mygpt.tokenizers import tokenizer_from_dict

    ckpt = resume if isinstance(resume, Checkpoint) or resume is None else load_resumable(resume)
    tc.validate()
    # refuse an output that cannot be written before minutes of work (see mygpt/fileio.py)
    check_output_path(tc.output, "--output")
    MetricsLog(metrics_path_for(tc.output)).check()
    # the architecture flags too, before minutes of corpus encoding (the vocab size comes later)
    if ckpt is None:
        tc.model_config(vocab_size=1)

    backend_name, backend_why = resolve_backend_name(tc.backend)
    ops = get_backend(backend_name, tc.device)
    ops.activate()
    dtype, why = resolve_training_precision(ops, tc, ckpt.config if ckpt is not None else None)
    threads = f", {ops.threads} threads: {ops.threads_reason}" if ops.threads else ""
    _status(
        f"backend: {ops.name} ({backend_why}) · device: {ops.device} ({ops.device_reason}{threads}) · "
        f"precision: {dtype} ({why})"
    )

    _warn_slow_blas(ops)

    # --- data ---------------------------------------------------------------------------------
    tokenizer, token_file = _load_corpus(
        tc, tokenizer_from_dict(ckpt.tokenizer) if ckpt is not None else None
    )
    tokens = token_file.open()
    if tc.val_file:
        train_tokens = tokens
        val_file, _ = data.prepare_tokens(
            Path(tc.val_file), tokenizer, cache_dir=tc.cache_dir, encoding_errors=tc.encoding_errors
        )
        val_tokens = val_file.open()
    elif tc.val_split > 0:
        train_tokens, val_tokens = data.split_tail(tokens, tc.val_split, seq_len=tc.seq_len)
    else:
        train_tokens, val_tokens = tokens, None
    sampler = data.BatchSampler(train_tokens, tc.batch_size, tc.seq_len, seed=tc.seed + 42)
    val_sampler = (
        data.BatchSampler(val_tokens, tc.batch_size, tc.seq_len, seed=tc.seed + 4242)
        if val_tokens is not None
        else None
    )

    # --- model and optimizer --------------------------------------------------------------------
    if ckpt is not None:
        cfg = ckpt.config
        if cfg.vocab_size != tokenizer.vocab_size:
            raise MygptError(
                "checkpoint's vocab size does not match its tokenizer — the file is inconsistent"
            )
        np_params = ckpt.params
    else:
        cfg = tc.model_config(tokenizer.vocab_size)
        np_params = model.init_params(cfg, seed=tc.seed)
    if tc.seq_len > cfg.max_seq_len:
        raise MygptError(
            f"--seq-len {tc.seq_len} exceeds the model's max_seq_len {cfg.max_seq_len} — lower --seq-len"
        )
    params = ops.trainable({k: ops.asarray(v) for k, v in np_params.items()})
    opt = ops.adamw(params, AdamWConfig(weight_decay=tc.weight_decay))
    start_step = 0
    if ckpt is not None:
        ts = ckpt.train_state
        start_step = int(ts["step"])
        opt.load_state_dict(int(ts.get("optimizer_steps", start_step)), ckpt.optimizer_state)
        sampler.load_state_dict(ts["sampler"])
        if val_sampler is not None and ts.get("val_sampler"):
            val_sampler.load_state_dict(ts["val_sampler"])
    ops.seed(tc.seed)
    n_params = model.count_params(cfg)
    _status(
        f"model: {n_params:,} parameters · vocab {cfg.vocab_size} · {cfg.num_layers} layers × "
        f"{cfg.embed_dim} wide · {cfg.num_heads} heads / {cfg.num_kv_heads} kv · norm {cfg.norm_type} · "
        f"positions {cfg.position_type} · {len(train_tokens):,} training tokens"
    )
    if start_step >= tc.steps:
        raise MygptError(
            f"the checkpoint is already at step {start_step} of {tc.steps} — pass a larger --steps to continue"
        )

    train_step = make_train_step(
        ops, cfg, opt, dtype=dtype, max_grad_norm=tc.max_grad_norm, compile=tc.compile
    )

    def eval_fn(p, x, y):
        return model.loss_fn(ops, cfg, p, x, y, dtype=dtype, train=False)

    output = Path(tc.output)
    # a fresh run starts a fresh log; a resumed one keeps the lines up to its step
    log = MetricsLog(metrics_path_for(output)).open(start_step if ckpt is not None else None)

    def evaluate() -> float:
        with ops.inference():
            losses = []
            for _ in range(tc.eval_batches):
                x, y = val_sampler.sample()
                losses.append(eval_fn(params, ops.asarray(x), ops.asarray(y)))
            ops.eval(*losses)
            return float(np.mean([ops.item(v) for v in losses]))

    def save(step: int, last_loss: float) -> None:
        opt_steps, opt_tensors = opt.state_dict()
        np_now = {k: ops.to_numpy(v) for k, v in params.items()}
        train_state = {
            "step": step,
            "optimizer_steps": opt_steps,
            "sampler": sampler.state_dict(),
            "val_sampler": val_sampler.state_dict() if val_sampler is not None else None,
            "args": dataclasses.asdict(tc),
            "loss": last_loss,
            "backend": ops.name,
        }
        if output.suffix == ".ckpt":
            save_book_checkpoint(output, Checkpoint(cfg, np_now, tokenizer.to_dict()))
        else:
            save_checkpoint(output, cfg, np_now, tokenizer.to_dict(), train_state, opt_tensors)

    progress = Progress(total=tc.steps, initial=start_step)
    tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum
    pending: list[tuple[int, Any, float]] = []  # (step, loss array, lr) not yet read back
    last_loss = float("nan")
    last_val: float | None = None
    last_good_step = start_step
    t_start = time.perf_counter()
    t_window, steps_window = t_start, 0
    interrupted = False
    sync_every = 10

    def flush(step: int) -> None:
        """Read back pending losses (the only host sync), check them, log them."""
        nonlocal last_loss, t_window, steps_window
        if not pending:
            return
        ops.eval(*[p[1] for p in pending])
        now = time.perf_counter()
        rate = steps_window * tokens_per_step / max(now - t_window, 1e-9)
        t_window, steps_window = now, 0
        for s, loss_arr, lr in pending:
            loss = ops.item(loss_arr)
            if not math.isfinite(loss):
                pending.clear()
                log.flush()
                raise MygptError(
                    f"loss became {loss} at step {s} — stopped; the last good checkpoint "
                    f"(step {last_good_step}) is kept. Try a lower --lr, --max-grad-norm 1.0 or fp32"
                )
            last_loss = loss
            rec = {
                "step": s,
                "loss": loss,
                "lr": lr,
                "tokens_per_s": rate,
                "elapsed_s": now - t_start,
            }
            log.append(rec)
            if on_log:
                on_log(rec)
        pending.clear()
        log.flush()
        progress.update(
            step,
            loss=last_loss,
            val=last_val,
            lr=tc.lr_at(step),
            tokens_per_s=rate,
        )

    step = start_step
    with _StopFlag() as stop:
        try:
            for step in range(start_step + 1, tc.steps + 1):
                lr = tc.lr_at(step)
                if cfg.dropout > 0:
                    # dropout masks depend on (seed, step) only, so a resumed run draws the same
                    ops.seed(dropout_seed(tc.seed, step))
                micro = [
                    tuple(ops.asarray(a) for a in sampler.sample()) for _ in range(tc.grad_accum)
                ]
                params, loss = train_step(params, micro, lr)
                pending.append((step, loss, lr))
                steps_window += 1

                is_print = step == 1 or step % tc.print_every == 0 or step == tc.steps
                is_eval = val_sampler is not None and (
                    (tc.val_every > 0 and step % tc.val_every == 0)
                    or (tc.val_every == 0 and is_print and step > 1)
                    or step == tc.steps
                )
                is_ckpt = (
                    tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0
                ) or step == tc.steps
                if is_print or is_eval or is_ckpt or len(pending) >= sync_every or stop.signal:
                    flush(step)
                if is_eval:
                    last_val = evaluate()
                    log.append({"step": step, "val_loss": last_val})
                    log.flush()
                    progress.update(step, loss=last_loss, val=last_val, lr=lr)
                if is_print:
                    line = f"step {step}: loss = {last_loss:.4f}"
                    if last_val is not None:
                        line += f", val loss = {last_val:.4f}"
                    line += f", lr = {lr:.2e}"
                    progress.write(line)
                if is_ckpt or stop.signal:
                    save(step, last_loss)
                    last_good_step = step
                    if stop.signal:
                        interrupted = True
                        progress.write(
                            f"saved {output} at step {step}; resume with --resume {output}"
                        )
                        break
        except BaseException:
            log.close_after_error()
            raise
        finally:
            progress.close()

    wall = time.perf_counter() - t_start
    done = step - start_step
    tps = done * tokens_per_step / max(wall, 1e-9)
    log.append(
        {
            "event": "interrupted" if interrupted else "end",
            "step": step,
            "wall_s": wall,
            "params": n_params,
            "tokens_per_s": tps,
            "backend": ops.name,
            "device": ops.device,
            "precision": dtype,
        }
    )
    log.close()
    _status(
        f"{'interrupted' if interrupted else 'done'}: {done} steps in {wall:.1f} s "
        f"({tps:,.0f} tokens/s) · checkpoint {output}"
    )
    return TrainResult(step, last_loss, last_val, wall, tps, output, interrupted)


def _warn_slow_blas(ops: Any) -> None:
    from mygpt.bench import reference_blas_warning  # bench imports this module

    note = reference_blas_warning(ops)
    if note:
        _status(note)
