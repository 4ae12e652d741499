"""mygpt's three tokenizers as Hugging Face ``tokenizer.json`` files that give the same ids, and back.

Built with the ``tokenizers`` library; each piece is there for a reason given beside it:

- char: ``WordLevel`` over the alphabet, one piece per character; its ``unk_token`` is not in the
  vocabulary, so an unknown character is an error, as in mygpt;
- the book's character-level BPE: ``BPE`` with no ``unk_token`` (unknown characters are dropped,
  the book's corpus policy), the merges in the book's rank order, the book's pre-tokenizer with
  ``\\s`` spelled out for Oniguruma (Python's ``\\s`` also matches U+001C-U+001F);
- byte-level BPE: GPT-2's byte-to-unicode alphabet, the GPT-4 split pattern, special tokens as
  added tokens. mygpt encodes with tiktoken's rule (merge the adjacent pair whose concatenation is
  the lowest-id token), so every split of a token into two tokens is a merge, ranked by the token.

Reading one back (``from_hf``) is the strict inverse: the file must be exactly what ``to_hf``
writes for the tokenizer it describes, or it is refused, so an import never guesses.
"""

from __future__ import annotations

import json
from typing import Any

from mygpt.errors import MygptError
from mygpt.tokenizers import tokenizer_from_dict
from mygpt.tokenizers.bpe import BOOK_PATTERN
from mygpt.tokenizers.bytebpe import GPT4_PATTERN, ByteBPETokenizer

CHAR_SPLIT = r"[\s\S]"
# the book's \s*\S+|\s+ with Python's \s: Oniguruma's \s lacks the separators U+001C-U+001F
BOOK_SPLIT_ONIG = r"[\s\x1c-\x1f]*[^\s\x1c-\x1f]+|[\s\x1c-\x1f]+"
# Oniguruma reads {1,3}+ as "one or more of {1,3}", not as a possessive {1,3}: spell it plainly
# (a possessive bounded repeat of one character class backtracks into nothing anyway)
GPT4_PATTERN_ONIG = GPT4_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")
CHAR_UNK = "<unk>"  # never a vocabulary entry: char tokens are single characters


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (the ByteLevel alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def to_hf(tok_dict: dict) -> Any:
    """A ``tokenizers.Tokenizer`` computing the same ids as the mygpt tokenizer ``tok_dict``."""
    kind = tok_dict.get("kind")
    if kind == "char":
        return _char(tok_dict)
    if kind == "bpe":
        return _book_bpe(tok_dict)
    if kind == "bytebpe":
        return _byte_bpe(tokenizer_from_dict(tok_dict))
    raise MygptError(
        f"tokenizer kind {kind!r} has no Hugging Face export — use char, bpe or bytebpe"
    )


def _char(d: dict) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(d["chars"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=CHAR_UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def _book_bpe(d: dict) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if d.get("pattern", BOOK_PATTERN) != BOOK_PATTERN:
        raise MygptError(
            f"this BPE tokenizer pre-tokenises with {d['pattern']!r}; only the book's "
            f"{BOOK_PATTERN!r} has a checked Hugging Face equivalent — retrain it with the default"
        )
    vocab_list = list(d["chars"]) + [a + b for a, b in d["merges"]]
    # a string two merges spell maps to its last position, as mygpt's lookup does
    vocab = {t: i for i, t in enumerate(vocab_list)}
    merges = list(dict.fromkeys((a, b) for a, b in d["merges"]))  # the first rank of a pair wins
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=None, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(BOOK_SPLIT_ONIG), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def _byte_merges(tok: ByteBPETokenizer, base: int) -> list[tuple[int, int]]:
    """Every split of every merged token into two tokens, ranked by the token it makes.

    Within one token, the pair mygpt trained comes first (so an import recovers it), then the
    other splits in id order.
    """
    index = {tok.token_bytes(i): i for i in range(base)}
    out: list[tuple[int, int]] = []
    for t in range(256, base):
        tb = tok.token_bytes(t)
        trained = tok.merges[t - 256]
        splits = [(index.get(tb[:k]), index.get(tb[k:])) for k in range(1, len(tb))]
        others = sorted(s for s in splits if None not in s and s != trained)
        out += [trained, *others]
    return out


def byte_level_vocab(tok: ByteBPETokenizer) -> tuple[list[str], list[tuple[str, str]]]:
    """Every token (256 bytes, then the merges) as byte-level text, GPT-2's printable stand-ins
    for bytes, and the merges as pairs of those texts: the vocabulary tokenizer.json and GGUF's
    ``gpt2`` model both hold."""
    b2u = bytes_to_unicode()
    base = 256 + len(tok.merges)
    texts = ["".join(b2u[b] for b in tok.token_bytes(i)) for i in range(base)]
    return texts, [(texts[a], texts[b]) for a, b in _byte_merges(tok, base)]


def _byte_bpe(tok: ByteBPETokenizer) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if tok.pattern != GPT4_PATTERN:
        raise MygptError(
            "this byte-level BPE tokenizer uses a custom split pattern; only the GPT-4 pattern "
            "has a checked Hugging Face equivalent — retrain it with the default pattern"
        )
    texts, merges = byte_level_vocab(tok)
    vocab = {t: i for i, t in enumerate(texts)}
    hf = Tokenizer(models.BPE(vocab, merges, unk_token=None, ignore_merges=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_PATTERN_ONIG), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in specials])
    for s, i in specials:
        if hf.token_to_id(s) != i:  # ids are assigned in order after the vocabulary
            raise MygptError(f"special token {s!r} got another id in the export — a mygpt bug")
    return hf


def tokenizer_config(tok_dict: dict) -> dict[str, Any]:
    """tokenizer_config.json: the plain fast tokenizer, nothing added to or stripped from text.

    No ``model_max_length``: rotary models run past max_seq_len (transformers would warn of
    "indexing errors" that do not happen), and a text is not a model input.
    """
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    eos = special_ids(tok_dict).get("eos_token")
    if eos is not None:
        out["eos_token"] = eos[0]
    return out


def special_ids(tok_dict: dict) -> dict[str, tuple[str, int]]:
    """``{"eos_token": ("<|endoftext|>", id)}`` where the tokenizer has an end-of-text token."""
    from mygpt.tokenizers.bytebpe import ENDOFTEXT

    specials = tok_dict.get("special_tokens") or {}
    return {"eos_token": (ENDOFTEXT, specials[ENDOFTEXT])} if ENDOFTEXT in specials else {}


# --- reading back ----------------------------------------------------------------------------


def from_hf(tokenizer_json: str, vocab_size: int, where: str) -> dict:
    """The mygpt tokenizer dict a tokenizer.json written by :func:`to_hf` describes."""
    try:
        j = json.loads(tokenizer_json)
        d = _parse(j, vocab_size)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        d = None
    if d is not None:
        try:
            again = json.loads(to_hf(d).to_str())
        except MygptError:
            again = None
        if again is not None and _same(again, j):
            return d
    raise MygptError(
        f"{where} is not a tokenizer mygpt computes exactly (its char, book BPE or byte-level "
        "BPE as `mygpt export` writes them) — only mygpt-compatible tokenizers import"
    )


def _parse(j: dict, vocab_size: int) -> dict | None:
    model = j["model"]
    if model["type"] == "WordLevel":
        vocab = model["vocab"]
        return {"kind": "char", "version": 1, "chars": sorted(vocab, key=vocab.get)}
    if model["type"] != "BPE":
        return None
    vocab, merges = model["vocab"], [_pair(m) for m in model["merges"]]
    if j["pre_tokenizer"]["type"] == "Split":
        n_chars = vocab_size - len(merges)
        chars = sorted((t for t, i in vocab.items() if i < n_chars), key=vocab.get)
        return {"kind": "bpe", "version": 1, "pattern": BOOK_PATTERN, "chars": chars,
                "merges": [list(m) for m in merges]}  # fmt: skip
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    ids = {t: i for t, i in vocab.items()}
    base = len(vocab)
    first: dict[int, list[int]] = {}
    for a, b in merges:
        first.setdefault(ids[a + b], [ids[a], ids[b]])
    if sorted(first) != list(range(256, base)) or any(
        bytes(u2b[c] for c in t) != bytes([i]) for t, i in vocab.items() if i < 256
    ):
        return None
    specials = {t["content"]: t["id"] for t in j.get("added_tokens", [])}
    return {"kind": "bytebpe", "version": 1, "pattern": GPT4_PATTERN, "bytes": 256,
            "merges": [first[t] for t in range(256, base)], "special_tokens": specials}  # fmt: skip


def _pair(m: Any) -> tuple[str, str]:
    if isinstance(m, str):  # the older "a b" merge format
        a, b = m.split(" ")
        return a, b
    a, b = m
    return a, b


def _same(a: dict, b: dict) -> bool:
    keys = ("normalizer", "pre_tokenizer", "post_processor", "decoder", "model")
    if any(a.get(k) != b.get(k) for k in keys):
        return False
    strip = ("id", "content", "special", "normalized", "single_word", "lstrip", "rstrip")
    return [{k: t.get(k) for k in strip} for t in a.get("added_tokens", [])] == [
        {k: t.get(k) for k in strip} for t in b.get("added_tokens", [])
    ]
