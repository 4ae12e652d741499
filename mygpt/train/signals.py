"""Ctrl-C and SIGTERM stop a run between steps, so a checkpoint never holds half-updated weights."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

from mygpt.console import console


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps.

    A second Ctrl-C aborts at once (the last checkpoint is intact). Under a launcher one Ctrl-C
    reaches a rank twice: from the terminal (SIGINT) and from the launcher, which forwards it as
    SIGTERM. Only a repeat of the *same* signal aborts, so that pair still stops cleanly.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal == signum:
            raise KeyboardInterrupt
        if self.signal is None:
            console.status(
                "\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)"
            )
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
