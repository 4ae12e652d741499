"""Backends: the tensor-ops interface (``base.Ops``) and its MLX and PyTorch implementations.

``get_backend("mlx" | "torch" | "auto", device=...)`` imports the framework lazily, so a machine with
only one of them installed can still use the other, and a missing one gives a one-line error that
names the install command.
"""

from __future__ import annotations

import importlib.util
import platform
import sys

from mygpt.backends.base import Array, Ops, Params
from mygpt.errors import MygptError

BACKENDS = ("mlx", "torch")
DEVICES = ("auto", "cpu", "gpu", "cuda", "mps")

_INSTALL_HINT = {
    "mlx": "pip install mlx (macOS) or pip install 'mlx[cpu]' (Linux CPU) / 'mlx[cuda]'",
    "torch": "pip install torch",
}

__all__ = [
    "Array",
    "Ops",
    "Params",
    "BACKENDS",
    "DEVICES",
    "available_backends",
    "get_backend",
    "resolve_backend_name",
]


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def is_installed(name: str) -> bool:
    module = {"mlx": "mlx.core", "torch": "torch"}[name]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def available_backends() -> list[str]:
    return [b for b in BACKENDS if is_installed(b)]


def resolve_backend_name(name: str = "auto") -> tuple[str, str]:
    """The backend to use and why: MLX on Apple Silicon, else torch if installed, else MLX."""
    if name != "auto":
        if name not in BACKENDS:
            raise MygptError(f"unknown backend {name!r} — use one of: auto, {', '.join(BACKENDS)}")
        return name, "requested"
    if is_apple_silicon() and is_installed("mlx"):
        return "mlx", "Apple Silicon: MLX is the fast path"
    if is_installed("torch"):
        return "torch", "not Apple Silicon and torch is installed"
    if is_installed("mlx"):
        return "mlx", "torch is not installed"
    raise MygptError(
        f"no backend is installed — {_INSTALL_HINT['torch']}, or {_INSTALL_HINT['mlx']}"
    )


_cache: dict[tuple[str, str], Ops] = {}


def get_backend(name: str = "auto", device: str = "auto", threads: int | None = None) -> Ops:
    """An ``Ops`` instance for ``name`` on ``device`` (cached: one per backend and device)."""
    name, _ = resolve_backend_name(name)
    if device not in DEVICES:
        raise MygptError(f"unknown device {device!r} — use one of: {', '.join(DEVICES)}")
    key = (name, device)
    if key in _cache:
        return _cache[key]
    if not is_installed(name):
        raise MygptError(f"the {name} backend is not installed — {_INSTALL_HINT[name]}")
    if name == "mlx":
        from mygpt.backends.mlx_backend import MLXOps

        ops: Ops = MLXOps(device)
    else:
        from mygpt.backends.torch_backend import TorchOps

        ops = TorchOps(device, threads=threads)
    _cache[key] = ops
    return ops
