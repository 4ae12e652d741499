"""The token cache: a corpus is encoded once into a raw binary token file, then memmapped.

Layout of a cache directory (default ``~/.cache/mygpt/tokens``, or ``$MYGPT_CACHE_DIR/tokens``)::

    <stem>-<source sha256[:12]>-<tokenizer fingerprint[:12]>.bin    raw little-endian ids
    <same>.bin.json                                                    sidecar (written last)
    tok-<source sha256[:12]>-<kind>-m<merges>-b<bpe bytes>.json      a trained tokenizer

The sidecar records the tokenizer's full fingerprint and the source's full sha256; a token file is
reused only when both match and the file has exactly ``num_tokens`` ids, and rebuilt (with a note on
stderr saying why) otherwise, so a file built by another tokenizer is never silently reused. The
trained tokenizer is cached too, keyed by the source and the training settings, so a second
``mygpt train`` on a 500 MB corpus neither retrains BPE nor re-encodes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mygpt.console import console
from mygpt.data.text import (
    ENCODING_ERRORS,
    check_utf8,
    corpus_files,
    read_prefix,
    read_text,
    source_identity,
)
from mygpt.errors import MygptError
from mygpt.fileio import atomic_write, atomic_write_text, check_output_path

if TYPE_CHECKING:  # the tokenizer package is imported lazily: data must import without it
    from mygpt.tokenizers import Tokenizer

FORMAT = "mygpt-tokens"
FORMAT_VERSION = 1
TOKENIZER_KINDS = ("char", "bpe", "bytebpe")


def _log(msg: str, progress: bool) -> None:
    if progress:
        console.status(msg)


def default_cache_root() -> Path:
    """``$MYGPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/mygpt``, else ``~/.cache/mygpt``."""
    env = os.environ.get("MYGPT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mygpt"


def default_cache_dir() -> Path:
    """Where token files go by default: ``<cache root>/tokens``."""
    return default_cache_root() / "tokens"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65536), else uint32; always little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


@dataclass(frozen=True)
class TokenFile:
    """A raw little-endian token file on disk; ``open()`` memmaps it read-only (no copy)."""

    path: Path
    dtype: np.dtype
    num_tokens: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).newbyteorder("<"))

    @property
    def nbytes(self) -> int:
        return self.num_tokens * self.dtype.itemsize

    def open(self) -> np.memmap:
        if self.num_tokens <= 0:
            raise MygptError(
                f"token file {self.path} holds no tokens — the corpus was empty; give it some text"
            )
        try:
            size = self.path.stat().st_size
        except OSError:
            raise MygptError(
                f"token file {self.path} is missing — run `mygpt data prepare` on the corpus again"
            ) from None
        if size != self.nbytes:
            raise MygptError(
                f"token file {self.path} has {size} bytes, expected {self.nbytes} — it "
                "is damaged; delete it and prepare the corpus again"
            )
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))

    @classmethod
    def from_sidecar(cls, path: str | os.PathLike) -> TokenFile:
        """Open a token file by its ``.bin`` path (or the sidecar's), reading the JSON sidecar."""
        p = Path(path)
        if p.suffix == ".json":
            p = p.with_suffix("")
        meta = _read_sidecar(p)
        if meta is None:
            raise MygptError(
                f"{p} has no valid sidecar {p}.json — prepare the corpus with `mygpt data prepare`"
            )
        return cls(p, np.dtype(meta["dtype"]), int(meta["num_tokens"]))


def _sidecar_path(bin_path: Path) -> Path:
    return bin_path.with_name(bin_path.name + ".json")


def _read_sidecar(bin_path: Path) -> dict | None:
    try:
        meta = json.loads(_sidecar_path(bin_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta


def _stale_reason(
    bin_path: Path, meta: dict | None, fingerprint: str, source: dict, encoding_errors: str
) -> str | None:
    """Why the cached token file at ``bin_path`` cannot be reused (None: it can)."""
    if meta is None:
        return "no valid sidecar" if bin_path.exists() else None
    if meta.get("format_version") != FORMAT_VERSION:
        return f"cache format {meta.get('format_version')} (now {FORMAT_VERSION})"
    tok = meta.get("tokenizer", {})
    if tok.get("fingerprint") != fingerprint:
        return (
            f"it was built by another tokenizer ({str(tok.get('fingerprint'))[:12]}, "
            f"now {fingerprint[:12]})"
        )
    if meta.get("source", {}).get("sha256") != source["sha256"]:
        return "the corpus changed since it was built"
    if meta.get("encoding_errors", "strict") != encoding_errors:
        return f"it was built with --encoding-errors {meta.get('encoding_errors')}"
    try:
        size = bin_path.stat().st_size
        expected = int(meta["num_tokens"]) * np.dtype(meta["dtype"]).itemsize
    except (OSError, KeyError, TypeError, ValueError):
        return "the token file is missing or its sidecar is damaged"
    if size != expected:
        return f"the token file has {size} bytes, the sidecar says {expected}"
    return None


def _tokenizers():
    """The tokenizer package (another module of this project), imported on first use."""
    import importlib

    return importlib.import_module("mygpt.tokenizers")


def _encode_into(
    tok: Tokenizer, src: Path, out, dtype: np.dtype, workers: int | None, progress: bool
) -> int:
    return int(
        _tokenizers().encode_file(tok, src, out, dtype=dtype, workers=workers, progress=progress)
    )


def _clean_copy(src: Path, dst: Path, encoding_errors: str) -> None:
    """Write ``src`` re-encoded as valid UTF-8 (bad bytes replaced or dropped) to ``dst``."""
    with open(src, "rb") as fi, open(dst, "w", encoding="utf-8", newline="") as fo:
        # A text-mode reader with the chosen error handler streams in bounded memory.
        import io

        reader = io.TextIOWrapper(fi, encoding="utf-8", errors=encoding_errors, newline="")
        while chunk := reader.read(4 * 1024 * 1024):
            fo.write(chunk)


def prepare_tokens(
    path: str | os.PathLike,
    tok: Tokenizer,
    *,
    cache_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    encoding_errors: str = "strict",
    workers: int | None = None,
    progress: bool = True,
    source: dict | None = None,
) -> tuple[TokenFile, bool]:
    """Encode the corpus at ``path`` with ``tok`` into a token file, or reuse a valid cached one.

    Returns ``(token_file, reused)``. ``output`` picks the ``.bin`` path explicitly (its sidecar goes
    beside it); otherwise the file lives in ``cache_dir`` under a name keyed by source and tokenizer.
    """
    if encoding_errors not in ENCODING_ERRORS:
        raise MygptError(f"--encoding-errors must be one of {', '.join(ENCODING_ERRORS)}")
    source = source or source_identity(path)
    if source["bytes"] == 0:
        raise MygptError(f"corpus {str(path)!r} is empty — give a file with some text in it")
    fingerprint = tok.fingerprint()
    dtype = token_dtype(tok.vocab_size)
    if output is not None:
        # an explicit output is the user's: its directory must exist (mygpt/fileio.py's policy)
        bin_path = check_output_path(Path(output).expanduser(), "--output")
    else:
        stem = Path(source["path"]).stem or "corpus"
        d = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        bin_path = d / f"{stem}-{source['sha256'][:12]}-{fingerprint[:12]}.bin"

    meta = _read_sidecar(bin_path)
    reason = _stale_reason(bin_path, meta, fingerprint, source, encoding_errors)
    if meta is not None and reason is None:
        tf = TokenFile(bin_path, np.dtype(meta["dtype"]), int(meta["num_tokens"]))
        _log(f"reusing token cache {bin_path} ({tf.num_tokens:,} tokens)", progress)
        return tf, True
    if reason:
        _log(f"rebuilding token cache {bin_path}: {reason}", progress)

    t0 = time.perf_counter()
    count = _write_token_file(path, tok, bin_path, dtype, encoding_errors, workers, progress)
    sidecar: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": dtype.str,
        "num_tokens": count,
        "encoding_errors": encoding_errors,
        "source": source,
        "tokenizer": {
            "fingerprint": fingerprint,
            "kind": getattr(tok, "kind", None),
            "vocab_size": int(tok.vocab_size),
        },
        "encode_seconds": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(_sidecar_path(bin_path), json.dumps(sidecar, indent=1) + "\n")
    _log(
        f"wrote {bin_path} ({count:,} tokens, {dtype.name}) in {sidecar['encode_seconds']} s",
        progress,
    )
    return TokenFile(bin_path, dtype, count), False


def _write_token_file(
    path, tok: Tokenizer, bin_path: Path, dtype, encoding_errors: str, workers, progress: bool
) -> int:
    """Encode every file of the corpus into ``bin_path`` atomically; the token count."""
    files = corpus_files(path)
    count = 0
    bin_path.parent.mkdir(parents=True, exist_ok=True)

    def write_tokens(out) -> None:
        nonlocal count
        for f in files:
            src = f
            cleaned = None
            try:
                check_utf8(f)
            except MygptError:
                if encoding_errors == "strict":
                    raise
                cleaned = bin_path.with_name(f".{bin_path.name}.{f.name}.utf8.tmp")
                _clean_copy(f, cleaned, encoding_errors)
                src = cleaned
            try:
                out.flush()
                count += _encode_into(tok, src, out, dtype, workers, progress)
            finally:
                if cleaned is not None:
                    cleaned.unlink(missing_ok=True)
        out.flush()

    # The old sidecar goes just before the new token file takes its name, so a crash can never
    # leave it describing the new file, and a failure before that (a full disk) keeps the old
    # pair usable; the new sidecar is written once the token file is in place.
    atomic_write(
        bin_path,
        write_tokens,
        "token cache",
        before_publish=lambda: _sidecar_path(bin_path).unlink(missing_ok=True),
    )
    actual = bin_path.stat().st_size
    if actual != count * dtype.itemsize:
        bin_path.unlink(missing_ok=True)
        raise MygptError(
            f"encoding wrote {actual} bytes for {count} tokens of {dtype} — this is a "
            "bug in the tokenizer's encode_file; please report it"
        )
    if count == 0:
        raise MygptError(
            f"corpus {str(path)!r} encodes to no tokens with this tokenizer — check "
            "that the tokenizer was trained on similar text"
        )
    return count


def _tokenizer_cache_path(
    cache_dir: Path, source: dict, kind: str, num_merges: int, bpe_train_bytes: int
) -> Path:
    if kind == "char":  # the char alphabet depends on the text alone
        num_merges = bpe_train_bytes = 0
    return cache_dir / f"tok-{source['sha256'][:12]}-{kind}-m{num_merges}-b{bpe_train_bytes}.json"


def _cached_tokenizer(
    tok_path: Path, meta_path: Path, source: dict, encoding_errors: str, progress: bool
) -> Tokenizer | None:
    """The tokenizer cached for this corpus and these settings, if it is there and intact."""
    if not (tok_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tok = _tokenizers().load_tokenizer(tok_path)
        if (
            meta.get("source_sha256") == source["sha256"]
            and meta.get("fingerprint") == tok.fingerprint()
            and meta.get("encoding_errors") == encoding_errors
        ):
            _log(
                f"reusing cached {meta.get('kind')} tokenizer {tok_path} (vocab {tok.vocab_size})",
                progress,
            )
            return tok
    except Exception as e:  # a damaged cache entry is rebuilt, never fatal
        _log(f"ignoring damaged tokenizer cache {tok_path}: {e}", progress)
    return None


def build_tokenizer(
    path: str | os.PathLike,
    *,
    tokenizer_kind: str = "char",
    num_merges: int = 1024,
    bpe_train_bytes: int = 0,
    cache_dir: str | os.PathLike | None = None,
    encoding_errors: str = "strict",
    progress: bool = True,
    source: dict | None = None,
) -> tuple[Tokenizer, bool]:
    """Train a tokenizer on the corpus the book's way, or load the one cached for these settings.

    char: the alphabet of the whole corpus. bpe / bytebpe: trained on the first ``bpe_train_bytes``
    characters (0 = all) with ``num_merges`` merges. Returns ``(tokenizer, reused)``.
    """
    if tokenizer_kind not in TOKENIZER_KINDS:
        raise MygptError(
            f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, not {tokenizer_kind!r}"
        )
    if num_merges < 0 or bpe_train_bytes < 0:
        raise MygptError("--num-merges and --bpe-train-bytes must be >= 0")
    t = _tokenizers()
    source = source or source_identity(path)
    d = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    tok_path = _tokenizer_cache_path(d, source, tokenizer_kind, num_merges, bpe_train_bytes)
    meta_path = tok_path.with_name(tok_path.name + ".meta.json")
    cached = _cached_tokenizer(tok_path, meta_path, source, encoding_errors, progress)
    if cached is not None:
        return cached, True
    t0 = time.perf_counter()
    if tokenizer_kind == "char":
        text = read_text(path, encoding_errors=encoding_errors)
    else:
        text = read_prefix(path, bpe_train_bytes, encoding_errors=encoding_errors)
    _log(
        f"training {tokenizer_kind} tokenizer on {len(text):,} characters"
        + (f" ({num_merges} merges)" if tokenizer_kind != "char" else ""),
        progress,
    )
    if tokenizer_kind == "char":
        tok = t.train_tokenizer("char", text)
    else:
        tok = t.train_tokenizer(
            tokenizer_kind,
            text,
            num_merges=num_merges,
            bpe_train_bytes=bpe_train_bytes,
            progress=progress,
        )
    del text
    secs = time.perf_counter() - t0
    d.mkdir(parents=True, exist_ok=True)
    tok.save(tok_path)  # atomic (mygpt.fileio)
    atomic_write_text(
        meta_path,
        json.dumps(
            {
                "source_sha256": source["sha256"],
                "fingerprint": tok.fingerprint(),
                "kind": tokenizer_kind,
                "num_merges": num_merges,
                "bpe_train_bytes": bpe_train_bytes,
                "encoding_errors": encoding_errors,
                "train_seconds": round(secs, 3),
            },
            indent=1,
        )
        + "\n",
    )
    _log(f"trained {tokenizer_kind} tokenizer (vocab {tok.vocab_size}) in {secs:.1f} s", progress)
    return tok, False


@dataclass
class PreparedCorpus:
    """What :func:`prepare_corpus` did: the tokenizer and token file, and what it reused."""

    tokenizer: Tokenizer
    token_file: TokenFile
    source: dict  # the corpus's identity (see ``source_identity``): bytes, hash, ...
    tokenizer_reused: bool  # loaded from --tokenizer-file or the cache, not trained
    tokens_reused: bool  # the token file came from the cache, not encoded
    seconds: dict[str, float]  # "hash", "tokenizer", "encode", "total"


def prepare_corpus(
    path: str | os.PathLike,
    *,
    tokenizer_kind: str = "char",
    num_merges: int = 1024,
    bpe_train_bytes: int = 0,
    tokenizer_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    encoding_errors: str = "strict",
    workers: int | None = None,
    output: str | os.PathLike | None = None,
) -> PreparedCorpus:
    """A tokenizer and the corpus's cached token file, with what was reused and how long it took.

    The tokenizer is loaded from ``tokenizer_file`` or built as the book does (see
    :func:`build_tokenizer`, cached); the corpus is then encoded once into a token file (see
    :func:`prepare_tokens`) that later runs reuse while tokenizer and corpus are unchanged.
    """
    if output is not None:  # refused before the hashing and training, not after
        check_output_path(Path(output).expanduser(), "--output")
    t0 = time.perf_counter()
    source = source_identity(path)
    if source["bytes"] == 0:
        raise MygptError(f"corpus {str(path)!r} is empty — give a file with some text in it")
    t1 = time.perf_counter()
    if tokenizer_file is not None:
        p = Path(tokenizer_file).expanduser()
        if not p.is_file():
            raise MygptError(
                f"tokenizer file {str(p)!r} does not exist — train one with "
                "`mygpt tokenizer train` or drop --tokenizer-file"
            )
        tok, tok_reused = _tokenizers().load_tokenizer(p), True
    else:
        tok, tok_reused = build_tokenizer(
            path,
            tokenizer_kind=tokenizer_kind,
            num_merges=num_merges,
            bpe_train_bytes=bpe_train_bytes,
            cache_dir=cache_dir,
            encoding_errors=encoding_errors,
            progress=progress,
            source=source,
        )
    t2 = time.perf_counter()
    tf, tokens_reused = prepare_tokens(
        path,
        tok,
        cache_dir=cache_dir,
        output=output,
        encoding_errors=encoding_errors,
        workers=workers,
        progress=progress,
        source=source,
    )
    t3 = time.perf_counter()
    seconds = {"hash": t1 - t0, "tokenizer": t2 - t1, "encode": t3 - t2, "total": t3 - t0}
    return PreparedCorpus(tok, tf, source, tok_reused, tokens_reused, seconds)


def corpus_tokens(path: str | os.PathLike, **options: Any) -> tuple[Tokenizer, TokenFile]:
    """The one call ``mygpt train FILE`` makes: :func:`prepare_corpus`'s tokenizer and token file."""
    prepared = prepare_corpus(path, **options)
    return prepared.tokenizer, prepared.token_file


__all__ = [
    "TokenFile",
    "build_tokenizer",
    "corpus_tokens",
    "prepare_corpus",
    "PreparedCorpus",
    "default_cache_dir",
    "default_cache_root",
    "prepare_tokens",
    "token_dtype",
]
