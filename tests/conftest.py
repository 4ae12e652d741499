"""Shared test helpers: where the shared fixtures live, an isolated token cache, tiny corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BOOK_FIXTURES = SHARED / "fixtures" / "book"
TINY_SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own token cache, so no test sees another's (or the user's) files."""
    monkeypatch.setenv("MYGPT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


# Tests train tiny models: one torch thread is faster for them, and immune to the thread-pool
# spinning that two threads suffer on a 2-core machine shared with other work.
os.environ.setdefault("MYGPT_THREADS", "1")


@pytest.fixture
def hub_offline(monkeypatch):
    """No download: the Hugging Face hub and transformers read only what is on disk."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def backends() -> dict:
    """Both backends on the CPU, by name."""
    from mygpt.backends import get_backend

    return {name: get_backend(name, "cpu") for name in ("torch", "mlx")}


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """The first 60 kB of Tiny Shakespeare: enough text for short runs, fast to encode."""
    p = tmp_path / "small.txt"
    p.write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return p


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
