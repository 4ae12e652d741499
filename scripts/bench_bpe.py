"""Benchmark: mygpt's book-BPE corpus encoder against the book's own (cached) encoder, one run.

    flock /tmp/mygpt-heavy.lock uv run python scripts/bench_bpe.py [--text PATH]
        [--encode-chars 1500000] [--num-merges 1024] [--big-mb 50] [--repeats 3] [--train]

1. Single process, on the first ``--encode-chars`` characters of the shared Wikipedia text (a
   tokenizer trained on them, 1024 merges): the book's Ch.28 encoder as it runs (per-word merges
   by rank, each distinct pre-token encoded once: ``reference.cached_book_encode``), mygpt's
   previous per-word encoder (cold cache, as a fresh process has it) and mygpt's batch encoder
   (``encode_corpus``). Interleaved ``--repeats`` times; medians. The ids must be identical.
2. ``encode_file`` on a ``--big-mb`` MB file made by repeating the whole text, with 1 and then 2
   worker processes (and the cached book encoder on the same text for reference). The token files
   must be identical.

``--train`` also times the fast BPE trainer against the plain one (about 4 minutes on 2 cores).

Measured on the project's 2-core machine (AMX Xeon, Python 3.11), four runs; other sessions were
busy on the same cores in the first three (load average 1.1 in the last, 2.0-2.8 before):

    single process, 1.5 MB        book (cached)   mygpt per-word   mygpt batch
    quietest run                      0.677 s        0.396 s 1.71x   0.179 s 3.78x
    the other three               0.85-1.57 s             1.5-1.9x     0.21-0.31 s 3.9-5.0x

    encode_file, 49 MB            1 worker        2 workers        book (cached), in memory
    quietest run                  12.6 MB/s       20.9 MB/s 1.66x  11.3 MB/s
    under load (load avg 2.0)     12.3 MB/s       11.5 MB/s 0.93x   9.3 MB/s
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import numpy as np

from mygpt.tokenizers import encode_file, tokenizer_from_dict, train_tokenizer
from mygpt.tokenizers.bpe import _BOOK_RE
from mygpt.tokenizers.reference import cached_book_encode
from mygpt.tokenizers.reference import plain_book_train as plain_train

DEFAULT_TEXT = (
    Path(__file__).resolve().parents[1].parent / "shared/data/wikipedia_vital4_summaries_en.txt"
)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    r = fn(*args, **kw)
    return r, time.perf_counter() - t


def per_word_encode(tok, text: str) -> np.ndarray:
    """mygpt's previous corpus encoder: per distinct word in Python, with a per-word cache."""
    parts = tok._encode_pieces(_BOOK_RE.findall(text), True)
    return np.fromiter(chain.from_iterable(parts), dtype=np.int32, count=sum(map(len, parts)))


def bench_train(text: str, n: int) -> None:
    tok, t_fast = timed(train_tokenizer, "bpe", text, n)
    (chars, merges), t_plain = timed(plain_train, text, n)
    same = tok.chars == chars and tok.merges == merges
    print(f"train: fast {t_fast:.2f} s, plain {t_plain:.2f} s, {t_plain / t_fast:.1f}x "
          f"(merges identical: {same})", flush=True)  # fmt: skip


def bench_single(tok, text: str, repeats: int) -> bool:
    times: dict[str, list[float]] = {"book (cached)": [], "mygpt per-word": [], "mygpt batch": []}
    results = {}
    for _ in range(repeats):  # interleaved, each on a fresh tokenizer (cold, as a new process)
        fresh = tokenizer_from_dict(tok.to_dict())
        results["book (cached)"], t = timed(cached_book_encode, text, tok.chars, tok.merges)
        times["book (cached)"].append(t)
        fresh = tokenizer_from_dict(tok.to_dict())
        results["mygpt per-word"], t = timed(per_word_encode, fresh, text)
        times["mygpt per-word"].append(t)
        fresh = tokenizer_from_dict(tok.to_dict())
        results["mygpt batch"], t = timed(fresh.encode_corpus, text)
        times["mygpt batch"].append(t)
    base = statistics.median(times["book (cached)"])
    mb = len(text.encode("utf-8")) / 1e6
    print(f"\nsingle process, {mb:.2f} MB, median of {repeats}:")
    print("| encoder | s | MB/s | vs book (cached) |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {mb / med:.1f} | {base / med:.2f}x |")
    ref = results["book (cached)"]
    equal = all(np.array_equal(np.asarray(r), ref) for r in results.values())
    print(f"ids identical: {equal} ({len(ref):,} tokens)", flush=True)
    return equal


def bench_big(tok, text: str, big_mb: int, repeats: int) -> bool:
    copies = max(1, round(big_mb * 1e6 / len(text.encode("utf-8"))))
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "big.txt"
        big.write_text(text * copies, encoding="utf-8")
        mb = big.stat().st_size / 1e6
        print(f"\nencode_file on {mb:.0f} MB (the text x{copies}):")
        print("| encoder | workers | s | MB/s |\n|---|---|---|---|")
        outs, times = {}, {1: [], 2: []}
        for _ in range(repeats):  # interleaved: load from other processes hits both alike
            for w in (1, 2):
                buf = io.BytesIO()
                _, t = timed(encode_file, tokenizer_from_dict(tok.to_dict()), big, buf,
                             workers=w, progress=False)  # fmt: skip
                outs[w] = buf.getvalue()
                times[w].append(t)
        for w, ts in times.items():
            t = statistics.median(ts)
            print(f"| mygpt encode_file | {w} | {t:.2f} | {mb / t:.1f} |", flush=True)
        print(f"2 workers: {statistics.median(times[1]) / statistics.median(times[2]):.2f}x "
              f"1 worker (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")  # fmt: skip
        ids, t = timed(cached_book_encode, big.read_text(encoding="utf-8"), tok.chars, tok.merges)
        print(f"| book (cached), in memory | 1 | {t:.2f} | {mb / t:.1f} |")
    equal = outs[1] == outs[2] and np.array_equal(np.frombuffer(outs[1], "<u2"), ids)
    print(f"token files identical (1 and 2 workers, and the book's ids): {equal}", flush=True)
    return equal


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--encode-chars", type=int, default=1_500_000)
    ap.add_argument("--num-merges", type=int, default=1024)
    ap.add_argument("--big-mb", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big-repeats", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="also time the trainers (~4 min)")
    args = ap.parse_args()
    full = args.text.read_text(encoding="utf-8")
    text = full[: args.encode_chars]
    print(f"text: {args.text.name}, first {len(text):,} characters; {args.num_merges} merges")
    if args.train:
        bench_train(text, args.num_merges)
    tok = train_tokenizer("bpe", text, args.num_merges)
    ok = bench_single(tok, text, args.repeats)
    ok = bench_big(tok, full, args.big_mb, args.big_repeats) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
