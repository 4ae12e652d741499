"""Quantized models against float ones: fp32, bf16, Q8_0 and Q4_0 on both backends.

For a random-weight model of SmolLM2-135M's exact shape (built once, as
``bench_real_models.py`` builds it), each in a fresh process so its peak memory is its own:

- ``infer``: ``mygpt.load``, time to first token of a 32-token prompt (prefill + one sample),
  the first decode step apart (a compiled kernel compiles there), then greedy decode tokens/s
  (KV cache; ``generate`` decodes in fixed 8-row steps), peak RSS (VmHWM);
- ``lora``: one LoRA step (rank 8 on q,v) on the fp32 base against the same step on the Q8/Q4
  base (QLoRA: the base kept in its blocks), peak RSS;
- the checkpoint's bytes.

torch runs its quantized matmuls two ways: ``eager`` (the default: dequantize, then F.linear)
and ``compiled`` (``MYGPT_QUANT_KERNEL=compiled``: one torch.compile'd loop over the codes for
decode-sized matmuls; its compile time is in the first token, reported apart).

Quality: a small model mygpt trains here on the Wikipedia text (char tokens), quantized, and
its perplexity on held-out text from the same file (``mygpt eval``).

    flock /tmp/mygpt-heavy.lock uv run python scripts/bench_quant.py
    ... --backends torch --variants fp32 q8 --tokens 16     # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

VARIANTS = ("fp32", "bf16", "q8", "q4")
WIKI = REPO.parent / "shared" / "data" / "wikipedia_vital4_summaries_en.txt"


def prepare(scratch: Path) -> dict[str, Path]:
    """The SmolLM2-shaped model as a native fp32 checkpoint and its Q8_0 / Q4_0 quantizations."""
    from bench_real_models import build

    from mygpt.checkpoint import save_checkpoint
    from mygpt.interop.import_ import import_hf
    from mygpt.interop.quantize import quantize_checkpoint

    hf = build("smollm2", scratch)
    paths = {"fp32": scratch / "smollm2-fp32.safetensors"}
    if not paths["fp32"].is_file():
        ckpt = import_hf(hf)
        save_checkpoint(paths["fp32"], ckpt.config, ckpt.params, ckpt.tokenizer)
    for bits in (8, 4):
        paths[f"q{bits}"] = scratch / f"smollm2-q{bits}.safetensors"
        if not paths[f"q{bits}"].is_file():
            quantize_checkpoint(paths["fp32"], paths[f"q{bits}"], bits)
    return paths


def peak_rss_mb() -> float:
    """This process image's peak resident set (VmHWM: unlike ru_maxrss, not inherited from
    the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3  # kB
    return float("nan")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def infer(path: Path, backend: str, precision: str, tokens: int) -> dict:
    import numpy as np

    import mygpt

    m = mygpt.load(path, backend=backend, device="cpu", precision=precision)
    prompt = list(np.random.default_rng(0).integers(10, 1900, 32))
    gen = m.stream(prompt, tokens + 2, temperature=0, stop_ids=[])
    t = time.perf_counter()
    next(gen)
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    next(gen)  # the first decode step: a compiled kernel compiles here
    first = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(1 for _ in gen)
    return {"ttft_s": ttft, "first_decode_s": first, "decode_tok_s": n / (time.perf_counter() - t),
            "rss_mb": rss_mb()}  # fmt: skip


def lora_step(path: Path, backend: str, batch: int, seq: int) -> dict:
    import numpy as np

    from mygpt.backends import get_backend
    from mygpt.checkpoint import load_checkpoint
    from mygpt.lora import LoraConfig, init_adapters
    from mygpt.model import LoraWeights, loss_fn
    from mygpt.optim import AdamWConfig, adamw
    from mygpt.train.state import to_backend

    ckpt = load_checkpoint(path)
    cfg, ops = ckpt.config, get_backend(backend, "cpu")
    lora = LoraConfig(8, 16.0, 0.0, ("q", "v"))
    base = {k: to_backend(ops, v) for k, v in ckpt.params.items()}  # frozen, blocks kept
    adapters = ops.trainable({k: ops.asarray(v) for k, v in init_adapters(cfg, lora).items()})
    del ckpt
    opt = adamw(ops, adapters, AdamWConfig())
    vg = ops.value_and_grad(
        lambda a, x, y: loss_fn(ops, cfg, base, x, y, lora=LoraWeights(a, lora.scale))
    )
    rng = np.random.default_rng(0)
    x, y = (ops.asarray(rng.integers(10, 1900, (batch, seq))) for _ in range(2))
    t = time.perf_counter()
    loss, grads = vg(adapters, x, y)
    adapters = opt.step(adapters, grads, 1e-4)
    ops.eval(loss, adapters, opt.arrays())
    return {"step_s": time.perf_counter() - t, "loss": ops.item(loss), "rss_mb": rss_mb()}


def run_child(args: list[str], env: dict, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    lines = r.stdout.strip().splitlines()
    if r.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}


def quality(scratch: Path, steps: int, backends: list[str], env: dict) -> list[dict]:
    """Train a small model on the Wikipedia text, quantize it, and score held-out text."""
    text = WIKI.read_text(encoding="utf-8")
    train_txt, held = scratch / "wiki-train.txt", scratch / "wiki-held.txt"
    train_txt.write_text(text[:-200_000], encoding="utf-8")
    held.write_text(text[-200_000:], encoding="utf-8")
    model = scratch / f"wiki-{steps}.safetensors"
    mygpt = [sys.executable, "-m", "mygpt"]
    if not model.is_file():
        subprocess.run([*mygpt, "train", str(train_txt), "--embed-dim", "128", "--num-heads", "4",
                        "--num-layers", "4", "--norm", "rms", "--position", "rope", "--mlp",
                        "swiglu", "--mlp-hidden", "384", "--max-seq-len", "128", "--seq-len", "128", "--batch-size", "16",
                        "--steps", str(steps), "--lr", "3e-3", "--backend", "torch",
                        "--output", str(model)], check=True, env=env)  # fmt: skip
    rows = []
    for bits in (8, 4):
        q = scratch / f"wiki-{steps}-q{bits}.safetensors"
        if not q.is_file():
            subprocess.run([*mygpt, "quantize", str(model), str(q), "--bits", str(bits)],
                           check=True, env=env)  # fmt: skip
    for backend in backends:
        for name, path in (("fp32", model), ("q8", scratch / f"wiki-{steps}-q8.safetensors"),
                           ("q4", scratch / f"wiki-{steps}-q4.safetensors")):  # fmt: skip
            r = subprocess.run([*mygpt, "eval", str(held), "--checkpoint", str(path), "--json",
                                "--max-tokens", "50000", "--backend", backend],
                               capture_output=True, text=True, env=env)  # fmt: skip
            out = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-200:]}
            rows.append({"backend": backend, "variant": name, "ppl": out.get("perplexity"),
                         "weight_bytes": _weight_bytes(path), **({"error": out["error"]} if "error" in out else {})})  # fmt: skip
    return rows


def _weight_bytes(path: Path) -> int:
    """The weights' bytes (a trained checkpoint also holds AdamW moments for --resume)."""
    from mygpt.checkpoint import load_checkpoint

    return sum(int(v.nbytes) for v in load_checkpoint(path).params.values())


def child(a: argparse.Namespace) -> None:
    from mygpt.backends import get_backend

    get_backend(a.backend, "cpu")  # the framework alone (torch's CPU+CUDA build: ~570 MB)
    framework = rss_mb()
    if a.phase == "infer":
        out = infer(Path(a.path), a.backend, a.precision, a.tokens)
    else:
        out = lora_step(Path(a.path), a.backend, 1, a.seq)
    print(json.dumps({**out, "peak_rss_mb": peak_rss_mb(), "framework_rss_mb": framework}))


def _runs(variants: list[str], backends: list[str]) -> list[tuple[str, str, str]]:
    """(backend, variant, torch kernel) for every row of the speed table."""
    runs = []
    for backend in backends:
        for v in variants:
            kernels = ["eager", "compiled"] if backend == "torch" and v.startswith("q") else ["-"]
            runs += [(backend, v, k) for k in kernels]
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["torch", "mlx"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--tokens", type=int, default=16, help="Decoded tokens timed.")
    p.add_argument("--seq", type=int, default=64, help="LoRA step: 1 x SEQ tokens.")
    p.add_argument("--quality-steps", type=int, default=300, help="0: skip the quality rows.")
    p.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "mygpt-bench-quant"))
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--path", "--backend", "--phase", "--precision"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    scratch = Path(a.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    paths = prepare(scratch)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for backend, v, kernel in _runs(a.variants, a.backends):
        path = paths["fp32" if v == "bf16" else v]
        common = ["--path", str(path), "--backend", backend, "--tokens", str(a.tokens),
                  "--seq", str(a.seq), "--precision", "bf16" if v == "bf16" else "fp32"]  # fmt: skip
        run_env = {**env, "MYGPT_QUANT_KERNEL": "compiled" if kernel == "compiled" else "eager"}
        row = {"backend": backend, "variant": v, "kernel": kernel,
               "checkpoint_mb": path.stat().st_size / 1e6 / (2 if v == "bf16" else 1)}  # fmt: skip
        row["infer"] = run_child([*common, "--phase", "infer"], run_env, a.timeout)
        if v != "bf16" and kernel != "compiled":  # the step trains through autograd: eager
            row["lora"] = run_child([*common, "--phase", "lora"], run_env, a.timeout)
        print(json.dumps(row), flush=True)
    if a.quality_steps:
        for row in quality(scratch, a.quality_steps, a.backends, env):
            print(json.dumps({"quality": row}), flush=True)


if __name__ == "__main__":
    main()
