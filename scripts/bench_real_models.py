"""Real-model shapes on this machine: load time, generation and training speed, peak memory.

Random-weight models of SmolLM2-135M's and Qwen2.5-0.5B's exact shapes (bf16 safetensors, as
their Hub files are) are written once to a scratch directory; then, each in a fresh process so
its peak memory is its own:

- ``infer``: ``mygpt.load(DIR)`` time (read, widen bf16 -> fp32, permute, move to the backend),
  prefill of a 32-token prompt, greedy decode tokens/s (fp32, KV cache), peak RSS;
- ``train``: one full fine-tuning step (forward, backward, AdamW on every weight, fp32 master
  weights) at batch x seq tokens; tokens/s and peak RSS.

MLX on Linux runs its CPU matmuls on a reference BLAS (~4 GFLOP/s here against torch's ~55):
a 4 x 512 step of the 0.5B model would take ~25 minutes, so MLX trains on 1 x 128 tokens by
default (``--mlx-train-shape``); matmul-bound steps scale about linearly in tokens.

    flock /tmp/mygpt-heavy.lock uv run python scripts/bench_real_models.py
    ... --models smollm2 --backends torch --phases infer      # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the published configs' shapes (HuggingFaceTB/SmolLM2-135M, Qwen/Qwen2.5-0.5B)
SHAPES = {
    "smollm2": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=576,
        intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
        num_hidden_layers=30, vocab_size=49152, rope_theta=100000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_word_embeddings=True, hidden_act="silu",
    ),
    "qwen2.5": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=896,
        intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
        num_hidden_layers=24, vocab_size=151936, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768, tie_word_embeddings=True, hidden_act="silu",
    ),
}  # fmt: skip


def build(name: str, root: Path) -> Path:
    """The model directory: config.json, bf16 model.safetensors, a small tokenizer.json."""
    import torch
    from safetensors.torch import save_file

    from mygpt.interop.architectures import ARCHITECTURES
    from mygpt.interop.import_ import config_from_hf
    from mygpt.model import param_shapes

    out = root / name
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    hf = {**SHAPES[name], "torch_dtype": "bfloat16"}
    arch, cfg = config_from_hf(hf, out)
    gen = torch.Generator().manual_seed(0)
    params = {}
    for k, shape in param_shapes(cfg).items():
        scale = 0.02 if len(shape) > 1 else 0.1
        params[k] = (torch.randn(shape, generator=gen) * scale).numpy()
    tensors = ARCHITECTURES[arch.model_type].to_hf(cfg, params)
    save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    (out / "config.json").write_text(json.dumps(hf))
    from tests.real_models import build_tokenizer

    build_tokenizer(out, bos=False, vocab_size=2000)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def infer(path: Path, backend: str) -> dict:
    import numpy as np

    import mygpt

    t = time.perf_counter()
    m = mygpt.load(path, backend=backend, device="cpu")
    m.ops.eval(*m.params.values())
    load_s = time.perf_counter() - t
    prompt = list(np.random.default_rng(0).integers(10, 1900, 32))
    gen = m.stream(prompt, 33, temperature=0, stop_ids=[])
    t = time.perf_counter()
    next(gen)
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(1 for _ in gen)
    decode = n / (time.perf_counter() - t)
    return {"load_s": load_s, "prefill_32_s": prefill_s, "decode_tok_s": decode}


def train(path: Path, backend: str, batch: int, seq: int) -> dict:
    import numpy as np

    from mygpt.backends import get_backend
    from mygpt.backends.base import AdamWConfig
    from mygpt.interop.import_ import import_hf
    from mygpt.model import loss_fn

    ckpt = import_hf(path)
    cfg, ops = ckpt.config, get_backend(backend, "cpu")
    params = ops.trainable({k: ops.asarray(v) for k, v in ckpt.params.items()})
    del ckpt
    opt = ops.adamw(params, AdamWConfig())
    vg = ops.value_and_grad(lambda p, x, y: loss_fn(ops, cfg, p, x, y))
    rng = np.random.default_rng(0)
    x = ops.asarray(rng.integers(10, 1900, (batch, seq)))
    y = ops.asarray(rng.integers(10, 1900, (batch, seq)))
    t = time.perf_counter()
    loss, grads = vg(params, x, y)
    params = opt.step(params, grads, 1e-5)
    ops.eval(loss, params, opt.arrays())
    step_s = time.perf_counter() - t
    return {"tokens": batch * seq, "step_s": step_s, "train_tok_s": batch * seq / step_s}


def child(args: argparse.Namespace) -> None:
    path = Path(args.path)
    if args.phase == "infer":
        out = infer(path, args.backend)
    else:
        b, s = (args.batch, args.seq)
        if args.backend == "mlx":
            b, s = (int(v) for v in args.mlx_train_shape.split("x"))
        out = train(path, args.backend, b, s)
    print(json.dumps({**out, "peak_rss_gb": peak_rss_gb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--backends", nargs="+", default=["torch", "mlx"])
    p.add_argument("--phases", nargs="+", default=["infer", "train"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--mlx-train-shape", default="1x128")
    p.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "mygpt-bench-real"))
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for name in args.models:
        path = build(name, Path(args.scratch))
        for backend in args.backends:
            for phase in args.phases:
                cmd = [sys.executable, __file__, "--child", "--path", str(path), "--backend",
                       backend, "--phase", phase, "--batch", str(args.batch), "--seq",
                       str(args.seq), "--mlx-train-shape", args.mlx_train_shape]  # fmt: skip
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                       timeout=args.timeout)  # fmt: skip
                    lines = r.stdout.strip().splitlines()
                    result = (
                        json.loads(lines[-1])
                        if r.returncode == 0 and lines
                        else {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
                    )
                except subprocess.TimeoutExpired:
                    result = {"error": f"over {args.timeout} s"}
                print(json.dumps({"model": name, "backend": backend, "phase": phase, **result}),
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
