"""LoRA: low-rank adapters on a frozen base model, and the adapter checkpoint.

An adapter on a linear layer ``W`` (out x in) is a pair ``A`` (r x in) and ``B`` (out x r); the
adapted layer computes ``x @ W^T + (x @ A^T) @ B^T * alpha / r`` (peft's formula and init: ``A``
kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(in)); ``B`` zeros, so training starts from the
base model exactly). The forward pass is :func:`mygpt.model.forward` with a
:class:`mygpt.model.LoraWeights`; only the adapters are trained.

The adapter checkpoint is one safetensors file: the adapter tensors (``blocks.0.mha.W_Q.lora_A``
...), and metadata holding ``format`` "mygpt-lora", the LoRA settings, a reference to the base
(a path or a Hub id) and the sha256 of the base's parameters, checked when it is loaded. It
never holds the base weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.fileio import atomic_write_bytes
from mygpt.quant import QuantizedTensor, dequantize_params

ADAPTER_FORMAT = "mygpt-lora"
ADAPTER_VERSION = 1
OPTIMIZER_PREFIX = "optimizer."

#: target names (peft's module names for the Llama family) -> the linear under a block
TARGETS = {
    "q": "mha.W_Q",
    "k": "mha.W_K",
    "v": "mha.W_V",
    "o": "mha.W_O",
    "gate": "mlp.gate",
    "up": "mlp.up",
    "down": "mlp.down",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}
#: peft's default for Llama-family models (q_proj, v_proj)
DEFAULT_TARGETS = "q,v"


@dataclass(frozen=True)
class LoraConfig:
    """Rank, scale, dropout and the targeted projections of an adapter."""

    rank: int
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": list(self.targets)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraConfig:
        return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]))


def parse_targets(spec: str) -> tuple[str, ...]:
    """``"q,v"`` -> ("q", "v"); unknown names are refused."""
    names = tuple(t.strip() for t in spec.split(",") if t.strip())
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise MygptError(
            f"--lora-targets {spec!r}: unknown target {', '.join(bad) or '(none)'} — choose from "
            f"{','.join(TARGETS)}"
        )
    return names


def adapter_shapes(cfg: ModelConfig, lora: LoraConfig) -> dict[str, tuple[int, ...]]:
    """Every adapter tensor's name and shape, in block order."""
    from mygpt.model import param_shapes

    shapes = param_shapes(cfg)
    out: dict[str, tuple[int, ...]] = {}
    for i in range(cfg.num_layers):
        for t in lora.targets:
            name = f"blocks.{i}.{TARGETS[t]}"
            if f"{name}.weight" not in shapes:
                raise MygptError(
                    f"--lora-targets {t}: this model has no {TARGETS[t]} (its MLP is "
                    f"{cfg.mlp}) — choose from {','.join(available_targets(cfg))}"
                )
            rows, cols = shapes[f"{name}.weight"]
            out[f"{name}.lora_A"] = (lora.rank, cols)
            out[f"{name}.lora_B"] = (rows, lora.rank)
    return out


def available_targets(cfg: ModelConfig) -> list[str]:
    mlp = ("gate", "up", "down") if cfg.gated else ("fc1", "fc2")
    return ["q", "k", "v", "o", *mlp]


def init_adapters(cfg: ModelConfig, lora: LoraConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """peft's init from seeded numpy: A ~ U(+-1/sqrt(in)) (kaiming-uniform, a=sqrt(5)); B = 0."""
    rng = np.random.default_rng(seed + 7919)
    out = {}
    for name, shape in adapter_shapes(cfg, lora).items():
        if name.endswith("lora_A"):
            bound = 1.0 / math.sqrt(shape[1])
            out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def merge(params: dict[str, np.ndarray], adapters: dict[str, np.ndarray], scale: float) -> dict:
    """The base weights with ``W + scale * B @ A`` folded in (float64, rounded once to float32).

    A quantized base (QLoRA) merges into float weights: every weight dequantized, the adapted
    ones plus their deltas. Quantizing the result again is a separate, explicit ``quantize``."""
    out = dequantize_params(params)
    params = out
    for name in adapters:
        if name.endswith(".lora_A"):
            stem = name[: -len(".lora_A")]
            a, b = adapters[name].astype(np.float64), adapters[f"{stem}.lora_B"].astype(np.float64)
            w = params[f"{stem}.weight"].astype(np.float64)
            out[f"{stem}.weight"] = (w + scale * (b @ a)).astype(np.float32)
    return out


def base_digest(params: dict[str, np.ndarray]) -> str:
    """sha256 over the base's float32 parameter bytes, in name order (names included); a
    quantized weight contributes its type and its block bytes."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        value = params[name]
        if isinstance(value, QuantizedTensor):
            h.update(value.kind.encode())
            h.update(np.ascontiguousarray(value.blocks).tobytes())
            continue
        h.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
    return h.hexdigest()


def base_reference(source: str | os.PathLike) -> str:
    """How an adapter names its base: an absolute path for a local file or directory, else the
    Hub id as given."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


@dataclass
class Adapter:
    """What an adapter checkpoint holds (the base is loaded separately, by reference)."""

    lora: LoraConfig
    tensors: dict[str, np.ndarray]
    base: str
    base_digest: str
    train_state: dict | None = None
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    def check_base(self, params: dict[str, np.ndarray], cfg: ModelConfig) -> None:
        """Refuse a base whose weights are not the ones the adapter was trained on."""
        if base_digest(params) != self.base_digest:
            raise MygptError(
                f"{self.path}: the base model {self.base} is not the one this adapter was "
                "trained on (its weights' sha256 differs) — restore that base (`mygpt export "
                "--base MODEL` takes another path to it)"
            )
        expected = adapter_shapes(cfg, self.lora)
        if {k: tuple(v.shape) for k, v in self.tensors.items()} != expected:
            raise MygptError(f"{self.path}: the adapter tensors do not fit the base — damaged file")


def save_adapter(path: str | os.PathLike, adapter: Adapter) -> None:
    """Write the adapter checkpoint atomically (safetensors)."""
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in adapter.tensors.items()}
    for name, value in adapter.optimizer_state.items():
        tensors[OPTIMIZER_PREFIX + name] = np.ascontiguousarray(value)
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": str(ADAPTER_VERSION),
        "lora": json.dumps(adapter.lora.to_dict()),
        "base": adapter.base,
        "base_sha256": adapter.base_digest,
        "train_state": json.dumps(adapter.train_state, ensure_ascii=False),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata), "adapter checkpoint")


def adapter_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of an adapter checkpoint; None for any other file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                return None
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if isinstance(meta, dict) and meta.get("format") == ADAPTER_FORMAT:
        return meta
    return None


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter checkpoint (no base: see ``mygpt.interop.sources.load_source``)."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = adapter_metadata(path)
    if meta is None:
        raise MygptError(f"{path} is not a mygpt adapter checkpoint — pass one `mygpt train "
                         "--lora-rank` wrote")  # fmt: skip
    if int(meta.get("format_version", "0")) > ADAPTER_VERSION:
        raise MygptError(f"{path} was written by a newer mygpt — upgrade mygpt")
    try:
        lora = LoraConfig.from_dict(json.loads(meta["lora"]))
        train_state = json.loads(meta.get("train_state", "null"))
        tensors = load_file(path)
    except Exception as e:  # KeyError, JSON, SafetensorError
        raise MygptError(
            f"{path}: unreadable adapter checkpoint ({e}) — the file is damaged"
        ) from None
    opt = {
        k[len(OPTIMIZER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)
    }
    adapters = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    return Adapter(lora, adapters, meta["base"], meta["base_sha256"], train_state,
                   dict(sorted(opt.items())), path)  # fmt: skip
