"""A real model's own tokenizer: its ``tokenizer.json`` run by the ``tokenizers`` library.

The ids are the ones ``transformers.AutoTokenizer`` gives (the same Rust code computes both), the
model's BOS is added where its post-processor adds one, and special tokens in text are matched as
transformers matches them. The dict form (what a checkpoint stores) carries the whole
``tokenizer.json`` plus what transformers reads beside it: the ``tokenizer_config.json`` fields
(special tokens, the chat template) and the end-of-sequence ids generation stops at, so a
fine-tuned checkpoint is self-contained and exports back as the directory it came from.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from mygpt.errors import MygptError
from mygpt.tokenizers.base import Tokenizer, corrupt

KIND = "hf"
#: tokenizer_config.json keys transformers hands to a chat template as variables
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's ByteLevel alphabet, character -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


def token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` (BPE, byte-level or SentencePiece-style) with its model's settings."""

    kind = KIND

    def __init__(
        self,
        tokenizer_json: str,
        config: dict | None = None,
        eos_token_ids: Sequence[int] = (),
        bos_token_id: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self._tok = RustTokenizer.from_str(tokenizer_json)
        except Exception as e:  # the Rust side raises its own Exception type
            raise corrupt(f"tokenizer.json does not parse ({str(e).splitlines()[0]})") from None
        self.tokenizer_json = tokenizer_json
        self.config = dict(config or {})
        self.eos_token_ids = [int(i) for i in eos_token_ids]
        self.bos_token_id = bos_token_id if isinstance(bos_token_id, int) else None
        self._byte_level = '"ByteLevel"' in tokenizer_json
        self._bytes_cache: dict[int, bytes] = {}
        self._specials = {
            t.content for t in self._tok.get_added_tokens_decoder().values() if t.special
        }

    # --- the interface ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids as ``AutoTokenizer(text)`` gives them (BOS included where the model adds one).

        A chat template's output already spells its special tokens: encode it with
        ``add_special_tokens=False``, as ``apply_chat_template`` does.
        """
        return self._encode(text, add_special_tokens)

    def encode_corpus(self, text: str) -> np.ndarray:
        return np.asarray(self._encode(text, False), dtype=np.int32)

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        try:
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except Exception as e:  # e.g. a WordLevel model without its unknown token
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MygptError(
                f"the model's tokenizer can't encode this text ({first}) — remove the characters "
                "it lacks"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(self._check_ids(ids), skip_special_tokens=False)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes of each token in turn, for streaming (a token may end mid-character)."""
        return b"".join(self._token_bytes(i) for i in self._check_ids(ids))

    def token_str(self, id: int) -> str:
        return self._tok.id_to_token(int(id)) or ""

    def to_dict(self) -> dict:
        return {
            "kind": KIND,
            "version": 1,
            "tokenizer_json": self.tokenizer_json,
            "config": self.config,
            "eos_token_ids": self.eos_token_ids,
            "bos_token_id": self.bos_token_id,
        }

    # --- what chat and generation need -------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        t = self.config.get("chat_template")
        if isinstance(t, list):  # the named-templates form: [{"name": "default", "template": ...}]
            named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
            t = named.get("default")
        return t if isinstance(t, str) else None

    def special_tokens_map(self) -> dict[str, str]:
        """``{"bos_token": "<s>", ...}``: the variables transformers gives a chat template."""
        out = {}
        for key in SPECIAL_KEYS:
            content = token_content(self.config.get(key))
            if content is not None:
                out[key] = content
        return out

    def stop_ids(self) -> list[int]:
        """The end-of-sequence ids generation stops at (generation_config, config, tokenizer)."""
        ids = list(self.eos_token_ids)
        eos = token_content(self.config.get("eos_token"))
        if eos is not None and self._tok.token_to_id(eos) is not None:
            ids.append(self._tok.token_to_id(eos))
        return list(dict.fromkeys(ids))

    def _token_bytes(self, i: int) -> bytes:
        cached = self._bytes_cache.get(i)
        if cached is None:
            cached = self._bytes_cache[i] = self._piece_bytes(i)
        return cached

    def _piece_bytes(self, i: int) -> bytes:
        piece = self._tok.id_to_token(i)
        if piece is None:
            return b""
        if piece in self._specials:
            return piece.encode("utf-8")
        if self._byte_level:
            table = _byte_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        return piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece's word boundary


def hf_tokenizer_from_dict(d: dict) -> HFTokenizer:
    """Rebuild from :meth:`HFTokenizer.to_dict` (a checkpoint's tokenizer metadata)."""
    tj = d.get("tokenizer_json")
    if not isinstance(tj, str):
        raise corrupt("an hf tokenizer needs its tokenizer.json text ('tokenizer_json')")
    config = d.get("config") or {}
    if not isinstance(config, dict):
        raise corrupt("the hf tokenizer's 'config' is not a mapping")
    eos = d.get("eos_token_ids") or []
    if not isinstance(eos, list) or not all(isinstance(i, int) for i in eos):
        raise corrupt("the hf tokenizer's 'eos_token_ids' is not a list of ids")
    return HFTokenizer(tj, config, eos, d.get("bos_token_id"))


def read_hf_tokenizer(
    tokenizer_json: str, tokenizer_config: dict, generation: dict, model_config: dict
) -> dict:
    """The hf tokenizer dict of a model directory's files (EOS ids from generation_config first)."""
    eos: list[int] = []
    for source in (generation, model_config):
        value = source.get("eos_token_id")
        for i in value if isinstance(value, list) else [value]:
            if isinstance(i, int) and not isinstance(i, bool):
                eos.append(i)
    bos = generation.get("bos_token_id", model_config.get("bos_token_id"))
    tok = HFTokenizer(tokenizer_json, tokenizer_config, list(dict.fromkeys(eos)), bos)
    if tok.vocab_size == 0:
        raise MygptError("tokenizer.json has an empty vocabulary — the file is damaged")
    return tok.to_dict()
