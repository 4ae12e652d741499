"""``mygpt train --init-from CKPT``: a new run that starts from another model's weights.

Unlike ``--resume`` (which continues one run: optimizer moments, step, sampler), a run started
from a checkpoint is new: step 0, a fresh AdamW, its own schedule. What it takes from the
checkpoint is everything that makes the weights mean something: the architecture and the
tokenizer. Any loadable checkpoint works (native, the book's ``.ckpt``, an imported one), and so
does a Hugging Face model directory that ``mygpt import`` accepts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mygpt.checkpoint import Checkpoint
from mygpt.errors import MygptError

# train flag -> ModelConfig field: the architecture comes from the checkpoint, so a flag that
# asks for a different one is a contradiction, not something to ignore silently
_ARCH_FLAGS = {
    "embed_dim": "embed_dim",
    "num_heads": "num_heads",
    "num_layers": "num_layers",
    "max_seq_len": "max_seq_len",
    "num_kv_heads": "num_kv_heads",
    "norm": "norm",
    "position": "position",
    "mlp": "mlp",
    "mlp_hidden": "mlp_hidden",
}


def load_init_source(path: str | Path) -> Checkpoint:
    """A checkpoint file, a Hugging Face directory or a Hub id, converted in memory (weights only)."""
    from mygpt.sources import load_source

    return load_source(path)


def init_checkpoint(tc: Any) -> Checkpoint | None:
    """The checkpoint ``tc.init_from`` names, checked against ``tc``; None without the flag.

    The returned checkpoint has no training state (the run is new) and the run's ``--dropout``
    (a training choice, not part of the weights).
    """
    if not getattr(tc, "init_from", None):
        return None
    ckpt = load_init_source(tc.init_from)
    _check_flags(tc, ckpt)
    config = dataclasses.replace(ckpt.config, dropout=tc.dropout)
    return Checkpoint(config, ckpt.params, ckpt.tokenizer, format=ckpt.format, path=ckpt.path)


def _check_flags(tc: Any, ckpt: Checkpoint) -> None:
    defaults = type(tc)()
    for flag, field in _ARCH_FLAGS.items():
        given, theirs = getattr(tc, flag), getattr(ckpt.config, field)
        if given != getattr(defaults, flag) and given != theirs:
            raise MygptError(
                f"--{flag.replace('_', '-')} {given} contradicts {tc.init_from}, whose model has "
                f"{theirs} — --init-from takes the architecture from the checkpoint; drop the flag"
            )
    kind = ckpt.tokenizer.get("kind")
    if tc.tokenizer_file or tc.tokenizer not in (defaults.tokenizer, kind):
        raise MygptError(
            f"--init-from {tc.init_from} brings its own {kind} tokenizer (the weights are "
            "tied to its ids) — drop --tokenizer/--tokenizer-file"
        )
