"""Benchmark ``mygpt serve``: aggregate tokens/s and time to first token, 1 client against N.

Usage (on a shared machine, under the heavy lock):
    flock /tmp/mygpt-heavy.lock uv run python scripts/bench_serve.py
    uv run python scripts/bench_serve.py --clients 1 8 32 --baseline /tmp/before

Starts one real server process on a free port (``--max-concurrent`` = the most clients), then
alternates rounds of 1, 8 and 32 streaming clients (interleaved, so machine noise hits all alike).
Each request asks for ``--max-tokens`` greedy tokens of a different prompt. Reported per mode:
aggregate tokens/s (tokens of all clients / wall time of the round), per-stream tokens/s, and
p50/p95 time to first token (request sent -> first text chunk) over all requests of all rounds.
With ``--baseline DIR`` (e.g. ``git worktree add /tmp/before <commit>``) it also times solo
``mygpt generate`` there and here, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# one torch thread for the server unless told otherwise: on a 2-core machine the clients need the
# other core, and two threads spin against them
os.environ.setdefault("MYGPT_THREADS", "1")

import httpx  # noqa: E402

from tests.serving import running_server  # noqa: E402

PROMPTS = ["ROMEO:", "JULIET:", "KING:", "First Citizen:", "MENENIUS:", "All:", "O, ", "Ay, ",
           "CORIOLANUS:", "Second Citizen:", "LUCIO:", "Nurse:", "GLOUCESTER:", "ANGELO:",
           "Provost:", "DUKE:"]  # fmt: skip


async def one_stream(client: httpx.AsyncClient, url: str, prompt: str, n: int) -> dict:
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
    return {"ttft": first, "tokens": tokens, "wall": time.perf_counter() - t0}


async def one_round(url: str, clients: int, n: int, offset: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        prompts = [PROMPTS[(offset + i) % len(PROMPTS)] for i in range(clients)]
        res = await asyncio.gather(*(one_stream(client, url, p, n) for p in prompts))
        wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": sum(r["tokens"] for r in res), "streams": res}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summarize(rounds: list[dict]) -> dict:
    ttfts = [s["ttft"] for r in rounds for s in r["streams"]]
    per_stream = [s["tokens"] / s["wall"] for r in rounds for s in r["streams"]]
    return {
        "aggregate_tokens_per_s": statistics.median(r["tokens"] / r["wall"] for r in rounds),
        "per_stream_tokens_per_s": statistics.median(per_stream),
        "ttft_p50_s": pct(ttfts, 0.5),
        "ttft_p95_s": pct(ttfts, 0.95),
        "requests": len(ttfts),
    }


GEN_TIMER = """
import os, sys, time
os.environ.setdefault("MYGPT_THREADS", "1")
import mygpt
m = mygpt.load(sys.argv[1], backend="torch", device="cpu")
n = int(sys.argv[2])
list(m.stream("ROMEO:", 10, temperature=0))
best = []
for _ in range(5):
    t0 = time.perf_counter()
    list(m.stream("ROMEO:", n, temperature=0))
    best.append((time.perf_counter() - t0) / n)
print(sorted(best)[len(best) // 2])
"""


def generate_cost(root: Path, checkpoint: Path, n: int) -> float:
    """Median seconds per token of ``mygpt generate`` (greedy, torch, one thread) with the code
    at ``root`` (this tree, or a worktree of an older commit)."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", GEN_TIMER, str(checkpoint), str(n)], cwd=root,
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--checkpoint", type=Path, default=ROOT.parent / "shared/fixtures/book/ch27_modern.ckpt"
    )
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=50, help="(ch27: 50 + a short prompt stays "
                    "inside the context of 64, where no step refills)")  # fmt: skip
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a worktree of the code before batching: time generate there too")  # fmt: skip
    ap.add_argument("--server-arg", action="append", default=[], help="extra `mygpt serve` flags")
    args = ap.parse_args()
    flags = ["--max-concurrent", str(max(args.clients)), *args.server_arg]
    with running_server(args.checkpoint, *flags) as url:
        asyncio.run(one_round(url, 1, 20, 0))  # warm-up: first-call allocations, caches
        results: dict[int, list[dict]] = {c: [] for c in args.clients}
        for i in range(args.rounds):
            for clients in args.clients:
                results[clients].append(asyncio.run(one_round(url, clients, args.max_tokens, i)))
        health = httpx.get(url + "/health").json()
    summary = {f"{c} client(s)": summarize(r) for c, r in results.items()}
    print(f"checkpoint {args.checkpoint.name}, backend {health['backend']}, scheduler "
          f"{health['scheduler']}, {args.max_tokens} greedy tokens per request, {args.rounds} "
          "rounds per mode (interleaved)")  # fmt: skip
    print("| clients | aggregate tokens/s | per-stream tokens/s | TTFT p50 | TTFT p95 |")
    print("|---|---|---|---|---|")
    for c, s in zip(results, summary.values()):
        print(f"| {c} | {s['aggregate_tokens_per_s']:.0f} | {s['per_stream_tokens_per_s']:.0f} | "
              f"{s['ttft_p50_s'] * 1000:.0f} ms | {s['ttft_p95_s'] * 1000:.0f} ms |")  # fmt: skip
    base = summary[f"{args.clients[0]} client(s)"]["aggregate_tokens_per_s"]
    for c in args.clients[1:]:
        ratio = summary[f"{c} client(s)"]["aggregate_tokens_per_s"] / base
        print(f"{c} clients: {ratio:.1f}x the aggregate tokens/s of {args.clients[0]}")
    gen = {}
    if args.baseline:
        costs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            costs["before"].append(generate_cost(args.baseline, args.checkpoint, args.max_tokens))
            costs["after"].append(generate_cost(ROOT, args.checkpoint, args.max_tokens))
        gen = {k: statistics.median(v) for k, v in costs.items()}
        print(f"solo generate ({args.max_tokens} greedy tokens): before {gen['before'] * 1e3:.3f} "
              f"ms/token, after {gen['after'] * 1e3:.3f} ms/token "
              f"({(gen['after'] / gen['before'] - 1) * 100:+.0f}%)")  # fmt: skip
    print(json.dumps({**summary, "generate_s_per_token": gen}), file=sys.stderr)


if __name__ == "__main__":
    main()
