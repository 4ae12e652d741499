"""Running the checks: which backends/devices are tested, against which reference, and a crash
turned into a failing row so the table still prints."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from mygpt.backends import BACKENDS, available_backends, get_backend
from mygpt.backends.base import DTYPES, Ops
from mygpt.errors import MygptError
from mygpt.parity.core import ParityCheck, Row, label
from mygpt.parity.registry import checks

_DEVICES = {"torch": ("cpu", "cuda", "mps"), "mlx": ("cpu", "gpu")}


def available_ops(
    backends: Iterable[str] | None = None, devices: Iterable[str] | None = None
) -> list[Ops]:
    """Every installed backend on every device it can use here (optionally filtered)."""
    wanted_b = set(backends) if backends else set(BACKENDS)
    wanted_d = set(devices) if devices else None
    found = []
    for name in available_backends():
        if name not in wanted_b:
            continue
        for dev in _DEVICES[name]:
            if wanted_d is not None and dev not in wanted_d:
                continue
            try:
                found.append(get_backend(name, dev))
            except MygptError:
                continue  # that device isn't here
    return found


def reference_ops() -> Ops | None:
    """torch on the CPU, or MLX on the CPU when torch isn't installed."""
    for name in ("torch", "mlx"):
        if name in available_backends():
            return get_backend(name, "cpu")
    return None


def _activate(ops: Ops) -> None:
    # MLX keeps one process-wide default device: with MLX on two devices in one process, each
    # backend object re-pins its own before computing. A wrapper exposing ``inner`` (the tests'
    # deliberately broken backends) is activated through what it wraps.
    getattr(ops, "inner", ops).activate()


def run_check(check: ParityCheck, ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
    """One check, with an exception turned into a failing row (the table must still print)."""
    try:
        if ref is not None:
            _activate(ref)
        _activate(cand)
        return check(ref, cand, dtype)
    except Exception as e:  # noqa: BLE001 - any crash in a backend is a parity failure to report
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:60]
        return [Row(f"{check.name} [{msg}]", dtype, label(cand), math.inf, math.inf, "-", False)]


def _tested_ops(backends: Sequence[str] | None, devices: Sequence[str] | None) -> list[Ops]:
    tested = available_ops(backends, devices)
    if not tested:
        raise MygptError(
            f"no installed backend/device matches --backend {list(backends or [])} "
            f"--device {list(devices or [])} — installed: {', '.join(available_backends())}"
        )
    return tested


def run_parity(
    backends: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    dtypes: Sequence[str] = DTYPES,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    slow: bool = False,
) -> list[Row]:
    """Run the checks on the selected backends/devices; returns every comparison made.

    The reference (torch-CPU, else MLX-CPU) is always used as the reference; the filters choose
    which backend/devices are *tested*. A tested backend that is the reference itself is compared
    against numpy and checked for KV-cache consistency and its own training step only.
    """
    for d in dtypes:
        if d not in DTYPES:
            raise MygptError(f"unknown dtype {d!r} — use one of: {', '.join(DTYPES)}")
    ref = reference_ops()
    if ref is None:
        raise MygptError("no backend is installed — pip install torch, or pip install mlx")
    rows: list[Row] = []
    for cand in _tested_ops(backends, devices):
        pair_ref = None if cand is ref else ref
        for check in checks(quick=quick, slow=slow):
            todo = [d for d in dtypes if d in check.dtypes]
            if progress and todo:
                progress(f"{label(cand)}: {check.name} ({', '.join(todo)})")
            for dtype in todo:
                rows.extend(run_check(check, pair_ref, cand, dtype))
    return rows
