"""Train/validation split and batch sampling over a token array or memmap (backend-free numpy).

Both backends draw their batches here, so MLX and torch runs see identical data for a seed. The
sampler never copies the token stream: each batch gathers ``B`` windows of ``T + 1`` tokens with one
fancy index, so memory stays at one batch whatever the corpus size (a memmapped 500 MB token file
costs the same as a 5 MB one).
"""

from __future__ import annotations

import numpy as np

from mygpt.errors import MygptError


def split_tail(
    tokens: np.ndarray, val_split: float, *, seq_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` views of ``tokens``: val is the last ``val_split`` fraction (the book's split).

    ``val_split == 0`` gives an empty ``val``. With ``seq_len``, each non-empty part must hold at
    least ``seq_len + 1`` tokens (one window and its targets), else a one-line error says what to
    change. Both parts are views: nothing is copied, a memmap stays a memmap.
    """
    try:
        v = float(val_split)
    except (TypeError, ValueError):
        raise MygptError(f"--val-split must be a number in [0, 1), not {val_split!r}") from None
    if not 0.0 <= v < 1.0:
        raise MygptError(f"--val-split must be in [0, 1), not {val_split} — e.g. --val-split 0.1")
    n = len(tokens)
    n_train = int(n * (1.0 - v))
    train, val = tokens[:n_train], tokens[n_train:]
    if seq_len is not None:
        need = seq_len + 1
        if len(train) < need:
            raise MygptError(
                f"--val-split {val_split} leaves {len(train)} training tokens, fewer than "
                f"--seq-len + 1 = {need} — use a smaller --val-split or --seq-len, or more text"
            )
        if v > 0 and len(val) < need:
            raise MygptError(
                f"--val-split {val_split} leaves {len(val)} validation tokens, fewer than "
                f"--seq-len + 1 = {need} — use a larger --val-split, a smaller --seq-len, or more text"
            )
    return train, val


class BatchSampler:
    """Uniform random windows from a token stream: ``sample() -> (inputs, targets)``, int64 (B, T).

    Window starts are uniform in ``[0, len - seq_len - 1]`` (the book's rule), drawn from
    ``numpy.random.Generator(PCG64(seed))``. ``state_dict`` / ``load_state_dict`` carry the bit
    generator's state, so a resumed run draws exactly the batches the uninterrupted run would have.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 42) -> None:
        if batch_size < 1:
            raise MygptError(f"--batch-size must be at least 1, not {batch_size}")
        if seq_len < 1:
            raise MygptError(f"--seq-len must be at least 1, not {seq_len}")
        if tokens.ndim != 1:
            raise MygptError(f"expected a 1-D token stream, got shape {tokens.shape}")
        n = len(tokens)
        if n < seq_len + 1:
            raise MygptError(
                f"the corpus has {n} tokens, fewer than --seq-len + 1 = {seq_len + 1} — use a "
                f"shorter --seq-len (at most {max(n - 1, 0)}) or more text"
            )
        self.tokens = tokens
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        # Offsets of one window, reused by every batch: starts[:, None] + offsets is (B, T + 1).
        self._offsets = np.arange(self.seq_len + 1, dtype=np.int64)
        self._high = n - self.seq_len  # exclusive bound: last start is n - seq_len - 1

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        starts = self.rng.integers(0, self._high, size=self.batch_size, dtype=np.int64)
        windows = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        """JSON-able: the sampler's shape and the PCG64 state (Python ints, exact)."""
        return {
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "num_tokens": int(len(self.tokens)),
            "bit_generator": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; a different corpus or shape is an error."""
        try:
            bg = state["bit_generator"]
            mine = {
                "batch_size": self.batch_size,
                "seq_len": self.seq_len,
                "num_tokens": int(len(self.tokens)),
            }
            theirs = {k: int(state[k]) for k in mine}
        except (KeyError, TypeError, ValueError) as e:
            raise MygptError(
                f"batch sampler state is incomplete ({e}) — the resume checkpoint is "
                "damaged; start a fresh run"
            ) from None
        if mine != theirs:
            diff = ", ".join(f"{k} {theirs[k]} -> {mine[k]}" for k in mine if mine[k] != theirs[k])
            raise MygptError(
                f"cannot resume the batch sampler: {diff} — resume with the same "
                "corpus, tokenizer, --batch-size and --seq-len, or start a fresh run"
            )
        if not isinstance(bg, dict) or bg.get("bit_generator") != "PCG64":
            raise MygptError(
                "batch sampler state is not a PCG64 state — the resume checkpoint is "
                "damaged or from another program; start a fresh run"
            )
        self.rng.bit_generator.state = bg
        self.seed = int(state.get("seed", self.seed))
