"""``mygpt eval``: how well a checkpoint predicts a text, in units that compare across tokenizers.

Loss per token depends on what a token is: a char model and a BPE model with the same loss per
token are not equally good. Bits per UTF-8 byte (and per character) divide the total loss by the
size of the text the model predicted, so they compare any two tokenizers fairly (nanochat's and
the HF perplexity guide's measure).

Windows. ``tokens[0..N)`` gives ``N - 1`` predictions (the first token has no context). Without a
stride the text is cut into non-overlapping windows of ``seq_len`` inputs, each predicting its
``seq_len`` next tokens: every target is scored once, with ``0 .. seq_len - 1`` tokens of context.
With ``--stride S`` (HF's sliding window) windows start every ``S`` tokens and each scores only the
targets no earlier window scored, so every target after the first window sees at least
``seq_len - S`` tokens of context: a lower, fairer loss, at ``seq_len / S`` times the compute.

Sizes are those of the scored targets exactly: bytes = the UTF-8 bytes of each target token;
characters = the characters that start inside a target token (for byte-level tokens one character
may span two tokens; it is counted with the token holding its first byte).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mygpt.errors import MygptError, UsageError


@dataclass
class TextStats:
    """What reading and tokenizing the text changed: the counts the report owes the user."""

    chars_read: int
    dropped_chars: int  # characters the tokenizer has no token for (left out of the tokens)
    replaced_bytes: int  # invalid UTF-8 sequences turned into U+FFFD (--encoding-errors replace)
    ignored_bytes: int  # invalid UTF-8 bytes left out (--encoding-errors ignore)


@dataclass
class EvalResult:
    tokens: int  # targets scored
    windows: int
    seq_len: int
    stride: int | None
    nats: float  # total cross-entropy over the scored targets
    chars: int
    bytes: int
    text: TextStats

    @property
    def mean_ce(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_ce)

    @property
    def bits_per_char(self) -> float:
        return self.nats / math.log(2) / self.chars

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "text"}
        out.update(
            mean_ce=self.mean_ce,
            perplexity=self.perplexity,
            bits_per_token=self.mean_ce / math.log(2),
            bits_per_char=self.bits_per_char,
            bits_per_byte=self.bits_per_byte,
            **asdict(self.text),
        )
        return out


def read_eval_text(path: str | Path, encoding_errors: str = "strict") -> tuple[str, TextStats]:
    """The file's text and what decoding it replaced or dropped (``strict`` refuses bad UTF-8)."""
    from mygpt.data.text import decode_bytes

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise MygptError(f"cannot read {p}: {e.strerror} — check the path") from None
    text = decode_bytes(raw, p, encoding_errors)
    replaced = ignored = 0
    if encoding_errors == "replace":
        replaced = text.count("\ufffd") - raw.count("\ufffd".encode())
    elif encoding_errors == "ignore":
        ignored = len(raw) - len(text.encode("utf-8"))
    return text, TextStats(len(text), 0, replaced, ignored)


def tokenize_for_eval(tokenizer, text: str, stats: TextStats) -> np.ndarray:
    """Token ids of ``text``; characters outside a char/BPE alphabet are dropped and counted.

    The book's BPE drops them from corpora anyway; the char tokenizer would refuse, but an eval
    that stops at one stray character is less useful than one that says how many it skipped.
    """
    alphabet = getattr(tokenizer, "chars", None)
    if alphabet is not None and tokenizer.kind in ("char", "bpe"):
        known = set(alphabet)
        unknown = {c for c in set(text) if c not in known}
        if unknown:
            kept = "".join(c for c in text if c not in unknown)
            stats.dropped_chars = len(text) - len(kept)
            text = kept
    return np.asarray(tokenizer.encode_corpus(text), dtype=np.int64)


def token_sizes(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per vocabulary id: its UTF-8 byte count and the characters starting inside it."""
    n = tokenizer.vocab_size
    nbytes = np.zeros(n, dtype=np.int64)
    nchars = np.zeros(n, dtype=np.int64)
    for i in range(n):
        b = tokenizer.decode_bytes([i])
        nbytes[i] = len(b)
        nchars[i] = sum(1 for x in b if x & 0xC0 != 0x80)  # lead bytes, not continuations
    return nbytes, nchars


def plan_windows(n_tokens: int, seq_len: int, stride: int | None) -> list[tuple[int, int, int]]:
    """``(start, length, scored)`` per window: inputs ``tokens[start : start + length]``, whose
    last ``scored`` predictions count. Every target ``1 .. n_tokens - 1`` is scored exactly once."""
    step = seq_len if stride is None else stride
    windows = []
    scored_end = 1  # targets before this index are already scored
    start = 0
    while scored_end < n_tokens:
        length = min(seq_len, n_tokens - 1 - start)
        end = start + length + 1  # one past the last target
        windows.append((start, length, end - scored_end))
        scored_end = end
        start += step
    return windows


def _batches(
    windows: list[tuple[int, int, int]], batch_size: int
) -> Iterator[list[tuple[int, int, int]]]:
    # rows of one batch must share a length: only the last window can be shorter
    full = [w for w in windows if w[1] == windows[0][1]]
    rest = [w for w in windows if w[1] != windows[0][1]]
    for i in range(0, len(full), batch_size):
        yield full[i : i + batch_size]
    for w in rest:
        yield [w]


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood, in float64 from the model's fp32 logits.

    One row at a time: a (batch, seq, vocab) float64 copy of a 50k-token vocabulary's logits
    would be gigabytes.
    """
    out = np.empty(targets.shape, dtype=np.float64)
    for r in range(len(targets)):
        z = logits[r].astype(np.float64)
        m = z.max(axis=-1)
        lse = np.log(np.exp(z - m[:, None]).sum(axis=-1)) + m
        out[r] = lse - np.take_along_axis(z, targets[r][:, None], axis=-1)[:, 0]
    return out


def evaluate_tokens(
    m, tokens: np.ndarray, *, seq_len: int | None = None, stride: int | None = None,
    batch_size: int = 8, stats: TextStats | None = None,
) -> EvalResult:  # fmt: skip
    """Score ``tokens`` with loaded model ``m`` (:func:`mygpt.load`) over the planned windows."""
    T = m.config.max_seq_len if seq_len is None else seq_len
    if not 1 <= T <= m.config.max_seq_len:
        raise UsageError(
            f"--seq-len must be in 1..{m.config.max_seq_len} (the model's context), got {T}"
        )
    if stride is not None and not 1 <= stride <= T:
        raise UsageError(f"--stride must be in 1..{T} (the window length), got {stride}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if len(tokens) < 2:
        raise MygptError(
            f"the text has {len(tokens)} token(s); scoring needs at least 2 — give a longer text"
        )
    windows = plan_windows(len(tokens), T, stride)
    nbytes, nchars = token_sizes(m.tokenizer)
    nats, n_bytes, n_chars, n_scored = 0.0, 0, 0, 0
    for batch in _batches(windows, batch_size):
        length = batch[0][1]
        rows = np.stack([tokens[s : s + length + 1] for s, _, _ in batch])
        logits = m.logits(rows[:, :-1])
        nll = _nll(logits, rows[:, 1:])
        for r, (_, _, scored) in enumerate(batch):
            targets = rows[r, -scored:]
            nats += float(nll[r, -scored:].sum())
            n_bytes += int(nbytes[targets].sum())
            n_chars += int(nchars[targets].sum())
            n_scored += scored
    stats = stats or TextStats(0, 0, 0, 0)
    return EvalResult(n_scored, len(windows), T, stride, nats, n_chars, n_bytes, stats)


def evaluate_file(
    m, path: str | Path, *, max_tokens: int | None = None, encoding_errors: str = "strict",
    **window_args,
) -> EvalResult:  # fmt: skip
    """Read, tokenize and score a text file (or its first ``max_tokens`` tokens)."""
    if max_tokens is not None and max_tokens < 2:
        raise UsageError(f"--max-tokens must be at least 2, got {max_tokens}")
    text, stats = read_eval_text(path, encoding_errors)
    tokens = tokenize_for_eval(m.tokenizer, text, stats)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    return evaluate_tokens(m, tokens, stats=stats, **window_args)


def format_report(r: EvalResult, name: str) -> str:
    """The human-readable table ``mygpt eval`` prints."""
    how = "non-overlapping" if r.stride is None else f"stride {r.stride}"
    lines = [
        f"{name}: {r.tokens:,} tokens scored in {r.windows:,} windows of {r.seq_len} ({how})",
        f"  mean cross-entropy  {r.mean_ce:.6f} nats/token",
        f"  perplexity          {r.perplexity:.4f}",
        f"  bits per token      {r.mean_ce / math.log(2):.6f}",
        f"  bits per character  {r.bits_per_char:.6f}  ({r.chars:,} characters)",
        f"  bits per byte       {r.bits_per_byte:.6f}  ({r.bytes:,} UTF-8 bytes)",
        f"  characters dropped  {r.text.dropped_chars:,} (not in the tokenizer's alphabet)",
    ]
    if r.text.replaced_bytes or r.text.ignored_bytes:
        lines.append(
            f"  invalid UTF-8       {r.text.replaced_bytes:,} sequences replaced by U+FFFD, "
            f"{r.text.ignored_bytes:,} bytes ignored"
        )
    return "\n".join(lines)
