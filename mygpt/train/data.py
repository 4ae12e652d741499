"""A run's data: the tokenizer, the token files and the seeded batch samplers.

Every rank draws the *global* batch from the same seeded sampler and keeps its own rows, so 1, 2
or 4 processes see the same batches, and a checkpoint's sampler state resumes on any number.
The token cache and a trained tokenizer are built once, by rank 0, while the others wait; then
every rank opens the same cached files (no N-fold tokenizer training, no race on the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mygpt import data
from mygpt.console import console
from mygpt.errors import MygptError
from mygpt.train.config import TrainConfig
from mygpt.train.setup import Run


@dataclass
class RunData:
    tokenizer: Any
    token_file: Any  # the training corpus's TokenFile (its identity enters the rank check)
    sampler: data.BatchSampler
    val_sampler: data.BatchSampler | None
    rows: slice  # this rank's rows of each global batch
    num_train_tokens: int
    chat: bool = False  # the stream packs id * 2 + assistant mask (mygpt.train.chat_data)

    def micro_batches(self, ops: Any, n: int) -> list[tuple[Any, Any]]:
        """``n`` global batches (gradient accumulation), this rank's rows, on the device."""
        return [self._rows(ops, self.sampler.sample()) for _ in range(n)]

    def val_batch(self, ops: Any) -> tuple[Any, Any]:
        return self._rows(ops, self.val_sampler.sample())

    def _rows(self, ops: Any, batch: tuple[np.ndarray, np.ndarray]) -> tuple[Any, ...]:
        if self.chat:  # (x, y, mask): the loss counts the assistant's tokens only
            from mygpt.train.chat_data import split_masked

            return tuple(ops.asarray(a[self.rows]) for a in split_masked(batch))
        x, y = batch
        return ops.asarray(x[self.rows]), ops.asarray(y[self.rows])


def _prepare(tc: TrainConfig, tokenizer: Any | None) -> tuple[Any, Any, Any | None]:
    """The tokenizer, the training token file and the validation one (or None)."""
    path = Path(tc.data) if tc.data else data.bundled_corpus_path()
    quiet = dict(cache_dir=tc.cache_dir, encoding_errors=tc.encoding_errors)
    progress = console.is_main and not console.quiet
    if tokenizer is not None:
        token_file = data.prepare_tokens(path, tokenizer, progress=progress, **quiet)[0]
    else:
        tokenizer, token_file = data.corpus_tokens(
            path,
            tokenizer_kind=tc.tokenizer,
            num_merges=tc.num_merges,
            bpe_train_bytes=tc.bpe_train_bytes,
            tokenizer_file=tc.tokenizer_file,
            progress=progress,
            **quiet,
        )
    val_file = None
    if tc.val_file:
        val_file = data.prepare_tokens(Path(tc.val_file), tokenizer, progress=progress, **quiet)[0]
    return tokenizer, token_file, val_file


def _prepare_once(run: Run, tc: TrainConfig, tokenizer: Any | None):
    """Rank 0 builds the caches while the others wait, then everyone reads the same files."""
    dist = run.dist
    if dist.is_main:
        try:
            prepared = _prepare(tc, tokenizer)
        except BaseException:
            dist.main_done(False)
            raise
        dist.main_done(True)
        return prepared
    if not dist.wait_for_main():
        e = MygptError("rank 0 could not prepare the corpus — its error is above")
        e.every_rank = True  # rank 0 prints the cause
        raise e
    return _prepare(tc, tokenizer)  # every cache now hits


def load_data(run: Run, tc: TrainConfig, tokenizer: Any | None = None) -> RunData:
    """The run's samplers; ``tokenizer`` is a resumed checkpoint's (else built as the book does)."""
    from mygpt.train.chat_data import chat_stream, is_chat_file

    chat = is_chat_file(tc.data)
    if chat:  # rendered in memory on every rank (deterministic), no token cache
        if tokenizer is None:
            raise MygptError(
                f"{tc.data} is chat data — pass --init-from a model with a chat template"
            )
        tokens, token_file, line = chat_stream(Path(tc.data), tokenizer)
        val_file = None
        console.status(line)
    else:
        tokenizer, token_file, val_file = _prepare_once(run, tc, tokenizer)
        tokens = token_file.open()
    if val_file is not None:
        train_tokens, val_tokens = tokens, val_file.open()
    elif tc.val_split > 0:
        train_tokens, val_tokens = data.split_tail(tokens, tc.val_split, seq_len=tc.seq_len)
    else:
        train_tokens, val_tokens = tokens, None
    sampler = data.BatchSampler(train_tokens, tc.batch_size, tc.seq_len, seed=tc.seed + 42)
    val_sampler = None
    if val_tokens is not None:
        val_sampler = data.BatchSampler(val_tokens, tc.batch_size, tc.seq_len, seed=tc.seed + 4242)
    return RunData(tokenizer, token_file, sampler, val_sampler, run.rows(tc.batch_size),
                   len(train_tokens), chat)  # fmt: skip
