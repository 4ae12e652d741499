"""Checkpoints of a run: saved by rank 0 alone, atomically, once every rank finished the step."""

from __future__ import annotations

import os
from pathlib import Path

from mygpt.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_book_checkpoint,
    save_checkpoint,
    writes_book_format,
)
from mygpt.errors import MygptError
from mygpt.quant import refuse_quantized
from mygpt.train.config import TrainConfig
from mygpt.train.data import RunData
from mygpt.train.setup import Run
from mygpt.train.state import TrainState


def load_resumable(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint that ``--resume`` can continue (weights *and* training state); an adapter
    checkpoint comes with its base (checked against the adapter's digest)."""
    from mygpt.lora import adapter_metadata

    if adapter_metadata(path) is not None:
        from mygpt.interop.sources import load_source

        return require_resumable(load_source(path, merge=False))
    return require_resumable(load_checkpoint(path))


def require_resumable(ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` itself, if it holds the training state a resume needs."""
    if ckpt.adapter is None:  # a QLoRA adapter resumes on its quantized base; nothing else does
        refuse_quantized(ckpt.params, str(ckpt.path), "train --resume")
    if ckpt.train_state is None:
        raise MygptError(
            f"{ckpt.path} holds weights only (no optimizer state or step) — resume from a "
            "checkpoint written by `mygpt train`, or start from these weights with a new run"
        )
    return ckpt


class Saver:
    def __init__(self, run: Run, tc: TrainConfig, rd: RunData, state: TrainState) -> None:
        self.run, self.tc, self.rd, self.state = run, tc, rd, state
        self.output = Path(tc.output)
        self.last_good_step = state.start_step

    def save(self, step: int, params: dict, last_loss: float) -> None:
        """Rank 0 writes; then every rank learns whether it worked (a collective, so no rank
        runs ahead of a checkpoint that failed)."""
        error: MygptError | None = None
        if self.run.dist.is_main:
            try:
                self._write(step, params, last_loss)
            except MygptError as e:
                error = e
        ok = self.run.dist.mean([0.0 if error else 1.0])[0] == 1.0
        if error is not None:
            raise error
        if not ok:
            e = MygptError("rank 0 could not save the checkpoint — its error is above")
            e.every_rank = True  # rank 0 prints the cause
            raise e
        self.last_good_step = step

    def _write(self, step: int, params: dict, last_loss: float) -> None:
        ops, rd, state = self.run.ops, self.rd, self.state
        np_now = {k: ops.to_numpy(v) for k, v in params.items()}
        opt_steps, opt_tensors = state.opt.state_dict()
        train_state = {
            "step": step,
            "optimizer_steps": opt_steps,
            "sampler": rd.sampler.state_dict(),
            "val_sampler": rd.val_sampler.state_dict() if rd.val_sampler is not None else None,
            "args": self.tc.to_dict(),
            "loss": last_loss,
            "backend": ops.name,
            "world_size": self.run.dist.world_size,
        }
        tokenizer = rd.tokenizer.to_dict()
        if state.lora is not None:
            from mygpt.lora import Adapter, save_adapter

            adapter = Adapter(state.lora, np_now, state.base_ref, state.base_digest, train_state,
                              opt_tensors)  # fmt: skip
            save_adapter(self.output, adapter)
        elif writes_book_format(self.output):
            # the book's layout, plus the training state under keys its loader ignores
            ckpt = Checkpoint(state.cfg, np_now, tokenizer, train_state, opt_tensors)
            save_book_checkpoint(self.output, ckpt, resumable=True)
        else:
            save_checkpoint(self.output, state.cfg, np_now, tokenizer, train_state, opt_tensors)
