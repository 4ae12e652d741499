"""Benchmark ``mygpt serve``: aggregate tokens/s and time to first token, 1 client against N.

Usage (on a shared machine, under the heavy lock):
    flock /tmp/mygpt-heavy.lock uv run python scripts/bench_serve.py
    uv run python scripts/bench_serve.py --checkpoint model.safetensors --clients 8 --rounds 5

Starts one real server process on a free port, then alternates rounds of 1 streaming client and of
N concurrent streaming clients (interleaved, so machine noise hits both alike). Each request asks
for ``--max-tokens`` greedy tokens of a different prompt. Reported per mode: aggregate tokens/s
(tokens of all clients / wall time of the round), per-stream tokens/s, and p50/p95 time to first
token (request sent -> first text chunk) over all requests of all rounds.
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


def batching_headroom(checkpoint: Path, clients: int, steps: int = 40) -> dict:
    """What batched decoding would buy: one forward of ``clients`` rows vs one of a single row.

    In-process, no server: every row is at the same position (the one case today's model code
    batches exactly), decoding ``steps`` tokens through a KV cache after an 8-token prompt, below
    the context so no refill happens. Interleaved, median step time per row count.
    """
    import numpy as np

    import mygpt
    from mygpt import model as model_lib

    m = mygpt.load(checkpoint, backend="torch", device="cpu")
    cfg, ops = m.config, m.ops
    steps = min(steps, cfg.max_seq_len - 8)
    times: dict[int, list[float]] = {1: [], clients: []}
    with ops.inference():
        for _ in range(3):
            for b in times:
                cache = model_lib.KVCache(cfg.num_layers, max_len=cfg.max_seq_len)
                ids = np.tile(np.arange(8, dtype=np.int64) % cfg.vocab_size, (b, 1))
                out = model_lib.forward(ops, cfg, m.params, ops.asarray(ids), cache=cache)
                nxt = np.zeros((b, 1), dtype=np.int64)
                for _ in range(steps):
                    t0 = time.perf_counter()
                    out = model_lib.forward(ops, cfg, m.params, ops.asarray(nxt), cache=cache)
                    nxt = ops.to_numpy(out[:, -1]).argmax(-1)[:, None].astype(np.int64)
                    times[b].append(time.perf_counter() - t0)
        drift = batch_drift(m, clients)
    step = {b: statistics.median(t) for b, t in times.items()}
    return {"step_ms_1_row": step[1] * 1e3, f"step_ms_{clients}_rows": step[clients] * 1e3,
            "aggregate_speedup": clients * step[1] / step[clients],
            "max_logit_diff_batched_vs_single": drift}  # fmt: skip


def batch_drift(m, rows: int, length: int = 20) -> float:
    """Largest |logit| difference of a decode step run for ``rows`` aligned rows at once against
    each row alone: nonzero means batched decoding cannot promise `mygpt generate`'s tokens."""
    import numpy as np

    from mygpt import model as model_lib

    ids = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(rows, length))

    def last_logits(x: np.ndarray) -> np.ndarray:
        cache = model_lib.KVCache(m.config.num_layers, max_len=m.config.max_seq_len)
        model_lib.forward(m.ops, m.config, m.params, m.ops.asarray(x[:, :-1]), cache=cache)
        out = model_lib.forward(m.ops, m.config, m.params, m.ops.asarray(x[:, -1:]), cache=cache)
        return m.ops.to_numpy(out[:, -1])

    batched = last_logits(ids)
    return max(
        float(np.abs(last_logits(ids[r : r + 1])[0] - batched[r]).max()) for r in range(rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--checkpoint", type=Path, default=ROOT.parent / "shared/fixtures/book/ch27_modern.ckpt"
    )
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `mygpt serve` flags")
    args = ap.parse_args()
    with running_server(args.checkpoint, *args.server_arg) as url:
        asyncio.run(one_round(url, 1, 20, 0))  # warm-up: first-call allocations, caches
        results: dict[int, list[dict]] = {1: [], args.clients: []}
        for i in range(args.rounds):
            for clients in (1, args.clients):
                results[clients].append(asyncio.run(one_round(url, clients, args.max_tokens, i)))
        health = httpx.get(url + "/health").json()
    summary = {f"{c} client(s)": summarize(r) for c, r in results.items()}
    print(f"checkpoint {args.checkpoint.name}, backend {health['backend']}, {args.max_tokens} "
          f"greedy tokens per request, {args.rounds} rounds per mode (interleaved)")  # fmt: skip
    print("| clients | aggregate tokens/s | per-stream tokens/s | TTFT p50 | TTFT p95 |")
    print("|---|---|---|---|---|")
    for c, s in zip(results, summary.values()):
        print(f"| {c} | {s['aggregate_tokens_per_s']:.0f} | {s['per_stream_tokens_per_s']:.0f} | "
              f"{s['ttft_p50_s'] * 1000:.0f} ms | {s['ttft_p95_s'] * 1000:.0f} ms |")  # fmt: skip
    head = batching_headroom(args.checkpoint, args.clients)
    print(f"batching headroom (in-process, torch): a decode step of 1 row {head['step_ms_1_row']:.2f} "
          f"ms, of {args.clients} rows {head[f'step_ms_{args.clients}_rows']:.2f} ms: batched "
          f"decoding could give up to {head['aggregate_speedup']:.1f}x the aggregate tokens/s, but "
          f"its logits differ from one row's by up to {head['max_logit_diff_batched_vs_single']:.1e}")  # fmt: skip
    print(json.dumps({**summary, "batching_headroom": head}), file=sys.stderr)


if __name__ == "__main__":
    main()
