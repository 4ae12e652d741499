"""`mygpt bench`: training-step speed, MFU and generation speed on each installed backend.

Timing on small shared machines is noisy (other processes take the cores for a while), so every
timing here keeps each step's time separately and reports the *median*; the spread shows in
``ms_min``. A step is what the training loop does: forward, loss, backward, (optional) clipping and
AdamW, then a host sync on the loss, which is also what forces MLX's lazy graph to run.

MFU needs a peak: a published figure where one applies (known GPUs), otherwise a measured one, the
best of a few large matmuls (`measure_peak_flops`). On a CPU the measured peak is what the BLAS
reaches, so MFU there says how well the model keeps the matmul unit busy, not a hardware ceiling.
"""

from __future__ import annotations

import math
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import numpy as np

from mygpt.backends import BACKENDS
from mygpt.blas import mlx_blas, openblas_hint
from mygpt.config import ModelConfig
from mygpt.errors import MygptError, UsageError
from mygpt.model import count_params, flops_per_token, init_params
from mygpt.precision import resolve_precision, time_dtypes
from mygpt.settings import PRECISIONS, click_options, declared_defaults, device_option
from mygpt.train import TrainConfig
from mygpt.train.config import SHAPE as MODEL_SHAPE
from mygpt.train.probe import synthetic_step

# the model shape and batch a benchmark takes from `mygpt train`'s settings
SHAPE = [*MODEL_SHAPE, "seq_len", "batch_size"]

# Dense (no sparsity) peak FLOP/s by GPU name fragment: (fp32, bf16). fp32 is plain FP32, not TF32.
_PUBLISHED: list[tuple[str, float, float]] = [
    ("H100", 67e12, 989e12),
    ("A100", 19.5e12, 312e12),
    ("A10G", 31.2e12, 125e12),
    ("L40S", 91.6e12, 362e12),
    ("L4", 30.3e12, 121e12),
    ("RTX 4090", 82.6e12, 165e12),
    ("RTX 3090", 35.6e12, 71e12),
    ("V100", 15.7e12, 0.0),  # no bf16 units
    ("T4", 8.1e12, 0.0),
]


# --- device facts ------------------------------------------------------------------------------


def gpu_name(ops: Any) -> str | None:
    """The accelerator's marketing name, read without importing a framework (None on CPU)."""
    if ops.device == "cuda" and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return out.strip().splitlines()[0] if out.strip() else None
        except (OSError, subprocess.SubprocessError):
            return None
    if ops.device in ("gpu", "mps") and sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def published_peak(ops: Any, dtype: str = "float32") -> float | None:
    """The vendor's dense peak FLOP/s for this device and dtype, or None (CPUs, unknown GPUs)."""
    name = gpu_name(ops)
    if not name:
        return None
    for fragment, fp32, bf16 in _PUBLISHED:
        if fragment.lower() in name.lower():
            peak = bf16 if dtype == "bfloat16" else fp32
            return peak or None
    return None


# --- measurements -----------------------------------------------------------------------------


def time_steps(step: Callable[[], Any], n: int) -> list[float]:
    """Seconds taken by each of ``n`` calls of ``step``."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def bench_train_step(
    ops: Any,
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    dtype: str = "float32",
    *,
    steps: int = 20,
    warmup: int = 3,
    compile: bool = False,
    max_grad_norm: float = 0.0,
) -> dict[str, float]:
    """Time ``steps`` full training steps after ``warmup`` untimed ones (median per step)."""
    if steps < 1 or warmup < 0:
        raise UsageError("--steps must be >= 1 (and warmup >= 0) — e.g. --steps 20")
    step = synthetic_step(
        ops, cfg, batch_size, seq_len, dtype, compile=compile, max_grad_norm=max_grad_norm
    )
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - t0  # with --compile, mostly compiling
    times = time_steps(step, steps)
    med = statistics.median(times)
    tokens = batch_size * seq_len
    fpt = flops_per_token(cfg, seq_len)
    return {
        "ms_per_step": med * 1e3,
        "ms_min": min(times) * 1e3,
        "tokens_per_s": tokens / med,
        "flops_per_token": float(fpt),
        "flops_per_s": fpt * tokens / med,
        "warmup_s": warmup_s,
        "loss": step(),
    }


def measure_peak_flops(ops: Any, dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of ``n x n`` matmuls: the device's practical matmul peak.

    Both layouts a model uses are timed (``a @ b`` and ``a @ b.T``, which is ``linear``'s) and the
    better one counts. Not under ``ops.inference()``: on CPU that turns oneDNN off for decoding,
    and without it torch's bf16 matmul falls to a scalar loop (0.9 GFLOP/s against 930 with it on
    an AMX-BF16 Xeon), which is what once printed an MFU of 17858%.
    """
    rng = np.random.default_rng(0)
    a = ops.asarray(rng.standard_normal((n, n)).astype(np.float32), dtype)
    b = ops.asarray(rng.standard_normal((n, n)).astype(np.float32), dtype)
    ops.eval(a, b)
    best = float("inf")
    for rhs in (b, ops.transpose(b, (1, 0))):
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            c = a @ rhs
            ops.eval(c)
            ops.synchronize()
            elapsed = time.perf_counter() - t0
            if i > 0:  # the first one pays for allocation and thread-pool start-up
                best = min(best, elapsed)
            if elapsed > 1.0 and i > 0:  # a reference BLAS: one good sample is enough
                break
    return 2.0 * n**3 / best


def mfu_of(achieved: float, peak: float) -> tuple[float | None, str | None]:
    """(MFU, None), or (None, why) when the peak probe cannot be right: a model step can never
    beat the hardware, so an achieved rate above the measured peak means the probe failed."""
    if not peak or peak <= 0 or not math.isfinite(peak):
        return None, "the peak probe returned no rate"
    if achieved > peak:
        return None, (
            f"the peak probe failed: it measured {peak / 1e9:.1f} GFLOP/s, below the "
            f"{achieved / 1e9:.1f} GFLOP/s the training step itself reached"
        )
    return achieved / peak, None


def _generation_run(
    ops: Any,
    cfg: ModelConfig,
    params: dict[str, Any],
    use_cache: bool,
    dtype: str,
    sliding: bool = False,
) -> Callable[[int], int]:
    from mygpt.generate import generate

    prompt = [0]  # a one-token prompt: the timing is the generated tokens
    kwargs = dict(temperature=0.0, use_cache=use_cache, sliding=sliding, dtype=dtype)

    def run(n: int) -> int:
        return sum(1 for _ in generate(ops, cfg, params, prompt, n, **kwargs))

    return run


def _tokens_per_s(ops: Any, run: Callable[[int], int], new_tokens: int) -> float:
    t0 = time.perf_counter()
    n = run(new_tokens)
    ops.synchronize()
    return n / (time.perf_counter() - t0)


def bench_generation_modes(
    ops: Any,
    cfg: ModelConfig,
    params: dict[str, Any],
    new_tokens: int,
    dtype: str = "float32",
    rounds: int = 3,
) -> dict[str, float]:
    """Tokens/s of generation with the exact cache, without a cache and (rotary models) with the
    sliding cache, plus the speed-ups over no cache.

    Uses the real sampler (:func:`mygpt.generate.generate`, greedy, batch 1), so the numbers are
    what ``mygpt generate`` gets. The exact cache refills once the window is full (the book crops
    the context, so every position shifts), which costs as much as no cache; the sliding cache
    keeps one position per token past the window.

    The modes run interleaved for ``rounds`` rounds and each keeps its fastest round, so a noisy
    neighbour on a shared machine slows one sample rather than one mode, and the ratios compare
    like with like.
    """
    modes = {"cache": (True, False), "nocache": (False, False)}
    if cfg.position == "rope":
        modes["sliding"] = (True, True)
    runs = {
        name: _generation_run(ops, cfg, params, use_cache, dtype, sliding=sliding)
        for name, (use_cache, sliding) in modes.items()
    }
    for run in runs.values():
        run(min(8, new_tokens))  # warm-up: lazy init, allocator, compiled kernels
    best = dict.fromkeys(runs, 0.0)
    for _ in range(max(1, rounds)):
        for name, run in runs.items():
            best[name] = max(best[name], _tokens_per_s(ops, run, new_tokens))
    out = {f"gen_tok_s_{name}": v for name, v in best.items()}
    out["cache_speedup"] = best["cache"] / best["nocache"]
    if "sliding" in best:
        out["sliding_speedup"] = best["sliding"] / best["nocache"]
    return out


# --- the command ------------------------------------------------------------------------------


def _shape_from(recipe: str | None, overrides: dict[str, Any]) -> tuple[ModelConfig, dict]:
    """Model config and run settings from the Ch.17 defaults < recipe < explicit flags."""
    from mygpt.recipes import get_recipe

    defaults = declared_defaults(TrainConfig)
    # the step clips when the recipe's training does (max_grad_norm)
    settings: dict[str, Any] = {k: defaults[k] for k in (*SHAPE, "precision", "max_grad_norm")}
    settings["vocab_size"] = 65  # Tiny Shakespeare's character set
    if recipe:
        r = get_recipe(recipe)
        # Shapes only: a recipe's precision (auto/bf16) is not applied, so numbers compare
        # across recipes; measure bf16 with an explicit --precision.
        settings.update({k: v for k, v in r.flags.items() if k in settings and k != "precision"})
        settings["vocab_size"] = r.vocab_size
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["seq_len"] > settings["max_seq_len"]:
        raise UsageError(
            f"--seq-len {settings['seq_len']} is longer than --max-seq-len "
            f"{settings['max_seq_len']} — raise --max-seq-len or lower --seq-len"
        )
    return ModelConfig.from_flags(settings["vocab_size"], settings), settings


def run_bench(
    backend: str,
    device: str,
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    *,
    precision: str = "fp32",
    steps: int = 20,
    warmup: int = 3,
    compile: bool = False,
    gen_tokens: int = 500,
    peak: bool = True,
    max_grad_norm: float = 0.0,
) -> dict[str, Any]:
    """Every measurement for one backend, as a flat dict (what the table and --json print)."""
    from mygpt.backends import get_backend

    ops = get_backend(backend, device)
    dtype, why = resolve_precision(
        ops,
        precision,
        lambda: time_dtypes(lambda dt: synthetic_step(ops, cfg, batch_size, seq_len, dt)),
    )
    row: dict[str, Any] = {
        "backend": ops.name,
        "device": ops.device,
        "dtype": dtype,
        "dtype_reason": why,
        "params": count_params(cfg),
    }
    if ops.name == "mlx":
        row["blas"], row["blas_lib"] = mlx_blas()
    row.update(
        bench_train_step(
            ops,
            cfg,
            batch_size,
            seq_len,
            dtype,
            steps=steps,
            warmup=warmup,
            compile=compile,
            max_grad_norm=max_grad_norm,
        )
    )
    if peak:
        published = published_peak(ops, dtype)
        if published:
            row["peak_flops"], row["peak_source"] = published, gpu_name(ops)
        else:
            row["peak_flops"], row["peak_source"] = measure_peak_flops(ops, dtype), "matmul probe"
        row["mfu"], row["mfu_note"] = mfu_of(row["flops_per_s"], row["peak_flops"])
    if gen_tokens > 0:
        params = {k: ops.asarray(v) for k, v in init_params(cfg).items()}
        row["gen_tokens"] = gen_tokens
        row.update(bench_generation_modes(ops, cfg, params, gen_tokens, dtype))
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of bench rows (missing values shown as a dash)."""
    cols = [
        ("backend", "backend", "{}"),
        ("device", "device", "{}"),
        ("dtype", "dtype", "{}"),
        ("ms/step", "ms_per_step", "{:.1f}"),
        ("min ms", "ms_min", "{:.1f}"),
        ("warm-up s", "warmup_s", "{:.1f}"),
        ("tokens/s", "tokens_per_s", "{:,.0f}"),
        ("FLOPs/token", "flops_per_token", "{:,.0f}"),
        ("GFLOP/s", "flops_per_s", "{:.2f}"),
        ("peak GFLOP/s", "peak_flops", "{:.1f}"),
        ("MFU", "mfu", "{:.1%}"),
        ("gen tok/s (cache)", "gen_tok_s_cache", "{:.0f}"),
        ("gen tok/s (no cache)", "gen_tok_s_nocache", "{:.0f}"),
        ("cache speed-up", "cache_speedup", "{:.1f}x"),
        ("gen tok/s (sliding cache)", "gen_tok_s_sliding", "{:.0f}"),
        ("sliding speed-up", "sliding_speedup", "{:.1f}x"),
    ]
    scale = {"flops_per_s": 1e-9, "peak_flops": 1e-9}
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for _, key, fmt in cols:
            value = row.get(key)
            if value is None:
                cells.append("-")
                continue
            if key == "backend" and row.get("blas") in ("reference", "optimized"):
                lib = row.get("blas_lib") or ""
                opt = "OpenBLAS" if "openblas" in lib.lower() else "optimized BLAS"
                value = f"{value} ({'reference BLAS' if row['blas'] == 'reference' else opt})"
            cells.append(fmt.format(value * scale.get(key, 1)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command("bench")
@click.option("--recipe", default=None, help="Start from a recipe's model shape (`mygpt recipes`).")
@click_options(
    TrainConfig, SHAPE, defaults=False
)  # default: the train command's (TrainConfig's) values
@click.option("--vocab-size", type=int, default=None, help="Default 65 (Tiny Shakespeare chars).")
@click.option(
    "--backend",
    "backends_",
    multiple=True,
    type=click.Choice(["all", *BACKENDS]),
    default=("all",),
    show_default=True,
    help="Repeat to pick several; 'all' = every installed backend.",
)
@device_option
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Default fp32 (a recipe's precision is not applied).",
)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed training steps.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps first.")
@click.option("--compile", "compile_", is_flag=True, help="mx.compile / torch.compile the step.")
@click.option("--gen-tokens", type=int, default=500, show_default=True, help="0 skips generation.")
@click.option("--no-peak", is_flag=True, help="Skip the matmul peak probe (and MFU).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per backend.")
def bench(
    recipe: str | None,
    backends_: tuple[str, ...],
    device: str,
    steps: int,
    warmup: int,
    compile_: bool,
    gen_tokens: int,
    no_peak: bool,
    as_json: bool,
    **shape: Any,
) -> None:
    """Training-step time, tokens/s, FLOPs/token, MFU and generation speed per backend."""
    import json

    from mygpt.backends import available_backends

    cfg, s = _shape_from(recipe, shape)  # SHAPE, --vocab-size and --precision
    installed = available_backends()
    names = installed if "all" in backends_ else list(dict.fromkeys(backends_))
    if not names:
        raise MygptError("no backend is installed — pip install torch, or pip install mlx")
    click.echo(
        f"config: {cfg.num_layers} layers x {cfg.embed_dim} wide, {cfg.num_heads} heads "
        f"({cfg.num_kv_heads} K/V), {cfg.norm} norm, {cfg.position} positions, "
        f"vocab {cfg.vocab_size}, max_seq_len {cfg.max_seq_len}; batch {s['batch_size']} x "
        f"{s['seq_len']} tokens; {count_params(cfg):,} params; "
        f"{platform.machine()} {platform.system()}",
        err=True,
    )
    rows = []
    for name in names:
        click.echo(f"benchmarking {name} ...", err=True)
        row = run_bench(
            name,
            device,
            cfg,
            s["batch_size"],
            s["seq_len"],
            precision=s["precision"],
            steps=steps,
            warmup=warmup,
            compile=compile_,
            gen_tokens=gen_tokens,
            peak=not no_peak,
            max_grad_norm=s["max_grad_norm"],
        )
        rows.append(row)
        if as_json:
            click.echo(json.dumps(row))
    if not as_json:
        click.echo(format_table(rows))
        _print_notes(rows)


def _print_notes(rows: list[dict[str, Any]]) -> None:
    """What a reader of the table should know: a slow BLAS, why auto picked its precision."""
    for row in rows:
        if row.get("mfu_note"):
            click.echo(f"note: {row['backend']} MFU not shown — {row['mfu_note']}")
        if row.get("blas") == "reference":
            click.echo(
                "note: MLX runs on the reference BLAS bundled with mlx[cpu] (matmuls ~30x "
                f"slower than OpenBLAS) — {openblas_hint()}"
            )
        if row["dtype_reason"] != "requested":
            click.echo(
                f"note: {row['backend']} precision auto -> {row['dtype']}: {row['dtype_reason']}"
            )
