"""A model's tokenizer as GGUF ``tokenizer.ggml.*`` metadata that llama.cpp tokenizes identically,
and back.

What each mygpt tokenizer becomes (llama.cpp as bundled in llama-cpp-python 0.3.36):

- byte-level BPE (mygpt's, or a model's own ``tokenizer.json``): ``gpt2`` with the merges and the
  ``tokenizer.ggml.pre`` name whose split is the tokenizer's own. A Hugging Face pre-tokenizer is
  matched field by field against the ones llama.cpp names (``KNOWN_PRE``); anything else is refused,
  because llama.cpp would split the text another way. mygpt's own byte-level BPE splits with
  tiktoken's cl100k pattern, which llama.cpp calls ``llama-bpe`` except for one clause: cl100k's
  ``\\s++$`` keeps whitespace at the very end of a text as one piece where llama-bpe cuts it after
  its last line break (``"\\n  "`` at the end of a prompt is ``"\\n"``, ``"  "``). That one
  difference is printed at export (``BYTEBPE_NOTE``).
- char: ``rwkv``, a longest-match over the bytes of each token. Single characters are prefix-free
  in UTF-8, so the longest match is the character itself: the same ids, with no BOS, no EOS and
  nothing added, as mygpt's char tokenizer. llama.cpp asserts that the vocabulary has a newline,
  so an alphabet without ``"\\n"`` is refused; and its longest match never ends (growing its
  output without bound) on an unknown character whose first UTF-8 byte begins a known one, so
  non-ASCII alphabets are refused too. An unknown ASCII character becomes token -1, which
  llama.cpp refuses to decode: an error, as in mygpt.
- the book's character-level BPE: refused (no llama.cpp pre-tokenizer splits ``\\s*\\S+|\\s+`` over
  characters).

The token list is padded with ``[PAD<i>]`` (type UNUSED) up to the embedding rows, as llama.cpp's
converter pads. The mygpt tokenizer itself is stored too (``mygpt.tokenizer``, JSON), so an
export-import round trip gives back the very tokenizer; a GGUF from elsewhere is read from its
``tokenizer.ggml.*`` keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mygpt.errors import MygptError
from mygpt.interop.hf_tokenizer import byte_level_vocab
from mygpt.tokenizers import ENDOFTEXT, GPT4_PATTERN, tokenizer_from_dict

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
MYGPT_TOKENIZER_KEY = "mygpt.tokenizer"
BYTEBPE_NOTE = (
    "note: llama.cpp splits like mygpt's byte-level BPE except at the very end of a text: "
    "trailing whitespace after a line break ('\\n  ') is two pieces there, one in mygpt"
)

#: Hugging Face pre-tokenizers llama.cpp computes, by the ``tokenizer.ggml.pre`` name its
#: converter writes for them. The regexes are the ones in the models' tokenizer.json files (and
#: quoted in llama.cpp's llama-vocab.cpp beside its own spelling of each).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


def _split_then_bytes(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
    ]}  # fmt: skip


_GPT2_BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
KNOWN_PRE: dict[str, tuple[dict, bool]] = {  # name: (pre_tokenizer, llama.cpp's ignore_merges)
    "llama-bpe": (_split_then_bytes(LLAMA3_REGEX), True),
    "qwen2": (_split_then_bytes(QWEN2_REGEX), False),
    "gpt-2": (_GPT2_BYTELEVEL, False),
    "smollm": ({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _GPT2_BYTELEVEL]}, False),
}  # fmt: skip
#: the fields of each pre-tokenizer step that change the split (others, e.g. trim_offsets, don't)
_SPLIT_FIELDS = ("type", "pattern", "behavior", "invert", "add_prefix_space", "use_regex",
                 "individual_digits", "pretokenizers")  # fmt: skip


@dataclass
class GGUFVocab:
    """Everything under ``tokenizer.ggml.*`` (and the chat template) for one model."""

    model: str
    tokens: list[str]
    types: list[int]
    pre: str | None = None
    merges: list[str] | None = None
    bos: int | None = None
    eos: int | None = None
    add_bos: bool = False
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)

    def write(self, w: Any) -> None:
        """Add the keys to a ``gguf.GGUFWriter``."""
        w.add_tokenizer_model(self.model)
        if self.pre is not None:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.merges is not None:
            w.add_token_merges(self.merges)
        if self.bos is not None:
            w.add_bos_token_id(self.bos)
        if self.eos is not None:
            w.add_eos_token_id(self.eos)
        w.add_add_bos_token(self.add_bos)  # llama-bpe adds a BOS unless told not to
        w.add_add_eos_token(False)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


def _pad(vocab: GGUFVocab, rows: int) -> GGUFVocab:
    n = len(vocab.tokens)
    if n > rows:
        raise MygptError(
            f"the tokenizer has {n} tokens but the model only {rows} embedding rows — the "
            "checkpoint is inconsistent"
        )
    vocab.tokens += [f"[PAD{i}]" for i in range(n, rows)]
    vocab.types += [UNUSED] * (rows - n)
    return vocab


def gguf_vocab(tok_dict: dict, rows: int) -> GGUFVocab:
    """The GGUF vocabulary of a mygpt tokenizer dict, padded to ``rows``, or a refusal."""
    kind = tok_dict.get("kind")
    if kind == "char":
        vocab = _char_vocab(tok_dict["chars"])
    elif kind == "bytebpe":
        vocab = _bytebpe_vocab(tok_dict)
    elif kind == "hf":
        vocab = _hf_vocab(tok_dict)
    elif kind == "bpe":
        raise MygptError(
            "the book's character-level BPE can't go to GGUF: no llama.cpp pre-tokenizer splits "
            r"text as its \s*\S+|\s+ over characters — train a byte-level BPE (--tokenizer "
            "bytebpe) or a char tokenizer"
        )
    else:
        raise MygptError(f"tokenizer kind {kind!r} has no GGUF form — use char or bytebpe")
    return _pad(vocab, rows)


# --- char: llama.cpp's rwkv vocabulary ---------------------------------------------------------


def rwkv_escape(ch: str) -> str:
    """A character as llama.cpp's ``llama_unescape_rwkv_token`` reads it back to its UTF-8 bytes
    (``\\t \\n \\r \\\\`` and lower-case ``\\xHH`` for other control bytes; the rest as is)."""
    named = {"\t": r"\t", "\n": r"\n", "\r": r"\r", "\\": "\\\\"}
    if ch in named:
        return named[ch]
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\x{ord(ch):02x}"
    return ch


def rwkv_unescape(token: str) -> str:
    """The inverse of :func:`rwkv_escape` (what llama.cpp does to each rwkv token)."""
    out, i = bytearray(), 0
    raw = token.encode("utf-8")
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):  # backslash
            nxt = chr(raw[i + 1])
            if nxt == "x":
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
                continue
            out += {"t": b"\t", "n": b"\n", "r": b"\r"}.get(nxt, nxt.encode())
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode("utf-8")


def _char_vocab(chars: list[str]) -> GGUFVocab:
    if "\n" not in chars:
        raise MygptError(
            "this char tokenizer has no newline character, and llama.cpp's vocabulary for it "
            "(rwkv) must have one — retrain the tokenizer on text with line breaks"
        )
    wide = [c for c in chars if ord(c) > 0x7F]
    if wide:
        raise MygptError(
            f"this char tokenizer has non-ASCII characters (e.g. {wide[0]!r}), and llama.cpp's "
            "vocabulary for it (rwkv) loops forever on an unknown character that shares a UTF-8 "
            "lead byte with a known one — use an ASCII alphabet or a byte-level BPE (--tokenizer "
            "bytebpe)"
        )
    tokens = [rwkv_escape(c) for c in chars]
    return GGUFVocab("rwkv", tokens, [NORMAL] * len(tokens))


# --- byte-level BPE ----------------------------------------------------------------------------


def _bytebpe_vocab(tok_dict: dict) -> GGUFVocab:
    tok = tokenizer_from_dict(tok_dict)
    if tok.pattern != GPT4_PATTERN:
        raise MygptError(
            "this byte-level BPE splits with a custom pattern that no llama.cpp pre-tokenizer "
            "computes — retrain it with the default (GPT-4) pattern"
        )
    tokens, pairs = byte_level_vocab(tok)
    base = len(tokens)
    merges = [f"{a} {b}" for a, b in pairs]
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    tokens += [s for s, _ in specials]
    types = [NORMAL] * base + [CONTROL] * len(specials)
    eos = tok.special_tokens.get(ENDOFTEXT)
    return GGUFVocab("gpt2", tokens, types, pre="llama-bpe", merges=merges, eos=eos,
                     notes=[BYTEBPE_NOTE])  # fmt: skip


def _split_spec(pre: Any) -> Any:
    """A pre-tokenizer's JSON reduced to what changes the split."""
    if isinstance(pre, dict):
        return {k: _split_spec(v) for k, v in pre.items() if k in _SPLIT_FIELDS or k == "Regex"}
    if isinstance(pre, list):
        return [_split_spec(p) for p in pre]
    return pre


def pre_name(j: dict) -> str:
    """The llama.cpp ``tokenizer.ggml.pre`` name that splits as tokenizer.json ``j`` does."""
    model = j.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise MygptError(
            f"the model's tokenizer is a {model.get('type')} model"
            + (" with byte fallback (SentencePiece style)" if model.get("byte_fallback") else "")
            + " — GGUF export covers byte-level BPE tokenizers"
        )
    norm = j.get("normalizer")
    if norm is not None and norm.get("type") != "NFC":  # NFC text is unchanged by NFC
        raise MygptError(
            f"the model's tokenizer normalizes text ({norm.get('type')}), which llama.cpp does not "
            "— it can't go to GGUF exactly"
        )
    spec = _split_spec(j.get("pre_tokenizer"))
    for name, (known, ignore_merges) in KNOWN_PRE.items():
        if spec == _split_spec(known) and bool(model.get("ignore_merges")) == ignore_merges:
            return name
    raise MygptError(
        "the model's pre-tokenizer is not one llama.cpp knows (it knows "
        f"{', '.join(KNOWN_PRE)} here), so llama.cpp would split text differently — it can't go "
        "to GGUF exactly"
    )


def _hf_merges(model: dict) -> list[str]:
    out = []
    for m in model.get("merges") or []:
        out.append(m if isinstance(m, str) else f"{m[0]} {m[1]}")
    return out


def _added_bos(tok: Any, bos: int | None) -> bool:
    """Whether the post-processor puts the BOS in front (llama.cpp's add_bos), found by asking
    the tokenizer itself; anything else it adds has no GGUF equivalent."""
    plain = tok.encode("a", add_special_tokens=False)
    full = tok.encode("a", add_special_tokens=True)
    if full == plain:
        return False
    if bos is not None and full == [bos, *plain]:
        return True
    raise MygptError(
        f"the model's tokenizer adds {full} around {plain} ('a'), which llama.cpp's add_bos / "
        "add_eos can't express — it can't go to GGUF exactly"
    )


def _hf_vocab(tok_dict: dict) -> GGUFVocab:
    tok = tokenizer_from_dict(tok_dict)
    j = json.loads(tok_dict["tokenizer_json"])
    pre = pre_name(j)
    vocab = j["model"]["vocab"]
    added = {t["id"]: t for t in j.get("added_tokens") or []}
    n = tok.vocab_size
    tokens, types = [], []
    by_id = {i: t for t, i in vocab.items()}
    for i in range(n):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    bos = tok_dict.get("bos_token_id")
    stops = tok.stop_ids()
    return GGUFVocab(
        "gpt2", tokens, types, pre=pre, merges=_hf_merges(j["model"]), bos=bos,
        eos=stops[0] if stops else None, add_bos=_added_bos(tok, bos),
        chat_template=tok.chat_template,
    )  # fmt: skip
