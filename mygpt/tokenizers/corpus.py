"""Parallel corpus encoding of large text files (hundreds of MB) into a raw token-id file.

The file is read as text (UTF-8, universal newlines: the same string ``open(path).read()`` gives)
in chunks that end at a *safe* boundary: a single space between two letters. Both pre-tokenisers
(the book's ``\\s*\\S+|\\s+`` and GPT-4's) always end a token before such a space and start the next
one at it, and neither pattern looks behind, so encoding chunk by chunk gives exactly the ids of
encoding the whole text. Chunks go to worker processes (each holds the tokenizer; the book BPE's
batch encoder needs no cache to warm, so a fresh worker is at full speed); results come back in order and are written straight to ``out``, so at most a few
chunks' ids are ever in memory, never the whole file's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import regex

from mygpt.errors import MygptError
from mygpt.progress import bars_enabled
from mygpt.tokenizers.base import Tokenizer
from mygpt.tokenizers.bytebpe import ByteBPETokenizer, check_special

CHUNK_CHARS = 4_000_000
_SAFE = regex.compile(r"(?<=\p{L}) (?=\p{L})")
_WORKER: dict = {}


def safe_cut(buf: str, start: int) -> int:
    """Index of the last safe boundary in ``buf`` at or after ``start`` (-1 if none)."""
    window = 1 << 16
    lo = max(start, len(buf) - window)
    while True:
        last = -1
        for m in _SAFE.finditer(buf, lo):
            last = m.start()
        if last >= 0:
            return last
        if lo <= start:
            return -1
        lo = max(start, lo - 8 * window)


def iter_text_chunks(
    path: str | os.PathLike, chunk_chars: int = CHUNK_CHARS
) -> Iterator[tuple[str, int]]:
    """Yield ``(text, bytes_read_so_far)`` chunks of the file, split at safe boundaries."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, generator
    except FileNotFoundError:
        raise MygptError(f"text file {str(path)!r} not found — check the path") from None
    with f:
        buf = ""
        while True:
            try:
                data = f.read(chunk_chars)
            except UnicodeDecodeError as e:
                raise MygptError(
                    f"{str(path)!r} is not UTF-8 text ({e.reason} near byte {f.buffer.tell()}) — "
                    "convert it to UTF-8 first (e.g. `iconv -t utf-8`)"
                ) from None
            pos = f.buffer.tell()
            if not data:
                if buf:
                    yield buf, pos
                return
            buf += data
            if len(buf) < chunk_chars:
                continue
            cut = safe_cut(buf, len(buf) // 2)
            if cut <= 0:
                continue  # no safe boundary yet: read more (the chunk grows)
            yield buf[:cut], pos
            buf = buf[cut:]


def _init_worker(state: dict, allowed: tuple) -> None:
    from mygpt.tokenizers.api import tokenizer_from_dict

    _WORKER["tok"] = tokenizer_from_dict(state)
    _WORKER["allowed"] = allowed


def _encode_chunk(text: str, dtype: str) -> bytes:
    return _encode_with(_WORKER["tok"], text, _WORKER["allowed"]).astype(dtype).tobytes()


def _encode_with(tok: Tokenizer, text: str, allowed: Collection[str]) -> np.ndarray:
    if allowed:
        assert isinstance(tok, ByteBPETokenizer)
        return tok.encode_corpus(text, allowed_special=allowed)
    return tok.encode_corpus(text)


def _mp_context():
    # Linux: fork (fast start, no re-import of __main__). The children only run the pure-Python
    # encoder and never touch torch or MLX, so their thread pools in the parent are harmless.
    # Elsewhere (macOS: Metal/ObjC runtimes are not fork-safe) use the platform default, spawn.
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def encode_file(
    tokenizer: Tokenizer,
    path: str | os.PathLike,
    out: BinaryIO,
    *,
    dtype=np.uint16,
    workers: int | None = None,
    progress: bool = True,
    allowed_special: Collection[str] = (),
    chunk_chars: int = CHUNK_CHARS,
) -> int:
    """Encode a UTF-8 text file with ``tokenizer.encode_corpus`` and append raw ids to ``out``.

    Ids are written little-endian as ``dtype``, in file order; returns the number of tokens. The
    result equals ``encode_corpus(open(path, encoding="utf-8").read())``. ``workers=None`` uses
    every core; small files are encoded in this process.
    """
    dt = np.dtype(dtype).newbyteorder("<")
    if dt.kind != "u" or np.iinfo(dt).max + 1 < tokenizer.vocab_size:
        raise MygptError(
            f"dtype {np.dtype(dtype).name} cannot hold ids up to {tokenizer.vocab_size - 1} — "
            "use uint32 (or --dtype auto)"
        )
    if allowed_special == "all":
        check_special(tokenizer, ("all",))
        allowed = tuple(sorted(tokenizer.special_tokens))
    else:
        allowed = tuple(allowed_special)
        check_special(tokenizer, allowed)
    p = Path(path)
    if not p.is_file():
        raise MygptError(f"text file {str(p)!r} not found — check the path")
    size = p.stat().st_size
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, int(workers))
    if size <= 4 * chunk_chars:
        # Below a few chunks starting processes and shipping text costs more than it saves.
        workers = 1

    bar = None
    if progress and bars_enabled():
        from tqdm import tqdm

        bar = tqdm(
            total=size, unit="B", unit_scale=True, desc="encoding", file=sys.stderr, leave=False
        )
    total = 0
    done_bytes = 0

    def emit(data: bytes, pos: int) -> None:
        nonlocal total, done_bytes
        out.write(data)
        total += len(data) // dt.itemsize
        if bar is not None:
            bar.update(pos - done_bytes)
        done_bytes = pos

    try:
        chunks = iter_text_chunks(p, chunk_chars)
        if workers == 1:
            for text, pos in chunks:
                emit(_encode_with(tokenizer, text, allowed).astype(dt).tobytes(), pos)
        else:
            ctx = _mp_context()
            with ctx.Pool(workers, _init_worker, (tokenizer.to_dict(), allowed)) as pool:
                pending: list = []
                for text, pos in chunks:
                    pending.append((pool.apply_async(_encode_chunk, (text, dt.str)), pos))
                    del text
                    while len(pending) >= 2 * workers:  # bound memory: few chunks in flight
                        r, ps = pending.pop(0)
                        emit(r.get(), ps)
                for r, ps in pending:
                    emit(r.get(), ps)
    finally:
        if bar is not None:
            bar.close()
    return total
