"""Real-model shapes on this machine: load time, generation and training speed, peak memory.

Random-weight models of SmolLM2-135M's, Qwen2.5-0.5B's, GPT-2's (124M) and Gemma-3-270M's
exact shapes (bf16 safetensors, as their Hub files are) are written once to a scratch directory; then, each in a fresh process so
its peak memory is its own:

- ``infer``: ``mygpt.load(DIR)`` time (read, widen bf16 -> fp32, permute, move to the backend),
  prefill of a 32-token prompt, greedy decode tokens/s (fp32, KV cache), peak RSS;
- ``train``: one full fine-tuning step (forward, backward, AdamW on every weight, fp32 master
  weights) at batch x seq tokens; tokens/s and peak RSS.
- ``lora``: the same step training LoRA adapters only (``--lora-rank``, default 8 on q,v as
  ``mygpt train --lora-rank 8``): the base frozen, no gradients or AdamW moments for it.

MLX on Linux runs its CPU matmuls on a reference BLAS (~4 GFLOP/s here against torch's ~55):
a 4 x 512 step of the 0.5B model would take ~25 minutes, so MLX trains on 1 x 128 tokens by
default (``--mlx-train-shape``); matmul-bound steps scale about linearly in tokens.

    flock /tmp/mygpt-heavy.lock uv run python scripts/bench_real_models.py
    ... --models smollm2 --backends torch --phases infer      # a subset
    ... --phases train lora                                    # full fine-tuning against LoRA
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
    # openai-community/gpt2 (124M): Conv1D weights, learned positions, the tanh GELU, biases
    "gpt2": dict(
        model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=768, n_head=12, n_layer=12,
        n_positions=1024, vocab_size=50257, activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
    ),
    # google/gemma-3-270m: 5 sliding (512) to 1 full layer, a rope base each, head_dim 256
    "gemma3-270m": dict(
        model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], hidden_size=640,
        intermediate_size=2048, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        num_hidden_layers=18, vocab_size=262144, max_position_embeddings=32768,
        sliding_window=512, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
        rope_theta=1000000.0, rope_local_base_freq=10000.0, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh",
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                     for i in range(18)],
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
    save_file({k: torch.from_numpy(v).contiguous().to(torch.bfloat16) for k, v in tensors.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    (out / "config.json").write_text(json.dumps(hf))
    from tests.real_models import build_tokenizer

    build_tokenizer(out, bos=False, vocab_size=2000)
    return out


#: training steps timed per phase (``--steps``); the last one is reported
STEPS = 1


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def rss_now_gb() -> float:
    """The resident set now (the peak includes loading's transient copies; this does not)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


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


def _timed_steps(ops, vg, opt, trained: dict, batch: int, seq: int, lr: float) -> dict:
    """STEPS optimizer steps of ``trained`` on one random batch; the last step's time (the
    first pays one-time setup) and the memory around the steps."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = ops.asarray(rng.integers(10, 1900, (batch, seq)))
    y = ops.asarray(rng.integers(10, 1900, (batch, seq)))
    before = {"rss_before_step_gb": rss_now_gb(), "peak_rss_before_step_gb": peak_rss_gb()}
    times = []
    for _ in range(STEPS):
        t = time.perf_counter()
        loss, grads = vg(trained, x, y)
        trained = opt.step(trained, grads, lr)
        ops.eval(loss, trained, opt.arrays())
        times.append(time.perf_counter() - t)
    step_s = times[-1]
    return {"tokens": batch * seq, "step_s": step_s, "first_step_s": times[0],
            "train_tok_s": batch * seq / step_s, **before, "rss_after_step_gb": rss_now_gb()}  # fmt: skip


def train(path: Path, backend: str, batch: int, seq: int) -> dict:

    from mygpt.backends import get_backend
    from mygpt.interop.import_ import import_hf
    from mygpt.model import loss_fn
    from mygpt.optim import AdamWConfig, adamw

    ckpt = import_hf(path)
    cfg, ops = ckpt.config, get_backend(backend, "cpu")
    params = ops.trainable({k: ops.asarray(v) for k, v in ckpt.params.items()})
    del ckpt
    opt = adamw(ops, params, AdamWConfig())
    vg = ops.value_and_grad(lambda p, x, y: loss_fn(ops, cfg, p, x, y))
    return _timed_steps(ops, vg, opt, params, batch, seq, lr=1e-5)


def train_lora(path: Path, backend: str, batch: int, seq: int, rank: int, targets: str) -> dict:
    import numpy as np

    from mygpt.backends import get_backend
    from mygpt.interop.import_ import import_hf
    from mygpt.lora import LoraConfig, init_adapters, parse_targets
    from mygpt.model import LoraWeights, loss_fn
    from mygpt.optim import AdamWConfig, adamw

    ckpt = import_hf(path)
    cfg, ops = ckpt.config, get_backend(backend, "cpu")
    lora = LoraConfig(rank, 16.0, 0.0, parse_targets(targets))
    base = {k: ops.asarray(v) for k, v in ckpt.params.items()}  # frozen: not trainable
    adapters = ops.trainable({k: ops.asarray(v) for k, v in init_adapters(cfg, lora).items()})
    del ckpt
    opt = adamw(ops, adapters, AdamWConfig())
    vg = ops.value_and_grad(
        lambda a, x, y: loss_fn(ops, cfg, base, x, y, lora=LoraWeights(a, lora.scale))
    )
    n = sum(int(np.prod(v.shape)) for v in adapters.values())
    return {**_timed_steps(ops, vg, opt, adapters, batch, seq, lr=1e-4), "trainable": n}


def child(args: argparse.Namespace) -> None:
    global STEPS
    STEPS = args.steps
    path = Path(args.path)
    if args.phase == "infer":
        out = infer(path, args.backend)
    else:
        b, s = (args.batch, args.seq)
        if args.backend == "mlx":
            b, s = (int(v) for v in args.mlx_train_shape.split("x"))
        if args.phase == "lora":
            out = train_lora(path, args.backend, b, s, args.lora_rank, args.lora_targets)
        else:
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
    p.add_argument("--steps", type=int, default=1, help="Training steps; the last is timed.")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-targets", default="q,v")
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
                       str(args.seq), "--mlx-train-shape", args.mlx_train_shape,
                       "--lora-rank", str(args.lora_rank), "--lora-targets", args.lora_targets,
                       "--steps", str(args.steps)]  # fmt: skip
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
