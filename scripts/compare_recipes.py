"""The book's Ch.27 comparison: the Ch.17 baseline against the modern recipe (and single changes).

Usage:
    uv run python scripts/compare_recipes.py                      # baseline, modern, llama; torch, 2000 steps
    uv run python scripts/compare_recipes.py --singles            # + ch19..ch26 single changes
    uv run python scripts/compare_recipes.py --backend torch --backend mlx --steps 500

Every run is a real `mygpt train` subprocess on the same corpus and seed, with the same held-out
validation tail (``--val-split``, default 0.1), writing its checkpoint and ``.metrics.jsonl`` under
the output directory. The contract with the trainer is only its command line and its metrics
file, so this script keeps working whatever the training loop does inside.

The report (markdown) has params, train loss at steps 500/1000/2000, the mean of the last 100 train
losses (single-step losses are noisy), validation loss, bits per character, wall time and
tokens/s; a PNG shows the loss curves. Bits per character make char and BPE runs comparable:
``bpc = loss_nats / ln 2 * tokens / characters`` of the evaluated text (1 token = 1 character for
the char tokenizer; for BPE the ratio is measured on the validation tail of the corpus). Each
final checkpoint is also scored by ``mygpt eval --json`` on the whole validation tail: its bits
per UTF-8 byte is the tokenizer-independent number (nanochat's), from the same code users run.

Precision: ``--precision`` (default fp32) is passed to every run except ``ch19-bf16``, whose single
change *is* precision; the modern recipe's ``auto`` would otherwise pick bf16 on CPUs that report
bf16 units even where the framework's bf16 kernels are far slower than fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mygpt.recipes import get_recipe  # noqa: E402

DEFAULT_RECIPES = ["ch17-baseline", "ch27-modern", "llama"]  # llama: ch27-modern + SwiGLU
SINGLES = ["ch19-bf16", "ch21-cosine", "ch22-bpe", "ch24-rmsnorm", "ch25-rope", "ch26-gqa"]
MARKS = (500, 1000, 2000)
#: recipes defined by their own step budget (``fast``: 400 steps), which ``--steps`` does not override
OWN_STEPS = {"fast"}
OPENBLAS_PATHS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)


def default_data() -> Path:
    bundled = ROOT / "mygpt" / "data" / "tinyshakespeare.txt"
    return bundled if bundled.exists() else ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def read_metrics(path: Path) -> tuple[dict[int, float], dict[int, float], dict]:
    """(train loss by step, val loss by step, end event) from a trainer's metrics JSONL."""
    train, val, end = {}, {}, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("event"):
            end = rec
        elif "loss" in rec:
            train[int(rec["step"])] = float(rec["loss"])
        if "val_loss" in rec:
            val[int(rec["step"])] = float(rec["val_loss"])
    return train, val, end


def tokens_per_char(checkpoint: Path, text: str, val_split: float) -> float:
    """Tokens per character of the evaluated text under the run's own tokenizer."""
    from mygpt.checkpoint import load_checkpoint
    from mygpt.tokenizers import tokenizer_from_dict

    tok = tokenizer_from_dict(load_checkpoint(checkpoint).tokenizer)
    tail = text[int(len(text) * (1 - val_split)) :] if val_split > 0 else text
    return len(tok.encode_corpus(tail)) / max(1, len(tail))


def eval_bits_per_byte(checkpoint: Path, text: str, args: argparse.Namespace, backend: str) -> dict:
    """``mygpt eval --json`` of the run's checkpoint on the validation tail of the text.

    Non-overlapping windows at the model's context, over the whole tail: bits per UTF-8 byte is
    the unit in which char and BPE runs compare fairly (the val loss above is per token).
    """
    tail = text[int(len(text) * (1 - args.val_split)) :] if args.val_split > 0 else text
    path = checkpoint.with_name(checkpoint.stem + ".val-tail.txt")
    path.write_text(tail, encoding="utf-8")
    cmd = [sys.executable, "-m", "mygpt.cli", "eval", str(path), "--checkpoint", str(checkpoint),
           "--json", "--backend", backend, "--device", args.device]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: mygpt eval of {checkpoint} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def run_one(recipe: str, backend: str, args: argparse.Namespace, out_dir: Path) -> dict:
    name = f"{recipe}-{backend}"
    ckpt = out_dir / f"{name}.safetensors"
    metrics = ckpt.with_name(ckpt.stem + ".metrics.jsonl")
    cmd = [
        sys.executable, "-m", "mygpt.cli", "train", str(args.data),
        "--recipe", recipe,
        "--output", str(ckpt),
        "--steps", str(get_recipe(recipe).flags["steps"] if recipe in OWN_STEPS else args.steps),
        "--seed", str(args.seed),
        "--backend", backend,
        "--device", args.device,
        "--val-split", str(args.val_split),
        "--print-every", str(args.print_every),
    ]  # fmt: skip
    if recipe != "ch19-bf16":
        cmd += ["--precision", args.precision]
    env = dict(os.environ)
    if backend == "mlx" and not args.no_openblas:
        lib = next((p for p in OPENBLAS_PATHS if os.path.exists(p)), None)
        if lib:  # MLX's bundled reference BLAS is ~30x slower (see `mygpt bench`)
            env["LD_PRELOAD"] = lib
    done = False
    if args.reuse and metrics.exists():
        done = read_metrics(metrics)[2].get("event") == "end"
    if not done:
        print(f"== {name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=sys.stderr)  # results: stdout
        if proc.returncode != 0:
            raise SystemExit(
                f"error: {name} failed (exit {proc.returncode}) — see its output above"
            )
        print(f"== {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    train, val, end = read_metrics(metrics)
    last = max(train)
    tail = [train[s] for s in sorted(train)[-100:]]
    val_loss = val.get(max(val)) if val else None
    text = Path(args.data).read_text(encoding="utf-8")
    tpc = 1.0 if get_recipe(recipe).flags.get("tokenizer", "char") == "char" else None
    if tpc is None:
        tpc = tokens_per_char(ckpt, text, args.val_split)
    nats = val_loss if val_loss is not None else sum(tail) / len(tail)
    ev = eval_bits_per_byte(ckpt, text, args, backend)
    return {
        "name": name,
        "recipe": recipe,
        "backend": backend,
        "params": end.get("params"),
        "loss_at": {s: train.get(s) for s in MARKS},
        "final_step": last,
        "final_loss": train[last],
        "tail_mean": sum(tail) / len(tail),
        "val_loss": val_loss,
        "tokens_per_char": tpc,
        "bpc": nats / math.log(2) * tpc,
        "bpc_from": "val" if val_loss is not None else "train (last 100)",
        "eval_bits_per_byte": ev["bits_per_byte"],
        "eval_mean_ce": ev["mean_ce"],
        "wall_s": end.get("wall_s"),
        "tokens_per_s": end.get("tokens_per_s"),
        "precision": end.get("precision"),
        "train": train,
        "val": val,
    }


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def report(rows: list[dict], args: argparse.Namespace) -> str:
    marks = [m for m in MARKS if m <= args.steps]
    head = ["run", "params"] + [f"loss @{m}" for m in marks]
    head += ["train (last 100)", "val loss", "bits/char", "eval bits/byte", "wall s", "tokens/s"]
    head += ["dtype"]
    lines = [
        "# Ch.27: baseline vs modern recipe",
        "",
        f"Corpus `{Path(args.data).name}`, {args.steps} steps, seed {args.seed}, "
        f"val split {args.val_split} (the last {args.val_split:.0%} of the text; val loss = mean of "
        f"10 batches at the last evaluation). Device {args.device}, {platform.machine()} "
        f"{platform.system()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}.",
        "Train losses are single steps, as the book reports them; bits/char = "
        "val loss / ln 2 x tokens per character; eval bits/byte = `mygpt eval` of the final "
        "checkpoint on the whole validation tail (non-overlapping windows at the model's context).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["name"], fmt(r["params"], ",")]
        cells += [fmt(r["loss_at"].get(m), ".4f") for m in marks]
        cells += [
            fmt(r["tail_mean"], ".4f"),
            fmt(r["val_loss"], ".4f"),
            fmt(r["bpc"], ".3f") + ("" if r["bpc_from"] == "val" else "*"),
            fmt(r.get("eval_bits_per_byte"), ".3f"),
            fmt(r["wall_s"], ".1f"),
            fmt(r["tokens_per_s"], ",.0f"),
            str(r["precision"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["bpc_from"] != "val" for r in rows):
        lines.append("\n\\* no validation split: from the mean of the last 100 train losses.")
    if any(r["tokens_per_char"] != 1.0 for r in rows):
        lines.append("")
        for r in rows:
            if r["tokens_per_char"] != 1.0:
                lines.append(f"- {r['name']}: {r['tokens_per_char']:.3f} tokens per character.")
    lines += [
        "",
        "Book (M1, training loss): baseline 2.5944 / 2.3529 / 2.0785 at 500 / 1000 / 2000; "
        "modern ≈2.088 / ≈1.862 / ≈1.740; single changes at 2000: RMSNorm 2.0752, RoPE 1.7812, "
        "GQA 2.0854, bf16 2.0797.",
        "",
        "![loss curves](loss.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, smooth: int = 50) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    lowest = float("inf")
    for r in rows:
        # bits per character, so BPE runs (fewer, bigger tokens) sit on the same axis as char runs
        scale = r["tokens_per_char"] / math.log(2)
        steps = sorted(r["train"])
        losses = [r["train"][s] * scale for s in steps]
        window, smoothed, acc = [], [], 0.0
        for v in losses:  # trailing moving average: the raw curve is too noisy to compare
            window.append(v)
            acc += v
            if len(window) > smooth:
                acc -= window.pop(0)
            smoothed.append(acc / len(window))
        val = {k: v * scale for k, v in r["val"].items()}
        lowest = min([lowest, *smoothed, *val.values()])
        (line,) = ax.plot(steps, smoothed, label=f"{r['name']} train", linewidth=1.2)
        if val:
            vs = sorted(val)
            ax.plot(
                vs, [val[s] for s in vs], "o--", color=line.get_color(), markersize=4,
                label=f"{r['name']} val",
            )  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel(f"bits per character (train: {smooth}-step moving average)")
    # the first steps sit near 40 nats (the book's N(0,1) tied embedding): show the descent
    ax.set_ylim(max(0.0, lowest - 0.3), min(6.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Ch.27: baseline vs modern")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--recipe", action="append", help="recipes to run (default: ch17, ch27, llama)")
    ap.add_argument("--singles", action="store_true", help="add the ch19..ch26 single changes")
    ap.add_argument("--bf16-on-cpu", action="store_true", help="run ch19-bf16 on a CPU too")
    ap.add_argument("--backend", action="append", choices=["torch", "mlx"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-split", type=float, default=0.1)
    ap.add_argument("--print-every", type=int, default=500)
    ap.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "compare")
    ap.add_argument("--reuse", action="store_true", help="skip runs whose metrics are complete")
    ap.add_argument("--no-openblas", action="store_true", help="don't preload OpenBLAS for MLX")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"error: {args.data} not found — pass --data FILE")
    recipes = [get_recipe(r).name for r in (args.recipe or DEFAULT_RECIPES)]
    if args.singles:
        singles = [r for r in SINGLES if r not in recipes]
        if args.device == "cpu" and not args.bf16_on_cpu:
            # bf16 matmuls on CPUs are 3-25x slower than fp32 here (torch's bf16 step: ~5 s)
            singles.remove("ch19-bf16")
            print("note: skipping ch19-bf16 on CPU (pass --bf16-on-cpu to run it)", file=sys.stderr)
        recipes = recipes[:1] + singles + recipes[1:]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        run_one(recipe, backend, args, args.output_dir)
        for backend in (args.backend or ["torch"])
        for recipe in recipes
    ]
    (args.output_dir / "report.md").write_text(report(rows, args), encoding="utf-8")
    (args.output_dir / "results.json").write_text(
        json.dumps(
            [{k: v for k, v in r.items() if k not in ("train", "val")} for r in rows], indent=1
        )
    )
    plot(rows, args.output_dir / "loss.png")
    print(report(rows, args))
    print(f"wrote {args.output_dir / 'report.md'} and loss.png", file=sys.stderr)


if __name__ == "__main__":
    main()
