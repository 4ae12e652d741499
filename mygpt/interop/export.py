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
import struct
from pathlib import Path
from typing import Any

import click
import numpy as np

from mygpt.checkpoint import Checkpoint
from mygpt.errors import MygptError
from mygpt.fileio import atomic_directory, check_output_dir
from mygpt.interop import hf_tokenizer
from mygpt.interop.architectures import architecture_for, hf_config
from mygpt.interop.gguf_export import GGUF_DTYPES
from mygpt.interop.model_card import model_card
from mygpt.quant import refuse_quantized

FILES = (  # and chat_template.jinja where the model has a chat template
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


#: ``--dtype``: the weights' dtype in model.safetensors
EXPORT_DTYPES = ("float32", "bfloat16")


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even, as torch rounds."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def safetensors_bytes(tensors: dict[str, np.ndarray], dtype: str, metadata: dict) -> bytes:
    """A safetensors file; ``bfloat16`` is written by hand (safetensors.numpy has no bf16)."""
    from safetensors.numpy import save

    if dtype == "float32":
        return save(tensors, metadata=metadata)
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name, arr in tensors.items():
        data = bf16_bits(arr).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def export_hf(
    ckpt_path: str | os.PathLike,
    outdir: str | os.PathLike,
    force: bool = False,
    dtype: str = "float32",
    base: str | None = None,
) -> Path:
    """Write the Hugging Face directory as a whole (see the module doc); returns its path.
    An adapter checkpoint exports merged into its base (``base`` overrides the one it names).

    ``dtype="bfloat16"`` rounds the weights to bf16 (half the file; what a bf16 source such as a
    Hub model was, so importing it and exporting it again in bf16 gives back the same bits)."""
    if dtype not in EXPORT_DTYPES:
        raise MygptError(f"unknown export dtype {dtype!r} — use one of {', '.join(EXPORT_DTYPES)}")
    from mygpt.interop.sources import load_source

    outdir, source = Path(outdir), Path(ckpt_path)
    outdir, dropped = _check_outdir(outdir, force)  # before loading anything
    # a checkpoint, a Hugging Face directory, a Hub id, or an adapter (merged into its base)
    ckpt = load_source(ckpt_path, base=base)
    refuse_quantized(
        ckpt.params, str(ckpt_path), "the Hugging Face format (--mlx writes an mlx-lm directory)"
    )
    cfg = ckpt.config
    arch = architecture_for(cfg)  # refuse an inexact export before touching OUTDIR
    tok_files = tokenizer_files(ckpt.tokenizer)
    tensors = hf_tensors(ckpt)
    special = {**special_token_ids(ckpt.tokenizer), "pad_token_id": None}
    config = {**hf_config(cfg, arch, special), "torch_dtype": dtype, "dtype": dtype}
    with atomic_directory(outdir, "OUTDIR") as d:
        d.write_text("config.json", _json(config))
        d.write_text("generation_config.json", _json(generation_config(ckpt.tokenizer)))
        # transformers checks the "format" metadata
        d.write_bytes("model.safetensors", safetensors_bytes(tensors, dtype, {"format": "pt"}))
        del tensors
        for name, text in tok_files.items():  # tokenizer.json, tokenizer_config.json, template
            d.write_text(name, text)
        d.write_text("README.md", model_card(ckpt, arch, source))
    if dropped:
        click.echo(f"--force: removed with the old {outdir}: {', '.join(dropped)}", err=True)
    return outdir


def export_mlx(
    ckpt_path: str | os.PathLike, outdir: str | os.PathLike, force: bool = False
) -> Path:
    """A quantized checkpoint as an mlx-lm directory (see ``export_mlx``), written as a whole
    as the Hugging Face export is; returns its path."""
    from mygpt.interop.export_mlx import mlx_tensors
    from mygpt.interop.sources import load_source

    outdir, _ = _check_outdir(Path(outdir), force)
    ckpt = load_source(ckpt_path)
    arch = architecture_for(ckpt.config)
    tensors, bits = mlx_tensors(ckpt, arch)
    special = {**special_token_ids(ckpt.tokenizer), "pad_token_id": None}
    config = {**hf_config(ckpt.config, arch, special),
              "quantization": {"group_size": 32, "bits": bits}}  # fmt: skip
    with atomic_directory(outdir, "OUTDIR") as d:
        d.write_text("config.json", _json(config))
        d.write_text("generation_config.json", _json(generation_config(ckpt.tokenizer)))
        d.write_bytes("model.safetensors", safetensors_bytes(tensors, "float32", {"format": "mlx"}))
        for name, text in tokenizer_files(ckpt.tokenizer).items():
            d.write_text(name, text)
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
@click.option(
    "--dtype",
    type=click.Choice(GGUF_DTYPES),
    default="float32",
    show_default=True,
    help="The weights' dtype: bfloat16 halves the file (rounds fp32 weights; a bf16 source's "
    "weights come back bit for bit); float16, q8_0 and q4_0 are for OUT.gguf.",
)
@click.option(
    "--peft", is_flag=True, help="An adapter checkpoint: write the adapter alone, in peft's format."
)
@click.option(
    "--base", default=None, metavar="MODEL", help="An adapter's base, if not where it was trained."
)
@click.option(
    "--mlx", "mlx", is_flag=True,
    help="A quantized checkpoint: write an mlx-lm directory (its Q8_0/Q4_0 blocks as MLX's "
    "affine groups of 32, exactly).",
)  # fmt: skip
@click.option(
    "--ollama", is_flag=True,
    help="With OUT.gguf: also write an Ollama Modelfile beside it (FROM the file, the model's chat "
    "template in Ollama's syntax, its stop tokens), for `ollama create NAME -f Modelfile`.",
)  # fmt: skip
def export(
    ckpt: str, outdir: str, force: bool, repo: str | None, private: bool, dtype: str,
    peft: bool, base: str | None, mlx: bool = False, ollama: bool = False,
) -> None:  # fmt: skip
    """Export a checkpoint as a Hugging Face model directory (transformers, mlx-lm, ...), or as
    one GGUF file for llama.cpp and Ollama when OUTDIR ends in .gguf; a LoRA adapter checkpoint
    exports merged into its base, or alone with --peft."""
    if outdir.endswith(".gguf"):
        flags = {"--peft": peft, "--push-to-hub": repo is not None, "--mlx": mlx}
        _export_gguf(ckpt, outdir, dtype, base, flags, ollama)
        return
    if ollama:
        raise MygptError("--ollama writes a Modelfile beside a GGUF file — name OUT something.gguf")
    if dtype not in EXPORT_DTYPES:
        raise MygptError(
            f"--dtype {dtype} is for GGUF files — name OUTDIR something.gguf, or use "
            f"{' or '.join(EXPORT_DTYPES)} for a Hugging Face directory"
        )
    if repo is not None:
        from mygpt.interop.hub import check_repo_id

        check_repo_id(repo)  # a bad name fails before the export, not after it
    if peft and dtype != "float32":
        raise MygptError("--peft writes the adapter in float32 (it is small) — drop --dtype")
    if mlx and (peft or dtype != "float32" or base):
        raise MygptError("--mlx writes a quantized model as it is — drop --peft, --dtype, --base")
    if peft:
        out = _export_peft(ckpt, outdir, force, base)
    elif mlx:
        out = export_mlx(ckpt, outdir, force=force)
        click.echo(f"exported {ckpt} as an mlx-lm quantized model to {out}", err=True)
    else:
        out = export_hf(ckpt, outdir, force=force, dtype=dtype, base=base)
        arch = json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"][0]
        click.echo(f"exported {ckpt} as {arch} to {out}", err=True)
    if repo is not None:
        from mygpt.interop.hub import push

        click.echo(push(out, repo, private=private))
    else:
        click.echo(str(out))


def _export_gguf(
    ckpt: str, out: str, dtype: str, base: str | None, bad_flags: dict, ollama: bool = False
) -> None:
    from mygpt.interop.gguf_export import export_gguf
    from mygpt.interop.ollama import modelfile_path

    given = [flag for flag, on in bad_flags.items() if on]
    if given:
        raise MygptError(f"{', '.join(given)} is for directories — drop it for OUT.gguf")
    path, arch, notes = export_gguf(ckpt, out, dtype=dtype, base=base, ollama=ollama)
    for note in notes:
        click.echo(note, err=True)
    click.echo(f"exported {ckpt} as GGUF {arch} ({dtype}) to {path}", err=True)
    if ollama:
        modelfile = modelfile_path(path)
        click.echo(f"wrote {modelfile}: ollama create NAME -f {modelfile}", err=True)
    click.echo(str(path))


def _export_peft(ckpt_path: str, outdir: str, force: bool, base: str | None) -> Path:
    from mygpt.interop.peft import export_peft
    from mygpt.interop.sources import load_source

    out_path, _ = _check_outdir(Path(outdir), force)
    ckpt = load_source(ckpt_path, merge=False, base=base)
    out = export_peft(ckpt, out_path)
    click.echo(f"exported {ckpt_path} as a peft LoRA adapter to {out}", err=True)
    return out
