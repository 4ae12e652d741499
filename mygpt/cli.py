"""The ``mygpt`` command line. Each flag is handed to the one function that uses it."""

from __future__ import annotations

import importlib
import sys

import click

from mygpt.errors import MygptError


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


# Sub-command groups that live beside the code they drive.
for _module, _name in (("mygpt.tokenizers.cli", "tokenizer"), ("mygpt.data.cli", "data")):
    try:
        cli.add_command(getattr(importlib.import_module(_module), _name))
    except ModuleNotFoundError as _e:  # pragma: no cover - only while the module is being written
        if not _e.name or not _module.startswith(_e.name):
            raise


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: usage errors become one line too (``error: ... — ...``)."""
    try:
        cli.main(args=argv, prog_name="mygpt", standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
