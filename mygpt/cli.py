"""The ``mygpt`` command line. Each flag is handed to the one function that uses it.

- ``train``: every flag becomes a field of :class:`mygpt.train.TrainConfig`, read by :func:`mygpt.train.train`.
- ``generate``: :func:`mygpt.api.load` then :func:`mygpt.generate.generate`.
- ``convert``: :func:`mygpt.checkpoint.convert`.  ``plot``: :func:`mygpt.plot.plot_runs`.
- ``tokenizer``, ``data``, ``parity``, ``bench``, ``recipes``, ``eval``, ``serve``: defined beside the
  code they drive.
"""

from __future__ import annotations

import codecs
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from mygpt.errors import MygptError, UsageError
from mygpt.recipes import apply_recipe
from mygpt.settings import backend_option, click_options, device_option, precision_option
from mygpt.train.config import TrainConfig


def _report(e: MygptError) -> None:
    """Print a user-facing error: once in a data-parallel run when every rank raised it alike."""
    from mygpt.console import console

    if console.is_main or not getattr(e, "every_rank", False):
        console.error(str(e))


class MygptGroup(click.Group):
    """A click group whose user-facing failures print one line, ``error: ...``, with no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MygptError as e:
            _report(e)
            ctx.exit(e.exit_code)


@click.group(cls=MygptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mygpt")
def cli() -> None:
    """mygpt: train and sample small GPTs on MLX or PyTorch."""


# --- train -------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", required=False, type=click.Path(path_type=str))
@click.option(
    "--recipe", default=None, help="A chapter preset (see `mygpt recipes`); explicit flags win."
)
@click.option(
    "--resume", default=None, help="Continue a run from the checkpoint `mygpt train` wrote."
)
@click_options(TrainConfig)  # one option per setting: its default and help live with the field
@click.pass_context
def train(
    ctx: click.Context, file: str | None, recipe: str | None, resume: str | None, **flags
) -> None:
    """Train a GPT on FILE (default: the bundled Tiny Shakespeare).

    Under a launcher the same command trains data-parallel: `torchrun --nproc-per-node 2 -m
    mygpt train ...` or `mlx.launch -n 2 -- mygpt train ...` (--batch-size stays the global batch).
    """
    from mygpt.train import train as run_training

    # what the user asked for: the flags typed (whatever their value) and the recipe's
    typed = {k for k in flags if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    values, given = apply_recipe(recipe, {k: flags[k] for k in typed}, flags)
    if file is not None:
        values["data"] = file
        given.add("data")
    if resume:
        # the checkpoint's run continues, into the same file; run flags given now (a larger
        # --steps) override its saved settings, architecture flags must agree with it
        run_training(None, resume=resume, overrides={k: values[k] for k in given})
    else:
        run_training(TrainConfig.from_flags(values, given))


# --- generate ----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--checkpoint",
    required=True,
    help="A .safetensors or book .ckpt checkpoint, a Hugging Face model directory, or a Hub id.",
)
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
    "--rotating-cache",
    is_flag=True,
    help="Rotary models: keep a rotating KV cache past max_seq_len (fast for long outputs, but "
    "past the window no longer token-for-token the book's crop-and-recompute output).",
)
# the old name of --rotating-cache; --sliding-window N is now the model's attention window (train)
@click.option("--sliding-window", "old_sliding_window", is_flag=True, hidden=True)
@backend_option
@device_option
@precision_option
def generate(
    checkpoint: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    no_cache: bool,
    rotating_cache: bool,
    old_sliding_window: bool,
    backend: str,
    device: str,
    precision: str,
) -> None:
    """Continue PROMPT with a trained model; the text streams to stdout, status to stderr."""
    from mygpt.api import load

    if old_sliding_window:
        raise UsageError(
            "generate's --sliding-window is now --rotating-cache (--sliding-window N is the "
            "model's attention window, a train flag) — pass --rotating-cache"
        )
    m = load(checkpoint, backend=backend, device=device, precision=precision)
    click.echo(
        f"{m.ops.describe()} · {m.dtype} · {m.config.vocab_size}-token {m.tokenizer.kind} "
        f"tokenizer · KV cache {'off' if no_cache else 'rotating' if rotating_cache else 'on'}",
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
        sliding=rotating_cache,
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
    from mygpt.checkpoint import detect_format, writes_book_format

    if detect_format(src) == "native" and (to == "book" or (dst and writes_book_format(dst))):
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


# Sub-commands that live beside the code they drive, each registered once, here.
from mygpt.bench import bench  # noqa: E402
from mygpt.data.cli import data  # noqa: E402
from mygpt.eval_cli import eval_cmd  # noqa: E402
from mygpt.interop.export import export  # noqa: E402
from mygpt.interop.import_cli import import_cmd  # noqa: E402
from mygpt.interop.quantize import quantize_cmd  # noqa: E402
from mygpt.parity.cli import parity  # noqa: E402
from mygpt.recipes import recipes  # noqa: E402
from mygpt.serve.cli import serve  # noqa: E402
from mygpt.tokenizers.cli import tokenizer  # noqa: E402

cli.add_command(tokenizer)
cli.add_command(data)
cli.add_command(eval_cmd)
cli.add_command(serve)
cli.add_command(parity)
cli.add_command(bench)
cli.add_command(recipes)
cli.add_command(export)
cli.add_command(import_cmd, "import")
cli.add_command(quantize_cmd)


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
        _report(e)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
