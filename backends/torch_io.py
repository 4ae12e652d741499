"""The one place that touches PyTorch for the book's ``.ckpt`` files.

The book saves a pickled dict with ``torch.save``. Reading it goes through
``torch.load(..., weights_only=True)`` only: torch's restricted unpickler refuses anything but
tensors and plain containers, so a malicious ``.ckpt`` cannot run code. Everything handed back is
numpy, so ``mygpt.checkpoint`` (and every caller) stays framework-free.

torch is imported inside the functions: a machine with only MLX installed can import this module
and still use native checkpoints; it only fails, with a one-line hint, if it meets a ``.ckpt``.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mygpt.errors import MygptError
from mygpt.fileio import atomic_write

_NO_TORCH = (
    "reading the book's .ckpt files needs PyTorch — pip install torch "
    "(or convert the file with `mygpt convert` on a machine that has it)"
)
_NO_TORCH_WRITE = (
    "writing the book's .ckpt format needs PyTorch — pip install torch "
    "(or keep the native .safetensors checkpoint, which needs no framework)"
)


def _import_torch(message: str):
    try:
        import torch
    except ImportError:
        raise MygptError(message) from None
    return torch


def _first_line(exc: BaseException) -> str:
    """The gist of a torch error: its first sentence of its first line (torch's run long)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    text = lines[0].strip().split(". ")[0].rstrip(".")
    return text if len(text) <= 160 else text[:157] + "..."


def _map_leaves(obj: Any, leaf: Any) -> Any:
    """Apply ``leaf`` to every non-container value; dicts, lists and tuples keep their type, and a
    state dict keeps its ``_metadata`` (torch's per-module version record)."""
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _map_leaves(v, leaf)
        meta = getattr(obj, "_metadata", None)
        if meta is not None:
            out._metadata = meta  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_leaves(v, leaf) for v in obj)
    return leaf(obj)


def _to_numpy(obj: Any, torch: Any) -> Any:
    """Tensors become numpy arrays (bfloat16 widened to float32, which is exact)."""

    def leaf(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        t = x.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy()

    return _map_leaves(obj, leaf)


def _to_torch(obj: Any, torch: Any) -> Any:
    """numpy arrays become tensors that own their memory (not views)."""

    def leaf(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.array(x, copy=True, order="C"))
        return x

    return _map_leaves(obj, leaf)


def read_torch_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with tensors turned into numpy.

    Every failure torch can raise for a bad file (truncated zip, garbage, an object the restricted
    unpickler refuses) becomes a one-line :class:`MygptError` naming the file.
    """
    path = Path(path)
    torch = _import_torch(_NO_TORCH)
    try:
        # A file object, not the path: recent torch.load dispatches on a ".safetensors" suffix,
        # and the format here was already decided from the file's bytes.
        with open(path, "rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MygptError(f"checkpoint {path} does not exist — check the path") from None
    except pickle.UnpicklingError as e:
        detail = _first_line(e)
        if "weights only" in detail.lower() or "weights_only" in detail.lower():
            raise MygptError(
                f"{path} holds objects that PyTorch's safe loader (weights_only=True) refuses "
                f"({detail}) — it is not a plain book checkpoint; only load files you trust, and "
                "re-save it as tensors and plain containers"
            ) from None
        raise MygptError(
            f"{path} is not a readable PyTorch checkpoint ({detail}) — the file is corrupt or "
            "not a .ckpt; use another copy or retrain"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise MygptError(
            f"{path} is truncated or corrupt ({_first_line(e)}) — the save was probably "
            "interrupted or the copy is incomplete; use another copy or retrain"
        ) from None
    except Exception as e:  # torch raises assorted types for damaged archives
        raise MygptError(
            f"{path} could not be read by torch.load ({type(e).__name__}: {_first_line(e)}) — "
            "the file is corrupt or not a book checkpoint"
        ) from None
    if not isinstance(obj, dict):
        raise MygptError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint dict — "
            "pass a .ckpt written by the book's mygpt or by `mygpt convert`"
        )
    return _to_numpy(obj, torch)


def write_torch_checkpoint(path: str | os.PathLike, obj: dict) -> None:
    """``torch.save`` ``obj`` (numpy arrays become tensors) to ``path`` atomically.

    The temp file is fsynced before the rename, so a crash leaves either the old file or the new one.
    """
    torch = _import_torch(_NO_TORCH_WRITE)
    converted = _to_torch(obj, torch)
    atomic_write(path, lambda f: torch.save(converted, f), "checkpoint")


def book_rope_tables(max_seq_len: int, head_dim: int, base: float = 10000.0):
    """The book's ``rope_cos`` / ``rope_sin`` buffers, bit for bit, as float32 numpy arrays.

    They are computed with torch's float32 kernels on purpose: numpy's (and even correctly
    rounded) float32 cos/sin differ from torch's in the last bit for a few dozen entries, and the
    book's files must round-trip exactly. inv_freq_i = 1 / base^(2i/D), angle = pos * inv_freq.
    """
    torch = _import_torch(_NO_TORCH_WRITE)
    base_value = int(base) if float(base).is_integer() else float(base)
    inv_freq = 1.0 / (base_value ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
    return angles.cos().numpy(), angles.sin().numpy()
