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

Streaming. The file is read, decoded (an incremental UTF-8 decoder), tokenized and scored a chunk
at a time (``CHUNK``): text is cut where the training corpus encoder cuts, so the ids are those of
the whole text; windows are planned as their tokens arrive and batched exactly as if the whole
token array were known, so the numbers are the same floats. Memory stays at one chunk and one
batch whatever the file's size, and ``--max-tokens N`` reads only about N tokens' worth of it.

Sizes are those of the scored targets exactly: bytes = the UTF-8 bytes of each target token;
characters = the characters that start inside a target token (for byte-level tokens one character
may span two tokens; it is counted with the token holding its first byte).
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterable, Iterator
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


CHUNK = 1 << 20  # bytes read (and characters tokenized) at a time
_FFFD = "\ufffd".encode()  # U+FFFD as it appears in a file


def _check_errors_mode(encoding_errors: str) -> None:
    from mygpt.data.text import ENCODING_ERRORS

    if encoding_errors not in ENCODING_ERRORS:
        raise UsageError(
            f"--encoding-errors must be one of {', '.join(ENCODING_ERRORS)}, not "
            f"{encoding_errors!r} — pick one"
        )


def iter_eval_text(
    path: str | Path, stats: TextStats, encoding_errors: str = "strict", chunk: int = CHUNK
) -> Iterator[str]:
    """The file's text, ``chunk`` bytes at a time through an incremental UTF-8 decoder (a
    character split between two reads is decoded whole); counts into ``stats`` what decoding
    replaced or dropped. ``strict`` refuses bad UTF-8 with its byte offset and line."""
    from mygpt.data.text import check_utf8

    p = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")(encoding_errors)
    tail = b""  # the last 2 bytes read: a U+FFFD already in the file may span two reads
    try:
        f = open(p, "rb")  # noqa: SIM115 - a generator: closed below
    except OSError as e:
        raise MygptError(f"cannot read {p}: {e.strerror} — check the path") from None
    with f:
        while True:
            raw = f.read(chunk)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError:
                check_utf8(p)  # raises the located error
                raise MygptError(f"{p} is not valid UTF-8 — convert it to UTF-8") from None
            stats.chars_read += len(text)
            if encoding_errors == "replace":
                stats.replaced_bytes += text.count("\ufffd") - (tail + raw).count(_FFFD)
                tail = (tail + raw)[-2:]
            elif encoding_errors == "ignore":
                stats.ignored_bytes += len(raw) - len(text.encode("utf-8"))
            if text:
                yield text
            if not raw:
                return


def iter_eval_ids(
    tokenizer, texts: Iterable[str], stats: TextStats, chunk: int = CHUNK
) -> Iterator[np.ndarray]:
    """Token ids of the concatenated ``texts``, a piece at a time, equal to encoding the whole.

    Pieces are cut where the training corpus encoder cuts (``tokenizers.corpus.safe_cut``: a
    single space between two letters, where every pre-tokenizer ends a token; anywhere for a char
    tokenizer). Characters outside a char/BPE alphabet are dropped and counted first: the book's
    BPE drops them from corpora anyway; the char tokenizer would refuse, but an eval that stops at
    one stray character is less useful than one that says how many it skipped.
    """
    from mygpt.tokenizers.corpus import safe_cut

    alphabet = getattr(tokenizer, "chars", None)
    known = set(alphabet) if alphabet is not None and tokenizer.kind in ("char", "bpe") else None
    buf = ""
    for text in texts:
        if known is not None:
            unknown = set(text) - known
            if unknown:
                kept = text.translate(dict.fromkeys(map(ord, unknown)))
                stats.dropped_chars += len(text) - len(kept)
                text = kept
        buf += text
        if len(buf) < chunk:
            continue
        cut = len(buf) if tokenizer.kind == "char" else safe_cut(buf, len(buf) // 2)
        if cut > 0:
            yield np.asarray(tokenizer.encode_corpus(buf[:cut]), dtype=np.int64)
            buf = buf[cut:]
    if buf:
        yield np.asarray(tokenizer.encode_corpus(buf), dtype=np.int64)


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


Window = tuple[int, int, int]  # (start, length, scored)


class WindowPlanner:
    """Plans the windows as tokens arrive: ``(start, length, scored)`` per window, inputs
    ``tokens[start : start + length]`` whose last ``scored`` predictions count. Every target
    ``1 .. n - 1`` is scored exactly once. Full windows are known as soon as their tokens are;
    only the last (shorter) one waits for the end of the text."""

    def __init__(self, seq_len: int, stride: int | None) -> None:
        self.seq_len = seq_len
        self.step = seq_len if stride is None else stride
        self.start = 0  # the next window's first input
        self.scored_end = 1  # targets before this index are already scored

    def _next(self, n: int) -> Window:
        length = min(self.seq_len, n - 1 - self.start)
        end = self.start + length + 1  # one past the last target
        w = (self.start, length, end - self.scored_end)
        self.scored_end = end
        self.start += self.step
        return w

    def ready(self, n_known: int) -> Iterator[Window]:
        """The full-length windows within the first ``n_known`` tokens not yet planned."""
        while self.start + self.seq_len + 1 <= n_known:
            yield self._next(n_known)

    def finish(self, n: int) -> Iterator[Window]:
        """The rest, once the text is known to have ``n`` tokens."""
        yield from self.ready(n)
        while self.scored_end < n:
            yield self._next(n)


#: the default window when the model's context is longer (``--seq-len`` goes up to the context)
DEFAULT_MAX_WINDOW = 2048


def plan_windows(n_tokens: int, seq_len: int, stride: int | None) -> list[Window]:
    """Every window of ``n_tokens`` tokens (see :class:`WindowPlanner`)."""
    return list(WindowPlanner(seq_len, stride).finish(n_tokens))


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


class Scorer:
    """Scores tokens as they arrive (:meth:`add`), holding only the tokens windows still need.

    Full-length windows go to the model ``batch_size`` at a time, in order; the last, shorter
    window alone (rows of a batch share a length), as :meth:`result` finds it.
    """

    def __init__(
        self, m, *, seq_len: int | None = None, stride: int | None = None, batch_size: int = 8
    ) -> None:
        # a real model's context (8k-128k) would make one window's logits tens of GB
        T = min(m.config.max_seq_len, DEFAULT_MAX_WINDOW) if seq_len is None else seq_len
        if not 1 <= T <= m.config.max_seq_len:
            raise UsageError(
                f"--seq-len must be in 1..{m.config.max_seq_len} (the model's context), got {T}"
            )
        if stride is not None and not 1 <= stride <= T:
            raise UsageError(f"--stride must be in 1..{T} (the window length), got {stride}")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        self.m, self.seq_len, self.stride, self.batch_size = m, T, stride, batch_size
        self.plan = WindowPlanner(T, stride)
        self.nbytes, self.nchars = token_sizes(m.tokenizer)
        self.buf = np.zeros(0, dtype=np.int64)  # tokens[base : n]
        self.base = self.n = 0
        self.rows: list[tuple[np.ndarray, int]] = []  # full windows waiting for a batch
        self.nats, self.bytes, self.chars, self.scored, self.windows = 0.0, 0, 0, 0, 0

    def add(self, ids: np.ndarray) -> None:
        self.buf = np.concatenate((self.buf, np.asarray(ids, dtype=np.int64)))
        self.n += len(ids)
        for w in self.plan.ready(self.n):
            self.rows.append(self._row(w))
            if len(self.rows) == self.batch_size:
                self._score(self.rows)
                self.rows = []
        keep = min(self.plan.start, self.n) - self.base  # earlier tokens no window needs
        if keep > 0:
            self.buf, self.base = self.buf[keep:], self.base + keep

    def _row(self, w: Window) -> tuple[np.ndarray, int]:
        start, length, scored = w
        self.windows += 1
        return self.buf[start - self.base : start - self.base + length + 1].copy(), scored

    def _score(self, batch: list[tuple[np.ndarray, int]]) -> None:
        rows = np.stack([r for r, _ in batch])
        nll = _nll(self.m.logits(rows[:, :-1]), rows[:, 1:])
        for r, (_, scored) in enumerate(batch):
            targets = rows[r, -scored:]
            self.nats += float(nll[r, -scored:].sum())
            self.bytes += int(self.nbytes[targets].sum())
            self.chars += int(self.nchars[targets].sum())
            self.scored += scored

    def result(self, stats: TextStats | None = None) -> EvalResult:
        """Score what is left, now that the text has ended; the totals."""
        if self.n < 2:
            raise MygptError(
                f"the text has {self.n} token(s); scoring needs at least 2 — give a longer text"
            )
        if self.rows:
            self._score(self.rows)
            self.rows = []
        for w in self.plan.finish(self.n):
            self._score([self._row(w)])
        stats = stats or TextStats(0, 0, 0, 0)
        return EvalResult(
            self.scored, self.windows, self.seq_len, self.stride, self.nats, self.chars,
            self.bytes, stats,
        )  # fmt: skip


def evaluate_tokens(
    m, tokens: np.ndarray, *, stats: TextStats | None = None, **window_args
) -> EvalResult:
    """Score ``tokens`` with loaded model ``m`` (:func:`mygpt.load`) over the planned windows;
    ``window_args``: ``seq_len``, ``stride``, ``batch_size`` (see :class:`Scorer`)."""
    scorer = Scorer(m, **window_args)
    scorer.add(np.asarray(tokens, dtype=np.int64))
    return scorer.result(stats)


def evaluate_file(
    m, path: str | Path, *, max_tokens: int | None = None, encoding_errors: str = "strict",
    chunk: int = CHUNK, **window_args,
) -> EvalResult:  # fmt: skip
    """Score a text file (or its first ``max_tokens`` tokens), streaming: it is read, decoded,
    tokenized and scored ``chunk`` bytes at a time, so memory does not grow with the file and
    ``max_tokens`` reads only about that much of it. The result equals scoring the whole text's
    tokens at once; ``stats`` count the text read (with ``max_tokens``, not the rest)."""
    if max_tokens is not None and max_tokens < 2:
        raise UsageError(f"--max-tokens must be at least 2, got {max_tokens}")
    _check_errors_mode(encoding_errors)
    scorer = Scorer(m, **window_args)
    stats = TextStats(0, 0, 0, 0)
    texts = iter_eval_text(path, stats, encoding_errors, chunk)
    for ids in iter_eval_ids(m.tokenizer, texts, stats, chunk):
        if max_tokens is not None:
            ids = ids[: max_tokens - scorer.n]
        scorer.add(ids)
        if max_tokens is not None and scorer.n >= max_tokens:
            break
    texts.close()
    return scorer.result(stats)


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
