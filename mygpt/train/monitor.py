"""What a run reports: the progress bar or book-style lines, and ``<output>.metrics.jsonl``.

Losses stay device arrays until they are read back (the only host sync), every few steps. In a
data-parallel run that is also where ranks agree (:func:`agree`): one collective averages the
pending losses over ranks (the logged loss is the global batch's) and carries each rank's stop
request, so every rank stops at the same step. Rank 0 alone prints and writes the log.
"""

from __future__ import annotations

import math
import time
from typing import Any

from mygpt.errors import MygptError
from mygpt.metrics import MetricsLog, metrics_path_for
from mygpt.progress import Progress
from mygpt.train.config import TrainConfig
from mygpt.train.setup import Run

SYNC_EVERY = 10  # steps between host syncs when nothing else forces one


class RunLog:
    def __init__(self, run: Run, tc: TrainConfig, start_step: int, resumed: bool, on_log=None):
        self.run, self.tc, self.on_log = run, tc, on_log
        # rank 0 writes; a fresh run starts a fresh log, a resumed one keeps lines up to its step
        self.log = MetricsLog(metrics_path_for(tc.output)) if run.dist.is_main else None
        if self.log is not None:
            self.log.open(start_step if resumed else None)
        self.progress = Progress(total=tc.steps, initial=start_step)
        self.tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum
        self.pending: list[tuple[int, Any, float, Any]] = []  # (step, loss, lr, stats): not read
        # extra per-step metrics (DPO's): their names, and how a step's stats become floats
        self.stat_names: tuple[str, ...] = ()
        self.read_stats: Any = None
        self.last_stats: dict[str, float] = {}
        self.last_val_stats: dict[str, float] = {}
        self.last_loss = float("nan")
        self.last_val: float | None = None
        self.t_start = self.t_window = time.perf_counter()
        self.steps_window = 0

    def add(self, step: int, loss: Any, lr: float, stats: Any = None) -> None:
        self.pending.append((step, loss, lr, stats))
        self.steps_window += 1

    @property
    def due(self) -> bool:
        return len(self.pending) >= SYNC_EVERY

    def read_back(self) -> list[float]:
        """This rank's pending losses (each followed by its stats) as floats (waits for the
        device)."""
        ops = self.run.ops
        ops.eval(*[p[1] for p in self.pending])
        out = []
        for p in self.pending:
            out.append(ops.item(p[1]))
            if self.stat_names:
                out += self.read_stats(p[3])
        return out

    def flush(self, step: int, losses: list[float], last_good_step: int) -> None:
        """Check and log the pending steps' losses (``losses``: averaged over ranks)."""
        now = time.perf_counter()
        rate = self.steps_window * self.tokens_per_step / max(now - self.t_window, 1e-9)
        self.t_window, self.steps_window = now, 0
        records, width = [], 1 + len(self.stat_names)
        for i, (s, _, lr, _) in enumerate(self.pending):
            loss, stats = losses[i * width], dict(zip(self.stat_names, losses[i * width + 1 :]))
            if not math.isfinite(loss):
                self.pending.clear()
                self._append(records)
                raise MygptError(
                    f"loss became {loss} at step {s} — stopped; the last good checkpoint "
                    f"(step {last_good_step}) is kept. Try a lower --lr, --max-grad-norm 1.0 or fp32"
                )
            self.last_loss, self.last_stats = loss, stats
            records.append(
                {
                    "step": s,
                    "loss": loss,
                    **stats,
                    "lr": lr,
                    "tokens_per_s": rate,
                    "elapsed_s": now - self.t_start,
                }
            )
        self.pending.clear()
        self._append(records)
        self.progress.update(
            step, loss=self.last_loss, val=self.last_val, lr=self.tc.lr_at(step), tokens_per_s=rate
        )

    def val(self, step: int, loss: float, lr: float, stats: dict[str, float] | None = None) -> None:
        """A validation result; ``stats`` (DPO's metrics) are logged as trl's ``eval_`` names."""
        self.last_val, self.last_val_stats = loss, stats or {}
        extra = {f"eval_{k}": v for k, v in self.last_val_stats.items()}
        self._append([{"step": step, "val_loss": loss, **extra}], callback=False)
        self.progress.update(step, loss=self.last_loss, val=loss, lr=lr)

    def print_step(self, step: int, lr: float) -> None:
        line = f"step {step}: loss = {self.last_loss:.4f}"
        if self.last_val is not None:
            line += f", val loss = {self.last_val:.4f}"
        for key, name in (("rewards/accuracies", "acc"), ("rewards/margins", "margin")):
            if key in self.last_stats:
                line += f", {name} = {self.last_stats[key]:.3f}"
            if key in self.last_val_stats:
                line += f", val {name} = {self.last_val_stats[key]:.3f}"
        self.progress.write(line + f", lr = {lr:.2e}")

    def finish(
        self, step: int, start_step: int, interrupted: bool, extra: dict
    ) -> tuple[float, float]:
        """Log the run's end and close the log; ``(wall seconds, tokens/s)``."""
        wall = time.perf_counter() - self.t_start
        tps = (step - start_step) * self.tokens_per_step / max(wall, 1e-9)
        event = {"event": "interrupted" if interrupted else "end", "step": step, "wall_s": wall}
        self._append([{**event, **extra, "tokens_per_s": tps}], callback=False)
        self.close()
        return wall, tps

    def _append(self, records: list[dict], callback: bool = True) -> None:
        if self.log is None:
            return
        for rec in records:
            self.log.append(rec)
        self.log.flush()
        if callback and self.on_log:
            for rec in records:
                self.on_log(rec)

    def close(self, error: bool = False) -> None:
        """Close the log (after an error, without letting a second failure replace the first)."""
        if self.log is not None:
            self.log.close_after_error() if error else self.log.close()


def agree(dist: Any, losses: list[float], stop_requested: bool) -> tuple[list[float], bool]:
    """One collective for two agreements: the losses averaged over ranks, and whether any rank
    asked to stop (then every rank stops at this step)."""
    *mean, stop = dist.mean([*losses, 1.0 if stop_requested else 0.0])
    return mean, stop > 0
