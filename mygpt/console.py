"""Console output: one place decides who prints (rank 0 of a data-parallel run) and how.

Results go to stdout, status and progress to stderr (the CLI's convention: a pipe gets only results). In a run of N
processes only rank 0 speaks, so a status line, a progress bar or a resume hint appears once.
``quiet`` silences status lines (library use, tests); errors are never silenced. Live progress
bars follow :func:`mygpt.progress.bars_enabled` (rank 0, on a terminal).
"""

from __future__ import annotations

import os
import sys


def _rank_from_env() -> int:
    # the launchers' variables, so that even messages printed before the process group forms
    # (a bad flag, identical on every rank) appear once
    for var in ("RANK", "MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class Console:
    def __init__(self) -> None:
        self.rank = _rank_from_env()
        self.quiet = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def status(self, msg: str) -> None:
        """A status line on stderr, from rank 0 only, unless quiet."""
        if self.is_main and not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def result(self, line: str) -> None:
        """A result line on stdout (``step N: loss = ...``), from rank 0 only."""
        if self.is_main:
            print(line, flush=True)

    def error(self, msg: str) -> None:
        """``error: ...`` on stderr; ranks other than 0 say which they are."""
        prefix = "error: " if self.is_main else f"error: [rank {self.rank}] "
        print(prefix + msg, file=sys.stderr, flush=True)


console = Console()
