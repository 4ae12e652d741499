"""Sampling: temperature, top-k, top-p, with a KV cache on either backend.

Without a cache this is the book's loop: crop the context to ``max_seq_len``, run the whole window,
sample from the last position. With a cache each new token costs one position instead of a window,
and the tokens are the same: up to ``max_seq_len`` tokens nothing differs but the arithmetic.

Past the window the book crops, and cropping changes every cached hidden state from the second
layer on (each token's layer-2 key was computed while it could still see the tokens now dropped),
so an exact cache must be refilled at every step from then on. ``sliding=True`` (rotary models
only) instead keeps the last ``max_seq_len`` keys and values as they were, the rotating cache of
mlx-lm and llama.cpp: fast for long generations, but no longer token-for-token the book's output
once the window is full.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import numpy as np

from mygpt import model
from mygpt.config import ModelConfig
from mygpt.errors import MygptError


def sample_next(
    logits: np.ndarray,
    rng: np.random.Generator,
    *,
    temperature: float = 1.0,
    top_k: int | None = 10,
    top_p: float = 1.0,
) -> int:
    """One token id from a row of logits. ``temperature == 0`` is greedy (argmax)."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cutoff = int(np.searchsorted(cum, top_p)) + 1
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:cutoff]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def check_sampling_args(
    temperature: float, top_k: int | None, top_p: float, max_new_tokens: int
) -> None:
    if temperature < 0:
        raise MygptError(
            f"--temperature must be >= 0, got {temperature} — 0 is greedy, 1 samples as trained"
        )
    if top_k is not None and top_k < 0:
        raise MygptError(f"--top-k must be >= 0, got {top_k} — 0 turns it off")
    if not 0 < top_p <= 1:
        raise MygptError(f"--top-p must be in (0, 1], got {top_p} — 1 turns it off")
    if max_new_tokens < 0:
        raise MygptError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")


def generate(
    ops,
    cfg: ModelConfig,
    params: dict,
    prompt_ids: Sequence[int],
    max_new_tokens: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = 10,
    top_p: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
    sliding: bool = False,
    dtype: str = "float32",
    stop_ids: Collection[int] = (),
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids, one at a time (for streaming).

    A token in ``stop_ids`` (a real model's end-of-sequence ids) ends the generation; it is not
    yielded.
    """
    check_sampling_args(temperature, top_k, top_p, max_new_tokens)
    if sliding and cfg.position != "rope":
        raise MygptError(
            "a sliding KV cache needs rotary positions (learned positions stop at max_seq_len) — "
            "drop --sliding-window for this model"
        )
    if len(prompt_ids) == 0:
        raise MygptError("the prompt is empty — pass --prompt with at least one character")
    rng = np.random.default_rng(seed)
    stop = frozenset(int(i) for i in stop_ids)
    ids = list(prompt_ids)
    T = cfg.max_seq_len

    def last_logits(x: list[int], cache: model.KVCache | None) -> np.ndarray:
        out = model.forward(
            ops, cfg, params, ops.asarray(np.array([x], dtype=np.int64)), cache=cache, dtype=dtype
        )
        return ops.to_numpy(out[:, -1])[0]

    with ops.inference():
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = last_logits(ids[-T:], None)
            elif cache is None or (not sliding and len(ids) > T):
                # (re)fill: the whole cropped window in one pass
                cache = model.KVCache(cfg.num_layers, max_len=T)
                logits = last_logits(ids[-T:], cache)
            else:
                logits = last_logits(ids[-1:], cache)
            nxt = sample_next(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)
            if nxt in stop:
                return
            ids.append(nxt)
            yield nxt
