"""The model and optimizer state a run starts from: fresh (seeded init) or a resumed checkpoint's.

Every rank builds the same state (the init is seeded numpy; a resume reads the same file), and a
digest check at start refuses a run whose ranks disagree on settings, corpus, tokenizer or weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mygpt import model
from mygpt.checkpoint import Checkpoint
from mygpt.config import ModelConfig
from mygpt.console import console
from mygpt.data.cache import _read_sidecar as read_sidecar
from mygpt.errors import MygptError
from mygpt.optim.muon import make_optimizer
from mygpt.quant import QuantizedTensor, is_quantized
from mygpt.train.config import TrainConfig
from mygpt.train.data import RunData
from mygpt.train.setup import Run


@dataclass
class TrainState:
    cfg: ModelConfig
    params: dict[str, Any]  # backend arrays: what is trained (the adapters, with --lora-rank)
    opt: Any
    start_step: int
    base: dict[str, Any] | None = None  # --lora-rank: the frozen weights (backend arrays)
    lora: Any = None  # --lora-rank: the LoraConfig
    base_ref: str = ""  # --lora-rank: the base's path or Hub id, and its digest
    base_digest: str = ""

    def lora_weights(self, params: dict[str, Any]) -> model.LoraWeights | None:
        return None if self.lora is None else model.LoraWeights(params, self.lora.scale, 0.0)

    def weights(self, params: dict[str, Any]) -> dict[str, Any]:
        """The weights the forward pass takes (the base, with --lora-rank)."""
        return params if self.base is None else self.base


def _lora_start(tc: TrainConfig, cfg: ModelConfig, np_params: dict, ckpt, init) -> dict:
    """The adapters a --lora-rank run starts from (a resumed adapter's, or peft's init) and the
    base's reference: TrainState fields."""
    from mygpt.lora import base_digest, base_reference, init_adapters

    lora = tc.lora()
    adapter = getattr(ckpt, "adapter", None)
    if ckpt is not None and adapter is None:
        raise MygptError(
            f"{ckpt.path} is a full checkpoint, not an adapter — resume it without --lora-rank"
        )
    if adapter is not None and adapter.lora != lora:
        raise MygptError(
            f"--lora settings {lora.to_dict()} contradict the adapter {ckpt.path} "
            f"({adapter.lora.to_dict()}) — --resume takes them from the adapter; drop the flags"
        )
    if adapter is not None:
        return {"adapters": adapter.tensors, "lora": lora, "base_ref": adapter.base,
                "base_digest": adapter.base_digest}  # fmt: skip
    return {"adapters": init_adapters(cfg, lora, tc.seed), "lora": lora,
            "base_ref": base_reference(tc.init_from), "base_digest": base_digest(np_params)}  # fmt: skip


def init_state(
    run: Run, tc: TrainConfig, rd: RunData, ckpt: Checkpoint | None, init: Checkpoint | None = None
) -> TrainState:
    """Weights from ``ckpt`` (a resume: optimizer and samplers too), or ``init`` (--init-from:
    weights only), or the seeded init."""
    ops = run.ops
    source = ckpt or init
    if source is not None:
        cfg, np_params = source.config, source.params
        # a real model's embedding may have spare rows past its tokenizer (padded to a multiple)
        spare_ok = rd.tokenizer.kind == "hf" and cfg.vocab_size > rd.tokenizer.vocab_size
        if cfg.vocab_size != rd.tokenizer.vocab_size and not spare_ok:
            raise MygptError(
                "checkpoint's vocab size does not match its tokenizer — the file is inconsistent"
            )
    else:
        cfg = tc.model_config(rd.tokenizer.vocab_size)
        np_params = model.init_params(cfg, seed=tc.seed, init=tc.init)
    if is_quantized(np_params) and not (tc.lora_rank or getattr(ckpt, "adapter", None)):
        raise MygptError(
            f"{source.path} is quantized: its weights can't be trained directly — train LoRA "
            "adapters on it (--lora-rank R: QLoRA), or start from the float checkpoint"
        )
    if tc.seq_len > cfg.max_seq_len:
        raise MygptError(
            f"--seq-len {tc.seq_len} exceeds the model's max_seq_len {cfg.max_seq_len} — lower --seq-len"
        )
    extra: dict[str, Any] = {}
    if tc.lora_rank or getattr(ckpt, "adapter", None) is not None:
        extra = _lora_start(tc, cfg, np_params, ckpt, init)
        base = {k: to_backend(ops, v) for k, v in np_params.items()}  # frozen: no grads, no moments
        np_params, extra["base"] = extra.pop("adapters"), base
    check_ranks_agree(run, tc, rd, np_params)
    params = ops.trainable({k: ops.asarray(v) for k, v in np_params.items()})
    opt = make_optimizer(
        ops,
        params,
        tc.optimizer,
        weight_decay=tc.weight_decay,
        adamw_lr_ratio=tc.adamw_lr_ratio,
        functional=tc.compile,  # --compile compiles the optimizer step too
    )
    start_step = 0
    if ckpt is not None:
        ts = ckpt.train_state
        start_step = int(ts["step"])
        _load_optimizer(opt, int(ts.get("optimizer_steps", start_step)), ckpt.optimizer_state)
        rd.sampler.load_state_dict(ts["sampler"])
        if rd.val_sampler is not None and ts.get("val_sampler"):
            rd.val_sampler.load_state_dict(ts["val_sampler"])
    ops.seed(tc.seed)
    console.status(
        f"model: {model.count_params(cfg):,} parameters · vocab {cfg.vocab_size} · "
        f"{cfg.num_layers} layers × {cfg.embed_dim} wide · {cfg.num_heads} heads / "
        f"{cfg.num_kv_heads} kv · norm {cfg.norm} · positions {cfg.position} · "
        f"{rd.num_train_tokens:,} training tokens"
    )
    if start_step >= tc.steps:
        raise MygptError(
            f"the checkpoint is already at step {start_step} of {tc.steps} — pass a larger --steps to continue"
        )
    if extra:
        n = sum(int(v.size) for v in np_params.values())
        console.status(f"lora: rank {tc.lora_rank} on {tc.lora_targets} · {n:,} trainable parameters "
                       f"({n / model.count_params(cfg):.2%}) · base frozen")  # fmt: skip
    return TrainState(cfg, params, opt, start_step, **extra)


def to_backend(ops: Any, value: Any) -> Any:
    """A base weight on the backend: float arrays as they are, ggml blocks kept quantized."""
    return ops.quantized(value) if isinstance(value, QuantizedTensor) else ops.asarray(value)


def _load_optimizer(opt: Any, steps: int, tensors: dict) -> None:
    try:
        opt.load_state_dict(steps, tensors)
    except KeyError as e:
        raise MygptError(
            f"the checkpoint's optimizer state has no {e.args[0]} (it was trained with another "
            "--optimizer) — resume with the checkpoint's --optimizer"
        ) from None


def _digest(*parts: Any) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return h.digest()


def check_ranks_agree(run: Run, tc: TrainConfig, rd: RunData, np_params: dict) -> None:
    """Refuse to start unless every rank has the same settings, corpus, tokenizer and weights."""
    if run.dist.world_size == 1:
        return
    corpus = rd.token_file
    parts = {
        "settings (flags)": _digest(dataclasses.asdict(tc)),
        "corpus": _digest(str(corpus.num_tokens), str(corpus.dtype), _sidecar_key(corpus)),
        "tokenizer": _digest(rd.tokenizer.to_dict()),
        "initial weights": _digest(*(np_params[k].tobytes() for k in sorted(np_params))),
    }
    rows = run.dist.gather_digests(b"".join(parts.values()))
    for i, what in enumerate(parts):
        mine = [row[32 * i : 32 * (i + 1)] for row in rows]
        differ = [r for r, d in enumerate(mine) if d != mine[0]]
        if differ:
            raise MygptError(
                f"rank {', '.join(map(str, differ))} has different {what} from rank 0 — launch "
                "every rank with the same command, corpus and files"
            )


def _sidecar_key(token_file: Any) -> str:
    # the token cache's own record of the source text's content hash
    meta = read_sidecar(token_file.path) or {}
    return str(meta.get("source", {}).get("sha256"))
