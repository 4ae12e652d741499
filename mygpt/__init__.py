"""mygpt: train and sample small GPTs on MLX or PyTorch, with one model definition for both."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mygpt.api import Model


def load(path, backend: str = "auto", device: str = "auto", precision: str = "fp32") -> Model:
    """Load a checkpoint (native or the book's) — see :func:`mygpt.api.load`."""
    from mygpt.api import load as _load

    return _load(path, backend=backend, device=device, precision=precision)


__all__ = ["__version__", "load"]
