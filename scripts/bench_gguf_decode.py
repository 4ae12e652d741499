"""Decode tokens/s of one model in llama.cpp (GGUF F32 and Q8_0) and in mygpt (torch, MLX).

A SmolLM2-135M-shaped Llama (576 wide, 30 layers, 9 heads, 3 K/V heads, 1536 SwiGLU, 49152
tokens, tied) with random weights, written once as a mygpt checkpoint and exported with
``mygpt export``; mygpt loads the F32 GGUF file itself (``mygpt.load("model-float32.gguf")``). Each engine greedily decodes ``--tokens`` tokens after an 8-token prompt; the
engines take turns, ``--rounds`` times, and the best round of each is reported (this box is shared,
so the best is the least disturbed). Run: ``uv run python scripts/bench_gguf_decode.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def build(root: Path) -> Path:
    from mygpt.checkpoint import save_checkpoint
    from mygpt.config import ModelConfig
    from mygpt.model import init_params
    from mygpt.tokenizers import train_tokenizer

    path = root / "smollm2_135m_shape.safetensors"
    if path.exists():
        return path
    tok = train_tokenizer("bytebpe", "hello world, the quick brown fox\n" * 50, num_merges=50)
    cfg = ModelConfig(vocab_size=49152, embed_dim=576, num_heads=9, num_kv_heads=3,
                      num_layers=30, max_seq_len=2048, mlp_hidden=1536, norm="rms",
                      position="rope", mlp="swiglu", rope_base=100000.0)  # fmt: skip
    save_checkpoint(path, cfg, init_params(cfg, 0, init="scaled"), tok.to_dict())
    return path


def time_llama_cpp(path: Path, prompt: list[int], n: int, threads: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=threads, n_batch=64, type_k=0,
                          type_v=0, verbose=False)  # fmt: skip
    llm.eval(prompt)
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return n / (time.perf_counter() - t)


def time_mygpt(path: Path, prompt: list[int], n: int, backend: str) -> float:
    import mygpt

    m = mygpt.load(str(path), backend=backend)
    stream = m.stream(prompt, max_new_tokens=n + 1, temperature=0.0)
    next(stream)  # the prompt's prefill and first token are not decode
    t = time.perf_counter()
    count = sum(1 for _ in stream)
    return count / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/mygpt_bench_gguf")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backends", default="torch,mlx")
    args = ap.parse_args()
    from mygpt.interop.gguf_export import export_gguf

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    ckpt = build(root)
    files = {}
    for dtype in ("float32", "q8_0"):
        files[dtype] = root / f"model-{dtype}.gguf"
        if not files[dtype].exists():
            export_gguf(ckpt, files[dtype], dtype)
    prompt = list(range(100, 108))
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for dtype, f in files.items():
            r = time_llama_cpp(f, prompt, args.tokens, args.threads)
            best[f"llama.cpp {dtype}"] = max(best.get(f"llama.cpp {dtype}", 0.0), r)
        for backend in args.backends.split(","):
            r = time_mygpt(files["float32"], prompt, args.tokens, backend)  # the same file
            best[f"mygpt {backend} fp32"] = max(best.get(f"mygpt {backend} fp32", 0.0), r)
    print(f"{_cpu()}, {args.threads} threads, {args.tokens} tokens after an 8-token prompt")
    for name, r in best.items():
        print(f"{name:22s} {r:7.1f} tokens/s")


if __name__ == "__main__":
    main()
