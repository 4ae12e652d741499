"""A run's settings (:class:`TrainConfig`), its summary, and how a resumed run's settings merge."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mygpt.backends.muon import OPTIMIZERS
from mygpt.config import MLP_TYPES, NORM_TYPES, POSITION_TYPES, ModelConfig
from mygpt.data.cache import TOKENIZER_KINDS
from mygpt.errors import MygptError
from mygpt.model import INITS
from mygpt.precision import PRECISIONS
from mygpt.schedule import SCHEDULES, lr_at

_MODEL = {f.name: f.default for f in dataclasses.fields(ModelConfig)}  # the book's Part-I values
DEVICES = ("auto", "cpu", "gpu", "cuda", "mps")


def setting(default: Any, help: str, **option: Any) -> Any:
    """A run setting: its default and its ``--flag``'s help (and click options such as
    ``choices``, or ``type`` where the default is None). The CLI builds its options from these."""
    return field(default=default, metadata={"help": help, **option})


@dataclass
class TrainConfig:
    """One run's settings, the one home of their defaults and help texts (``mygpt train``'s
    options, the recipes and ``mygpt bench`` read them here). Saved in every checkpoint, so
    ``--resume`` continues the same run."""

    data: str | None = setting(None, "Corpus path; None = the bundled Tiny Shakespeare.", cli=False)
    output: str = setting(
        "model.safetensors", "Checkpoint path; .safetensors, or .ckpt for the book's format."
    )
    steps: int = setting(2000, "Optimizer steps.")
    batch_size: int = setting(16, "Global batch (split across data-parallel ranks).")
    seq_len: int = setting(64, "Training window length.")
    lr: float = setting(1e-3, "Peak learning rate.")
    min_lr: float = setting(0.0, "Cosine floor.")
    schedule: str = setting("constant", "LR schedule.", choices=SCHEDULES)
    warmup: int = setting(0, "Linear warm-up steps (cosine).")
    max_grad_norm: float = setting(0.0, "Clip the global gradient norm; 0 = no clipping.")
    weight_decay: float = setting(0.01, "Decoupled weight decay (AdamW, and Muon's matrices).")
    optimizer: str = setting(
        "adamw",
        "adamw: the book's, every parameter; muon: Muon on the blocks' matrices, AdamW on the rest.",
        choices=OPTIMIZERS,
    )
    adamw_lr: float = setting(
        0.0, "With --optimizer muon: AdamW's peak LR (embeddings, norms, biases); 0 = --lr."
    )
    init: str = setting(
        "book",
        "Weight init: book (PyTorch's defaults, N(0,1) embeddings); scaled (nanoGPT's N(0, 0.02), "
        "residual projections / sqrt(2 layers)).",
        choices=INITS,
    )
    grad_accum: int = setting(1, "Global batches averaged per optimizer step.")
    val_split: float = setting(0.0, "Tail fraction of the corpus held out for validation.")
    val_file: str | None = setting(None, "A separate validation text file.", type=str)
    val_every: int = setting(0, "Validation interval; 0 = at the print steps.")
    eval_batches: int = setting(10, "Validation batches per evaluation.")
    print_every: int = setting(500, "Print a loss line every N steps.")
    checkpoint_every: int = setting(0, "Save every N steps (and always at the end).")
    seed: int = setting(0, "Weights: seed; batches: seed+42 (the book's 0 and 42).")
    backend: str = setting(
        "auto",
        "auto: MLX on Apple Silicon, else torch if installed, else MLX.",
        choices=("auto", "mlx", "torch"),
    )
    device: str = setting("auto", "Compute device.", choices=DEVICES)
    precision: str = setting(
        "fp32", "Compute dtype (master weights stay fp32).", choices=PRECISIONS
    )
    compile: bool = setting(False, "mx.compile / torch.compile the step (slow start).")
    tokenizer: str = setting("char", "Tokenizer to train.", choices=TOKENIZER_KINDS)
    num_merges: int = setting(1024, "BPE merges.")
    bpe_train_bytes: int = setting(0, "BPE training text; 0 = the whole corpus.")
    tokenizer_file: str | None = setting(
        None, "Use a saved tokenizer instead of training one.", type=str
    )
    cache_dir: str | None = setting(
        None, "Token cache directory (default ~/.cache/mygpt).", type=str
    )
    encoding_errors: str = setting(
        "strict",
        "What to do with bytes in FILE that are not UTF-8.",
        choices=("strict", "replace", "ignore"),
    )
    # architecture (ignored on resume: the checkpoint's config wins); defaults are the book's
    embed_dim: int = setting(_MODEL["embed_dim"], "Embedding width.")
    num_heads: int = setting(_MODEL["num_heads"], "Attention heads.")
    num_layers: int = setting(_MODEL["num_layers"], "Transformer blocks.")
    max_seq_len: int = setting(_MODEL["max_seq_len"], "Context length of the model.")
    num_kv_heads: int | None = setting(
        _MODEL["num_kv_heads"], "K/V heads (GQA); default = --num-heads.", type=int
    )
    norm: str = setting(_MODEL["norm"], "Normalization.", choices=NORM_TYPES)
    position: str = setting(_MODEL["position"], "Positions.", choices=POSITION_TYPES)
    dropout: float = setting(_MODEL["dropout"], "On the attention probabilities (training).")
    mlp: str = setting(
        _MODEL["mlp"],
        "gelu: the book's 4C MLP; swiglu: Llama's gated MLP (no biases).",
        choices=MLP_TYPES,
    )
    mlp_hidden: int | None = setting(
        None, "swiglu hidden width (default 8/3 C, rounded up to 8).", type=int
    )
    init_from: str | None = setting(
        None,
        "Start from this checkpoint's weights, architecture and tokenizer (fresh optimizer).",
        type=str,
    )
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig.from_flags(vocab_size, dataclasses.asdict(self))

    @property
    def adamw_lr_ratio(self) -> float:
        """AdamW's learning rate over ``--lr`` under ``--optimizer muon`` (both follow the schedule)."""
        return self.adamw_lr / self.lr if self.adamw_lr > 0 else 1.0

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
        if self.warmup < 0 or self.max_grad_norm < 0 or self.min_lr < 0 or self.adamw_lr < 0:
            raise MygptError(
                "--warmup, --max-grad-norm, --min-lr and --adamw-lr must not be negative"
            )

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


def click_options(names: list[str] | None = None, *, defaults: bool = True):
    """A decorator adding one click option per TrainConfig field (``names``, or every field the
    CLI shows), with its help, choices and (unless ``defaults`` is False) its default."""
    import click

    chosen = [
        f
        for f in dataclasses.fields(TrainConfig)
        if f.metadata.get("cli", True) and (names is None or f.name in names)
    ]

    def decorate(fn):
        for f in reversed(chosen):
            meta = f.metadata
            flag = "--" + f.name.replace("_", "-")
            kw: dict[str, Any] = {"help": meta["help"]}
            if isinstance(f.default, bool):
                kw["is_flag"] = True
            else:
                kw["type"] = (
                    click.Choice(meta["choices"])
                    if "choices" in meta
                    else (meta.get("type") or type(f.default))
                )
            if defaults and f.default is not None:
                kw.update(default=f.default, show_default=True)
            else:
                kw["default"] = None
            fn = click.option(flag, f.name, **kw)(fn)
        return fn

    return decorate


def resume_config(saved: dict[str, Any], overrides: dict[str, Any], output: str) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's saved ones, then ``overrides`` (the flags a
    user gave again, e.g. a larger ``--steps``), writing on into ``output``.

    ``mygpt train --resume`` and ``train(tc, resume=...)`` from Python both continue this way.
    """
    return TrainConfig.from_dict({**saved, "output": output, **overrides})
