"""Benchmark: mygpt's BPE trainer and corpus encoder against a plain implementation of the book's.

    uv run python scripts/bench_bpe.py [--text PATH] [--num-merges 1024] [--plain-merges N]

Baselines, written here only (they are the reference, not part of mygpt):

* plain trainer = the book's algorithm: after every merge, recount every adjacent pair over every
  unique pre-token, take ``max`` of the Counter, rewrite every word;
* plain encoder = the book's corpus encoder: for every pre-token (no cache), drop unknown
  characters, then repeatedly merge the lowest-rank pair present.

Both sides run in this one process on the same text. ``--plain-merges N`` (< num-merges) times
the plain trainer on its first N merges only and extrapolates linearly to num-merges; the output
then says "extrapolated". By default the full run is measured (about 4 minutes on 2 cores).
The fast trainer's merges are checked to equal the plain trainer's.

Measured on the project's 2-core machine (Python 3.11; other sessions were sometimes busy on the
same cores, so single runs vary), Wikipedia sample, 1024 merges, everything measured, nothing
extrapolated:

    run   train fast   train plain   speedup | encode fast  encode plain  speedup
    1       3.41 s      265.15 s      77.7x  |   0.89 s       6.52 s       7.4x
    2       6.03 s      316.93 s      52.6x  |   0.90 s       6.49 s       7.3x   (machine loaded)

encode_file on 39 MB (the text x8): 12.5-12.7 MB/s with 1 worker; with 2 workers 18.2 MB/s in
one run and 9.5 MB/s in another (the other sessions' load competes for the same 2 cores).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mygpt.tokenizers import encode_file, tokenizer_from_dict, train_tokenizer
from mygpt.tokenizers.reference import plain_book_encode as plain_encode
from mygpt.tokenizers.reference import plain_book_train as plain_train

DEFAULT_TEXT = (
    Path(__file__).resolve().parents[1].parent / "shared/data/wikipedia_vital4_summaries_en.txt"
)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    r = fn(*args, **kw)
    return r, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--num-merges", type=int, default=1024)
    ap.add_argument("--plain-merges", type=int, default=0, help="0 = measure the full plain run")
    ap.add_argument("--big-copies", type=int, default=8, help="copies of the text for the big file")
    args = ap.parse_args()
    text = args.text.read_text(encoding="utf-8")
    n = args.num_merges
    print(f"text: {args.text.name}, {len(text):,} characters; {n} merges", flush=True)

    tok, t_fast = timed(train_tokenizer, "bpe", text, n)
    print(f"train  fast  : {t_fast:8.2f} s", flush=True)
    pm = args.plain_merges if 0 < args.plain_merges < n else n
    (chars, merges), t_plain = timed(plain_train, text, pm)
    same = tok.chars == chars and tok.merges[:pm] == merges
    if pm < n:
        t_plain_full = t_plain * n / pm
        print(f"train  plain : {t_plain:8.2f} s for {pm} merges -> {t_plain_full:.1f} s "
              f"for {n} (extrapolated linearly)")  # fmt: skip
    else:
        t_plain_full = t_plain
        print(f"train  plain : {t_plain:8.2f} s")
    print(f"train  speedup: {t_plain_full / t_fast:.1f}x   (merges identical: {same})", flush=True)

    def fresh_tokenizer():  # cold per-word cache, as a new process has
        return tokenizer_from_dict(tok.to_dict())

    fresh = fresh_tokenizer()
    ids_fast, e_fast = timed(fresh.encode_corpus, text)
    print(f"encode fast  : {e_fast:8.2f} s  (1 process, per-word cache)", flush=True)
    buf = io.BytesIO()
    ntok, e_file = timed(encode_file, fresh_tokenizer(), args.text, buf, progress=False)
    print(f"encode file  : {e_file:8.2f} s  (encode_file on the same file, incl. I/O)")
    big = Path(tempfile.mkdtemp()) / "big.txt"
    big.write_text(text * args.big_copies, encoding="utf-8")
    mb = big.stat().st_size / 1e6
    for w in (1, 2):
        nb, e_big = timed(encode_file, fresh_tokenizer(), big, io.BytesIO(), workers=w,
                          progress=False)  # fmt: skip
        print(f"encode file  : {e_big:8.2f} s  ({mb:.0f} MB = text x{args.big_copies}, {w} "
              f"worker(s), {mb / e_big:.1f} MB/s, {nb:,} tokens)", flush=True)  # fmt: skip
    big.unlink()
    ids_plain, e_plain = timed(plain_encode, text, tok.chars, tok.merges)
    equal = ids_fast.tolist() == ids_plain and np.array_equal(
        np.frombuffer(buf.getvalue(), dtype="<u2"), ids_fast
    )
    print(f"encode plain : {e_plain:8.2f} s  (book encoder, no cache)")
    print(f"encode speedup: {e_plain / e_fast:.1f}x (encode_corpus), {e_plain / e_file:.1f}x "
          f"(encode_file); {ntok:,} tokens (ids identical: {equal})")  # fmt: skip
    return 0 if same and equal else 1


if __name__ == "__main__":
    sys.exit(main())
