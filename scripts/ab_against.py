"""Time this tree's model against an older commit's, in one process, interleaved.

Usage: uv run python scripts/ab_against.py --base f1a70ab [--rounds 15] [--what decode generate decoder train]

The package at ``--base`` is extracted (``git archive``) into a temporary directory under the name
``mygpt_base`` and imported beside this tree's ``mygpt``; each measurement then alternates short
bursts of old and new and reports the medians of process CPU time, so drift on a shared machine
hits both alike. What is timed (one thread, ``ch27_modern.ckpt`` unless ``--checkpoint``):

- ``decode``: one batched decode step at 1 and 8 rows (one row moving, as ``generate`` runs it),
  torch and MLX: before the one forward, ``model.decode`` on a ``SlotCache``; after it,
  ``model.forward`` on a ``RowCache`` step;
- ``generate``: solo ``Model.stream`` tokens/s, greedy;
- ``decoder``: a ``generate.Decoder`` step with 8 live rows (serve's batched step);
- ``train``: a full training step at the Ch.17 and Ch.27 shapes (``bench``'s synthetic step);
- ``serve``: a ``mygpt serve`` process of each tree in turn (torch, one thread), 8 streaming
  clients, 8 rounds of 50-token greedy completions: the server's CPU time per token (from
  ``/proc``, which clients and scheduling noise do not touch) and the wall-clock tokens/s.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MYGPT_THREADS", "1")


def extract(rev: str) -> Path:
    """The package at ``rev`` as ``mygpt_base`` in a temporary directory; returns that directory."""
    out = Path(tempfile.mkdtemp(prefix="mygpt-ab-"))
    (out / "tree").mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out / "tree")], input=archive, check=True)
    # (mygpt/backends is a link to the tree's backends/: copy what it points at)
    shutil.copytree(out / "tree" / "mygpt", out / "mygpt_base", symlinks=False)
    for f in (out / "mygpt_base").rglob("*.py"):
        text = f.read_text()
        f.write_text(
            re.sub(r"\bmygpt(?=[. ])", "mygpt_base", text.replace('"mygpt"', '"mygpt_base"'))
        )
    return out


def decode_step(pkg, checkpoint: Path, backend: str, rows: int) -> Callable[[int], None]:
    """One decode step of ``rows`` rows, row 0 at position ``i``, the others at the end."""
    m = pkg.load(checkpoint, backend=backend, device="cpu")
    ops, cfg = m.ops, m.config
    model = importlib.import_module(f"{pkg.__name__}.model")
    if hasattr(model, "decode_weights"):  # the two models: decode() on a SlotCache
        w = model.decode_weights(ops, cfg, m.params, m.dtype)
        slots = model.SlotCache.allocate(ops, cfg, rows, m.dtype)

        def logits(tokens, positions):
            return model.decode(ops, cfg, w, tokens, positions, slots)
    else:  # the one forward on a RowCache step
        cache = importlib.import_module(f"{pkg.__name__}.cache")
        w = model.prepare(ops, cfg, m.params, m.dtype)
        slots = cache.RowCache.allocate(ops, cfg, rows, m.dtype)

        def logits(tokens, positions):
            ids = ops.asarray(tokens[:, None])
            return model.forward(ops, cfg, w, ids, cache=slots.at(positions))[:, 0]

    def step(i: int) -> None:
        positions = np.full(rows, cfg.max_seq_len - 1, dtype=np.int64)
        positions[0] = i % (cfg.max_seq_len - 1)
        with ops.inference():
            ops.to_numpy(logits(np.zeros(rows, dtype=np.int64), positions))

    return step


def generate(pkg, checkpoint: Path, backend: str) -> Callable[[int], None]:
    m = pkg.load(checkpoint, backend=backend, device="cpu")
    ids = m.encode("ROMEO:")
    return lambda i: list(m.stream(ids, 64, temperature=0.0))


def decoder(pkg, checkpoint: Path, backend: str) -> Callable[[int], None]:
    """A ``Decoder`` step with 8 live rows, each sampling its token."""
    m = pkg.load(checkpoint, backend=backend, device="cpu")
    gen = importlib.import_module(f"{pkg.__name__}.generate")
    dec = gen.Decoder(m.ops, m.config, m.params, 8, m.dtype)
    rows = [dec.add(gen.Stream(m.encode("ROMEO" + "!" * i), temperature=0)) for i in range(8)]

    def step(i: int) -> None:
        if i % 40 == 0:  # start over before a row passes the context
            for r in rows:
                dec.remove(r)
            rows[:] = [dec.add(gen.Stream(m.encode("ROMEO" + "!" * j), temperature=0))
                       for j in range(8)]  # fmt: skip
        with m.ops.inference():
            out = dec.logits(rows)
            for r in rows:
                dec.streams[r].sample(out[r])

    return step


def train_step(pkg, backend: str, recipe: str) -> Callable[[int], None]:
    probe = importlib.import_module(f"{pkg.__name__}.train.probe")
    bench = importlib.import_module(f"{pkg.__name__}.bench")
    backends = importlib.import_module(f"{pkg.__name__}.backends")
    cfg, s = bench._shape_from(recipe, {})
    ops = backends.get_backend(backend, "cpu")
    step = probe.synthetic_step(ops, cfg, s["batch_size"], s["seq_len"], "float32",
                                max_grad_norm=s["max_grad_norm"])  # fmt: skip
    return lambda i: step()


SERVE_PROMPTS = ["ROMEO:", "JULIET:", "KING:", "First Citizen:", "MENENIUS:", "All:", "O, ", "Ay, "]


def serve_cost(tree: Path, checkpoint: Path) -> tuple[float, float]:
    """(server CPU seconds per token, tokens/s) of ``mygpt serve`` run from ``tree``."""
    import asyncio
    import json

    import httpx

    log = Path(tempfile.mkdtemp(prefix="mygpt-ab-serve-")) / "server.log"
    env = {**os.environ, "MYGPT_THREADS": "1", "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "mygpt.cli", "serve", "--checkpoint", str(checkpoint), "--port",
           "0", "--backend", "torch", "--device", "cpu", "--max-concurrent", "8"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tree, stdout=out, stderr=out, env=env)

    def cpu() -> float:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def rounds(url: str, n: int) -> int:
        async def one(client: httpx.AsyncClient, prompt: str) -> int:
            body = {"prompt": prompt, "max_tokens": 50, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            tokens = 0
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                        tokens = usage["completion_tokens"]
            return tokens

        async with httpx.AsyncClient(timeout=600) as client:
            return sum([sum(await asyncio.gather(*(one(client, p) for p in SERVE_PROMPTS)))
                        for _ in range(n)])  # fmt: skip

    try:
        for _ in range(600):
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
            if found or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not found:
            raise SystemExit(f"the server in {tree} did not start:\n{log.read_text()}")
        asyncio.run(rounds(found.group(1), 2))  # warm
        c0, t0 = cpu(), time.perf_counter()
        tokens = asyncio.run(rounds(found.group(1), 8))
        return (cpu() - c0) / tokens, tokens / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()


def race(old: Callable[[int], None], new: Callable[[int], None], rounds: int, burst: int):
    """Median seconds per call of each, bursts alternating; returns (old, new)."""
    for f in (old, new):
        for i in range(max(2, burst // 4)):
            f(i)
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(rounds):
        for f, into in ((old, times[0]), (new, times[1])):
            t0 = time.process_time()
            for i in range(r * burst, (r + 1) * burst):  # (each its own count: the same steps)
                f(i)
            into.append((time.process_time() - t0) / burst)
    return float(np.median(times[0])), float(np.median(times[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the commit to time against")
    ap.add_argument("--checkpoint", type=Path,
                    default=ROOT.parent / "shared/fixtures/book/ch27_modern.ckpt")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--backends", nargs="+", default=["torch", "mlx"])
    ap.add_argument(
        "--what", nargs="+", default=["decode", "generate", "decoder", "train", "serve"]
    )
    args = ap.parse_args()
    base = extract(args.base)
    sys.path.insert(0, str(base))
    import mygpt_base

    import mygpt

    print(f"against {args.base}, {args.rounds} interleaved rounds, medians of process CPU time")
    print("| what | before | after | change |\n|---|---|---|---|")

    def row(label: str, old, new, burst: int, unit: str, scale: float) -> None:
        a, b = race(old, new, args.rounds, burst)
        if unit == "tok/s":  # 64 tokens a call
            a, b = 64 / a, 64 / b
            change = a / b - 1  # slower is positive, as for times
        else:
            a, b, change = a * scale, b * scale, b / a - 1
        print(f"| {label} | {a:,.0f} {unit} | {b:,.0f} {unit} | {100 * change:+.1f}% |", flush=True)

    ck = args.checkpoint
    if "serve" in args.what:  # whole processes: each tree's own package as `mygpt`
        runs: tuple[list, list] = ([], [])
        for _ in range(max(3, args.rounds // 5)):
            for tree, into in ((base / "tree", runs[0]), (ROOT, runs[1])):
                into.append(serve_cost(tree, ck))
        (a, ta), (b, tb) = (np.median(np.array(r), axis=0) for r in runs)
        print(
            f"| torch serve, 8 clients: server CPU per token | {a * 1e6:,.0f} µs | "
            f"{b * 1e6:,.0f} µs | {100 * (b / a - 1):+.1f}% |"
        )
        print(
            f"| torch serve, 8 clients: tokens/s (slower: +) | {ta:,.0f} tok/s | {tb:,.0f} tok/s "
            f"| {100 * (ta / tb - 1):+.1f}% |",
            flush=True,
        )
    for backend in args.backends:
        if "decode" in args.what:
            for rows in (1, 8):
                row(f"{backend} decode step, {rows} row(s)", decode_step(mygpt_base, ck, backend, rows),
                    decode_step(mygpt, ck, backend, rows), 40, "µs", 1e6)  # fmt: skip
        if "generate" in args.what:
            row(f"{backend} solo generate (slower: +)", generate(mygpt_base, ck, backend),
                generate(mygpt, ck, backend), 1, "tok/s", 1)  # fmt: skip
        if "decoder" in args.what:
            row(f"{backend} Decoder step, 8 live rows", decoder(mygpt_base, ck, backend),
                decoder(mygpt, ck, backend), 20, "µs", 1e6)  # fmt: skip
        if "train" in args.what:
            for recipe in ("ch17-baseline", "ch27-modern"):
                row(f"{backend} training step, {recipe}", train_step(mygpt_base, backend, recipe),
                    train_step(mygpt, backend, recipe), 3, "ms", 1e3)  # fmt: skip


if __name__ == "__main__":
    main()
