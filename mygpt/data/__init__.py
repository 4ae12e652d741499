"""Corpora, token caches and batches: everything between a text file and a training step.

The training loop's whole contract with this package::

    tok, tf = corpus_tokens(path, tokenizer_kind="bpe", num_merges=1024, bpe_train_bytes=50_000_000)
    train, val = split_tail(tf.open(), val_split=0.1, seq_len=256)
    sampler = BatchSampler(train, batch_size=16, seq_len=256, seed=42)
    x, y = sampler.sample()  # int64 (B, T) numpy arrays

Nothing here imports a tensor framework: both backends draw identical batches from the same numpy
code, and a memmapped token file keeps memory flat whatever the corpus size.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mygpt.data.batches import BatchSampler, split_tail
from mygpt.data.cache import (
    TokenFile,
    build_tokenizer,
    corpus_tokens,
    default_cache_dir,
    default_cache_root,
    prepare_corpus,
    prepare_tokens,
    token_dtype,
)
from mygpt.data.text import check_utf8, corpus_files, read_text, source_identity


def bundled_corpus_path() -> Path:
    """Tiny Shakespeare (public domain, 1,115,394 bytes), shipped inside the package."""
    return Path(str(resources.files("mygpt.data").joinpath("tinyshakespeare.txt")))


__all__ = [
    "BatchSampler",
    "TokenFile",
    "build_tokenizer",
    "bundled_corpus_path",
    "check_utf8",
    "corpus_files",
    "corpus_tokens",
    "default_cache_dir",
    "default_cache_root",
    "prepare_corpus",
    "prepare_tokens",
    "read_text",
    "source_identity",
    "split_tail",
    "token_dtype",
]
