"""A run's settings (:class:`TrainConfig`), its summary, and how a resumed run's settings merge."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mygpt.config import ModelConfig
from mygpt.errors import MygptError
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


def resume_config(saved: dict[str, Any], overrides: dict[str, Any], output: str) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's saved ones, then ``overrides`` (the flags a
    user gave again, e.g. a larger ``--steps``), writing on into ``output``.

    ``mygpt train --resume`` and ``train(tc, resume=...)`` from Python both continue this way.
    """
    return TrainConfig.from_dict({**saved, "output": output, **overrides})
