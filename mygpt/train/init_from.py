"""``mygpt train --init-from CKPT``: a new run that starts from another model's weights.

Unlike ``--resume`` (which continues one run: optimizer moments, step, sampler), a run started
from a checkpoint is new: step 0, a fresh AdamW, its own schedule. What it takes from the
checkpoint is everything that makes the weights mean something: the architecture and the
tokenizer. Any loadable checkpoint works (native, the book's ``.ckpt``, an imported one), and so
does a Hugging Face model directory (Llama, Mistral, Qwen2, Qwen3, ...) or a Hub model id.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mygpt.checkpoint import Checkpoint
from mygpt.errors import MygptError
from mygpt.train.config import TrainConfig, refuse_contradictions, tokenizer_flags


def load_init_source(path: str | Path) -> Checkpoint:
    """A checkpoint file, a Hugging Face directory or a Hub id, converted in memory (weights only)."""
    from mygpt.interop.sources import load_source

    return load_source(path)


def init_checkpoint(tc: TrainConfig) -> Checkpoint | None:
    """The checkpoint ``tc.init_from`` names, checked against the flags the user gave; None
    without the flag.

    The returned checkpoint has no training state (the run is new) and the run's ``--dropout``
    (a training choice, not part of the weights).
    """
    if not tc.init_from:
        return None
    ckpt = load_init_source(tc.init_from)
    given = tc.given_flags()
    if "bpe_train_bytes" in given or "tokenizer_file" in given:
        name = "--tokenizer-file" if "tokenizer_file" in given else "--bpe-train-bytes"
        raise MygptError(
            f"{name} contradicts --init-from {tc.init_from}, which brings its own tokenizer (the "
            f"weights are tied to its ids) — drop {name}"
        )
    source = f"--init-from {tc.init_from}"
    refuse_contradictions(
        given, ckpt.config, tokenizer_flags(ckpt.tokenizer), source, "--init-from"
    )
    config = dataclasses.replace(ckpt.config, dropout=tc.model.dropout)
    return Checkpoint(config, ckpt.params, ckpt.tokenizer, format=ckpt.format, path=ckpt.path)
