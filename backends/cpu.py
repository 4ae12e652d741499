"""CPU facts that both backends' precision and threading policies need (no framework import)."""

from __future__ import annotations

import os
import platform
import sys
import time


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively, and why we think so."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return True, "Apple Silicon CPUs have bf16 (AMX) units"
    flags = _cpu_flags()
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "bf16 is not native on this CPU (no AVX512-BF16/AMX): using fp32"


def physical_cores() -> int:
    """Cores to give a compute thread pool (hyper-threads only add contention for matmuls)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            pairs = set()
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    phys = core = None
            if pairs:
                return len(pairs)
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


def _busy_cores(samples: int = 5, interval: float = 0.01) -> int:
    """Processes running right now besides this one (``procs_running`` from /proc/stat, averaged
    over a few samples; the load average lags by a minute, too slow for a start-up decision)."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        counts.append(int(line.split()[1]) - 1)  # minus the reader itself
                        break
        except OSError:
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, round(sum(counts) / len(counts))) if counts else 0


def compute_threads(requested: int | None = None) -> tuple[int, str]:
    """Threads for a CPU compute pool, and why.

    One per physical core that is not already busy: an OpenMP pool that shares a core with another
    busy process spins at its barriers, and on a 2-core machine that made a training step 10-100x
    slower than with one thread (measured here). ``MYGPT_THREADS`` or ``requested`` wins.
    """
    if requested:
        return requested, "requested"
    env = os.environ.get("MYGPT_THREADS")
    if env:
        try:
            return max(1, int(env)), "MYGPT_THREADS"
        except ValueError:
            pass
    cores = physical_cores()
    busy = _busy_cores()
    n = max(1, cores - busy)
    why = f"{cores} physical cores" + (f", ~{busy} busy with other work" if busy else "")
    return n, why
