"""Where a model comes from: a checkpoint file, a Hugging Face directory, or a Hub model id.

Every command that takes a model (``generate``, ``serve``, ``eval``, ``export``, ``train
--init-from``) and :func:`mygpt.load` read it through :func:`load_source`, so all of them accept
the same three spellings:

- a native ``.safetensors`` or a book ``.ckpt`` file;
- a local Hugging Face model directory (``config.json``, safetensors weights, ``tokenizer.json``);
- a GGUF file (llama.cpp's and Ollama's format; ``gguf_import``);
- a Hub repository id such as ``HuggingFaceTB/SmolLM2-135M``, downloaded once into
  huggingface_hub's cache (safetensors and JSON files only: no pickled weights, no remote code).
"""

from __future__ import annotations

import os
from pathlib import Path

from mygpt.checkpoint import Checkpoint, load_checkpoint
from mygpt.errors import MygptError
from mygpt.interop.hub import resolve_source


def load_source(
    source: str | os.PathLike, merge: bool = True, base: str | None = None
) -> Checkpoint:
    """The checkpoint ``source`` names (a file, a Hugging Face directory or a Hub id).

    An adapter checkpoint (``mygpt train --lora-rank``) loads its base (``base``, else the one it
    names) and checks it against the adapter's digest; ``merge`` folds the adapters into the
    weights (what generate, serve, eval and export use), else they come as ``.adapter`` with
    the adapter's training state (what ``--resume`` and ``export --peft`` use).
    """
    path = resolve_source(source)
    if path.is_file():
        from mygpt.interop.gguf_import import import_gguf, is_gguf

        if is_gguf(path):
            return import_gguf(path)
        from mygpt.lora import adapter_metadata

        if adapter_metadata(path) is not None:
            return _load_adapter(path, merge, base)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MygptError(
                f"{path} is a directory without config.json — pass a checkpoint file or a "
                "Hugging Face model directory"
            )
        from mygpt.interop.import_ import import_hf

        return import_hf(path)
    return load_checkpoint(path)


def _load_adapter(path: Path, merge: bool, base: str | None) -> Checkpoint:
    from mygpt.lora import load_adapter
    from mygpt.lora import merge as merge_adapter

    adapter = load_adapter(path)
    ref = base or adapter.base
    if not Path(ref).exists() and Path(ref).is_absolute():
        raise MygptError(
            f"{path}: its base model {ref} does not exist — restore it there (`mygpt export "
            "--base MODEL` can export an adapter whose base moved)"
        )
    base_ckpt = load_source(ref)
    adapter.check_base(base_ckpt.params, base_ckpt.config)
    if merge:
        params = merge_adapter(base_ckpt.params, adapter.tensors, adapter.lora.scale)
        return Checkpoint(
            base_ckpt.config, params, base_ckpt.tokenizer, format="lora-merged", path=path
        )
    return Checkpoint(
        base_ckpt.config,
        base_ckpt.params,
        base_ckpt.tokenizer,
        train_state=adapter.train_state,
        optimizer_state=adapter.optimizer_state,
        format="lora",
        path=path,
        adapter=adapter,
    )
