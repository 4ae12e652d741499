"""``mygpt data download``: corpora from the Hugging Face Hub (parquet) or local files, as plain text.

Sources:

* ``wikitext-103``: ``Salesforce/wikitext``, config ``wikitext-103-raw-v1``, at a pinned revision;
  ``= Heading =`` lines are removed as in the book's Ch.28. Writes ``train.txt``, ``valid.txt``,
  ``test.txt`` and a ``corpus.json`` manifest listing them in the book's order (train + valid +
  test), so ``mygpt train DIR`` trains on exactly the book's 516.7 MB.
* ``hf:OWNER/NAME[:CONFIG]``: any dataset of parquet files with a text column (e.g.
  ``hf:wikimedia/wikipedia:20231101.en``); rows become paragraphs separated by blank lines.
* a local ``.parquet`` file, a ``.txt`` file, or a directory of either.

Files are fetched with ``huggingface_hub`` one at a time into its cache (resumable, reused by later
runs, shared with other tools); ``--max-bytes`` stops reading, and downloading, once a split has that
much text. ``--offline`` (or ``HF_HUB_OFFLINE=1``) uses the cache only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mygpt.console import console
from mygpt.data.text import MANIFEST, check_utf8
from mygpt.errors import MygptError, UsageError
from mygpt.fileio import atomic_write, atomic_write_text

WIKITEXT_REPO = "Salesforce/wikitext"
WIKITEXT_CONFIG = "wikitext-103-raw-v1"
# The dataset repo's commit the project was written against (pinned: a moving `main` could change
# the text, and with it every token cache and loss curve).
WIKITEXT_REVISION = "b08601e04326c79dfdd32d625aee71d232d685c3"
WIKITEXT_FILES = {
    "train": [
        f"{WIKITEXT_CONFIG}/train-00000-of-00002.parquet",
        f"{WIKITEXT_CONFIG}/train-00001-of-00002.parquet",
    ],
    "valid": [f"{WIKITEXT_CONFIG}/validation-00000-of-00001.parquet"],
    "test": [f"{WIKITEXT_CONFIG}/test-00000-of-00001.parquet"],
}
SPLIT_ORDER = ("train", "valid", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "validation": "valid",
    "valid": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
}

# " = Title = ", " = = Section = = ", " = = = Sub = = = " once stripped.
_HEADING = re.compile(r"^(=\s)+.*?(\s=)+$")


def is_heading(line: str) -> bool:
    """True for a wikitext heading line (``= Title =``, ``= = Sub = =``, ...), whitespace aside."""
    s = line.strip()
    return len(s) >= 3 and bool(_HEADING.match(s))


def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        console.status(msg)


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------- Hub access (patched in tests)


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _check_hub_resolves() -> None:
    """Raise ``socket.gaierror`` at once if the Hub's host name does not resolve.

    huggingface_hub retries a failed connection with backoff, ~25 s before it gives up, which is
    right for a flaky link and only a wait when there is no network at all. Behind a proxy the
    proxy resolves names, so nothing is checked there.
    """
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in _PROXY_VARS):
        return
    url = urllib.parse.urlparse(constants.ENDPOINT)
    if url.hostname:
        socket.getaddrinfo(url.hostname, url.port or 443)


def _hf_hub_download(**kwargs) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hf_logging

    if not kwargs.get("local_files_only"):
        _check_hub_resolves()
    # its retry warnings would print before our one-line error; the error says what failed
    hf_logging.set_verbosity_error()
    return hf_hub_download(**kwargs)


def _hf_list_files(repo_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import HfApi

    _check_hub_resolves()
    return list(HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision))


def _cached_files(repo_id: str, revision: str | None, cache_dir: str | None) -> list[str]:
    """The files of ``repo_id`` at ``revision`` present in the local hub cache (offline listing)."""
    from huggingface_hub import constants

    root = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    repo_dir = root / ("datasets--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    commit = rev
    if not re.fullmatch(r"[0-9a-f]{40}", rev):
        ref = repo_dir / "refs" / rev
        commit = ref.read_text().strip() if ref.is_file() else ""
    snap = repo_dir / "snapshots" / commit
    if not commit or not snap.is_dir():
        return []
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())


def _network_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    mods = {c.__module__.split(".")[0] for c in type(e).__mro__}
    return bool(
        names
        & {
            "LocalEntryNotFoundError",
            "ConnectionError",
            "ConnectError",
            "Timeout",
            "TimeoutException",
            "NetworkError",
            "OfflineModeIsEnabled",
            "gaierror",  # the host name does not resolve (no network, or no DNS)
        }
        or mods & {"requests", "urllib3", "httpx", "httpx2", "httpcore"}
    )


def _hub_error(e: BaseException, repo_id: str, what: str, offline: bool) -> MygptError:
    """One line for a failed hub call: which dataset, and the cache / offline way out."""
    name = type(e).__name__
    if name == "RepositoryNotFoundError":
        return MygptError(
            f"dataset {repo_id!r} was not found on the Hugging Face Hub (or is "
            "private/gated) — check the name, or log in with `hf auth login`"
        )
    if name == "RevisionNotFoundError":
        return MygptError(f"dataset {repo_id!r} has no revision for {what} — check --revision")
    if name in {"EntryNotFoundError", "RemoteEntryNotFoundError"}:
        return MygptError(f"dataset {repo_id!r} has no file {what} — check the config name")
    if name == "GatedRepoError":
        return MygptError(
            f"dataset {repo_id!r} is gated — accept its terms on the Hub and log in "
            "with `hf auth login`"
        )
    if offline:
        return MygptError(
            f"dataset {repo_id!r}: {what} is not in the local Hugging Face cache and offline mode is "
            "on (--offline / HF_HUB_OFFLINE=1) — run once with network access to fill the cache "
            "(HF_HOME or --hf-cache-dir picks its place), or copy a filled cache here"
        )
    if _network_error(e):
        return MygptError(
            f"cannot download {what} of dataset {repo_id!r}: the Hugging Face Hub is unreachable "
            f"({name}) — connect to the network, or, if the files are already in the Hugging Face "
            "cache (HF_HOME / --hf-cache-dir), pass --offline or set HF_HUB_OFFLINE=1"
        )
    return MygptError(
        f"downloading {what} of dataset {repo_id!r} failed: {name}: "
        f"{str(e).splitlines()[0] if str(e) else ''} — retry; partial downloads resume"
    )


def fetch(
    repo_id: str,
    filename: str,
    *,
    revision: str | None,
    cache_dir: str | None,
    offline: bool,
    force: bool = False,
) -> Path:
    """One dataset file through huggingface_hub's cache (resumable, reused), or a clear error."""
    try:
        p = _hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            repo_type="dataset",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            force_download=force and not offline,
        )
    except Exception as e:  # every hub failure becomes one line naming the dataset
        raise _hub_error(e, repo_id, filename, offline) from None
    return Path(p)


# ---------------------------------------------------------------- parquet reading


def iter_parquet_texts(path: Path, column: str = "text", batch_rows: int = 8192) -> Iterator[str]:
    """The ``column`` strings of a parquet file, streamed a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def bad(e: BaseException) -> MygptError:
        return MygptError(
            f"{path} is truncated or not a parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__}) "
            "— delete it and download again (`mygpt data download ... --force-download`)"
        )

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise bad(e) from None
    names = pf.schema_arrow.names
    if column not in names:
        raise MygptError(
            f"{path} has no {column!r} column (columns: {', '.join(names)}) — pass "
            "--text-column with the right one"
        )
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[column]):
            for s in batch.column(0).to_pylist():
                if s is not None:
                    yield s
    except (pa.ArrowException, OSError, ValueError) as e:
        raise bad(e) from None


@dataclass
class SplitWriter:
    """Writes one split's text atomically, stopping at ``max_bytes`` (whole rows, UTF-8 bytes)."""

    path: Path
    max_bytes: int = 0
    remove_headings: bool = False
    paragraphs: bool = False
    bytes: int = 0
    rows: int = 0
    headings_removed: int = 0
    full: bool = False
    _fh: object = field(default=None, repr=False)

    def add(self, texts: Iterable[str]) -> None:
        for s in texts:
            if self.full:
                return
            if self.remove_headings and is_heading(s):
                self.headings_removed += 1
                continue
            if self.paragraphs:
                s = s.strip("\n")
                if not s.strip():
                    continue
                s += "\n\n"
            b = s.encode("utf-8")
            if self.max_bytes and self.bytes + len(b) > self.max_bytes:
                self.full = True
                return
            self._fh.write(b)
            self.bytes += len(b)
            self.rows += 1


def _split_of(filename: str) -> str | None:
    """``train`` / ``valid`` / ``test`` from a parquet path like ``cfg/validation-00000-of-1.parquet``."""
    parts = Path(filename).parts
    for part in reversed(parts):
        stem = Path(part).stem.split("-")[0].split(".")[0].lower()
        if stem in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[stem]
    return None


@dataclass
class DownloadResult:
    out: Path
    files: dict[str, int]  # split file name -> bytes
    manifest: dict


def _write_splits(
    out: Path,
    splits: dict[str, list],
    opener: Callable[[object], Iterator[str]],
    *,
    max_bytes: int,
    remove_headings: bool,
    paragraphs: bool,
    quiet: bool,
    manifest_extra: dict,
) -> DownloadResult:
    """Stream each split's sources through ``opener`` into ``<split>.txt``, then the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    stats = {}
    for split in SPLIT_ORDER:
        sources = splits.get(split)
        if not sources:
            continue
        target = out / f"{split}.txt"
        w = SplitWriter(target, max_bytes, remove_headings, paragraphs)

        def fill(fh, w=w, sources=sources) -> None:
            w._fh = fh
            for src in sources:
                if w.full:
                    break  # --max-bytes reached: later files are not even downloaded
                w.add(opener(src))

        atomic_write(target, fill)  # a SIGKILL part-way leaves no temporary file
        written[target.name] = w.bytes
        stats[split] = {
            "bytes": w.bytes,
            "rows": w.rows,
            "headings_removed": w.headings_removed,
            "truncated_at_max_bytes": w.full,
        }
        _log(
            f"wrote {target} ({w.bytes:,} bytes"
            + (f", {w.headings_removed:,} heading lines removed" if remove_headings else "")
            + (", cut at --max-bytes" if w.full else "")
            + ")",
            quiet,
        )
    manifest = {
        "files": list(written),
        "splits": stats,
        "max_bytes": max_bytes,
        "remove_headings": remove_headings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **manifest_extra,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    total = sum(written.values())
    _log(f"{out}: {total:,} bytes of text in {', '.join(written)}", quiet)
    return DownloadResult(out, written, manifest)


def _manifest_matches(out: Path, want: dict) -> bool:
    """True when ``out`` already holds text written from exactly this source and settings."""
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if any(m.get(k) != v for k, v in want.items()):
        return False
    return all(
        (out / f).is_file() and (out / f).stat().st_size == m["splits"][f[:-4]]["bytes"]
        for f in m.get("files", [])
    )


def _parquet_by_split(
    repo_id: str, config: str | None, revision: str | None, offline: bool, cache_dir: str | None
) -> dict[str, list[str]]:
    """The dataset's parquet files (of ``config``), grouped by split, from the Hub or the cache."""
    if offline:
        listing = _cached_files(repo_id, revision, cache_dir)
    else:
        try:
            listing = _hf_list_files(repo_id, revision)
        except Exception as e:
            raise _hub_error(
                e, repo_id, f"the file list (revision {revision or 'main'})", offline
            ) from None
    prefix = f"{config}/" if config else ""
    parquet = sorted(f for f in listing if f.endswith(".parquet") and f.startswith(prefix))
    if not parquet:
        where = "in the local Hugging Face cache" if offline else "on the Hub"
        raise MygptError(
            f"dataset {repo_id!r} has no parquet files{' for config ' + repr(config) if config else ''} "
            f"{where} — check the name and config"
            + (" or run without --offline / HF_HUB_OFFLINE=1 to download them" if offline else "")
        )
    files: dict[str, list[str]] = {}
    for f in parquet:
        files.setdefault(_split_of(f) or "train", []).append(f)
    return files


def download_hf(
    repo_id: str,
    config: str | None,
    out: Path,
    *,
    revision: str | None = None,
    max_bytes: int = 0,
    offline: bool = False,
    cache_dir: str | None = None,
    text_column: str = "text",
    force: bool = False,
    quiet: bool = False,
    files: dict[str, list[str]] | None = None,
    remove_headings: bool = False,
    paragraphs: bool = True,
) -> DownloadResult:
    """A parquet text dataset from the Hub, written as ``<split>.txt`` files plus a manifest."""
    offline = offline or _offline_env()
    ident = {
        "source": f"hf:{repo_id}" + (f":{config}" if config else ""),
        "revision": revision,
        "max_bytes": max_bytes,
        "text_column": text_column,
    }
    if not force and _manifest_matches(out, ident):
        _log(
            f"{out} already holds this download (delete it or pass --force-download to redo)", quiet
        )
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return DownloadResult(out, {f: (out / f).stat().st_size for f in m["files"]}, m)
    if files is None:
        files = _parquet_by_split(repo_id, config, revision, offline, cache_dir)
    _log(
        f"dataset {repo_id}"
        + (f" ({config})" if config else "")
        + f" at {revision or 'main'}: "
        + ", ".join(f"{k} {len(v)} file(s)" for k, v in files.items()),
        quiet,
    )

    def opener(filename: str) -> Iterator[str]:
        _log(f"fetching {filename}", quiet)
        local = fetch(
            repo_id, filename, revision=revision, cache_dir=cache_dir, offline=offline, force=force
        )
        return iter_parquet_texts(local, text_column)

    return _write_splits(
        out,
        files,
        opener,
        max_bytes=max_bytes,
        remove_headings=remove_headings,
        paragraphs=paragraphs,
        quiet=quiet,
        manifest_extra=ident,
    )


def download_wikitext103(
    out: Path,
    *,
    revision: str = WIKITEXT_REVISION,
    max_bytes: int = 0,
    offline: bool = False,
    cache_dir: str | None = None,
    force: bool = False,
    quiet: bool = False,
) -> DownloadResult:
    """Ch.28's corpus: wikitext-103-raw-v1, heading lines removed, rows kept verbatim (they are
    lines with their own newlines), split into train / valid / test text."""
    return download_hf(
        WIKITEXT_REPO,
        WIKITEXT_CONFIG,
        out,
        revision=revision,
        max_bytes=max_bytes,
        offline=offline,
        cache_dir=cache_dir,
        force=force,
        quiet=quiet,
        files=WIKITEXT_FILES,
        remove_headings=True,
        paragraphs=False,
    )


def import_local(
    src: Path,
    out: Path,
    *,
    max_bytes: int = 0,
    text_column: str = "text",
    remove_headings: bool = False,
    quiet: bool = False,
) -> DownloadResult:
    """A local text or parquet file, or a directory of them, validated and written to ``out``."""
    src = src.expanduser()
    if src.is_dir():
        members = sorted(
            p
            for p in src.rglob("*")
            if p.is_file() and p.suffix in {".txt", ".parquet"} and p.name != MANIFEST
        )
    elif src.is_file():
        members = [src]
    else:
        raise MygptError(
            f"source {str(src)!r} does not exist — give wikitext-103, "
            "hf:OWNER/NAME[:CONFIG], or a local file or directory"
        )
    if not members:
        raise MygptError(f"{src} has no .txt or .parquet files — put some text in it")
    if out.resolve() == (src.resolve() if src.is_dir() else src.parent.resolve()):
        raise UsageError("--out must differ from the source's directory — pick another --out")
    splits: dict[str, list[Path]] = {}
    for p in members:
        split = _split_of(p.name) if p.suffix == ".parquet" or len(members) > 1 else "train"
        splits.setdefault(split or "train", []).append(p)

    def opener(p: Path) -> Iterator[str]:
        if p.suffix == ".parquet":
            yield from iter_parquet_texts(p, text_column)
            return
        check_utf8(p)  # located error before anything is written
        with open(p, encoding="utf-8", newline="") as f:
            yield from f

    # Text files keep their lines as they are; parquet rows become paragraphs.
    paragraphs = all(p.suffix == ".parquet" for p in members)
    return _write_splits(
        out,
        splits,
        opener,
        max_bytes=max_bytes,
        remove_headings=remove_headings,
        paragraphs=paragraphs,
        quiet=quiet,
        manifest_extra={"source": str(src.resolve()), "revision": None, "text_column": text_column},
    )


def parse_source(source: str) -> tuple[str, str | None, str | None]:
    """``("wikitext", None, None)``, ``("hf", repo, config)`` or ``("local", path, None)``."""
    if source in {"wikitext-103", "wikitext103", "wikitext-103-raw-v1"}:
        return "wikitext", None, None
    if source.startswith("hf:"):
        rest = source[3:]
        repo, _, config = rest.partition(":")
        if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo):
            raise UsageError(
                f"{source!r} is not hf:OWNER/NAME[:CONFIG] — e.g. "
                "hf:wikimedia/wikipedia:20231101.en"
            )
        return "hf", repo, config or None
    return "local", source, None


def download(
    source: str,
    out: str | os.PathLike | None = None,
    *,
    max_bytes: int = 0,
    revision: str | None = None,
    offline: bool = False,
    cache_dir: str | None = None,
    text_column: str = "text",
    force: bool = False,
    quiet: bool = False,
) -> DownloadResult:
    """Dispatch on ``source`` (see the module doc); ``out`` defaults to ``<cache root>/data/NAME``."""
    from mygpt.data.cache import default_cache_root

    if max_bytes < 0:
        raise UsageError("--max-bytes must be >= 0 (0 = everything)")
    kind, name, config = parse_source(source)
    if out is not None and not Path(out).expanduser().parent.is_dir():
        # the output directory itself is created, but not a missing path to it (fileio's policy)
        parent = Path(out).expanduser().parent
        raise MygptError(
            f"the directory of --out {out} does not exist — create it first (mkdir -p {parent}) "
            "or pass another path"
        )
    if out is None:
        slug = {"wikitext": "wikitext-103"}.get(kind) or re.sub(
            r"[^\w.\-]+", "_", (name or "corpus") + (f"_{config}" if config else "")
        ).strip("_")
        if kind == "local":
            slug = Path(name).stem or "corpus"
        out = default_cache_root() / "data" / slug
    out = Path(out).expanduser()
    if kind == "wikitext":
        return download_wikitext103(
            out,
            revision=revision or WIKITEXT_REVISION,
            max_bytes=max_bytes,
            offline=offline,
            cache_dir=cache_dir,
            force=force,
            quiet=quiet,
        )
    if kind == "hf":
        return download_hf(
            name,
            config,
            out,
            revision=revision,
            max_bytes=max_bytes,
            offline=offline,
            cache_dir=cache_dir,
            text_column=text_column,
            force=force,
            quiet=quiet,
        )
    if revision:
        raise UsageError("--revision applies to Hub sources only — drop it for a local path")
    return import_local(Path(name), out, max_bytes=max_bytes, text_column=text_column, quiet=quiet)
