"""Building, training and loading tokenizers (the functions the rest of mygpt calls)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mygpt.errors import MygptError
from mygpt.progress import bars_enabled
from mygpt.tokenizers.base import FORMAT_VERSION, Tokenizer, corrupt, warn
from mygpt.tokenizers.bpe import BOOK_PATTERN, BPETokenizer
from mygpt.tokenizers.bytebpe import DEFAULT_SPECIAL_TOKENS, ByteBPETokenizer
from mygpt.tokenizers.char import CharTokenizer

KINDS = ("char", "bpe", "bytebpe")
#: every kind a checkpoint may hold: the trainable ones plus a real model's own tokenizer.json
LOADABLE_KINDS = (*KINDS, "hf")


def train_tokenizer(
    kind: str,
    text: str,
    num_merges: int = 1024,
    bpe_train_bytes: int = 0,
    progress: bool = False,
    *,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``text``.

    ``bpe_train_bytes`` > 0 trains a BPE on the first that many *characters* (the book's meaning of
    ``--bpe-train-bytes``; characters, so a UTF-8 sequence is never cut). ``char`` ignores merges and
    uses the whole text. When the text runs out of pairs before ``num_merges``, training stops early
    and says so on stderr.
    """
    if kind not in KINDS:
        raise MygptError(f"unknown tokenizer kind {kind!r} — use one of {', '.join(KINDS)}")
    if not text:
        raise MygptError("the training text is empty — pass a file with some text in it")
    if kind == "char":
        return CharTokenizer.train(text)
    if bpe_train_bytes < 0:
        raise MygptError(f"--bpe-train-bytes must be >= 0 (0 = all), got {bpe_train_bytes}")
    train_text = text[:bpe_train_bytes] if bpe_train_bytes else text
    bar = None
    on_merge = None
    if progress and bars_enabled():
        from tqdm import tqdm

        bar = tqdm(total=num_merges, desc=f"{kind} merges", unit="merge", file=sys.stderr)
        on_merge = bar.update
    try:
        if kind == "bpe":
            tok, done = BPETokenizer.train(train_text, num_merges, on_merge=on_merge)
        else:
            tok, done = ByteBPETokenizer.train(
                train_text, num_merges, special_tokens=special_tokens, on_merge=on_merge
            )
    finally:
        if bar is not None:
            bar.close()
    if done < num_merges:
        warn(
            f"stopped after {done} of {num_merges} merges — the training text has no more "
            f"adjacent pairs to merge (vocab size {tok.vocab_size}); use fewer merges or more text"
        )
    return tok


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output (as saved in JSON or checkpoints)."""
    if not isinstance(d, dict):
        raise corrupt(f"expected a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in LOADABLE_KINDS:
        raise corrupt(f"unknown kind {kind!r} (expected one of {', '.join(LOADABLE_KINDS)})")
    version = d.get("version")
    if version != FORMAT_VERSION:
        raise corrupt(f"unsupported {kind} format version {version!r} (this mygpt reads 1)")
    try:
        if kind == "hf":
            from mygpt.tokenizers.hf import hf_tokenizer_from_dict

            return hf_tokenizer_from_dict(d)
        if kind == "char":
            return CharTokenizer(_field(d, "chars", list))
        if kind == "bpe":
            pattern = d.get("pattern", BOOK_PATTERN)
            if pattern != BOOK_PATTERN:
                raise corrupt(f"bpe pattern {pattern!r} differs from the book's {BOOK_PATTERN!r}")
            return BPETokenizer(_field(d, "chars", list), _field(d, "merges", list))
        if d.get("bytes", 256) != 256:
            raise corrupt("a bytebpe tokenizer has exactly 256 byte tokens")
        return ByteBPETokenizer(
            _field(d, "merges", list),
            _field(d, "special_tokens", dict),
            pattern=_field(d, "pattern", str),
        )
    except MygptError:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as e:  # defensive: odd JSON shapes
        raise corrupt(f"malformed {kind} fields ({e})") from None


def _field(d: dict, name: str, typ: type):
    if name not in d:
        raise corrupt(f"missing field {name!r}")
    v = d[name]
    if not isinstance(v, typ):
        raise corrupt(f"field {name!r} should be a {typ.__name__}, got {type(v).__name__}")
    return v


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer JSON file; a missing or corrupt file is a one-line :class:`MygptError`."""
    p = Path(path)
    if not p.is_file():
        raise MygptError(
            f"tokenizer file {str(p)!r} not found — check the path, or create it with "
            "`mygpt tokenizer train FILE --output tok.json`"
        )
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MygptError(
            f"{str(p)!r} is not a valid tokenizer file (not JSON: {e}) — re-create it with "
            "`mygpt tokenizer train`"
        ) from None
    try:
        return tokenizer_from_dict(d)
    except MygptError as e:
        raise MygptError(f"{str(p)!r}: {e}") from None


def from_book_fields(
    tokenizer_chars: Sequence[str],
    tokenizer_kind: str | None = None,
    tokenizer_state: dict | None = None,
) -> Tokenizer:
    """Rebuild a tokenizer from the fields of a book checkpoint (Part-I ones have only chars)."""
    kind = tokenizer_kind or "char"
    if kind == "char":
        chars = (
            tokenizer_state.get("chars", tokenizer_chars) if tokenizer_state else tokenizer_chars
        )
        return CharTokenizer(list(chars))
    if kind == "bpe":
        if not isinstance(tokenizer_state, dict) or "merges" not in tokenizer_state:
            raise corrupt("a book bpe checkpoint needs tokenizer_state with 'chars' and 'merges'")
        chars = tokenizer_state.get("chars", tokenizer_chars)
        return BPETokenizer(list(chars), [tuple(m) for m in tokenizer_state["merges"]])
    raise corrupt(f"book checkpoints hold char or bpe tokenizers, not {kind!r}")
