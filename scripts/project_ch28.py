#!/usr/bin/env python3
"""Project the wall time of the book's Ch.28 run from a short measured run.

    uv run python scripts/project_ch28.py CORPUS --backend torch [--steps 30] [--precision auto]

1. Prepares CORPUS with the Ch.28 tokenizer settings (BPE, 1024 merges, --bpe-train-bytes
   50000000) through the token cache, and reports that time (a second run reuses the cache).
2. Runs ``mygpt train CORPUS`` with the book's Ch.28 flags for ``--steps`` steps in a subprocess,
   timestamps each ``step N: loss = ...`` line as it arrives, and derives steps/s from the steps
   after ``--skip`` warm-up steps (compilation, first allocations, cache effects).
3. Prints steps/s, tokens/s and the projected total for the book's 10,000 steps, next to the
   book's M1 MPS figure (~0.33 s/step, ~60 min).

Flags after a bare ``--`` go to ``mygpt train`` as they are. ``--train-cmd`` replaces ``python -m mygpt.cli train`` (tests use a stand-in trainer).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The book's Ch.28 command, except --precision (bf16 on the M1; see --precision below) and
# --steps / --checkpoint-every / --output, which the measurement sets itself.
BOOK_CH28_FLAGS = [
    "--tokenizer", "bpe", "--num-merges", "1024", "--bpe-train-bytes", "50000000",
    "--embed-dim", "192", "--num-layers", "4", "--num-heads", "6", "--num-kv-heads", "2",
    "--max-seq-len", "256", "--seq-len", "256", "--batch-size", "16",
    "--norm", "rms", "--position", "rope",
    "--schedule", "cosine", "--warmup", "500", "--max-grad-norm", "1.0",
]  # fmt: skip
BOOK_STEPS = 10_000
BOOK_CHECKPOINT_EVERY = 2500
BOOK_S_PER_STEP = 0.33  # M1 MPS, bf16: the book's reported Ch.28 step time
BATCH, SEQ = 16, 256

STEP_LINE = re.compile(
    r"\bstep\s+(\d+)\s*[:/,]?.*?\bloss\s*[=:]\s*([0-9.]+(?:e[-+]?\d+)?|nan|inf)", re.IGNORECASE
)


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def measure(cmd: list[str], skip: int) -> dict:
    """Run ``cmd``, timestamp its step lines, return the steps/s after ``skip`` steps."""
    print("running: " + shlex.join(cmd), file=sys.stderr, flush=True)
    t_start = time.perf_counter()
    seen: list[tuple[int, float, float]] = []  # (step, time, loss)
    tail: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            tail = (tail + [line.rstrip()])[-20:]
            m = STEP_LINE.search(line)
            if m:
                seen.append((int(m.group(1)), now, float(m.group(2))))
                print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
        rc = proc.wait()
    total = time.perf_counter() - t_start
    if rc != 0:
        raise SystemExit(
            f"error: the training command failed (exit {rc}); its last output:\n" + "\n".join(tail)
        )
    after = [s for s in seen if s[0] > skip]
    if len(after) < 2:
        raise SystemExit(
            f"error: only {len(seen)} step lines seen ({len(after)} after --skip "
            f"{skip}) — raise --steps or lower --skip"
        )
    (s0, t0, _), (s1, t1, loss) = after[0], after[-1]
    sps = (s1 - s0) / (t1 - t0)
    return {
        "steps_per_s": sps,
        "first_step": s0,
        "last_step": s1,
        "seconds": t1 - t0,
        "wall": total,
        "last_loss": loss,
        "startup": seen[0][1] - t_start if seen else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "corpus", help="text file or directory (e.g. from `mygpt data download wikitext-103`)"
    )
    ap.add_argument("--backend", default="auto", help="mlx | torch | auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--precision",
        default="auto",
        help="the book used bf16 (M1 MPS); auto picks bf16 only where it is native",
    )
    ap.add_argument("--steps", type=int, default=30, help="steps to run for the measurement")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the rate")
    ap.add_argument("--total-steps", type=int, default=BOOK_STEPS)
    ap.add_argument("--cache-dir", default=None, help="token cache directory (default: mygpt's)")
    ap.add_argument(
        "--no-prepare", action="store_true", help="skip the separate, timed prepare step"
    )
    ap.add_argument(
        "--train-cmd",
        default=None,
        help="command replacing `python -m mygpt.cli train` (for tests)",
    )
    ap.add_argument(
        "--print-book-flags",
        action="store_true",
        help="print the book's Ch.28 train flags (for scripts/ch28_wikipedia.sh) and exit",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after a bare `--` goes to `mygpt train` untouched.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = ap.parse_args(argv)
    if args.print_book_flags:
        print(shlex.join(BOOK_CH28_FLAGS))
        return 0

    if not args.no_prepare:
        from mygpt.data import corpus_tokens

        t0 = time.perf_counter()
        tok, tf = corpus_tokens(
            args.corpus,
            tokenizer_kind="bpe",
            num_merges=1024,
            bpe_train_bytes=50_000_000,
            cache_dir=args.cache_dir,
        )
        prep = time.perf_counter() - t0
        print(
            f"prepare: {tf.num_tokens:,} tokens (vocab {tok.vocab_size}) in {prep:.1f} s -> "
            f"{tf.path}"
        )

    train = (
        shlex.split(args.train_cmd)
        if args.train_cmd
        else [sys.executable, "-m", "mygpt.cli", "train"]
    )
    with tempfile.TemporaryDirectory(prefix="project_ch28_") as tmp:
        cmd = [
            *train,
            args.corpus,
            *BOOK_CH28_FLAGS,
            "--steps",
            str(args.steps),
            "--print-every",
            "1",
            "--checkpoint-every",
            "0",
            "--backend",
            args.backend,
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--output",
            str(Path(tmp) / "ch28_projection.safetensors"),
        ]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        r = measure(cmd + extra, args.skip)

    sps = r["steps_per_s"]
    total = args.total_steps / sps
    print(
        f"backend {args.backend}, device {args.device}, precision {args.precision}: "
        f"steps {r['first_step']}..{r['last_step']} in {r['seconds']:.2f} s"
    )
    print(
        f"measured: {sps:.3f} steps/s ({1 / sps:.3f} s/step, {sps * BATCH * SEQ:,.0f} tokens/s); "
        f"start-up before step 1: {r['startup']:.1f} s; loss at step {r['last_step']}: "
        f"{r['last_loss']:.4f}"
    )
    print(
        f"projected total for {args.total_steps:,} steps: {hms(total)} ({total / 60:.1f} min; "
        f"book, M1 MPS bf16: {hms(BOOK_S_PER_STEP * args.total_steps)} at "
        f"{BOOK_S_PER_STEP} s/step)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
