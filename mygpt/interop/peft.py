"""LoRA adapters in peft's format: ``mygpt export ADAPTER OUTDIR --peft`` and ``mygpt import``
of a peft adapter directory.

peft's adapter directory is ``adapter_config.json`` plus ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``; ``PeftModel.from_pretrained(base,
dir)`` adds ``lora_B(lora_A(x)) * lora_alpha / r`` to each targeted module, which is mygpt's
formula. The base's q/k rows are stored in the Hugging Face half-split rotary order on export
(``architectures``), so an adapter's ``lora_B`` rows for q and k take the same permutation; its
``lora_A`` reads the layer's input features, which no permutation touches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mygpt.checkpoint import Checkpoint
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.fileio import atomic_directory
from mygpt.interop.architectures import (
    _mlp_names,
    _rope_rows,
    _rope_rows_back,
    architecture_for,
)
from mygpt.lora import TARGETS, Adapter, LoraConfig, base_digest, save_adapter

PREFIX = "base_model.model."


def _hf_module(cfg: ModelConfig, target: str, layer: int) -> str:
    """The HF module a target adapts in layer ``layer`` (``model.layers.0.self_attn.q_proj``)."""
    h = f"model.layers.{layer}"
    if target in "qkvo":
        return f"{h}.self_attn.{target}_proj"
    if target in ("gate", "up", "down"):
        return f"{h}.mlp.{target}_proj"
    hf = dict(_mlp_names(cfg))[f"{target}.weight"]  # fc1/fc2 of the GELU MLP
    return f"{h}.mlp.{hf[: -len('.weight')]}"


def _rope_heads(cfg: ModelConfig, target: str) -> int | None:
    return {"q": cfg.num_heads, "k": cfg.num_kv_heads}.get(target)


def _check_llama_family(cfg: ModelConfig) -> None:
    arch = architecture_for(cfg)  # refuses a model no architecture computes exactly
    if arch.model_type == "gpt2":
        raise MygptError(
            "peft adapters export for the Llama family (rotary positions); this model exports "
            "as GPT-2, whose fused Conv1D attention peft adapts differently — export the merged "
            "model instead (drop --peft)"
        )


def peft_tensors(cfg: ModelConfig, adapter: Adapter) -> dict[str, np.ndarray]:
    """The adapter under peft's key names, q/k ``lora_B`` rows in the half-split rotary order."""
    out = {}
    for i in range(cfg.num_layers):
        for t in adapter.lora.targets:
            stem, key = f"blocks.{i}.{TARGETS[t]}", PREFIX + _hf_module(cfg, t, i)
            a, b = adapter.tensors[f"{stem}.lora_A"], adapter.tensors[f"{stem}.lora_B"]
            heads = _rope_heads(cfg, t)
            if heads is not None:
                b = _rope_rows(b, heads, cfg.head_dim)
            out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
            out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    return out


def peft_config(cfg: ModelConfig, adapter: Adapter) -> dict:
    modules = sorted({_hf_module(cfg, t, 0).rsplit(".", 1)[1] for t in adapter.lora.targets})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": adapter.base,
        "r": adapter.lora.rank,
        "lora_alpha": adapter.lora.alpha,
        "lora_dropout": adapter.lora.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def export_peft(ckpt: Checkpoint, outdir: Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` for an unmerged adapter
    checkpoint (``load_source(..., merge=False)``)."""
    from safetensors.numpy import save

    if ckpt.adapter is None:
        raise MygptError(
            f"{ckpt.path} is a full model, not a LoRA adapter — drop --peft to export it, or "
            "train adapters with --lora-rank"
        )
    _check_llama_family(ckpt.config)
    tensors = peft_tensors(ckpt.config, ckpt.adapter)
    cfg_text = json.dumps(peft_config(ckpt.config, ckpt.adapter), indent=2) + "\n"
    with atomic_directory(outdir, "OUTDIR") as d:  # the directory as a whole, or nothing
        d.write_text("adapter_config.json", cfg_text)
        d.write_bytes("adapter_model.safetensors", save(tensors, metadata={"format": "pt"}))
    return outdir


def is_peft_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _read_peft_config(peftdir: Path) -> dict:
    try:
        conf = json.loads((peftdir / "adapter_config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise MygptError(f"{peftdir}/adapter_config.json is not valid JSON — damaged") from None
    unsupported = {
        "peft_type": conf.get("peft_type") != "LORA",
        "use_rslora": bool(conf.get("use_rslora")),
        "use_dora": bool(conf.get("use_dora")),
        "fan_in_fan_out": bool(conf.get("fan_in_fan_out")),
        "bias": conf.get("bias", "none") != "none",
        "modules_to_save": bool(conf.get("modules_to_save")),
        "rank_pattern": bool(conf.get("rank_pattern")),
        "alpha_pattern": bool(conf.get("alpha_pattern")),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise MygptError(
            f"{peftdir}: mygpt imports plain LoRA adapters; this one has {', '.join(bad)} "
            f"({', '.join(f'{k}={conf.get(k)!r}' for k in bad)}) — it can't be computed exactly"
        )
    return conf


def _targets_of(conf: dict, keys: list[str], peftdir: Path) -> tuple[str, ...]:
    mods = {k.split(".lora_")[0].rsplit(".", 1)[1] for k in keys}
    names = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
             "up_proj": "up", "down_proj": "down"}  # fmt: skip
    unknown = sorted(m for m in mods if m not in names)
    if unknown:
        raise MygptError(
            f"{peftdir}: adapters on {', '.join(unknown)} — mygpt imports adapters on "
            f"{', '.join(names)}"
        )
    order = list(names.values())
    return tuple(sorted((names[m] for m in mods), key=order.index))


def import_peft(peftdir: str | os.PathLike, output: str, base: str | None = None) -> Path:
    """A peft LoRA directory as a mygpt adapter checkpoint on ``base`` (default: the base its
    config names), checked to fit that base."""
    from mygpt.interop.import_ import read_safetensors
    from mygpt.interop.sources import load_source
    from mygpt.lora import base_reference

    peftdir = Path(peftdir)
    conf = _read_peft_config(peftdir)
    ref = base or conf.get("base_model_name_or_path")
    if not ref:
        raise MygptError(f"{peftdir}: adapter_config.json names no base model — pass --base MODEL")
    base_ckpt = load_source(ref)
    cfg = base_ckpt.config
    _check_llama_family(cfg)
    tensors = read_safetensors(peftdir / "adapter_model.safetensors")
    keys = [k for k in tensors if ".lora_A." in k or ".lora_B." in k]
    targets = _targets_of(conf, keys, peftdir)
    try:
        lora = LoraConfig(int(conf["r"]), float(conf["lora_alpha"]),
                          float(conf.get("lora_dropout") or 0.0), targets)  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise MygptError(f"{peftdir}/adapter_config.json lacks or garbles {e} — damaged") from None
    adapters = {}
    for i in range(cfg.num_layers):
        for t in targets:
            key, stem = PREFIX + _hf_module(cfg, t, i), f"blocks.{i}.{TARGETS[t]}"
            names = (f"{key}.lora_A.weight", f"{key}.lora_B.weight")
            if any(n not in tensors for n in names):
                raise MygptError(
                    f"{peftdir}: {names[0]} or its lora_B is missing — damaged adapter"
                )
            a, b = (np.asarray(tensors[n], np.float32) for n in names)
            heads = _rope_heads(cfg, t)
            adapters[f"{stem}.lora_A"] = a
            adapters[f"{stem}.lora_B"] = (
                b if heads is None else _rope_rows_back(b, heads, cfg.head_dim)
            )
    adapter = Adapter(lora, adapters, base_reference(ref), base_digest(base_ckpt.params))
    adapter.path = peftdir
    adapter.check_base(base_ckpt.params, cfg)  # shapes fit the base
    save_adapter(output, adapter)
    return Path(output)
