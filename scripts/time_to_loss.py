"""Wall-clock seconds and steps to a target validation loss, recipes side by side.

Usage:
    python scripts/time_to_loss.py                        # the comparison (Tiny Shakespeare, 3 seeds)
    python scripts/time_to_loss.py --variant muon-4e-3="--optimizer muon --lr 4e-3" --seeds 0
    python scripts/time_to_loss.py --wikipedia --seeds 0  # the Ch.28 shape, a fixed time budget

Every run is a real ``mygpt train`` subprocess; runs are interleaved (seed 0 of every recipe, then
seed 1, ...) so a machine that slows down for a while slows every recipe alike. Each recipe is
ch27-modern plus its own flags, including its own ``--steps`` (a 600-step cosine run is a
different run from the first 600 steps of a 2000-step one). Reported per recipe, mean over seeds:

* final validation loss (``--eval-batches`` batches of the held-out tail, every ``--val-every``);
* steps to target: the first evaluation at or below the target (the baseline's mean final
  validation loss unless ``--target`` is given);
* wall-clock of the whole process (start-up, tokenizer, compile and evaluation included), and the
  process time at which the target was first reached.

``--wikipedia``: the Ch.28 shape (BPE 1024 merges, 192 wide, seq 256) on the shared Wikipedia
summaries; every recipe runs 120 steps (what a shared 2-core CPU affords) and the table adds the validation loss reached within
a fixed time budget (``--budget`` seconds of process time, default the baseline's wall-clock).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: ch27-modern against each new choice, and their combination (``fast``); learning rates from the
#: tuning runs in docs/training-faster.md
VARIANTS = {
    "ch27-modern": "--recipe ch27-modern",
    "muon": "--recipe ch27-modern --optimizer muon --lr 1.6e-2 --adamw-lr 3e-3 --steps 600 "
    "--warmup 50",
    "scaled-init": "--recipe ch27-modern --init scaled --lr 3e-3",
    "compile": "--recipe ch27-modern --compile",
    "fast": "--recipe fast",
}
WIKIPEDIA = ROOT.parent / "shared" / "data" / "wikipedia_vital4_summaries_en.txt"
_CH28 = "--recipe ch28-wikipedia --checkpoint-every 0 --steps 120 --warmup 12"
WIKI_VARIANTS = {
    "ch28-shape": _CH28,
    "fast-ch28": _CH28 + " --optimizer muon --init scaled --lr 1.6e-2 --adamw-lr 6e-3",
}


def run_one(name: str, flags: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    ckpt = out / f"{name}-s{seed}.safetensors"
    cmd = [sys.executable, "-m", "mygpt", "train", str(args.data), *shlex.split(flags)]
    cmd += ["--seed", str(seed), "--output", str(ckpt), "--backend", args.backend]
    cmd += ["--device", "cpu", "--precision", "fp32", "--val-split", "0.1"]
    cmd += ["--val-every", str(args.val_every), "--eval-batches", str(args.eval_batches)]
    cmd += ["--print-every", "100000", *args.extra]
    if args.steps and "--steps" not in flags:
        cmd += ["--steps", str(args.steps)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr[-2000:]}")
    losses, elapsed, end = {}, {}, {}
    metrics = ckpt.with_name(ckpt.stem + ".metrics.jsonl")
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("val_loss") is not None:
            losses[rec["step"]] = rec["val_loss"]
        elif "elapsed_s" in rec:  # a training step's record: seconds since the first step
            elapsed[rec["step"]] = rec["elapsed_s"]
        if rec.get("event") == "end":
            end = rec
    val = {s: (v, elapsed.get(s)) for s, v in losses.items()}
    startup = wall - float(end.get("wall_s", wall))  # process time before the first step
    return dict(name=name, seed=seed, wall=wall, startup=startup, val=val, flags=flags)


def first_at(run: dict, target: float) -> tuple[int | None, float | None]:
    """(step, process seconds) of the first evaluation at or below ``target``."""
    for step in sorted(run["val"]):
        loss, elapsed = run["val"][step]
        if loss <= target:
            return step, (run["startup"] + elapsed) if elapsed is not None else None
    return None, None


def within(run: dict, budget: float) -> float | None:
    """The last validation loss measured within ``budget`` seconds of process time."""
    best = None
    for step in sorted(run["val"]):
        loss, elapsed = run["val"][step]
        if elapsed is not None and run["startup"] + elapsed <= budget:
            best = loss
    return best


def _mean(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.4g} ± {sd:.2g}" if len(xs) > 1 else f"{m:.4g}"


def report(runs: list[dict], names: list[str], target: float, budget: float | None) -> str:
    head = "| recipe | final val | steps to target | s to target | process s | reached |"
    lines = [head, "|---|---|---|---|---|---|"]
    if budget is not None:
        lines[0] = head + f" val within {budget:.0f} s |"
        lines[1] += "---|"
    for name in names:
        rs = [r for r in runs if r["name"] == name]
        finals = [r["val"][max(r["val"])][0] for r in rs]
        hits = [first_at(r, target) for r in rs]
        row = (
            f"| {name} | {_mean(finals)} | {_mean([h[0] for h in hits])} | "
            f"{_mean([h[1] for h in hits])} | {_mean([r['wall'] for r in rs])} | "
            f"{sum(h[0] is not None for h in hits)}/{len(rs)} |"
        )
        if budget is not None:
            row += f" {_mean([within(r, budget) for r in rs])} |"
        lines.append(row)
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="default: Tiny Shakespeare (or the Wikipedia summaries with --wikipedia)",
    )
    ap.add_argument("--variant", action="append", default=[], help='NAME="flags" (repeatable)')
    ap.add_argument("--only", action="append", default=[], help="run only these variants")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--steps", type=int, default=0, help="for variants that set none")
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=10)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--baseline", default="ch27-modern")
    ap.add_argument("--wikipedia", action="store_true")
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "time_to_loss")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's record here")
    ap.add_argument("extra", nargs="*", help="more train flags for every run (after --)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    variants = dict(VARIANTS)
    if args.wikipedia:
        variants, args.data = dict(WIKI_VARIANTS), args.data or WIKIPEDIA
        args.baseline = "ch28-shape" if args.baseline == "ch27-modern" else args.baseline
    args.data = args.data or ROOT / "mygpt" / "data" / "tinyshakespeare.txt"
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        variants[name] = flags
    names = args.only or (
        [args.baseline] + [v.partition("=")[0] for v in args.variant]
        if args.variant
        else list(variants)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MYGPT_THREADS", "2")
    runs = []
    for seed in args.seeds:  # interleaved: every recipe's seed s before any recipe's seed s+1
        for name in names:
            r = run_one(name, variants[name], seed, args, args.out)
            final = r["val"][max(r["val"])][0]
            print(f"{name} seed {seed}: val {final:.4f}, {r['wall']:.1f} s", file=sys.stderr)
            runs.append(r)
    base = [r for r in runs if r["name"] == args.baseline]
    target = args.target or statistics.mean(r["val"][max(r["val"])][0] for r in base)
    budget = args.budget or (statistics.mean(r["wall"] for r in base) if args.wikipedia else None)
    print(f"target val loss {target:.4f} ({'given' if args.target else args.baseline + ' mean'})")
    print(report(runs, names, target, budget))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
