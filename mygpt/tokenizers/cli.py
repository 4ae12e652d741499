"""`mygpt tokenizer train|encode|decode|info`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from mygpt.errors import MygptError, UsageError
from mygpt.fileio import atomic_write, check_output_path
from mygpt.tokenizers.api import KINDS, load_tokenizer, train_tokenizer
from mygpt.tokenizers.base import Tokenizer
from mygpt.tokenizers.bpe import BPETokenizer
from mygpt.tokenizers.bytebpe import DEFAULT_SPECIAL_TOKENS, ByteBPETokenizer
from mygpt.tokenizers.corpus import encode_file

DTYPES = ("auto", "uint16", "uint32")


def _status(msg: str) -> None:
    click.echo(msg, err=True)


def _read_text(path: str, limit: int = 0) -> str:
    p = Path(path)
    if not p.is_file():
        raise MygptError(f"text file {path!r} not found — check the path")
    try:
        with open(p, encoding="utf-8") as f:
            return f.read(limit) if limit > 0 else f.read()
    except UnicodeDecodeError as e:
        raise MygptError(
            f"{path!r} is not UTF-8 text ({e.reason}) — convert it to UTF-8 first"
        ) from None


def _dtype_for(tok: Tokenizer, name: str) -> np.dtype:
    if name == "auto":
        return np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    dt = np.dtype(name)
    if np.iinfo(dt).max + 1 < tok.vocab_size:
        raise UsageError(
            f"--dtype {name} cannot hold ids up to {tok.vocab_size - 1} — use --dtype uint32"
        )
    return dt


@click.group("tokenizer")
def tokenizer() -> None:
    """Train, inspect and apply tokenizers (char, book BPE, byte-level BPE)."""


@tokenizer.command("train")
@click.argument("file")
@click.option("--tokenizer", "kind", type=click.Choice(KINDS), default="bpe", show_default=True)
@click.option("--num-merges", type=int, default=1024, show_default=True)
@click.option(
    "--bpe-train-bytes",
    type=int,
    default=0,
    show_default=True,
    help="Train the BPE on the first N characters of FILE (0 = all).",
)
@click.option(
    "--special-token",
    "special_tokens",
    multiple=True,
    help=f"bytebpe special token (repeatable; default {DEFAULT_SPECIAL_TOKENS[0]}).",
)
@click.option("--output", "-o", required=True, help="Where to write the tokenizer JSON.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def train_cmd(
    file: str,
    kind: str,
    num_merges: int,
    bpe_train_bytes: int,
    special_tokens: tuple[str, ...],
    output: str,
    progress: bool,
) -> None:
    """Train a tokenizer on FILE and save it as JSON."""
    if num_merges < 0:
        raise UsageError(f"--num-merges must be >= 0, got {num_merges}")
    if bpe_train_bytes < 0:
        raise UsageError(f"--bpe-train-bytes must be >= 0 (0 = all), got {bpe_train_bytes}")
    if special_tokens and kind != "bytebpe":
        raise UsageError("--special-token needs --tokenizer bytebpe")
    check_output_path(output, "--output")  # before minutes of training
    limit = bpe_train_bytes if kind != "char" else 0
    text = _read_text(file, limit)
    tok = train_tokenizer(
        kind,
        text,
        num_merges=num_merges,
        bpe_train_bytes=bpe_train_bytes,
        progress=progress,
        special_tokens=special_tokens or DEFAULT_SPECIAL_TOKENS,
    )
    tok.save(output)
    _status(f"wrote {output}: {tok.kind} tokenizer, vocab size {tok.vocab_size}")


@tokenizer.command("encode")
@click.argument("file")
@click.option("--tokenizer-file", required=True, help="Tokenizer JSON (from `tokenizer train`).")
@click.option("--output", "-o", required=True, help="Raw little-endian token ids are written here.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True)
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option(
    "--allow-special",
    is_flag=True,
    help="bytebpe: treat special-token text such as <|endoftext|> as the special token.",
)
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def encode_cmd(
    file: str,
    tokenizer_file: str,
    output: str,
    dtype: str,
    workers: int | None,
    allow_special: bool,
    progress: bool,
) -> None:
    """Encode text FILE into a binary file of token ids (corpus policy: see the tokenizer kind)."""
    tok = load_tokenizer(tokenizer_file)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if allow_special and not isinstance(tok, ByteBPETokenizer):
        raise UsageError("--allow-special needs a bytebpe tokenizer")
    if not Path(file).is_file():
        raise MygptError(f"text file {file!r} not found — check the path")
    dt = _dtype_for(tok, dtype)
    allowed = "all" if allow_special else ()
    counted: list[int] = []
    atomic_write(
        output,
        lambda out: counted.append(
            encode_file(
                tok,
                file,
                out,
                dtype=dt,
                workers=workers,
                progress=progress,
                allowed_special=allowed,
            )  # fmt: skip
        ),
        "--output",
    )
    _status(f"wrote {output}: {counted[0]} tokens as {dt.name}")


@tokenizer.command("decode")
@click.argument("ids_file")
@click.option("--tokenizer-file", required=True, help="Tokenizer JSON the ids were encoded with.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True)
def decode_cmd(ids_file: str, tokenizer_file: str, dtype: str) -> None:
    """Decode a binary file of token ids; the text goes to stdout."""
    tok = load_tokenizer(tokenizer_file)
    p = Path(ids_file)
    if not p.is_file():
        raise MygptError(f"ids file {ids_file!r} not found — check the path")
    dt = _dtype_for(tok, dtype).newbyteorder("<")
    data = p.read_bytes()
    if len(data) % dt.itemsize:
        raise MygptError(
            f"{ids_file!r} has {len(data)} bytes, not a whole number of {dt.name} ids — "
            "pass the --dtype it was written with"
        )
    ids = np.frombuffer(data, dtype=dt).tolist()
    text = tok.decode(ids)
    out = sys.stdout
    out.write(text.encode("utf-8", "replace").decode("utf-8"))
    out.flush()


@tokenizer.command("info")
@click.argument("tokenizer_file")
@click.option("--top", type=int, default=10, show_default=True, help="How many longest tokens.")
def info_cmd(tokenizer_file: str, top: int) -> None:
    """Show a tokenizer's kind, vocabulary size, merges and longest tokens."""
    tok = load_tokenizer(tokenizer_file)
    click.echo(f"kind:        {tok.kind}")
    click.echo(f"vocab size:  {tok.vocab_size}")
    if isinstance(tok, (BPETokenizer, ByteBPETokenizer)):
        click.echo(f"merges:      {len(tok.merges)}")
    if isinstance(tok, BPETokenizer):
        click.echo(f"alphabet:    {len(tok.chars)} characters")
    if isinstance(tok, ByteBPETokenizer):
        click.echo("alphabet:    256 bytes")
        click.echo(f"special:     {tok.special_tokens}")
    click.echo(f"fingerprint: {tok.fingerprint()}")
    ids = sorted(range(tok.vocab_size), key=lambda i: (-len(tok.token_str(i)), i))[: max(0, top)]
    if ids:
        click.echo("longest tokens:")
        for i in ids:
            click.echo(f"  {i:>6}  {tok.token_str(i)!r}")
