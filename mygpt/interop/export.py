"""``mygpt export CKPT OUTDIR``: a checkpoint as a Hugging Face model directory.

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` (no remote code): config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json and a README.md model card. The
architecture is the standard one that computes the model exactly (see ``architectures``); a model
no standard architecture computes exactly is refused before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import numpy as np

from mygpt.checkpoint import Checkpoint
from mygpt.errors import MygptError
from mygpt.fileio import atomic_path, atomic_write_text
from mygpt.interop import hf_tokenizer
from mygpt.interop.architectures import architecture_for, hf_config
from mygpt.interop.model_card import model_card

FILES = (  # and chat_template.jinja where the model has a chat template
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)


def _check_outdir(outdir: Path, force: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise MygptError(
            f"{outdir} is a file, not a directory — pass a directory path to export into"
        )
    if outdir.is_dir() and any(outdir.iterdir()) and not force:
        raise MygptError(
            f"{outdir} is not empty — choose an empty or new directory, or pass --force to "
            "overwrite the exported files in it"
        )


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def special_token_ids(tok_dict: dict) -> dict[str, Any]:
    """``bos_token_id`` / ``eos_token_id`` for config.json and generation_config.json."""
    if tok_dict.get("kind") == "hf":
        eos = list(tok_dict.get("eos_token_ids") or [])
        return {
            "bos_token_id": tok_dict.get("bos_token_id"),
            "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        }
    eos = hf_tokenizer.special_ids(tok_dict).get("eos_token")
    return {"bos_token_id": None, "eos_token_id": eos[1] if eos else None}


def generation_config(tok_dict: dict) -> dict[str, Any]:
    """mygpt generate's defaults (temperature 1, top-k 10); an end-of-text token where there is one."""
    return {"do_sample": True, "temperature": 1.0, "top_k": 10, "top_p": 1.0,
            **special_token_ids(tok_dict)}  # fmt: skip


def tokenizer_files(tok_dict: dict) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json (and chat_template.jinja) as text, by file name."""
    if tok_dict.get("kind") == "hf":  # the model's own files, as they came
        config = dict(tok_dict.get("config") or {})
        template = config.pop("chat_template", None)
        out = {"tokenizer.json": tok_dict["tokenizer_json"], "tokenizer_config.json": _json(config)}
        if isinstance(template, str):
            out["chat_template.jinja"] = template
        elif template is not None:  # the named-templates list stays where it was
            out["tokenizer_config.json"] = _json({**config, "chat_template": template})
        return out
    tokenizer = hf_tokenizer.to_hf(tok_dict)
    return {
        "tokenizer.json": tokenizer.to_str(pretty=True),
        "tokenizer_config.json": _json(hf_tokenizer.tokenizer_config(tok_dict)),
    }


def hf_tensors(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's weights under the target architecture's names and layout (float32)."""
    arch = architecture_for(ckpt.config)
    tensors = arch.to_hf(ckpt.config, ckpt.params)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}


def export_hf(
    ckpt_path: str | os.PathLike,
    outdir: str | os.PathLike,
    force: bool = False,
    base: str | None = None,
) -> Path:
    """Write the Hugging Face directory; returns its path. Each file is written atomically.
    An adapter checkpoint exports merged into its base (``base`` overrides the one it names)."""
    from safetensors.numpy import save_file

    from mygpt.interop.sources import load_source

    outdir, source = Path(outdir), Path(ckpt_path)
    ckpt = load_source(ckpt_path, base=base)
    cfg = ckpt.config
    arch = architecture_for(cfg)  # refuse an inexact export before touching OUTDIR
    tok_files = tokenizer_files(ckpt.tokenizer)
    _check_outdir(outdir, force)
    tensors = hf_tensors(ckpt)
    special = {**special_token_ids(ckpt.tokenizer), "pad_token_id": None}
    outdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(outdir / "config.json", _json(hf_config(cfg, arch, special)))
    atomic_write_text(outdir / "generation_config.json", _json(generation_config(ckpt.tokenizer)))
    with atomic_path(outdir / "model.safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})  # transformers checks "format"
    for name, text in tok_files.items():
        atomic_write_text(outdir / name, text)
    atomic_write_text(outdir / "README.md", model_card(ckpt, arch, source))
    return outdir


@click.command("export")
@click.argument("ckpt", type=click.Path(path_type=str))
@click.argument("outdir", type=click.Path(path_type=str))
@click.option(
    "--force", is_flag=True, help="Write into a non-empty OUTDIR (replaces its model files)."
)
@click.option(
    "--push-to-hub", "repo", default=None, metavar="USER/REPO", help="Then upload OUTDIR there."
)
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repository private.")
@click.option(
    "--peft", is_flag=True, help="An adapter checkpoint: write the adapter alone, in peft's format."
)
@click.option(
    "--base", default=None, metavar="MODEL", help="An adapter's base, if not where it was trained."
)
def export(
    ckpt: str, outdir: str, force: bool, repo: str | None, private: bool, peft: bool,
    base: str | None,
) -> None:  # fmt: skip
    """Export a checkpoint as a Hugging Face model directory (transformers, mlx-lm, ...); a
    LoRA adapter checkpoint exports merged into its base, or alone with --peft."""
    if repo is not None:
        from mygpt.interop.hub import check_repo_id

        check_repo_id(repo)  # a bad name fails before the export, not after it
    if peft:
        out = _export_peft(ckpt, outdir, force, base)
    else:
        out = export_hf(ckpt, outdir, force=force, base=base)
        arch = json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"][0]
        click.echo(f"exported {ckpt} as {arch} to {out}", err=True)
    if repo is not None:
        from mygpt.interop.hub import push

        click.echo(push(out, repo, private=private))
    else:
        click.echo(str(out))


def _export_peft(ckpt_path: str, outdir: str, force: bool, base: str | None) -> Path:
    from mygpt.interop.peft import export_peft
    from mygpt.interop.sources import load_source

    ckpt = load_source(ckpt_path, merge=False, base=base)
    _check_outdir(Path(outdir), force)
    out = export_peft(ckpt, Path(outdir))
    click.echo(f"exported {ckpt_path} as a peft LoRA adapter to {out}", err=True)
    return out
