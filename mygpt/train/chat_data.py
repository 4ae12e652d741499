"""Chat data: ``mygpt train chats.jsonl`` with one ``{"messages": [{"role": ..., "content": ...},
...]}`` per line, rendered through the model's own chat template; the loss counts the
assistant's tokens only.

Each assistant turn's text is what the template adds between the conversation so far with the
generation prompt (``<|im_start|>assistant\\n``) and the conversation including the turn (the
reply and its end-of-turn token: the model learns to stop). The conversation is encoded segment
by segment at those boundaries (no special tokens added: the template spells them), so a token
never straddles a prompt and a reply. Conversations are concatenated into one stream, as text
is; windows are drawn from it by the same seeded sampler. The stream holds ``id * 2 + mask`` in
one array, so the sampler, its resume state and the validation split work unchanged, and a
target counts when its mask bit is set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mygpt.errors import MygptError
from mygpt.tokenizers.jinja import compile_jinja


def is_chat_file(path: str | None) -> bool:
    return bool(path) and Path(path).suffix.lower() == ".jsonl"


def _messages(line: str, where: str) -> list[dict]:
    try:
        obj = json.loads(line)
    except ValueError:
        raise MygptError(f'{where} is not JSON — one {{"messages": [...]}} per line') from None
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    ok = (
        isinstance(msgs, list)
        and msgs
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in msgs
        )
    )
    if not ok:
        raise MygptError(
            f'{where} has no "messages" list of {{"role", "content"}} strings — write one '
            'conversation per line: {"messages": [{"role": "user", "content": "..."}, ...]}'
        )
    return msgs


def _segments(render, msgs: list[dict], where: str) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces."""
    full = render(msgs, False)
    pieces, at = [], 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt, upto = render(msgs[:i], True), render(msgs[: i + 1], False)
        start, end = len(prompt), len(upto)
        if not (full.startswith(upto) and upto.startswith(prompt) and start >= at):
            raise MygptError(
                f"{where}: the chat template does not render this conversation turn by turn "
                "(a prefix renders differently), so the assistant's tokens can't be found — "
                "use a model whose template appends each message"
            )
        pieces += [(full[at:start], False), (full[start:end], True)]
        at = end
    pieces.append((full[at:], False))
    return [(t, a) for t, a in pieces if t]


def template_renderer(path: Path, tokenizer: Any) -> Callable[[list[dict], bool], str]:
    """``render(messages, add_generation_prompt) -> text`` with the model's own chat template,
    as transformers' ``apply_chat_template`` renders it."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise MygptError(
            f"{path} is chat data, but the model's tokenizer has no chat template — --init-from "
            "a model with one (an instruct model), or train on plain text"
        )
    compiled, special = compile_jinja(template), tokenizer.special_tokens_map()

    def render(msgs: list[dict], gen: bool) -> str:
        return compiled.render(messages=msgs, add_generation_prompt=gen, tools=None,
                               documents=None, **special)  # fmt: skip

    return render


def encode_chats(path: Path, tokenizer: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids, their assistant mask, and the number of conversations."""
    render = template_renderer(path, tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    count = 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        msgs, count = _messages(line, f"{path} line {n}"), count + 1
        for text, assistant in _segments(render, msgs, f"{path} line {n}"):
            piece = tokenizer.encode(text, add_special_tokens=False)
            ids += piece
            mask += [int(assistant)] * len(piece)
    if not any(mask):
        raise MygptError(f"{path} has no assistant messages — the loss would count nothing")
    return np.asarray(ids, np.int64), np.asarray(mask, np.int64), count


def chat_stream(path: Path, tokenizer: Any) -> tuple[np.ndarray, Any, str]:
    """The packed ``id * 2 + mask`` stream, a token-file stand-in, and the start line."""
    ids, mask, n = encode_chats(path, tokenizer)
    stream = ids * 2 + mask
    # the assistant tokens that are ever a target (the first token of the stream never is)
    counted = int(mask[1:].sum())
    info = SimpleNamespace(path=path, num_tokens=len(stream), dtype=stream.dtype)
    line = (f"chat data: {n} conversations · loss on {counted:,} assistant tokens / "
            f"{len(ids):,} total ({counted / len(ids):.1%})")  # fmt: skip
    return stream, info, line


def split_masked(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """(x, y, mask) from a window of the packed stream."""
    xc, yc = batch
    return xc >> 1, yc >> 1, (yc & 1).astype(np.float32)
