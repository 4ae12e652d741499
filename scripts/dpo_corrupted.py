"""DPO on a preference set where "chosen" is real text and "rejected" the same text corrupted
(issue 32): LoRA against full training (a frozen reference copy, and precomputed reference
log-probs), measured.

Usage:
    python scripts/dpo_corrupted.py /work/shared/data/tinyshakespeare.txt
    python scripts/dpo_corrupted.py TEXT --init-from model.safetensors   # skip the pre-training

1. Unless ``--init-from`` is given, pre-trains a small character-level mygpt model on TEXT
   (``--pretrain-steps``). The first 90% of TEXT only: the pairs' held-out tail is unseen.
2. Builds ``pairs.jsonl``: a prompt of ``--prompt-chars`` characters of TEXT, "chosen" the next
   ``--response-chars`` characters, "rejected" the same characters with ``--swaps`` pairs of
   words swapped (the same letters, in a wrong order). Training pairs come from the first 90% of
   TEXT, the held-out ones (``--val-file``) from the last 10%.
3. Runs ``mygpt train pairs.jsonl --dpo`` three ways (full with a frozen reference, full with
   ``--dpo-precompute-ref``, LoRA), each a separate process, and reports per run: the held-out
   preference accuracy (the share of pairs whose chosen response the model gives the higher
   log-probability) before (the pre-trained model) and after; trl's ``eval_rewards/accuracies``
   and ``eval_rewards/margins`` after; seconds per step; the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ["--embed-dim", "96", "--num-layers", "3", "--num-heads", "4", "--seq-len", "64",
            "--max-seq-len", "96", "--batch-size", "32", "--lr", "3e-3", "--schedule", "cosine",
            "--warmup", "40", "--init", "scaled", "--print-every", "100"]  # fmt: skip


def corrupt(text: str, swaps: int, rng: np.random.Generator) -> str:
    """``text`` with ``swaps`` pairs of words exchanged (spacing and punctuation kept)."""
    words = [m.span() for m in re.finditer(r"[A-Za-z']+", text)]
    if len(words) < 2:
        return text[::-1]
    out = list(text)
    tokens = [text[a:b] for a, b in words]
    for _ in range(swaps):
        i, j = rng.choice(len(words), 2, replace=False)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    pieces, at = [], 0
    for (a, b), tok in zip(words, tokens):
        pieces += [text[at:a], tok]
        at = b
    pieces.append(text[at:])
    corrupted = "".join(pieces)
    return corrupted if corrupted != text else "".join(out[::-1])


def make_pairs(text: str, n: int, args, rng: np.random.Generator) -> list[dict]:
    span = args.prompt_chars + args.response_chars
    rows = []
    for start in rng.choice(len(text) - span, n, replace=False):
        prompt = text[start : start + args.prompt_chars]
        chosen = text[start + args.prompt_chars : start + span]
        rows.append({"prompt": prompt, "chosen": chosen,
                     "rejected": corrupt(chosen, args.swaps, rng)})  # fmt: skip
    return rows


def run(cmd: list[str], log: Path) -> tuple[float, int]:
    """Run ``cmd``, its output into ``log``; (wall seconds, peak RSS bytes of the process)."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {shlex.join(cmd)} (see {log})")
    return wall, usage.ru_maxrss * 1024


def preference_accuracy(model: Path, pairs: Path, seq_len: int) -> float:
    """Share of pairs whose chosen response has the higher summed log-probability."""
    from mygpt.backends import get_backend
    from mygpt.interop.sources import load_source
    from mygpt.tokenizers import tokenizer_from_dict
    from mygpt.train.dpo import DpoSpec, row_nll
    from mygpt.train.dpo_data import DpoData, encode_pairs

    ops = get_backend("torch", "cpu")
    ckpt = load_source(model)  # an adapter comes merged into its base
    data, _ = encode_pairs(pairs, tokenizer_from_dict(ckpt.tokenizer), seq_len, seq_len // 2)
    params = {k: ops.asarray(v) for k, v in ckpt.params.items()}
    wins = []
    with ops.inference():
        for start in range(0, len(data), 32):
            idx = np.arange(start, min(start + 32, len(data)))
            batch = DpoData.batch(ops, data, idx)
            nll = row_nll(ops, ckpt.config, params, batch, dtype="float32", train=False)
            lp = ops.to_numpy(DpoSpec().logps(nll, batch["count"]))
            wins += list(lp[: len(idx)] > lp[len(idx) :])
    return float(np.mean(wins))


def dpo_runs(args) -> dict[str, list[str]]:
    common = ["--dpo", "--steps", str(args.steps), "--batch-size", "16", "--seq-len",
              str(args.prompt_chars + args.response_chars), "--print-every", "25",
              "--val-every", str(args.steps), "--eval-batches", "8", "--backend", args.backend,
              "--device", "cpu", "--precision", "fp32"]  # fmt: skip
    return {
        "full, frozen reference": common + ["--lr", args.lr],
        "full, precomputed reference": common + ["--lr", args.lr, "--dpo-precompute-ref"],
        "lora r8 (q,k,v,o,fc1,fc2)": common + ["--lr", args.lora_lr, "--lora-rank", "8", "--lora-alpha",
                                               "16", "--lora-targets", "q,k,v,o,fc1,fc2"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("text", type=Path, help="a plain-text corpus (e.g. Tiny Shakespeare)")
    ap.add_argument("--workdir", type=Path, default=Path("dpo-corrupted"))
    ap.add_argument("--init-from", type=Path, help="a trained mygpt model (skips pre-training)")
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=120, help="DPO steps per run")
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--val-pairs", type=int, default=128)
    ap.add_argument("--prompt-chars", type=int, default=48)
    ap.add_argument("--response-chars", type=int, default=32)
    ap.add_argument("--swaps", type=int, default=2, help="word pairs swapped in 'rejected'")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--lr", default="3e-4", help="full DPO's learning rate")
    ap.add_argument("--lora-lr", default="3e-3", help="LoRA DPO's learning rate")
    args = ap.parse_args()
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    text = args.text.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    mygpt = [sys.executable, "-m", "mygpt"]
    base = args.init_from
    if base is None:
        base = wd / "base.safetensors"
        (wd / "train.txt").write_text(text[:cut], encoding="utf-8")
        cmd = mygpt + ["train", str(wd / "train.txt"), *PRETRAIN, "--steps",
                       str(args.pretrain_steps), "--backend", args.backend, "--output", str(base)]  # fmt: skip
        wall, _ = run(cmd, wd / "pretrain.log")
        print(f"pre-trained {base} in {wall:.0f} s")
    rng = np.random.default_rng(0)
    for name, part, n in (("pairs", text[:cut], args.pairs), ("val", text[cut:], args.val_pairs)):
        rows = make_pairs(part, n, args, rng)
        (wd / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seq_len = args.prompt_chars + args.response_chars
    before = preference_accuracy(base, wd / "val.jsonl", seq_len)
    print(f"held-out preference accuracy of the pre-trained model: {before:.3f}")
    results = []
    for i, (name, flags) in enumerate(dpo_runs(args).items()):
        out = wd / f"dpo{i}.safetensors"
        cmd = mygpt + ["train", str(wd / "pairs.jsonl"), "--init-from", str(base), "--val-file",
                       str(wd / "val.jsonl"), "--output", str(out), *flags]  # fmt: skip
        wall, rss = run(cmd, wd / f"dpo{i}.log")
        log = [json.loads(x) for x in out.with_name(out.stem + ".metrics.jsonl").open()]
        end = next(r for r in log if r.get("event") == "end")
        ev = [r for r in log if "val_loss" in r][-1]
        after = preference_accuracy(out, wd / "val.jsonl", seq_len)
        results.append((name, before, after, ev["eval_rewards/accuracies"],
                        ev["eval_rewards/margins"], end["wall_s"] / args.steps, rss, wall))  # fmt: skip
    print(
        "\n| run | pref. acc. before | after | eval_rewards/accuracies | eval_rewards/margins "
        "| s/step | peak RSS | process wall |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, b, a, acc, margin, sps, rss, wall in results:
        print(f"| {name} | {b:.3f} | {a:.3f} | {acc:.3f} | {margin:.3f} | {sps:.3f} | "
              f"{rss / 2**20:.0f} MiB | {wall:.0f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
