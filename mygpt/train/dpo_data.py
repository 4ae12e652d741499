"""Preference pairs for ``mygpt train PAIRS.jsonl --dpo``: trl's formats, tokenized, truncated
and batched.

One JSON object per line, as trl's ``DPOTrainer`` reads them:

* standard: ``{"prompt": "...", "chosen": "...", "rejected": "..."}`` (strings). Each response
  gets the tokenizer's EOS token appended where it has one, as trl does;
* conversational: the same keys holding lists of ``{"role", "content"}`` messages, rendered with
  the model's chat template (the prompt with the generation prompt, each response as what the
  template adds after it, its end-of-turn token included); or, trl's implicit prompt, only
  ``"chosen"`` and ``"rejected"`` conversations, whose shared leading messages are the prompt.

A pair is two rows, prompt + chosen and prompt + rejected, right-padded to ``--seq-len``; the
loss mask marks the response's tokens. Truncation is trl's (``DPOTrainer.tokenize_row``, up to
0.11): when prompt + the longer response exceed the window, the prompt keeps its last
``--dpo-max-prompt`` tokens; if that is still too long, the responses keep their first tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mygpt.console import console
from mygpt.errors import MygptError

ROW_FORMAT = (
    'one {"prompt": ..., "chosen": ..., "rejected": ...} per line, as strings or as lists of '
    '{"role", "content"} messages'
)


def _is_messages(v: Any) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in v
        )
    )


def parse_row(line: str, where: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of one line: three strings, or three message lists."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise MygptError(f"{where} is not JSON — write {ROW_FORMAT}") from None
    if not isinstance(obj, dict) or "chosen" not in obj or "rejected" not in obj:
        raise MygptError(f'{where} has no "chosen" and "rejected" — write {ROW_FORMAT}')
    c, r = obj["chosen"], obj["rejected"]
    if "prompt" not in obj and _is_messages(c) and _is_messages(r):
        return _implicit_prompt(c, r, where)
    p = obj.get("prompt")
    if all(isinstance(v, str) for v in (p, c, r)):
        if not c or not r:
            raise MygptError(f"{where}: an empty response — write {ROW_FORMAT}")
        return p, c, r
    if all(_is_messages(v) for v in (p, c, r)):
        return p, c, r
    raise MygptError(
        f'{where}: "prompt", "chosen" and "rejected" must be all strings or all message lists '
        f"— write {ROW_FORMAT}"
    )


def _implicit_prompt(chosen: list, rejected: list, where: str) -> tuple[list, list, list]:
    """trl's ``extract_prompt``: the messages both conversations start with are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise MygptError(
            f'{where}: "chosen" and "rejected" share no leading messages, so there is no prompt — '
            'add a "prompt" list'
        )
    return chosen[:n], chosen[n:], rejected[n:]


class PairEncoder:
    """Token ids (prompt, chosen, rejected) of parsed rows, as trl tokenizes them."""

    def __init__(self, path: Path, tokenizer: Any) -> None:
        self.path, self.tokenizer = path, tokenizer
        self._render = None
        self.eos = _eos_id(tokenizer)

    def _encode(self, text: str) -> list[int]:
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        except TypeError:  # mygpt's own tokenizers add no special tokens
            return list(self.tokenizer.encode(text))

    def __call__(self, row: tuple, where: str) -> tuple[list[int], list[int], list[int]]:
        p, c, r = row
        if isinstance(p, str):
            eos = [] if self.eos is None else [self.eos]
            return self._encode(p), self._encode(c) + eos, self._encode(r) + eos
        if self._render is None:
            from mygpt.train.chat_data import template_renderer

            self._render = template_renderer(self.path, self.tokenizer)
        prompt = self._render(p, True)
        out = [self._encode(prompt)]
        for resp in (c, r):
            full = self._render(p + resp, False)
            if not full.startswith(prompt) or len(full) == len(prompt):
                raise MygptError(
                    f"{where}: the chat template does not render the prompt as the start of the "
                    "conversation, so the response can't be cut out — use a model whose "
                    "template appends each message"
                )
            out.append(self._encode(full[len(prompt) :]))
        return out[0], out[1], out[2]


def _eos_id(tokenizer: Any) -> int | None:
    eos = getattr(tokenizer, "special_tokens_map", lambda: {})().get("eos_token")
    if eos is None:
        return None
    ids = tokenizer.encode(eos, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def truncate(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int, max_prompt: int
) -> tuple[list[int], list[int], list[int], bool]:
    """trl's rule: the prompt keeps its end, then the responses keep their start."""
    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer <= max_length:
        return prompt, chosen, rejected, False
    prompt = prompt[-max_prompt:]
    if len(prompt) + longer > max_length:
        keep = max_length - len(prompt)
        chosen, rejected = chosen[:keep], rejected[:keep]
    return prompt, chosen, rejected, True


@dataclass
class PairSet:
    """Pairs as padded rows: ``x``, ``y`` (N, 2, T) int64 (chosen, rejected), ``mask`` (N, 2, T)
    float32 marking the targets that are response tokens, ``count`` (N, 2) their number."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    count: np.ndarray
    length: np.ndarray  # (N, 2) tokens in each row (prompt + response)

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """The rows of pairs ``idx``: all chosen first, then all rejected (2 len(idx) rows)."""

        def two(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a[idx, 0], a[idx, 1]])

        return two(self.x), two(self.y), two(self.mask), two(self.count)

    def part(self, where: slice) -> PairSet:
        return PairSet(*(getattr(self, f.name)[where] for f in dataclasses.fields(self)))


def encode_pairs(path: Path, tokenizer: Any, seq_len: int, max_prompt: int) -> tuple[PairSet, int]:
    """Every pair of ``path`` as a :class:`PairSet`, and how many were truncated."""
    encode = PairEncoder(path, tokenizer)
    pairs, truncated = [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MygptError(f"cannot read {path} ({e}) — pass a UTF-8 .jsonl file of pairs") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        p, c, r = encode(parse_row(line, where), where)
        if not p:
            raise MygptError(
                f"{where}: the prompt has no tokens, so no token predicts the response's first "
                "— give a prompt"
            )
        p, c, r, cut = truncate(p, c, r, seq_len + 1, max_prompt)
        truncated += cut
        pairs.append((p, c, r))
    if not pairs:
        raise MygptError(f"{path} holds no pairs — write {ROW_FORMAT}")
    return _pack(pairs, seq_len), truncated


def _pack(pairs: list[tuple[list[int], ...]], seq_len: int) -> PairSet:
    N = len(pairs)
    x = np.zeros((N, 2, seq_len), np.int64)
    y = np.zeros((N, 2, seq_len), np.int64)
    mask = np.zeros((N, 2, seq_len), np.float32)
    length = np.zeros((N, 2), np.int64)
    for i, (p, *responses) in enumerate(pairs):
        for j, resp in enumerate(responses):
            seq = np.asarray(p + resp, np.int64)
            L = length[i, j] = len(seq) - 1  # predicting positions
            x[i, j, :L], y[i, j, :L] = seq[:-1], seq[1:]
            mask[i, j, len(p) - 1 : L] = 1.0  # targets seq[len(p):], the response
    return PairSet(x, y, mask, mask.sum(-1), length + 1)


class PairSampler:
    """Shuffled epochs over the pairs (a seeded permutation per epoch), ``batch_size`` indices at
    a time; the state (epoch, cursor) resumes exactly, on any number of processes."""

    def __init__(self, num_pairs: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = int(num_pairs), int(batch_size), int(seed)
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def sample(self) -> np.ndarray:
        out = []
        while len(out) < self.batch_size:
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.cursor)
            out.extend(self._perm[self.cursor : self.cursor + take])
            self.cursor += take
        return np.asarray(out, np.int64)

    def state_dict(self) -> dict:
        return {"kind": "pairs", "num_pairs": self.n, "batch_size": self.batch_size,
                "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        mine = {"num_pairs": self.n, "batch_size": self.batch_size}
        if state.get("kind") != "pairs" or any(state.get(k) != v for k, v in mine.items()):
            raise MygptError(
                "the checkpoint's batch state is not this pair file's (another file, --batch-size "
                "or a text run) — resume with the run's own data and settings"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation(self.epoch)


class HeldOut:
    """Validation: the held-out pairs in file order, ``--eval-batches`` global batches at most
    (whole batches only, so every rank holds an equal share); nothing to resume."""

    def __init__(self, pairs: PairSet, batch_size: int, eval_batches: int) -> None:
        self.pairs, self.batch_size = pairs, batch_size
        self.batches = min(eval_batches, len(pairs) // batch_size)

    def indices(self) -> list[np.ndarray]:
        bs = self.batch_size
        return [np.arange(i * bs, (i + 1) * bs) for i in range(self.batches)]

    def state_dict(self) -> dict:
        return {"kind": "held-out pairs", "num_pairs": len(self.pairs)}

    def load_state_dict(self, state: dict) -> None:
        return None


@dataclass
class DpoData:
    """What the loop and the checkpoint need of a run's data (``RunData``'s fields), for pairs."""

    tokenizer: Any
    token_file: Any  # the file's identity, for the ranks' agreement check
    sampler: PairSampler
    val_sampler: HeldOut | None
    rows: slice  # this rank's pairs of each global batch
    num_train_tokens: int
    train: PairSet
    chat: bool = False

    def micro_batches(self, ops: Any, n: int) -> list[dict]:
        """``n`` global batches of pairs (gradient accumulation), this rank's share."""
        return [self.batch(ops, self.train, self.sampler.sample()[self.rows]) for _ in range(n)]

    def val_batches(self, ops: Any) -> list[dict]:
        held = self.val_sampler
        return [self.batch(ops, held.pairs, idx[self.rows]) for idx in held.indices()]

    @staticmethod
    def batch(ops: Any, pairs: PairSet, idx: np.ndarray) -> dict:
        x, y, mask, count = pairs.rows(idx)
        arrays = {"x": x, "y": y, "mask": mask, "count": count.astype(np.float32)}
        return {**{k: ops.asarray(v) for k, v in arrays.items()}, "idx": idx, "set": pairs}


def load_pairs(run: Any, tc: Any, tokenizer: Any) -> DpoData:
    """The run's pairs (every rank encodes the same file: deterministic, no cache)."""
    if tokenizer is None:
        raise MygptError(f"{tc.data}: --dpo tunes a trained model — pass --init-from MODEL")
    path = Path(tc.data)
    max_prompt = tc.dpo_max_prompt or tc.seq_len // 2
    pairs, cut = encode_pairs(path, tokenizer, tc.seq_len, max_prompt)
    if tc.val_file:
        val, cut_val = encode_pairs(Path(tc.val_file), tokenizer, tc.seq_len, max_prompt)
        cut += cut_val
    elif tc.val_split > 0:
        n_train = int(len(pairs) * (1.0 - tc.val_split))
        pairs, val = pairs.part(slice(None, n_train)), pairs.part(slice(n_train, None))
    else:
        val = None
    for name, part in (("training", pairs), ("held-out", val)):
        if part is not None and len(part) < tc.batch_size:
            raise MygptError(
                f"{path}: {len(part)} {name} pairs, fewer than --batch-size {tc.batch_size} — "
                "lower --batch-size (or --val-split) or add pairs"
            )
    held = HeldOut(val, tc.batch_size, tc.eval_batches) if val is not None else None
    tokens = int(pairs.length.sum())
    info = SimpleNamespace(path=path, num_tokens=int(pairs.x.size), dtype=pairs.x.dtype)
    held_line = f", {held.batches * tc.batch_size} held out" if held else ""
    console.status(
        f"dpo data: {len(pairs)} training pairs{held_line} · {cut} truncated to --seq-len "
        f"{tc.seq_len} (the prompt's end and the responses' start kept)"
    )
    sampler = PairSampler(len(pairs), tc.batch_size, tc.seed + 42)
    return DpoData(tokenizer, info, sampler, held, run.rows(tc.batch_size), tokens, pairs)
