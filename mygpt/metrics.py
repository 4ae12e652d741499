"""The run's metrics log, ``<output>.metrics.jsonl``: one JSON object per line, appended as the run
goes, with every failure a one-line :class:`MygptError` and never a damaged file.

An append that fails part-way (a full disk) is cut back to the last whole line, so the log stays
readable by ``mygpt plot`` and holds exactly the records written before the fault. Starting a run
replaces the log atomically (a fresh run: empty; a resumed one: the lines up to its step), so a
failure there leaves the previous log as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from mygpt.errors import MygptError
from mygpt.fileio import atomic_write_bytes, check_output_path, write_error


def metrics_path_for(output: str | os.PathLike) -> Path:
    """The log beside a checkpoint: ``model.safetensors`` -> ``model.metrics.jsonl``."""
    output = Path(output)
    return output.with_name(output.stem + ".metrics.jsonl")


def _kept_lines(path: Path, step: int) -> bytes:
    """The log's lines up to ``step`` (later ones belong to the lost tail of a resumed run)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise MygptError(f"could not read {path}: {e.strerror} — check the file") from None
    kept = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(rec, dict) or "event" in rec or rec.get("step", 0) > step:
            continue
        kept.append(line + b"\n")
    return b"".join(kept)


class MetricsLog:
    """``open(resume_step)``, ``append(record)`` (buffered), ``flush()``, ``close()``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._pending: list[bytes] = []

    def check(self) -> None:
        """Refuse a log path that cannot be written, before any work is done."""
        check_output_path(self.path, "metrics log")

    def open(self, resume_step: int | None = None) -> MetricsLog:
        """Start the log: empty for a fresh run, the lines up to ``resume_step`` for a resumed
        one. The old log is replaced atomically, so a failure here leaves it as it was."""
        self.check()
        if resume_step is None:
            if self.path.exists():
                atomic_write_bytes(self.path, b"", "metrics log")
        elif self.path.exists():
            atomic_write_bytes(self.path, _kept_lines(self.path, resume_step), "metrics log")
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_error(e, self.path) from None
        return self

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record; it reaches the file at the next :meth:`flush`."""
        self._pending.append((json.dumps(record) + "\n").encode("utf-8"))

    def flush(self) -> None:
        """Write the queued records; on a failure, cut the file back to its last whole line."""
        if not self._pending or self._fd is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise write_error(e, self.path, existed=True) from None

    def close(self) -> None:
        """Flush and close; safe to call twice, and after a failed flush."""
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_after_error(self) -> None:
        """Close while another error is on its way: a second failure must not replace it."""
        with contextlib.suppress(MygptError):
            self.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.close_after_error()
