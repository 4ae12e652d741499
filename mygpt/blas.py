"""Which BLAS MLX's CPU matmuls run on, and the warning a run prints when it is the slow one.

Shared by ``mygpt bench`` (its table's BLAS column) and ``mygpt train`` (a start-of-run warning).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any


def mlx_blas() -> tuple[str, str | None]:
    """Which BLAS MLX's CPU matmuls run on here: ("optimized" | "reference" | "n/a", library).

    mlx[cpu] wheels for Linux bundle the *reference* BLAS (~30x slower matmuls than OpenBLAS) and
    load it privately. A BLAS in the process's global scope (``LD_PRELOAD``) wins symbol lookup,
    so the library that ``cblas_sgemm`` resolves to globally is the one MLX calls. (Other libraries
    mapped in the process, like numpy's prefixed OpenBLAS, don't count.)
    """
    if not sys.platform.startswith("linux"):
        return "n/a", None
    import ctypes

    try:
        addr = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return "reference", None  # nothing global: MLX's bundled copy is used
    lib = None
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                if lo <= (addr or 0) < hi and len(fields) >= 6:
                    lib = fields[-1]
                    break
    except OSError:
        return "n/a", None
    if lib and re.search(r"openblas|mkl|blis|flexiblas|accelerate", lib, re.I):
        return "optimized", lib
    return "reference", lib


def openblas_hint() -> str:
    """How to make MLX use OpenBLAS on this machine (Debian/Ubuntu paths)."""
    for path in (
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    ):
        if os.path.exists(path):
            return f"run with LD_PRELOAD={path}"
    return (
        "apt-get install libopenblas0-pthread, then run with "
        "LD_PRELOAD=/usr/lib/$(uname -m)-linux-gnu/openblas-pthread/libblas.so.3"
    )


def reference_blas_warning(ops: Any) -> str | None:
    """The start-of-run warning when MLX computes on its bundled reference BLAS, else None."""
    if getattr(ops, "name", None) != "mlx" or getattr(ops, "device", "cpu") != "cpu":
        return None
    if mlx_blas()[0] != "reference":
        return None
    return (
        "warning: MLX runs on the reference BLAS bundled with mlx[cpu] (matmuls ~30x slower than "
        f"OpenBLAS; training ~20x slower than --backend torch) — {openblas_hint()}"
    )
