"""The ``mygpt`` command line. Each flag is handed to the one function that uses it.

- ``train``: every flag becomes a field of :class:`mygpt.train.TrainConfig`, read by :func:`mygpt.train.train`.
- ``generate``: :func:`mygpt.api.load` then :func:`mygpt.generate.generate`.
- ``convert``: :func:`mygpt.checkpoint.convert`.  ``plot``: :func:`mygpt.plot.plot_runs`.
- ``tokenizer``, ``data``, ``parity``, ``bench``, ``recipes``: defined beside the code they drive.
"""

from __future__ import annotations

import codecs
import dataclasses
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from backends import DEVICES
from mygpt.errors import MygptError, UsageError
from mygpt.precision import PRECISIONS
from mygpt.recipes import apply_recipe
from mygpt.schedule import SCHEDULES


class MygptGroup(click.Group):
    """A click group whose user-facing failures print one line, ``error: ...``, with no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MygptError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=MygptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mygpt")
def cli() -> None:
    """mygpt: train and sample small GPTs on MLX or PyTorch."""


_backend = click.option(
    "--backend",
    type=click.Choice(["auto", "mlx", "torch"]),
    default="auto",
    show_default=True,
    help="auto: MLX on Apple Silicon, else torch if installed, else MLX.",
)
_device = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)


# --- train -------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", required=False, type=click.Path(path_type=str))
@click.option(
    "--output",
    default="model.safetensors",
    show_default=True,
    help="Checkpoint path; .safetensors (resumable) or .ckpt (the book's format).",
)
@click.option(
    "--recipe", default=None, help="A chapter preset (see `mygpt recipes`); explicit flags win."
)
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--seq-len", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--min-lr", type=float, default=0.0, show_default=True, help="Cosine floor.")
@click.option("--embed-dim", type=int, default=64, show_default=True)
@click.option("--num-heads", type=int, default=4, show_default=True)
@click.option(
    "--num-kv-heads", type=int, default=None, help="K/V heads (GQA); default = --num-heads."
)
@click.option("--num-layers", type=int, default=4, show_default=True)
@click.option("--max-seq-len", type=int, default=64, show_default=True)
@click.option("--dropout", type=float, default=0.0, show_default=True)
@click.option("--norm", type=click.Choice(["layer", "rms"]), default="layer", show_default=True)
@click.option(
    "--position", type=click.Choice(["learned", "rope"]), default="learned", show_default=True
)
@click.option(
    "--tokenizer", type=click.Choice(["char", "bpe", "bytebpe"]), default="char", show_default=True
)
@click.option("--num-merges", type=int, default=1024, show_default=True)
@click.option(
    "--bpe-train-bytes", type=int, default=0, show_default=True, help="0 = the whole corpus."
)
@click.option(
    "--tokenizer-file", default=None, help="Use a saved tokenizer instead of training one."
)
@click.option("--print-every", type=int, default=500, show_default=True)
@click.option(
    "--val-split", type=float, default=0.0, show_default=True, help="Tail fraction held out."
)
@click.option("--val-file", default=None, help="A separate validation text file.")
@click.option("--val-every", type=int, default=0, show_default=True, help="0 = at the print steps.")
@click.option("--eval-batches", type=int, default=10, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="constant", show_default=True)
@click.option("--warmup", type=int, default=0, show_default=True)
@click.option(
    "--max-grad-norm", type=float, default=0.0, show_default=True, help="0 = no clipping."
)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--checkpoint-every", type=int, default=0, show_default=True)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Weights: seed; batches: seed+42."
)
@_backend
@_device
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--compile", "compile_", is_flag=True, help="mx.compile / torch.compile (slow start)."
)
@click.option("--cache-dir", default=None, help="Token cache directory (default ~/.cache/mygpt).")
@click.option(
    "--encoding-errors",
    type=click.Choice(["strict", "replace", "ignore"]),
    default="strict",
    show_default=True,
    help="What to do with bytes in FILE that are not UTF-8.",
)
@click.option("--resume", default=None, help="Continue a run from its .safetensors checkpoint.")
@click.pass_context
def train(
    ctx: click.Context,
    file: str | None,
    recipe: str | None,
    resume: str | None,
    compile_: bool,
    **flags,
) -> None:
    """Train a GPT on FILE (default: the bundled Tiny Shakespeare)."""
    from mygpt.train import TrainConfig, load_resumable
    from mygpt.train import train as run_training

    flags["compile"] = compile_
    explicit = {k for k in flags if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if ctx.get_parameter_source("compile_") == ParameterSource.COMMANDLINE:
        explicit.add("compile")
    values = apply_recipe(recipe, {k: flags[k] for k in explicit}, flags)
    ckpt = None
    if resume:
        ckpt = load_resumable(resume)
        # the checkpoint's run continues, into the same file; flags given now (e.g. a larger
        # --steps) override its saved settings
        saved = {**ckpt.train_state.get("args", {}), "output": resume}
        values = {**saved, **{k: values[k] for k in explicit}}
    if file is not None:
        values["data"] = file
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    tc = TrainConfig(**{k: v for k, v in values.items() if k in known})
    run_training(tc, resume=ckpt)


# --- generate ----------------------------------------------------------------------------------


@cli.command()
@click.option("--checkpoint", required=True, help="A .safetensors or book .ckpt checkpoint.")
@click.option("--prompt", default="\n", show_default=repr("\n"))
@click.option("--max-new-tokens", type=int, default=200, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=10, show_default=True, help="0 = off.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="1 = off.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--no-cache", is_flag=True, help="Recompute the whole window each token, as the book does."
)
@click.option(
    "--sliding-window",
    is_flag=True,
    help="Rotary models: keep a rotating KV cache past max_seq_len (fast for long outputs, but "
    "past the window no longer token-for-token the book's crop-and-recompute output).",
)
@_backend
@_device
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
def generate(
    checkpoint: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    no_cache: bool,
    sliding_window: bool,
    backend: str,
    device: str,
    precision: str,
) -> None:
    """Continue PROMPT with a trained model; the text streams to stdout, status to stderr."""
    import mygpt

    m = mygpt.load(checkpoint, backend=backend, device=device, precision=precision)
    click.echo(
        f"{m.ops.describe()} · {m.dtype} · {m.config.vocab_size}-token {m.tokenizer.kind} "
        f"tokenizer · KV cache {'off' if no_cache else 'sliding' if sliding_window else 'on'}",
        err=True,
    )
    ids = m.encode(prompt)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    # Decode through an incremental UTF-8 decoder: a byte-level token may end mid-character.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in m.stream(
        ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        seed=seed,
        use_cache=not no_cache,
        sliding=sliding_window,
    ):
        out.write(decoder.decode(m.tokenizer.decode_bytes([token])))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()


# --- convert and plot --------------------------------------------------------------------------


@cli.command()
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", required=False, type=click.Path(path_type=str))
@click.option(
    "--to",
    type=click.Choice(["native", "book"]),
    default=None,
    help="Target format (default: from DST's suffix, else the other format).",
)
def convert(src: str, dst: str | None, to: str | None) -> None:
    """Convert a book .ckpt to a native .safetensors checkpoint, or back."""
    from mygpt.checkpoint import convert as convert_checkpoint
    from mygpt.checkpoint import detect_format

    if detect_format(src) == "native" and (
        to == "book" or (dst or "").endswith((".ckpt", ".pt", ".pth"))
    ):
        click.echo(
            "note: the book's format holds weights only: optimizer and training state are dropped",
            err=True,
        )
    click.echo(str(convert_checkpoint(src, dst, to=to)))


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--output", default="loss.png", show_default=True)
@click.option(
    "--smooth",
    type=int,
    default=20,
    show_default=True,
    help="Centred moving-average window (points); 1 = raw.",
)
@click.option("--log-y", is_flag=True)
def plot(runs: tuple[str, ...], output: str, smooth: int, log_y: bool) -> None:
    """Draw train and val loss of one or more runs (checkpoint or .metrics.jsonl) to a PNG."""
    from mygpt.plot import plot_runs

    if smooth < 1:
        raise UsageError("--smooth must be at least 1")
    click.echo(str(plot_runs(list(runs), Path(output), smooth=smooth, log_y=log_y)))


# Sub-commands that live beside the code they drive.
from mygpt.data.cli import data  # noqa: E402
from mygpt.tokenizers.cli import tokenizer  # noqa: E402

cli.add_command(tokenizer)
cli.add_command(data)
for _module, _name in (
    ("mygpt.parity_cli", "parity"),
    ("mygpt.parity", "parity"),
    ("mygpt.bench", "bench"),
    ("mygpt.recipes", "recipes"),
):
    try:
        import importlib

        _cmd = getattr(importlib.import_module(_module), _name, None)
    except ModuleNotFoundError as _e:  # pragma: no cover - only while the module is being written
        if not _e.name or not _module.startswith(_e.name):
            raise
        _cmd = None
    if isinstance(_cmd, click.Command) and _name not in cli.commands:
        cli.add_command(_cmd, _name)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: usage errors become one line too (``error: ... — ...``)."""
    try:
        # without standalone mode click *returns* the code of a ctx.exit(...) instead of raising
        rv = cli.main(args=argv, prog_name="mygpt", standalone_mode=False)
        if isinstance(rv, int):
            return rv
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "mygpt"
        click.echo(f"error: {e.format_message()} — see `{cmd} --help`", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except MygptError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
