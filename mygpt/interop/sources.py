"""Where a model comes from: a checkpoint file, a Hugging Face directory, or a Hub model id.

Every command that takes a model (``generate``, ``serve``, ``eval``, ``export``, ``train
--init-from``) and :func:`mygpt.load` read it through :func:`load_source`, so all of them accept
the same three spellings:

- a native ``.safetensors`` or a book ``.ckpt`` file;
- a local Hugging Face model directory (``config.json``, safetensors weights, ``tokenizer.json``);
- a Hub repository id such as ``HuggingFaceTB/SmolLM2-135M``, downloaded once into
  huggingface_hub's cache (safetensors and JSON files only: no pickled weights, no remote code).
"""

from __future__ import annotations

import os

from mygpt.checkpoint import Checkpoint, load_checkpoint
from mygpt.errors import MygptError
from mygpt.interop.hub import resolve_source


def load_source(source: str | os.PathLike) -> Checkpoint:
    """The checkpoint ``source`` names (a file, a Hugging Face directory or a Hub id)."""
    path = resolve_source(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MygptError(
                f"{path} is a directory without config.json — pass a checkpoint file or a "
                "Hugging Face model directory"
            )
        from mygpt.interop.import_ import import_hf

        return import_hf(path)
    return load_checkpoint(path)
