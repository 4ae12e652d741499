"""Recipes: named presets of `mygpt train` flags, one per chapter end-state of the book.

A recipe is only a dict of train-command parameter values (click parameter names, e.g.
``num_kv_heads``), so it cannot drift from the flags it expands to: ``mygpt train --recipe
ch27-modern`` is exactly ``mygpt train --precision auto --schedule cosine ...``, and any flag given
explicitly on the command line wins over the recipe's value (the train command checks click's
parameter source).

The single-change recipes (Ch.19-26) each change *one* thing against the Ch.17 baseline, which is
what the book's Ch.27 comparison measures; they are not cumulative. Chapter mapping (Part II):

- Ch.19 mixed precision and device   -> ``ch19-bf16``
- Ch.20 a validation split           -> ``ch20-validation``
- Ch.21 cosine LR, warmup, clipping  -> ``ch21-cosine``
- Ch.22-23 a BPE tokenizer           -> ``ch22-bpe``
- Ch.24 RMSNorm                      -> ``ch24-rmsnorm``
- Ch.25 rotary positions             -> ``ch25-rope``
- Ch.26 grouped-query attention      -> ``ch26-gqa``
- Ch.27 all of the model/optimiser changes together -> ``ch27-modern``
- Ch.28 the scaled-up Wikipedia run  -> ``ch28-wikipedia``

Beyond the book: ``llama`` is ``ch27-modern`` with ``--mlp swiglu``, which makes the model exactly a
Llama (``mygpt export`` writes it as ``LlamaForCausalLM``, read natively by mlx-lm, llama.cpp's
converter and vLLM). ``fast`` is ``ch27-modern``'s model trained for 400 steps with
``--optimizer muon --init scaled`` and tuned learning rates: it reaches ch27-modern's 2000-step
validation loss (``scripts/time_to_loss.py``). ``--recipe 27`` still means ``ch27-modern``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from mygpt.errors import MygptError


@dataclass(frozen=True)
class Recipe:
    name: str
    chapter: int
    description: str
    flags: dict[str, Any] = field(default_factory=dict)
    # The vocabulary size this recipe ends up with on its intended corpus: `mygpt bench` builds
    # the model without a tokenizer, so it needs the number (Tiny Shakespeare has 65 characters).
    vocab_size: int = 65

    def args(self) -> list[str]:
        """The recipe as command-line arguments, e.g. ``["--norm", "rms", "--num-kv-heads", "2"]``."""
        out: list[str] = []
        for key, value in self.flags.items():
            out += [flag_name(key), format_value(value)]
        return out

    def flag_text(self) -> str:
        return " ".join(self.args()) if self.flags else "(the book's defaults)"


def flag_name(param: str) -> str:
    return "--" + param.replace("_", "-")


def format_value(value: Any) -> str:
    if isinstance(value, bool):  # click boolean flags in this project take no value; be explicit
        return "true" if value else "false"
    return str(value)


# The Ch.27 bundle, as the book lists it; precision "auto" rather than the book's bf16 because the
# book ran on an Apple GPU: auto picks bf16 exactly where it is native and fp32 elsewhere (on the
# project's AVX2 CPUs bf16 matmuls are 3-25x slower than fp32).
_MODERN: dict[str, Any] = {
    "precision": "auto",
    "schedule": "cosine",
    "warmup": 100,
    "max_grad_norm": 1.0,
    "norm": "rms",
    "position": "rope",
    "num_kv_heads": 2,
}

_ALL = [
    Recipe("ch17-baseline", 17, "Part-I baseline: the book's defaults (Tiny Shakespeare, 2000 steps)"),
    Recipe("ch19-bf16", 19, "single change: bf16 mixed precision (slow on CPUs without native bf16)",
           {"precision": "bf16"}),
    Recipe("ch20-validation", 20, "single change: hold out the last 10% as validation, eval every 500",
           {"val_split": 0.1, "val_every": 500}),
    Recipe("ch21-cosine", 21, "single change: cosine LR with 100 warmup steps and grad clipping at 1.0",
           {"schedule": "cosine", "warmup": 100, "max_grad_norm": 1.0}),
    Recipe("ch22-bpe", 22, "single change: a character-level BPE tokenizer (Ch.22-23), 512 merges",
           {"tokenizer": "bpe", "num_merges": 512}, vocab_size=65 + 512),
    Recipe("ch24-rmsnorm", 24, "single change: RMSNorm instead of LayerNorm", {"norm": "rms"}),
    Recipe("ch25-rope", 25, "single change: rotary positions instead of learned ones",
           {"position": "rope"}),
    Recipe("ch26-gqa", 26, "single change: grouped-query attention with 2 K/V heads",
           {"num_kv_heads": 2}),
    Recipe("ch27-modern", 27, "Part-II model: RMSNorm, RoPE, GQA, cosine+warmup, clipping, bf16 where native",
           dict(_MODERN)),
    Recipe("llama", 27, "beyond the book: ch27-modern with Llama's SwiGLU MLP, exactly a Llama (exports as LlamaForCausalLM)",
           {**_MODERN, "mlp": "swiglu"}),
    Recipe("fast", 27, "beyond the book: ch27-modern's model trained faster: Muon, scaled init, 400 steps (scripts/time_to_loss.py)",
           {**_MODERN, "optimizer": "muon", "init": "scaled", "lr": 1.6e-2, "adamw_lr": 6e-3,
            "steps": 400, "warmup": 40}),
    Recipe("ch28-wikipedia", 28, "the book's scaled-up run: BPE 1024 merges, 192 wide, seq 256, 10k steps",
           {
               "tokenizer": "bpe",
               "num_merges": 1024,
               "bpe_train_bytes": 50_000_000,
               "embed_dim": 192,
               "num_layers": 4,
               "num_heads": 6,
               "num_kv_heads": 2,
               "max_seq_len": 256,
               "seq_len": 256,
               "batch_size": 16,
               "norm": "rms",
               "position": "rope",
               "precision": "auto",
               "schedule": "cosine",
               "warmup": 500,
               "max_grad_norm": 1.0,
               "steps": 10000,
               "checkpoint_every": 2500,
           }, vocab_size=3046),  # the book's wikitext-103 vocabulary: 2022 characters + 1024 merges
]  # fmt: skip

RECIPES: dict[str, Recipe] = {r.name: r for r in _ALL}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``ch27`` or ``27`` also find ``ch27-modern``."""
    key = name.strip().lower()
    if key in RECIPES:
        return RECIPES[key]
    chapter = key.removeprefix("ch")
    if chapter.isdigit():
        for recipe in RECIPES.values():
            if recipe.chapter == int(chapter):
                return recipe
    raise MygptError(f"unknown recipe {name!r} — use one of: {', '.join(RECIPES)}")


def apply_recipe(
    name: str | None, explicit: dict[str, Any], defaults: dict[str, Any]
) -> tuple[dict[str, Any], set[str]]:
    """Defaults < recipe flags < explicitly given values, and the names the user asked for (the
    explicit ones and the recipe's: a recipe is a shorthand for typing its flags)."""
    flags = get_recipe(name).flags if name else {}
    return {**defaults, **flags, **explicit}, set(flags) | set(explicit)


@click.command("recipes")
@click.argument("name", required=False)
def recipes(name: str | None) -> None:
    """List the chapter recipes (`mygpt train --recipe NAME`) and the flags each expands to."""
    chosen = [get_recipe(name)] if name else list(RECIPES.values())
    width = max(len(r.name) for r in chosen)
    for r in chosen:
        click.echo(f"{r.name:<{width}}  Ch.{r.chapter}  {r.description}")
        click.echo(f"{'':<{width}}  {r.flag_text()}")
    if not name:
        click.echo(
            "\nUse: mygpt train FILE --recipe NAME [flags]; flags given explicitly override the recipe."
        )
