"""Start ``mygpt serve`` as a real process on a free port of 127.0.0.1, and always stop it."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import REPO, subprocess_env


@contextlib.contextmanager
def running_server(checkpoint: Path, *args: str) -> Iterator[str]:
    """Yield the server's base URL once ``/health`` answers; terminate (then kill) it after."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "mygpt.cli", "serve", "--checkpoint", str(checkpoint),
               "--port", "0", "--backend", "torch", "--device", "cpu", *args]  # fmt: skip
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=f, env=subprocess_env())
        try:
            yield _wait_ready(proc, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen, log: Path) -> str:
    url = None
    for _ in range(600):  # 60 s at most for torch's import and the model load
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            url = found.group(1)
            break
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    assert url, f"server did not start:\n{log.read_text()}"
    for _ in range(100):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"server never answered /health:\n{log.read_text()}")
