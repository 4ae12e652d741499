"""Training progress: a live bar on a terminal, plain book-style lines everywhere else."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from mygpt.console import console


def bars_enabled() -> bool:
    """The one rule every live progress display follows (training, BPE merges, corpus encoding):
    a bar only when both stdout and stderr (where it is drawn) are terminals. Anywhere else (a
    log file, a pipe, CI) a redrawn bar is noise, so only plain status lines appear. In a
    data-parallel run only rank 0 draws."""
    try:
        return console.is_main and sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _terminal_unsized() -> bool:
    """Whether stderr is a terminal that reports no size: a pseudo-terminal nobody sized (some CI
    runners, ``script``, containers) reads as 0 x 0, and tqdm sized by it draws nothing at all."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # not a file descriptor, or not a terminal
        return False
    return size.columns <= 0 or size.lines <= 0


class Progress:
    """``update`` feeds the bar; ``write`` prints a result line (``step N: loss = ...``) to stdout.

    On a terminal (see :func:`bars_enabled`) a tqdm bar (on stderr) shows step, loss, val loss, lr,
    tokens/s and ETA; when stdout or stderr is a pipe or file only the plain lines appear, so logs
    stay greppable. In a data-parallel run only rank 0 shows either.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None) -> None:
        self.enabled = bars_enabled() if enabled is None else enabled
        # follow the terminal's width as it changes, or fix one where it has none
        size = dict(ncols=100, nrows=24) if self.enabled and _terminal_unsized() else {}
        self.bar = (
            tqdm(
                total=total,
                initial=initial,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=not size,
                **size,
            )
            if self.enabled
            else None
        )
        self.step = initial
        self.tokens_per_s: float | None = None

    def update(
        self,
        step: int,
        *,
        loss: float,
        val: float | None = None,
        lr: float | None = None,
        tokens_per_s: float | None = None,
    ) -> None:
        if self.bar is None:
            self.step = step
            return
        post = {"loss": f"{loss:.4f}"}
        if val is not None:
            post["val"] = f"{val:.4f}"
        if lr is not None:
            post["lr"] = f"{lr:.2e}"
        if tokens_per_s:
            self.tokens_per_s = tokens_per_s
        if self.tokens_per_s:
            post["tok/s"] = f"{self.tokens_per_s:,.0f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(step - self.step)
        self.step = step

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            console.result(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
