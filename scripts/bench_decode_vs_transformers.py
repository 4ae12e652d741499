"""Solo greedy decoding of a real model's shape: mygpt (torch) against transformers, interleaved.

Usage: MYGPT_THREADS=2 uv run python scripts/bench_decode_vs_transformers.py [--model smollm2]

The random-weight model directory is ``bench_real_models.py``'s (bf16 safetensors of the published
shape, built once in its scratch directory). Both load it in fp32 on the CPU; each round times
``--tokens`` greedy tokens after a 32-token prompt, end to end (prefill included), mygpt's
``Model.stream`` then transformers' ``generate``; the medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("MYGPT_THREADS", "2")

import torch  # noqa: E402
from bench_real_models import SHAPES, build  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import mygpt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", choices=list(SHAPES))
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "mygpt-bench-real"))
    args = ap.parse_args()
    path = build(args.model, Path(args.scratch))
    ours = mygpt.load(path, backend="torch", device="cpu")
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.set_num_threads(int(os.environ["MYGPT_THREADS"]))
    prompt, n = list(range(10, 42)), args.tokens

    def mygpt_rate() -> float:
        t0 = time.perf_counter()
        list(ours.stream(prompt, n, temperature=0.0))
        return n / (time.perf_counter() - t0)

    def transformers_rate() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            theirs.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False)  # fmt: skip
            return n / (time.perf_counter() - t0)

    mygpt_rate(), transformers_rate()  # warm
    a, b = [], []
    for _ in range(args.rounds):
        a.append(mygpt_rate())
        b.append(transformers_rate())
    a_med, b_med = statistics.median(a), statistics.median(b)
    print(f"{args.model}, {torch.get_num_threads()} thread(s), {n} tokens after 32, medians of "
          f"{args.rounds}: mygpt {a_med:.1f} tok/s, transformers {b_med:.1f} tok/s, "
          f"{a_med / b_med:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
