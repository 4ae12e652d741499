"""Time one batched decode step (``mygpt.model.forward`` on a ``RowCache`` step) at 1, 2, 4 and 8 rows, interleaved.

Usage: uv run python scripts/bench_decode_rows.py [--checkpoint PATH] [--backend torch]

What a decoded token costs alone against in a group: ``mygpt generate`` pads its stream to the
fewest rows that compute like serve's 8 (``generate.solo_rows``; 4 on torch's CPU), see
docs/serving.md, continuous batching.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MYGPT_THREADS", "1")

import mygpt  # noqa: E402
from mygpt import model  # noqa: E402
from mygpt.cache import RowCache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--checkpoint", type=Path, default=ROOT.parent / "shared/fixtures/book/ch27_modern.ckpt"
    )
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    m = mygpt.load(args.checkpoint, backend=args.backend, device="cpu")
    ops, cfg = m.ops, m.config
    best: dict[int, float] = {}
    with ops.inference():
        weights = model.prepare(ops, cfg, m.params, m.dtype)
        slots = {r: RowCache.allocate(ops, cfg, r, m.dtype) for r in args.rows}
        for _ in range(args.rounds):
            for r in args.rows:
                t0 = time.perf_counter()
                for i in range(args.steps):
                    positions = np.full(r, cfg.max_seq_len - 1, dtype=np.int64)
                    positions[0] = i % (cfg.max_seq_len - 1)  # one live row moving, as generate
                    tokens = ops.asarray(np.zeros((r, 1), dtype=np.int64))
                    step = slots[r].at(positions)
                    ops.to_numpy(model.forward(ops, cfg, weights, tokens, cache=step)[:, 0])
                spent = (time.perf_counter() - t0) / args.steps
                best[r] = min(best.get(r, spent), spent)
    print(f"{args.checkpoint.name}, {args.backend}, fastest of {args.rounds} interleaved rounds:")
    for r, s in best.items():
        print(f"  {r} row(s): {s * 1e6:.0f} us per decode step")


if __name__ == "__main__":
    main()
