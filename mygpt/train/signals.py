"""Ctrl-C and SIGTERM stop a run between steps, so a checkpoint never holds half-updated weights."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

from mygpt.console import console


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps.

    A second Ctrl-C aborts at once (the last checkpoint is intact). Under a launcher one Ctrl-C
    reaches a rank twice within milliseconds: from the terminal and again from the launcher,
    which forwards it (torchrun as SIGINT, others as SIGTERM). So signals within a second of the
    first count as the same interrupt; only a later one aborts.
    """

    GRACE_S = 1.0

    def __init__(self) -> None:
        self.signal: int | None = None
        self._since = 0.0
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
        if self.signal is not None:
            if time.monotonic() - self._since > self.GRACE_S:
                raise KeyboardInterrupt
            return
        console.status(
            "\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)"
        )
        self.signal, self._since = signum, time.monotonic()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
