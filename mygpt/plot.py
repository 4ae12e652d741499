"""Loss curves from the metrics JSON lines that ``mygpt train`` writes beside its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from mygpt.errors import MygptError
from mygpt.fileio import atomic_write, check_output_path


def metrics_path(run: str | Path) -> Path:
    """A run given as its metrics file, its checkpoint, or a directory holding one metrics file."""
    p = Path(run)
    if p.is_dir():
        found = sorted(p.glob("*.metrics.jsonl"))
        if len(found) != 1:
            raise MygptError(f"{p} holds {len(found)} *.metrics.jsonl files — name the run's file")
        return found[0]
    cand = p if p.name.endswith(".metrics.jsonl") else p.with_name(p.stem + ".metrics.jsonl")
    if not cand.is_file():
        raise MygptError(
            f"no metrics file for {run} (looked for {cand}) — pass a run's .metrics.jsonl"
        )
    return cand


def read_metrics(run: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train points, val points) as (step, loss) lists."""
    train, val = [], []
    path = metrics_path(run)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not text.endswith("\n"):
                break  # a line cut short by a killed run: the lines before it are whole
            raise MygptError(
                f"{path}:{n} is not a JSON line — the metrics file is damaged"
            ) from None
        if "loss" in rec and "step" in rec:
            train.append((rec["step"], rec["loss"]))
        if "val_loss" in rec:
            val.append((rec["step"], rec["val_loss"]))
    return train, val


def _smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points, narrowed symmetrically near both ends.

    Each output is the mean of a window centred on its own point, so a straight line stays
    exactly straight and no bend is invented where a trailing window would still be filling
    (a trailing mean has half the slope over its first ``window`` points: a kink there).
    """
    n = len(values)
    half = max(0, (window - 1) // 2)
    if half == 0:
        return list(values)
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for i in range(n):
        h = min(half, i, n - 1 - i)
        out.append((prefix[i + h + 1] - prefix[i - h]) / (2 * h + 1))
    return out


def plot_runs(
    runs: list[str | Path],
    output: str | Path,
    labels: list[str] | None = None,
    smooth: int = 20,
    log_y: bool = False,
) -> Path:
    """Draw train (smoothed, one batch per point is noisy) and val loss of several runs to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = check_output_path(output, "--output")  # before reading any run
    labels = labels or [Path(r).name.replace(".metrics.jsonl", "") for r in runs]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (run, label) in enumerate(zip(runs, labels)):
        train, val = read_metrics(run)
        color = f"C{i}"
        if train:
            steps, losses = zip(*train)
            ax.plot(steps, _smooth(list(losses), smooth), color=color, label=f"{label} train")
        if val:
            steps, losses = zip(*val)
            ax.plot(steps, losses, "o--", color=color, label=f"{label} val", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fmt = output.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        raise MygptError(
            f"can't draw a .{fmt} file — name the --output .png, .svg or .pdf "
            f"(supported: {', '.join(sorted(fig.canvas.get_supported_filetypes()))})"
        )
    try:
        atomic_write(output, lambda f: fig.savefig(f, format=fmt, dpi=120), "--output")
    finally:
        plt.close(fig)
    return output
