"""CPU facts that both backends' precision and threading policies need (no framework import)."""

from __future__ import annotations

import os
import platform
import sys


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
