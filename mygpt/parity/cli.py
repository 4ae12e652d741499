"""``mygpt parity``: run the cross-backend parity checks here and print the table."""

from __future__ import annotations

import sys
import time

import click

from mygpt.backends import BACKENDS, DEVICES
from mygpt.backends.base import DTYPES


@click.command("parity")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(BACKENDS),
    help="Backend to test (repeatable; default: every installed one).",
)
@click.option(
    "--device",
    "devices",
    multiple=True,
    type=click.Choice(DEVICES[1:]),  # every device but auto
    help="Device to test (repeatable; default: every device each backend can use here).",
)
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    type=click.Choice(DTYPES),
    help="Precision to check (repeatable; default: float32 and bfloat16).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A covering subset: every op, 3 of the 12 model variants, an 8-step training run.",
)
@click.option(
    "--slow",
    is_flag=True,
    help="Also check the training step under --compile (25-50 s of compiling per backend on a "
    "small CPU).",
)
def parity(
    backends: tuple[str, ...],
    devices: tuple[str, ...],
    dtypes: tuple[str, ...],
    quick: bool,
    slow: bool,
) -> None:
    """Check that every installed backend/device computes what the reference does.

    The reference is PyTorch on the CPU (MLX on the CPU if torch is absent); ops are also checked
    against an independent float64 numpy implementation, and each backend's real training step
    (gradient accumulation, clipping, dropout) against a float64 composition of its own
    gradients. Prints one row per comparison and exits with status 1 if any fails.
    """
    # Imported here so `mygpt --help` doesn't pay for numpy/model imports.
    from mygpt.parity.runner import run_parity
    from mygpt.parity.table import format_table

    start = time.perf_counter()
    rows = run_parity(
        backends=backends or None,
        devices=devices or None,
        dtypes=dtypes or DTYPES,
        quick=quick,
        slow=slow,
        progress=lambda msg: click.echo(f"parity: {msg}", err=True),
    )
    click.echo(format_table(rows))
    click.echo(f"parity: done in {time.perf_counter() - start:.1f}s", err=True)
    sys.stdout.flush()
    if not all(r.passed for r in rows):
        raise click.exceptions.Exit(1)
