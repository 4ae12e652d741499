"""``mygpt import``: a Hugging Face model directory or Hub id, or a peft LoRA adapter directory,
as a mygpt checkpoint (the command beside the two importers, so neither imports the other)."""

from __future__ import annotations

import click

from mygpt.checkpoint import save_checkpoint
from mygpt.errors import MygptError
from mygpt.interop.hub import resolve_source
from mygpt.interop.import_ import import_hf
from mygpt.interop.peft import import_peft, is_peft_dir


@click.command("import")
@click.argument("hfdir", type=click.Path(path_type=str))
@click.argument("output", type=click.Path(path_type=str))
@click.option(
    "--base", default=None, metavar="MODEL", help="A peft adapter's base (default: its config's)."
)
def import_cmd(hfdir: str, output: str, base: str | None) -> None:
    """Import a Hugging Face model directory (or a Hub id), or a GGUF file, as a mygpt
    .safetensors checkpoint;
    a peft LoRA adapter directory becomes a mygpt adapter checkpoint on its base."""
    if not output.endswith(".safetensors"):
        raise MygptError(f"output {output!r} must end in .safetensors — mygpt's native checkpoint")
    from mygpt.interop.gguf_import import import_gguf, is_gguf

    if is_gguf(hfdir):  # llama.cpp's and Ollama's single-file format
        ckpt = import_gguf(hfdir)
        save_checkpoint(output, ckpt.config, ckpt.params, ckpt.tokenizer)
        click.echo(output)
        return
    if is_peft_dir(hfdir):
        click.echo(str(import_peft(hfdir, output, base)))
        return
    ckpt = import_hf(resolve_source(hfdir))  # a local directory, or a Hub id (downloaded)
    save_checkpoint(output, ckpt.config, ckpt.params, ckpt.tokenizer)
    click.echo(output)
