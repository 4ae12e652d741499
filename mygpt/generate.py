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
from mygpt.cache import GrowingCache, RowCache, SlidingCache
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


#: rows of every batched decode step: ``mygpt serve`` decodes in groups of this many, and
#: ``generate`` pads its one stream to as many rows as compute like them (:func:`solo_rows`), so a
#: stream's arithmetic is the same alone or in company
DECODE_ROWS = 8


#: the most KV memory one fixed-shape group may take; beyond it (a real model's long context)
#: ``generate`` uses the growing cache and ``mygpt serve`` its round-robin scheduler
FIXED_SHAPE_MAX_BYTES = 512 * 2**20


def pads_to_batch(cfg: ModelConfig, dtype: str = "float32") -> bool:
    """The exactness policy for a lone stream, "pad to the batch": whether ``generate`` decodes it
    in a fixed shape that computes like the :data:`DECODE_ROWS`-row one ``mygpt serve``'s batches
    run (:func:`solo_rows` of them), so that its tokens are the ones it gets in company. True
    wherever the batch's KV buffer stays under FIXED_SHAPE_MAX_BYTES; a longer context decodes
    alone with a growing cache, as serve's round-robin scheduler does, which is exact to it by
    construction."""
    return RowCache.nbytes(cfg, DECODE_ROWS, dtype) <= FIXED_SHAPE_MAX_BYTES


_SOLO_ROWS: dict[tuple, int] = {}


def solo_rows(ops, cfg: ModelConfig, params: dict, dtype: str = "float32") -> int:
    """How many rows ``generate`` pads its lone stream to: the fewest of 1, 2 and 4 whose decode
    step gives a row the same logits, bit for bit, as :data:`DECODE_ROWS` rows do, else
    DECODE_ROWS. A BLAS picks its kernel by shape, not by value (MKL sums 1, 2-3 and 4+ rows
    differently; MLX's CPU matmul sums every row alike), so the answer is checked once per
    process for each backend, thread count, model shape, dtype and kind of weights (float, or
    quantized with its kernel), on a few steps of random tokens with different company in the
    other rows."""
    kinds = frozenset((type(w).__name__, str(getattr(w, "dtype", "")), getattr(w, "kernel", None))
                      for w in params.values())  # fmt: skip
    key = (ops.name, ops.device, getattr(ops, "threads", None), dtype, repr(cfg), kinds)
    if key not in _SOLO_ROWS:
        weights = model.prepare(ops, cfg, params, dtype)
        batch = _row_zero_logits(ops, cfg, weights, DECODE_ROWS, dtype)
        _SOLO_ROWS[key] = next((n for n in (1, 2, 4) if np.array_equal(
            _row_zero_logits(ops, cfg, weights, n, dtype), batch)), DECODE_ROWS)  # fmt: skip
    return _SOLO_ROWS[key]


def _row_zero_logits(ops, cfg: ModelConfig, weights, rows: int, dtype: str, steps: int = 4):
    """Row 0's logits over ``steps`` decode steps of ``rows`` rows; the other rows hold random
    tokens at other positions (their draws depend on ``rows``: different company each time)."""
    rng = np.random.default_rng(rows)
    mine = np.random.default_rng(0).integers(0, cfg.vocab_size, steps)
    cache = RowCache.allocate(ops, cfg, rows, dtype)
    out = []
    with ops.inference():
        for i in range(steps):
            tokens = rng.integers(0, cfg.vocab_size, rows)
            positions = rng.integers(0, cfg.max_seq_len, rows)
            tokens[0], positions[0] = mine[i], i
            x = ops.asarray(tokens[:, None])
            logits = model.forward(ops, cfg, weights, x, cache=cache.at(positions))
            out.append(ops.to_numpy(logits[0, 0]))
    return np.stack(out)


class Stream:
    """One generation's state: its tokens, its own RNG and sampling settings.

    Each stream owns a ``numpy`` generator seeded with its seed, so its draws do not depend on
    what other streams sample (a batched server keeps every stream's ``generate`` output).
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        *,
        temperature: float = 1.0,
        top_k: int | None = 10,
        top_p: float = 1.0,
        seed: int = 0,
        keep_prompt_logits: bool = False,
    ) -> None:
        if len(prompt_ids) == 0:
            raise MygptError("the prompt is empty — pass --prompt with at least one character")
        self.ids = list(prompt_ids)
        self.prompt_len = len(self.ids)
        self.rng = np.random.default_rng(seed)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.keep_prompt_logits = keep_prompt_logits
        self.prompt_logits: np.ndarray | None = None  # (prompt_len, vocab), when kept
        self.fresh = True  # nothing of it in a cache yet

    def sample(self, logits: np.ndarray) -> int:
        nxt = sample_next(
            logits, self.rng, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p
        )
        self.ids.append(nxt)
        return nxt


class Decoder:
    """Exact batched decoding: streams in fixed-shape groups of :data:`DECODE_ROWS` rows.

    A stream is prefilled alone, exactly as ``generate`` prefills (one forward of its window
    through a :class:`~mygpt.cache.GrowingCache`, also how every step past the context refills),
    then copied into its row of a :class:`~mygpt.cache.RowCache`; each decode step runs one
    (DECODE_ROWS, 1) forward per group that has work, whatever the number of live rows. The
    weights are prepared once, here.
    """

    def __init__(
        self, ops, cfg: ModelConfig, params: dict, capacity: int, dtype: str,
        rows: int = DECODE_ROWS,
    ) -> None:  # fmt: skip
        """``rows``: the groups' shape (``generate`` runs :func:`solo_rows` of them)."""
        self.ops, self.cfg, self.params, self.dtype, self.rows = ops, cfg, params, dtype, rows
        self.weights = model.prepare(ops, cfg, params, dtype)
        groups = -(-capacity // rows)
        self.groups = [RowCache.allocate(ops, cfg, rows, dtype) for _ in range(groups)]
        self.streams: list[Stream | None] = [None] * (groups * rows)

    @classmethod
    def solo(cls, ops, cfg: ModelConfig, params: dict, dtype: str) -> Decoder:
        """A decoder for one lone stream, as ``generate`` runs it: :func:`solo_rows` rows."""
        rows = solo_rows(ops, cfg, params, dtype)
        return cls(ops, cfg, params, rows, dtype, rows=rows)

    @staticmethod
    def nbytes(cfg: ModelConfig, capacity: int, dtype: str) -> int:
        """KV memory of a decoder for ``capacity`` rows, plus one prefill's cache."""
        rows = -(-capacity // DECODE_ROWS) * DECODE_ROWS
        return RowCache.nbytes(cfg, rows, dtype) + 2 * RowCache.nbytes(cfg, 1, dtype)

    def add(self, stream: Stream) -> int:
        """Give ``stream`` a free row (the lowest); its first :meth:`logits` prefills it."""
        row = self.streams.index(None)  # ValueError when full: callers admit up to capacity
        self.streams[row] = stream
        return row

    def remove(self, row: int) -> None:
        self.streams[row] = None

    def _prefill(self, row: int, stream: Stream) -> np.ndarray:
        T = self.cfg.max_seq_len
        window = stream.ids[-T:]
        cache = GrowingCache(self.cfg.num_layers, max_len=T)
        x = self.ops.asarray(np.array([window], dtype=np.int64))
        out = model.forward(self.ops, self.cfg, self.weights, x, cache=cache)
        if stream.fresh and stream.keep_prompt_logits:
            stream.prompt_logits = self.ops.to_numpy(out[0])
        stream.fresh = False
        if len(stream.ids) < T:  # it will decode from this cache next step
            group, r = divmod(row, self.rows)
            self.groups[group].load(self.ops, r, cache)
        return self.ops.to_numpy(out[:, -1])[0]

    def logits(self, rows: Sequence[int]) -> dict[int, np.ndarray]:
        """Next-token logits of each of ``rows``: prefills alone, then one step per group."""
        out, todo = {}, {}
        for row in rows:
            s = self.streams[row]
            if s.fresh or len(s.ids) > self.cfg.max_seq_len:
                out[row] = self._prefill(row, s)
            else:
                todo.setdefault(row // self.rows, []).append(row)
        T = self.cfg.max_seq_len
        for group, members in todo.items():
            # Rows without a token this step still compute and write a key: at the last index,
            # which no live row can need (a row's entry there is written by its own last decode,
            # and every step after that refills from a fresh prefill). Never at 0: a row being
            # prefilled this step would lose its first key.
            tokens = np.zeros(self.rows, dtype=np.int64)
            positions = np.full(self.rows, T - 1, dtype=np.int64)
            for row in members:
                s, r = self.streams[row], row % self.rows
                tokens[r], positions[r] = s.ids[-1], len(s.ids) - 1
            x = self.ops.asarray(tokens[:, None])
            step = model.forward(self.ops, self.cfg, self.weights, x,
                                 cache=self.groups[group].at(positions))  # fmt: skip
            step = self.ops.to_numpy(step[:, 0])
            for row in members:
                out[row] = step[row % self.rows]
        return out


def generate_steps(
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
    dtype: str = "float32",
) -> Iterator[tuple[int, np.ndarray]]:
    """``(token, the logits it was sampled from)`` for each new token: the exact cached path."""
    check_sampling_args(temperature, top_k, top_p, max_new_tokens)
    if not pads_to_batch(cfg, dtype):  # a long context: the growing cache, one row
        yield from _generate_uncached_or_sliding(
            ops, cfg, params, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, seed=seed, use_cache=True, sliding=False, dtype=dtype,
        )  # fmt: skip
        return
    stream = Stream(prompt_ids, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    with ops.inference():
        dec = Decoder.solo(ops, cfg, params, dtype)
        row = dec.add(stream)
        for _ in range(max_new_tokens):
            logits = dec.logits([row])[row]
            yield stream.sample(logits), logits


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
    stop = frozenset(int(i) for i in stop_ids)
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    if use_cache and not sliding:
        steps = generate_steps(
            ops, cfg, params, prompt_ids, max_new_tokens, dtype=dtype, **sampling
        )
    else:
        steps = _generate_uncached_or_sliding(
            ops, cfg, params, prompt_ids, max_new_tokens, use_cache=use_cache, sliding=sliding,
            dtype=dtype, **sampling,
        )  # fmt: skip
    for token, _ in steps:
        if token in stop:
            return
        yield token


def _generate_uncached_or_sliding(
    ops, cfg: ModelConfig, params: dict, prompt_ids: Sequence[int], max_new_tokens: int, *,
    temperature: float, top_k: int | None, top_p: float, seed: int, use_cache: bool,
    sliding: bool, dtype: str,
) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """The book's loop without a cache, with a growing KV cache (refilled past the window), or
    the rotating (sliding) cache of mlx-lm/llama.cpp; ``(token, logits)`` pairs."""
    check_sampling_args(temperature, top_k, top_p, max_new_tokens)
    if sliding and cfg.position != "rope":
        raise MygptError(
            "a sliding KV cache needs rotary positions (learned positions stop at max_seq_len) — "
            "drop --rotating-cache for this model"
        )
    if len(prompt_ids) == 0:
        raise MygptError("the prompt is empty — pass --prompt with at least one character")
    rng = np.random.default_rng(seed)
    ids = list(prompt_ids)
    T = cfg.max_seq_len

    def last_logits(x: list[int], cache: GrowingCache | None) -> np.ndarray:
        out = model.forward(ops, cfg, weights, ops.asarray(np.array([x], dtype=np.int64)),
                            cache=cache)  # fmt: skip
        return ops.to_numpy(out[:, -1])[0]

    kind = SlidingCache if sliding else GrowingCache
    with ops.inference():
        weights = model.prepare(ops, cfg, params, dtype)
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = last_logits(ids[-T:], None)
            elif cache is None or (not sliding and len(ids) > T):
                # (re)fill: the whole cropped window in one pass
                cache = kind(cfg.num_layers, max_len=T)
                logits = last_logits(ids[-T:], cache)
            else:
                logits = last_logits(ids[-1:], cache)
            nxt = sample_next(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)
            ids.append(nxt)
            yield nxt, logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities from fp32 logits, in float64 (``mygpt eval``'s arithmetic)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (np.log(np.exp(z - m).sum(axis=-1, keepdims=True)) + m)


def batch_invariance_check(
    ops, cfg: ModelConfig, params: dict, dtype: str = "float32", steps: int = 3, seed: int = 0
) -> float:
    """Largest |logit| difference between streams decoded together and each decoded alone.

    Eight streams with prompts of different lengths share a :class:`Decoder` group; each is
    then run alone (as ``generate`` runs it, in row 0). 0.0 means batched decoding is exact here.
    """
    rng = np.random.default_rng(seed)
    T = cfg.max_seq_len
    n = DECODE_ROWS + 2  # more streams than rows: two join in rows others have left
    prompts = [list(rng.integers(0, cfg.vocab_size, size=int(rng.integers(1, max(2, T // 2)))))
               for _ in range(n)]  # fmt: skip
    joins = [i // 2 for i in range(n)]  # streams join at different steps, mid-decode

    def run(group: list[int]) -> dict[int, list[np.ndarray]]:
        if len(group) == 1:  # as generate decodes a lone stream
            dec = Decoder.solo(ops, cfg, params, dtype)
        else:
            dec = Decoder(ops, cfg, params, DECODE_ROWS, dtype)
        live: dict[int, tuple[int, Stream]] = {}
        seen: dict[int, list[np.ndarray]] = {i: [] for i in group}
        step = 0
        while any(len(v) < steps for v in seen.values()):
            for i in group:
                if joins[i] <= step and not seen[i] and i not in live and len(live) < dec.rows:
                    live[i] = (dec.add(Stream(prompts[i], temperature=0)), None)
            out = dec.logits([row for row, _ in live.values()])
            for i, (row, _) in list(live.items()):
                seen[i].append(out[row])
                dec.streams[row].sample(out[row])
                if len(seen[i]) == steps:
                    dec.remove(row)
                    del live[i]
            step += 1
        return seen

    with ops.inference():
        together = run(list(range(n)))
        worst = 0.0
        for i in range(n):
            alone = run([i])[i]
            for a, b in zip(alone, together[i]):
                worst = max(worst, float(np.abs(a - b).max()))
    return worst
