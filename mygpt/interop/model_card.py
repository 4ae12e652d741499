"""The README.md model card of an exported model: architecture, training settings, final losses."""

from __future__ import annotations

import json
from pathlib import Path

from mygpt.checkpoint import Checkpoint
from mygpt.interop.architectures import Architecture, mlx_lm_verdict

# the training settings worth a reader's time, in the order a run is described
_SETTINGS = (
    "steps", "batch_size", "seq_len", "lr", "min_lr", "schedule", "warmup", "max_grad_norm",
    "weight_decay", "grad_accum", "dropout", "precision", "seed", "data", "init_from",
)  # fmt: skip


def final_losses(ckpt: Checkpoint) -> dict[str, float]:
    """The last train loss the checkpoint holds, and the last val loss of its metrics log."""
    out: dict[str, float] = {}
    ts = ckpt.train_state or {}
    if isinstance(ts.get("loss"), (int, float)):
        out["train loss"] = float(ts["loss"])
    if ckpt.path is not None:
        metrics = ckpt.path.with_name(ckpt.path.stem + ".metrics.jsonl")
        for line in metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("val_loss"), (int, float)):
                out["val loss"] = float(rec["val_loss"])
    return out


def model_card(ckpt: Checkpoint, arch: Architecture, source: Path) -> str:
    cfg, ts = ckpt.config, ckpt.train_state or {}
    args = ts.get("args") or {}
    rows = [
        ("Hugging Face architecture", f"`{arch.hf_class}` (`{arch.model_type}`)"),
        ("layers x width", f"{cfg.num_layers} x {cfg.embed_dim}"),
        ("heads / K/V heads", f"{cfg.num_heads} / {cfg.num_kv_heads}"),
        ("norm", cfg.norm),
        ("positions", cfg.position),
        ("MLP", f"{cfg.mlp}, hidden {cfg.mlp_hidden}"),
        ("context (max_seq_len)", str(cfg.max_seq_len)),
        ("vocabulary", f"{cfg.vocab_size} ({ckpt.tokenizer.get('kind')} tokenizer)"),
    ]
    settings = [(k, args[k]) for k in _SETTINGS if args.get(k) not in (None, "")]
    if "step" in ts:
        settings.insert(0, ("trained steps", ts["step"]))
    losses = final_losses(ckpt)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [mygpt, {arch.model_type}]",
        "---",
        "",
        f"# {source.stem}",
        "",
        f"A small GPT trained with mygpt and exported from `{source.name}`. "
        f"It is a standard `{arch.model_type}` model: `transformers` loads it without remote code "
        "and computes the same logits as mygpt (fp32).",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "## Training",
        "",
    ]
    if settings:
        lines += ["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in settings]]
    else:
        lines.append("The checkpoint holds weights only (no training settings).")
    lines += ["", "## Final losses", ""]
    if losses:
        lines += [f"- {k}: {v:.4f} nats per token" for k, v in losses.items()]
    else:
        lines.append("Not recorded in the checkpoint.")
    lines += [
        "",
        "## Notes",
        "",
        f"- mlx-lm: {mlx_lm_verdict(arch, ckpt.config)}.",
        "- Past the context length mygpt crops the prompt to the last max_seq_len tokens, as the "
        "book does; transformers and mlx-lm do not, so long generations differ from there on.",
        "",
    ]
    return "\n".join(lines)
