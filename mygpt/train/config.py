"""A run's settings (:class:`TrainConfig`), its summary, and how a resumed run's settings merge.

Each setting is declared once, here (run settings) or in :class:`mygpt.config.ModelConfig` (the
architecture, nested as ``TrainConfig.model``): its default, help and choices. ``mygpt train``'s
options are generated from both, so a flag takes effect exactly where its field is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mygpt.config import LEGACY_NAMES, ModelConfig
from mygpt.data.cache import TOKENIZER_KINDS
from mygpt.errors import MygptError
from mygpt.model import INITS
from mygpt.optim.muon import OPTIMIZERS
from mygpt.schedule import SCHEDULES, lr_at
from mygpt.settings import (
    BACKEND_CHOICES,
    BACKEND_HELP,
    DEVICE_HELP,
    DEVICES,
    ENCODING_ERRORS,
    ENCODING_ERRORS_HELP,
    PRECISION_HELP,
    PRECISIONS,
    cli_fields,
    nested,
    setting,
    track_given,
    with_given,
)

#: ``--dpo-loss``: trl's names (mygpt.train.dpo computes them)
DPO_LOSSES = ("sigmoid", "ipo")
#: the flags that say how the tokenizer is made: a resumed or --init-from run has its own
TOKENIZER_FLAGS = ("tokenizer", "num_merges", "bpe_train_bytes", "tokenizer_file")


@track_given
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
    backend: str = setting("auto", BACKEND_HELP, choices=BACKEND_CHOICES)
    device: str = setting("auto", DEVICE_HELP, choices=DEVICES)
    precision: str = setting(
        "fp32", PRECISION_HELP + " Master weights stay fp32.", choices=PRECISIONS
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
    encoding_errors: str = setting("strict", ENCODING_ERRORS_HELP, choices=ENCODING_ERRORS)
    init_from: str | None = setting(
        None,
        "Start from this checkpoint's weights, architecture and tokenizer (fresh optimizer).",
        type=str,
    )
    lora_rank: int = setting(
        0, "Train LoRA adapters of this rank on a frozen --init-from model; 0 = full training."
    )
    lora_alpha: float = setting(8.0, "LoRA scale numerator: adapters add (alpha / rank) x B A x.")
    lora_dropout: float = setting(0.0, "Dropout on the adapters' input (training only).")
    lora_targets: str = setting(
        "q,v", "Projections that get adapters: any of q,k,v,o,gate,up,down (fc1,fc2: GELU MLP)."
    )
    dpo: bool = setting(
        False,
        "Preference tuning (DPO) on a .jsonl of trl's {prompt, chosen, rejected} rows (strings or "
        "message lists); the policy starts from --init-from, which is also the reference.",
    )
    dpo_beta: float = setting(0.1, "DPO's beta: the strength of the pull toward the reference.")
    dpo_loss: str = setting(
        "sigmoid",
        "DPO loss: sigmoid (the paper's), ipo (squared, mean log-probs).",
        choices=DPO_LOSSES,
    )
    dpo_precompute_ref: bool = setting(
        False,
        "DPO: compute the reference's log-probs once at the start (one pass over the pairs) "
        "instead of at every step; full DPO then keeps no frozen copy of the model.",
    )
    dpo_max_prompt: int = setting(
        0, "DPO truncation: a too-long pair keeps this many prompt tokens; 0 = half of --seq-len."
    )
    model: ModelConfig = nested(ModelConfig, "The architecture (its fields are flags too).")
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The architecture for a tokenizer of ``vocab_size`` tokens."""
        return self.model.with_vocab(vocab_size)

    def flags(self) -> dict[str, Any]:
        """Every flag's value under its flat name (``steps``, ``embed_dim``, ...)."""
        out = {k: getattr(self, k) for k in RUN}
        return out | {k: getattr(self.model, k) for k in MODEL}

    def given_flags(self) -> dict[str, Any]:
        """The flags the caller set (constructor arguments), under their flat names."""
        out = {k: getattr(self, k) for k in self.given if k in RUN}
        if "model" in self.given:
            out |= {k: getattr(self.model, k) for k in self.model.given if k in MODEL}
        return out

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
        self.model.validate()
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
        if self.seq_len > self.model.max_seq_len:
            raise MygptError(
                f"--seq-len {self.seq_len} is longer than --max-seq-len {self.model.max_seq_len} — "
                "raise --max-seq-len or lower --seq-len"
            )
        if self.warmup < 0 or self.max_grad_norm < 0 or self.min_lr < 0 or self.adamw_lr < 0:
            raise MygptError(
                "--warmup, --max-grad-norm, --min-lr and --adamw-lr must not be negative"
            )
        self.validate_lora()
        self.validate_dpo()

    def validate_dpo(self) -> None:
        if not self.dpo:
            return
        if not self.data or Path(self.data).suffix.lower() != ".jsonl":
            raise MygptError(
                f"--dpo trains on preference pairs, not {self.data or 'the bundled corpus'} — pass "
                'a .jsonl with one {"prompt", "chosen", "rejected"} per line'
            )
        if not self.init_from:
            raise MygptError(
                "--dpo tunes a trained model, which is also its reference — pass --init-from MODEL"
            )
        if self.dpo_beta <= 0 or self.dpo_max_prompt < 0 or self.dpo_max_prompt > self.seq_len:
            raise MygptError(
                "--dpo-beta must be positive and --dpo-max-prompt in [0, --seq-len] — fix the flag"
            )

    def validate_lora(self) -> None:
        if self.lora_rank < 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise MygptError("--lora-rank must be >= 0 and --lora-dropout in [0, 1) — fix the flag")
        if self.lora_rank and Path(self.output).suffix.lower() in (".ckpt", ".pt", ".pth"):
            raise MygptError(
                f"--output {self.output}: an adapter checkpoint is safetensors (the book's .ckpt "
                "holds whole models) — name it .safetensors"
            )
        if self.lora_rank and not self.init_from:
            raise MygptError(
                "--lora-rank trains adapters on a pretrained model — pass --init-from MODEL "
                "(a checkpoint, a Hugging Face directory or a Hub id)"
            )

    def lora(self):
        """The run's :class:`mygpt.lora.LoraConfig`, or None for full training."""
        if not self.lora_rank:
            return None
        from mygpt.lora import LoraConfig, parse_targets

        targets = parse_targets(self.lora_targets)
        return LoraConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, targets)

    @classmethod
    def from_flags(
        cls, flags: Mapping[str, Any], given: Iterable[str] | None = None
    ) -> TrainConfig:
        """From flat flag names (what ``mygpt train`` parses, what a recipe lists); ``given``
        (default: every key) records which of them the user asked for."""
        given = set(flags) if given is None else set(given)
        model = ModelConfig.from_flags(None, flags, given)
        run = {k: v for k, v in flags.items() if k in RUN_FIELDS}
        tc = cls(**run, model=model)
        return with_given(tc, (given & set(run)) | ({"model"} if model.given else set()))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """From saved settings: nested (``{"model": {...}}``), or the flat form (and older
        field names) of checkpoints written before the architecture moved into ``model``."""
        d = {LEGACY_NAMES.get(k, k): v for k, v in d.items()}
        model = dict(d.get("model") or {}) | {k: d[k] for k in MODEL_FIELDS if k in d}
        run = {k: v for k, v in d.items() if k in RUN_FIELDS}
        return cls(**run, model=ModelConfig.from_dict(model, checkpoint=False))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"model": self.model.to_dict()}


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float | None
    wall_s: float
    tokens_per_s: float
    output: Path
    interrupted: bool = False


#: every field of the two classes (saved settings may hold any of them), under flat names
RUN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"extra"}
RUN = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("model", "extra"))
MODEL = tuple(f.name for f in cli_fields(ModelConfig))
#: the flags that fix the model's shape: a checkpoint's own values, never overridden
SHAPE = tuple(f.name for f in cli_fields(ModelConfig) if f.metadata.get("shape", True))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_contradictions(
    given: Mapping[str, Any], cfg: ModelConfig, tokenizer: Mapping[str, Any], source: str, how: str
) -> None:
    """Refuse an architecture or tokenizer flag the user gave that disagrees with ``cfg`` and
    ``tokenizer`` (a checkpoint's, whose weights only mean something with them).

    ``tokenizer`` maps tokenizer flags to the checkpoint's values; a flag it lacks can't agree.
    ``how`` names the option that takes them from the checkpoint (``--resume``, ``--init-from``).
    """
    for name in SHAPE:
        if name in given and given[name] != getattr(cfg, name):
            raise MygptError(
                f"{flag(name)} {given[name]} contradicts {source}, whose model has {name} "
                f"{getattr(cfg, name)} — {how} takes the architecture from the checkpoint; drop "
                f"{flag(name)}"
            )
    for name in TOKENIZER_FLAGS:
        if name in given and (name not in tokenizer or given[name] != tokenizer[name]):
            theirs = f"{name} {tokenizer[name]}" if name in tokenizer else "its own tokenizer"
            raise MygptError(
                f"{flag(name)} {given[name]} contradicts {source}, which has {theirs} (the "
                f"weights are tied to its ids) — {how} takes the tokenizer from the checkpoint; "
                f"drop {flag(name)}"
            )


def tokenizer_flags(tok: Mapping[str, Any]) -> dict[str, Any]:
    """The tokenizer flags a checkpoint's tokenizer dict answers (its kind; BPE: its merges)."""
    out: dict[str, Any] = {"tokenizer": tok.get("kind")}
    if "merges" in tok:
        out["num_merges"] = len(tok["merges"])
    return out


def resume_config(
    saved: TrainConfig,
    cfg: ModelConfig,
    tokenizer: Mapping[str, Any],
    given: Mapping[str, Any],
    output: str,
    source: str,
) -> tuple[TrainConfig, dict[str, tuple[Any, Any]]]:
    """A resumed run's settings and what changed: the saved run's, with the run flags the user
    gave now on top (a larger ``--steps``, another ``--lr``), writing on into ``output``.

    An architecture or tokenizer flag that disagrees with the checkpoint is refused; one that
    agrees changes nothing. ``mygpt train --resume`` and ``train(..., resume=...)`` both land here.
    """
    if given.get("init_from"):
        raise MygptError(
            "--resume continues a run and --init-from starts a new one — pass one of them"
        )
    # how the run made its tokenizer, and what the checkpoint's tokenizer is
    tok = {k: getattr(saved, k) for k in TOKENIZER_FLAGS} | tokenizer_flags(tokenizer)
    refuse_contradictions(given, cfg, tok, source, "--resume")
    # the checkpoint's own architecture, whatever the saved settings say (an --init-from run
    # saved the flags it was started with, not the source model's shape)
    flags = saved.flags() | {k: getattr(cfg, k) for k in MODEL} | {"output": output}
    changes = {
        k: (flags.get(k), v)
        for k, v in given.items()
        if k not in SHAPE and k not in TOKENIZER_FLAGS and flags.get(k) != v
    }
    merged = flags | {k: new for k, (_, new) in changes.items()} | {"extra": saved.extra}
    return TrainConfig.from_flags(merged, given=set(changes)), changes
