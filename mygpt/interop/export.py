"""``mygpt export CKPT OUTDIR``: a checkpoint as a Hugging Face model directory.

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` (no remote code): config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json and a README.md model card. The
architecture is the standard one that computes the model exactly (see ``architectures``); a model
no standard architecture computes exactly is refused before anything is written.

OUTDIR is written as one directory (``fileio.atomic_directory``): after a full disk, an error or a
kill part-way, OUTDIR is what it was before (or absent), never half an export. A non-empty OUTDIR
is refused unless ``--force``, which replaces it as a whole: files in it that export does not write
(an older export's extra files, anything else) go with the old directory, so OUTDIR never mixes two
exports (a stale ``model.safetensors.index.json`` beside a new model would load the old weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import numpy as np

from mygpt.checkpoint import Checkpoint, load_checkpoint
from mygpt.errors import MygptError
from mygpt.fileio import atomic_directory, check_output_dir
from mygpt.interop import hf_tokenizer
from mygpt.interop.architectures import architecture_for, hf_config
from mygpt.interop.model_card import model_card

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)


def _check_outdir(outdir: Path, force: bool) -> tuple[Path, list[str]]:
    """Refuse a missing parent, a file, a read-only or (without ``force``) non-empty OUTDIR;
    returns OUTDIR as it will be written (``.`` by its name) and the names of what ``--force``
    will remove although export does not write it."""
    outdir = check_output_dir(outdir, "OUTDIR")
    existing = sorted(p.name for p in outdir.iterdir()) if outdir.is_dir() else []
    if existing and not force:
        raise MygptError(
            f"{outdir} is not empty — choose an empty or new directory, or pass --force to "
            "replace it as a whole"
        )
    return outdir, [n for n in existing if n not in FILES]


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def generation_config(tok_dict: dict) -> dict[str, Any]:
    """mygpt generate's defaults (temperature 1, top-k 10); an end-of-text token where there is one."""
    eos = hf_tokenizer.special_ids(tok_dict).get("eos_token")
    return {
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 10,
        "top_p": 1.0,
        "bos_token_id": None,
        "eos_token_id": eos[1] if eos else None,
    }


def hf_tensors(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's weights under the target architecture's names and layout (float32)."""
    arch = architecture_for(ckpt.config)
    tensors = arch.to_hf(ckpt.config, ckpt.params)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}


def export_hf(ckpt_path: str | os.PathLike, outdir: str | os.PathLike, force: bool = False) -> Path:
    """Write the Hugging Face directory as a whole (see the module doc); returns its path."""
    from safetensors.numpy import save

    outdir, source = Path(outdir), Path(ckpt_path)
    outdir, dropped = _check_outdir(outdir, force)  # before loading anything
    ckpt = load_checkpoint(source)
    cfg = ckpt.config
    arch = architecture_for(cfg)  # refuse an inexact export before touching OUTDIR
    tokenizer = hf_tokenizer.to_hf(ckpt.tokenizer)
    tensors = hf_tensors(ckpt)
    eos = hf_tokenizer.special_ids(ckpt.tokenizer).get("eos_token")
    special = {"bos_token_id": None, "eos_token_id": eos[1] if eos else None, "pad_token_id": None}
    with atomic_directory(outdir, "OUTDIR") as d:
        d.write_text("config.json", _json(hf_config(cfg, arch, special)))
        d.write_text("generation_config.json", _json(generation_config(ckpt.tokenizer)))
        # transformers checks the "format" metadata
        d.write_bytes("model.safetensors", save(tensors, metadata={"format": "pt"}))
        del tensors
        d.write_text("tokenizer.json", tokenizer.to_str(pretty=True))
        d.write_text("tokenizer_config.json", _json(hf_tokenizer.tokenizer_config(ckpt.tokenizer)))
        d.write_text("README.md", model_card(ckpt, arch, source))
    if dropped:
        click.echo(f"--force: removed with the old {outdir}: {', '.join(dropped)}", err=True)
    return outdir


@click.command("export")
@click.argument("ckpt", type=click.Path(path_type=str))
@click.argument("outdir", type=click.Path(path_type=str))
@click.option(
    "--force",
    is_flag=True,
    help="Replace a non-empty OUTDIR as a whole (files export does not write are removed).",
)
@click.option(
    "--push-to-hub", "repo", default=None, metavar="USER/REPO", help="Then upload OUTDIR there."
)
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repository private.")
def export(ckpt: str, outdir: str, force: bool, repo: str | None, private: bool) -> None:
    """Export a checkpoint as a Hugging Face model directory (transformers, mlx-lm, ...)."""
    if repo is not None:
        from mygpt.interop.hub import check_repo_id

        check_repo_id(repo)  # a bad name fails before the export, not after it
    out = export_hf(ckpt, outdir, force=force)
    arch = json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    click.echo(f"exported {ckpt} as {arch} to {out}", err=True)
    if repo is not None:
        from mygpt.interop.hub import push

        click.echo(push(out, repo, private=private))
    else:
        click.echo(str(out))
