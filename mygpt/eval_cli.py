"""``mygpt eval --checkpoint X FILE``: loss, perplexity, bits per character and per byte of a text.

Results go to stdout (a table, or one JSON object with ``--json``); the backend line to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mygpt.settings import (
    backend_option,
    device_option,
    encoding_errors_option,
    precision_option,
)


@click.command(name="eval")
@click.argument("file", type=click.Path(path_type=str))
@click.option(
    "--checkpoint",
    required=True,
    help="A .safetensors or book .ckpt checkpoint, a Hugging Face model directory, or a Hub id.",
)
@click.option(
    "--seq-len",
    type=int,
    default=None,
    help="Window length (default: the model's max_seq_len, at most 2048).",
)
@click.option(
    "--stride",
    type=int,
    default=None,
    help="Strided windows (HF perplexity guide): each new window scores only its last STRIDE "
    "tokens. Default: non-overlapping windows.",
)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option(
    "--max-tokens",
    type=int,
    default=None,
    help="Score only the first N tokens (the file is streamed: only what they need is read).",
)
@encoding_errors_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@backend_option
@device_option
@precision_option
def eval_cmd(
    file: str,
    checkpoint: str,
    max_tokens: int | None,
    encoding_errors: str,
    as_json: bool,
    backend: str,
    device: str,
    precision: str,
    **window_args,
) -> None:
    """Score FILE with a checkpoint: cross-entropy, perplexity, bits per char and per byte."""
    from mygpt.api import load
    from mygpt.eval import evaluate_file, format_report

    m = load(checkpoint, backend=backend, device=device, precision=precision)
    click.echo(f"{m.ops.describe()} · {m.dtype} · {m.tokenizer.kind} tokenizer", err=True)
    result = evaluate_file(
        m, file, max_tokens=max_tokens, encoding_errors=encoding_errors, **window_args
    )
    if as_json:
        out = {"file": file, "checkpoint": checkpoint, "backend": m.ops.name, "dtype": m.dtype}
        click.echo(json.dumps({**out, **result.to_dict()}))
    else:
        click.echo(format_report(result, Path(file).name))
