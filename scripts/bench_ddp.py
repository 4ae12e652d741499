"""Benchmark: data-parallel training, 1 process against N, at the Ch.17 and Ch.28 configurations.

    uv run python scripts/bench_ddp.py [--backend torch|mlx] [--nprocs 2] [--rounds 3] [--steps 20]

For each configuration and round it launches the real engines, interleaved (1 process, then N,
then 1 ...): ``torchrun --nproc-per-node N`` (gloo) or ``mlx.launch -n N --backend ring``, each
running this file as a worker. A worker trains ``--steps`` steps (after 3 warm-up steps) of the
recipe's model through ``mygpt.train.make_train_step`` with the gradient all-reduce of
``ops.dist``, on random tokens at the recipe's vocabulary size, with the global batch of the
recipe (so every world size does the same work per step). It reports, per rank 0:

* tokens/s of the global batch;
* milliseconds per step spent in the gradient all-reduce (flattening into buckets, the
  collective, and splitting back);
* that time's share of the step.

Every rank uses ``cores // N`` compute threads (one thread per rank on a 2-core machine). The
table also times one process on one rank's share of the cores (``1 (Nt)``): N processes against
it is the scaling efficiency, N x being perfect; N processes against one process on the whole
machine says whether data parallelism beats the framework's own threads on the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mygpt.backends.cpu import physical_cores

CONFIGS = {"ch17": "ch17-baseline", "ch28": "ch28-wikipedia"}


def worker(args: argparse.Namespace) -> None:
    from mygpt import model
    from mygpt.backends import get_backend
    from mygpt.optim import AdamWConfig, adamw
    from mygpt.recipes import get_recipe
    from mygpt.train import TrainConfig, make_train_step

    recipe = get_recipe(CONFIGS[args.config])
    tc = TrainConfig.from_flags(recipe.flags)
    ops = get_backend(args.backend, "cpu")
    dist = ops.init_distributed()
    cfg = tc.model_config(recipe.vocab_size)
    params = ops.trainable({k: ops.asarray(v) for k, v in model.init_params(cfg, seed=0).items()})
    opt = adamw(ops, params, AdamWConfig())
    step = make_train_step(
        ops, cfg, opt, max_grad_norm=tc.max_grad_norm, grad_sync=dist.all_reduce_grads
    )
    rng = np.random.default_rng(0)
    b = tc.batch_size // dist.world_size
    rows = slice(dist.rank * b, (dist.rank + 1) * b)

    def batch():
        toks = rng.integers(0, cfg.vocab_size, size=(tc.batch_size, tc.seq_len + 1))
        return [(ops.asarray(toks[rows, :-1]), ops.asarray(toks[rows, 1:]))]

    for _ in range(3):
        params, _ = step(params, batch(), 1e-3)
    dist.barrier()
    dist.comm_seconds = 0.0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        params, loss = step(params, batch(), 1e-3)
    ops.eval(loss)
    dist.barrier()
    wall = time.perf_counter() - t0
    if dist.is_main:
        print(
            "RESULT "
            + json.dumps(
                {
                    "world": dist.world_size,
                    "threads": ops.threads,
                    "step_ms": 1000 * wall / args.steps,
                    "tokens_per_s": args.steps * tc.batch_size * tc.seq_len / wall,
                    "allreduce_ms": 1000 * dist.comm_seconds / args.steps,
                    "params": model.count_params(cfg),
                }
            ),
            flush=True,
        )
    dist.close()


def launch(args: argparse.Namespace, config: str, n: int, threads: int | None = None) -> dict:
    me = [__file__, "--worker", "--backend", args.backend, "--config", config]
    me += ["--steps", str(args.steps)]
    if n == 1:
        cmd = [sys.executable, *me]
    elif args.backend == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(n), *me]
    else:
        cmd = [str(Path(sys.executable).parent / "mlx.launch"), "-n", str(n), "--backend", "ring"]
        cmd += ["--", sys.executable, *me]
    env = dict(os.environ)
    env.pop("MYGPT_THREADS", None)  # each engine's ranks split the cores (see the docstring)
    if threads:
        env["MYGPT_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"{config} with {n} processes failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", choices=["torch", "mlx"], default="torch")
    ap.add_argument("--config", choices=list(CONFIGS), default="ch17")
    ap.add_argument("--configs", default="ch17,ch28")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"{args.backend}, global batch of each recipe, {args.steps} timed steps, medians of "
        f"{args.rounds} interleaved rounds"
    )
    print("config  procs threads  step ms  tokens/s  all-reduce ms/step  comm share  vs 1 process")
    share = max(1, physical_cores() // args.nprocs)
    for config in args.configs.split(","):
        # 1 process on the whole machine, 1 process on one rank's share of it, N processes
        variants = {
            "1": (1, None),
            f"1 ({share}t)": (1, share),
            str(args.nprocs): (args.nprocs, None),
        }
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, (n, threads) in variants.items():
                runs[k].append(launch(args, config, n, threads))
        base = statistics.median(r["tokens_per_s"] for r in runs["1"])
        for k, rs in runs.items():
            med = {
                key: statistics.median(r[key] for r in rs)
                for key in ("step_ms", "tokens_per_s", "allreduce_ms")
            }
            print(
                f"{config:6}  {k:>5}  {rs[0]['threads'] or '-':>7}  {med['step_ms']:7.1f}  "
                f"{med['tokens_per_s']:8,.0f}  {med['allreduce_ms']:18.2f}  "
                f"{med['allreduce_ms'] / med['step_ms']:10.1%}  {med['tokens_per_s'] / base:11.2f}x"
            )
        print(
            f"        ({rs[0]['params']:,} parameters = {rs[0]['params'] * 4 / 2**20:.2f} MB of "
            "fp32 gradients per step)"
        )


if __name__ == "__main__":
    main()
