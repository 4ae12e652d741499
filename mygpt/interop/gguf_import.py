"""``mygpt import X.gguf OUT.safetensors`` and ``mygpt.load("X.gguf")``: a llama.cpp/Ollama GGUF
file as a mygpt checkpoint.

Reads the ``llama`` (Llama, Mistral), ``qwen2`` and ``qwen3`` architectures with F32, F16 and
BF16 tensors (widened to float32 exactly) and Q8_0/Q4_0, kept as mygpt's quantized blocks byte
for byte (``mygpt.quant``; what ``mygpt quantize`` writes); any other type ``gguf.quants``
dequantizes (K-quants included) becomes float32, said in one line.
Q/K rows of a ``llama`` file are un-permuted to Hugging Face's layout (the inverse of llama.cpp's
converter), then mapped to mygpt's as ``mygpt import`` maps a Hugging Face model.

The tokenizer: the one mygpt stored (``mygpt.tokenizer``) in a file ``mygpt export`` wrote; else
a ``gpt2`` (byte-level BPE) vocabulary with a pre-tokenizer llama.cpp names and mygpt knows
becomes the equivalent ``tokenizer.json``, and a ``rwkv`` vocabulary of single characters
becomes a char tokenizer. Anything the model computes that mygpt does not (another rope scaling,
a sliding window, experts, an attention scale) is refused in one line naming it. Export then
import gives back the same float32 weights, bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import numpy as np

from mygpt.checkpoint import Checkpoint
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.interop.gguf_layout import (
    MYGPT_CONFIG_KEY,
    hf_name,
    llama_unpermute,
    mygpt_param_name,
    rope_freq_factors,
)
from mygpt.interop.gguf_tokenizer import (
    CONTROL,
    KNOWN_PRE,
    MYGPT_TOKENIZER_KEY,
    UNUSED,
    USER_DEFINED,
    rwkv_unescape,
)
from mygpt.quant import BLOCK, BLOCK_BYTES, QuantizedTensor

GGUF_ARCHS = ("llama", "qwen2", "qwen3")
#: metadata (after the architecture's prefix) that changes the function mygpt would compute
_REFUSED_KEYS = {
    "attention.sliding_window": "sliding-window attention",
    "expert_count": "mixture-of-experts layers",
    "attention.scale": "a custom attention scale",
    "attention.layer_norm_epsilon": "LayerNorm",
    "logit_scale": "scaled logits",
    "embedding_scale": "scaled embeddings",
    "final_logit_softcapping": "logit soft-capping",
}


def _fail(path: Path, what: str) -> MygptError:
    return MygptError(
        f"{path}: {what}, which mygpt does not compute exactly, so it can't be imported — mygpt "
        f"reads GGUF {', '.join(GGUF_ARCHS)} models"
    )


def _open(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise MygptError(f"{path} does not exist — pass a .gguf file")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OSError, UnicodeDecodeError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MygptError(
            f"{path} is not a readable GGUF file ({detail}) — it is truncated or damaged; "
            "download or export it again"
        ) from None


def read_metadata(reader: Any) -> dict[str, Any]:
    """Every key's value (strings decoded, arrays as lists)."""
    out = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = f.contents()
    return out


def _tensors(reader: Any, path: Path) -> dict[str, tuple[Any, np.ndarray]]:
    size = path.stat().st_size
    out = {}
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise MygptError(
                f"{path} is truncated (tensor {t.name!r} ends past the end of the file)"
            )
        out[t.name] = (t.tensor_type, t.data)
    return out


def _as_float(name: str, qtype: Any, data: np.ndarray, dequantized: set[str]) -> np.ndarray:
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize

    if qtype == T.F32:
        return np.array(data, dtype=np.float32)
    if qtype in (T.F16, T.BF16):
        return dequantize(np.asarray(data), qtype).astype(np.float32)
    try:
        out = dequantize(np.asarray(data), qtype)
    except NotImplementedError:
        raise MygptError(
            f"tensor {name!r} is {qtype.name}, which gguf cannot dequantize — convert the file "
            "to F16, Q8_0 or Q4_0 with llama-quantize first"
        ) from None
    dequantized.add(qtype.name)
    return np.ascontiguousarray(out, dtype=np.float32)


# --- the config ----------------------------------------------------------------------------------


def _llama3_scaling(factors: np.ndarray, d: int, base: float, hint: dict | None) -> dict | None:
    """The llama3 rope scaling whose ``rope_freqs`` are ``factors``: the one mygpt stored if it
    matches, else Llama 3.1/3.2's published values, else the one fitted to the smoothed band
    (llama.cpp only sees the factors, so any parameters giving the same factors are the same
    model), or None."""
    top = float(factors.max())
    candidates = [hint] if hint else []
    candidates.append(
        {
            "rope_type": "llama3",
            "factor": top,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    )
    candidates += _fitted_llama3(factors, d, base)
    for s in candidates:
        probe = ModelConfig(
            vocab_size=1,
            embed_dim=d,
            num_heads=1,
            head_dim=d,
            norm="rms",
            position="rope",
            mlp="swiglu",
            rope_base=base,
            rope_scaling=s,
        )
        if np.allclose(rope_freq_factors(probe), factors, rtol=1e-6, atol=0):
            return dict(s)
    return None


def _fitted_llama3(factors: np.ndarray, d: int, base: float) -> list[dict]:
    """Parameters fitted to the smoothed band, where 1/f = (1-s)/factor + s and s is linear in
    1/wavelength: low_freq_factor 1 and high_freq_factor 4 (Llama 3's) with the original context
    solved from one point, and, with two points or more, high_freq_factor fitted too."""
    top = float(factors.max())
    inv = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    band = (factors > 1) & (factors < top)
    if top <= 1 or not band.any():
        return []
    smooth = (1 / factors[band].astype(np.float64) - 1 / top) / (1 - 1 / top)
    x = inv[band] / (2 * np.pi)  # 1 / wavelength

    def scaling(high: float, old: float) -> dict:
        return {
            "rope_type": "llama3",
            "factor": top,
            "low_freq_factor": 1.0,
            "high_freq_factor": high,
            "original_max_position_embeddings": int(round(old)),
        }

    out = [scaling(4.0, (1 + 3 * smooth[0]) / x[0])]
    if band.sum() >= 2:
        slope, intercept = np.polyfit(x, smooth, 1)
        if intercept < 0 < slope:
            high = round(1.0 - 1.0 / intercept, 6)
            out.append(scaling(high, slope * (high - 1.0)))
    return out


def _linear_scaling(meta: dict, arch: str, path: Path) -> dict | None:
    """``{"rope_type": "linear", "factor": f}`` of a file that scales positions linearly."""
    factor = meta.get(f"{arch}.rope.scaling.factor")
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none") and factor in (None, 1.0):
        return None
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise _fail(path, f"its rope scaling factor is {factor!r}")
    return {"rope_type": "linear", "factor": float(factor)}


def _check_keys(meta: dict, arch: str, path: Path) -> None:
    for key, what in _REFUSED_KEYS.items():
        value = meta.get(f"{arch}.{key}")
        if value is None or (key == "rope.scaling.factor" and value == 1.0):
            continue
        if key == "expert_count" and value == 0:
            continue
        raise _fail(path, f"it has {what} ({arch}.{key} = {value})")
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind not in (None, "none", "linear"):
        raise _fail(path, f"it uses rope scaling {kind!r} (mygpt reads linear and llama3's)")
    for key in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"):
        if isinstance(meta.get(f"{arch}.{key}"), list):
            raise _fail(path, f"its layers differ in shape ({arch}.{key} per layer)")


def config_from_gguf(meta: dict, tensors: dict, path: Path) -> ModelConfig:
    """The mygpt config of a GGUF file's keys and tensors, or a refusal naming why not."""
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHS:
        raise _fail(path, f"its architecture is {arch!r}")
    _check_keys(meta, arch, path)

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise MygptError(f"{path} lacks {arch}.{name} — the file is incomplete")
        return value

    C, H = int(key("embedding_length")), int(key("attention.head_count"))
    D = int(key("attention.key_length", C // H))
    if int(key("attention.value_length", D)) != D or int(key("rope.dimension_count", D)) != D:
        raise _fail(path, "its value width or rotary width differs from its key width")
    stored = json.loads(meta[MYGPT_CONFIG_KEY]) if MYGPT_CONFIG_KEY in meta else {}
    if "token_embd.weight" not in tensors:
        raise MygptError(f"{path} has no token_embd.weight — the file is incomplete")
    base = float(key("rope.freq_base", 10000.0))
    scaling = _linear_scaling(meta, arch, path)
    hint = stored.get("rope_scaling")
    if (
        scaling is not None
        and isinstance(hint, dict)
        and hint.get("rope_type") == "linear"
        and np.float32(hint.get("factor")) == np.float32(scaling["factor"])
    ):
        scaling = dict(hint)  # the factor before GGUF's float32
    if "rope_freqs.weight" in tensors:
        if scaling is not None:
            raise _fail(path, "it has both linear rope scaling and rope_freqs")
        factors = np.asarray(tensors["rope_freqs.weight"][1], dtype=np.float32)
        scaling = _llama3_scaling(factors, D, base, stored.get("rope_scaling"))
        if scaling is None:
            raise _fail(path, "its rope_freqs are not a llama3 rope scaling mygpt recognises")
    fields = dict(
        vocab_size=int(tensors["token_embd.weight"][1].shape[0]), embed_dim=C, num_heads=H,
        num_kv_heads=int(key("attention.head_count_kv", H)), num_layers=int(key("block_count")),
        max_seq_len=int(key("context_length")), head_dim=D,
        mlp_hidden=int(key("feed_forward_length")),
        norm_eps=float(np.float32(key("attention.layer_norm_rms_epsilon"))), rope_base=base,
        rope_scaling=scaling, norm="rms", position="rope", mlp="swiglu",
        tie_embeddings="output.weight" not in tensors,
        attn_bias="blk.0.attn_q.bias" in tensors, attn_out_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_gate.bias" in tensors, qk_norm=arch == "qwen3",
        hf_model_type=stored.get("hf_model_type", arch), dropout=stored.get("dropout", 0.0),
    )  # fmt: skip
    if stored.get("norm_eps") is not None and np.float32(stored["norm_eps"]) == np.float32(
        fields["norm_eps"]
    ):
        fields["norm_eps"] = stored["norm_eps"]  # the value before GGUF's float32
    try:
        return ModelConfig(**fields)
    except MygptError as e:
        raise _fail(path, f"its shape has no mygpt equivalent ({str(e).split(' — ')[0]})") from None


# --- the weights ---------------------------------------------------------------------------------


def _kept_blocks(
    cfg: ModelConfig, arch: str, name: str, qtype: Any, data: np.ndarray
) -> tuple[str, QuantizedTensor]:
    """(mygpt name, its quantized record) of a Q8_0/Q4_0 tensor, blocks unchanged: only whole
    rows move (qwen2/qwen3 Q/K from the half-split layout back to mygpt's)."""
    from mygpt.interop.architectures import interleaved_to_half

    mine = mygpt_param_name(name)
    blocks = np.array(data, dtype=np.uint8)
    heads = {"attn_q": cfg.num_heads, "attn_k": cfg.num_kv_heads}.get(name.split(".")[-2])
    if arch != "llama" and heads is not None:
        back = np.empty_like(blocks)
        back[interleaved_to_half(heads, cfg.head_dim)] = blocks
        blocks = back
    rows = blocks.shape[0]
    cols = blocks.shape[1] // BLOCK_BYTES[qtype.name] * BLOCK
    return mine, QuantizedTensor(qtype.name, (rows, cols), blocks)


def params_from_gguf(
    cfg: ModelConfig, arch: str, tensors: dict, path: Path
) -> tuple[dict[str, Any], set[str]]:
    """mygpt's weights (and the quantized types that were dequantized): float32, and Q8_0/Q4_0
    kept as their blocks (``mygpt.quant``)."""
    from gguf import GGMLQuantizationType as T

    from mygpt.interop.architectures import ARCHITECTURES
    from mygpt.interop.import_ import params_from_hf

    kept: dict[str, QuantizedTensor] = {}
    hf, dequantized = {}, set()
    for name, (qtype, data) in tensors.items():
        if name == "rope_freqs.weight":
            continue
        try:
            hname = hf_name(name)
        except (KeyError, ValueError):
            raise _fail(path, f"it has a tensor mygpt does not compute ({name!r})") from None
        if qtype in (T.Q8_0, T.Q4_0):
            mine, record = _kept_blocks(cfg, arch, name, qtype, data)
            kept[mine] = record
            hf[hname] = np.zeros(record.shape, np.float32)  # checked for shape, then replaced
            continue
        w = _as_float(name, qtype, data, dequantized)
        if arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = cfg.num_heads if ".attn_q." in name else cfg.num_kv_heads
            w = llama_unpermute(w, heads)
        hf[hname] = w
    params = params_from_hf(ARCHITECTURES["llama"], cfg, hf, path)
    return {k: kept.get(k, v) for k, v in params.items()}, dequantized


# --- the tokenizer -------------------------------------------------------------------------------


def _bpe_tokenizer_json(meta: dict, pre: str) -> str:
    """A tokenizer.json computing what llama.cpp computes for a ``gpt2`` vocabulary."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    spec, ignore_merges = KNOWN_PRE[pre]
    vocab, added = {}, []
    for i, (t, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": kind == CONTROL})  # fmt: skip
        elif kind != UNUSED:
            vocab[t] = i
    merges = []
    for m in meta.get("tokenizer.ggml.merges") or []:
        cut = m.find(" ", 1)  # as llama.cpp splits them
        merges.append([m[:cut], m[cut + 1 :]])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    post = None
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        b = tokens[bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [bos], "tokens": [b]}}}  # fmt: skip
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": _full_pre(spec), "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges},
    }, ensure_ascii=False)  # fmt: skip


def _full_pre(spec: dict) -> dict:
    """A pre-tokenizer spec with the fields ``tokenizers`` wants that don't change the split."""
    if spec.get("type") == "Sequence":
        return {**spec, "pretokenizers": [_full_pre(p) for p in spec["pretokenizers"]]}
    if spec.get("type") == "ByteLevel":
        return {**spec, "trim_offsets": True}
    return dict(spec)


def tokenizer_from_gguf(meta: dict, rows: int, path: Path) -> dict:
    """The mygpt tokenizer dict of a GGUF file (see the module doc)."""
    from mygpt.tokenizers import tokenizer_from_dict

    if MYGPT_TOKENIZER_KEY in meta:
        d = json.loads(meta[MYGPT_TOKENIZER_KEY])
    else:
        d = _foreign_tokenizer(meta, path)
    n = tokenizer_from_dict(d).vocab_size
    if n > rows:
        raise MygptError(
            f"{path}: the tokenizer has {n} tokens but the model only {rows} embedding rows — "
            "the file is inconsistent"
        )
    return d


def _foreign_tokenizer(meta: dict, path: Path) -> dict:
    from mygpt.tokenizers.hf import read_hf_tokenizer

    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise MygptError(f"{path} has no tokenizer.ggml.tokens — mygpt needs the model's tokenizer")
    if model == "rwkv":
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        chars = [rwkv_unescape(t) for t, k in zip(tokens, types) if k != UNUSED]
        if all(len(c) == 1 for c in chars) and chars == sorted(set(chars)):
            return {"kind": "char", "version": 1, "chars": chars}
        raise _fail(path, "its rwkv vocabulary is not one character per token")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre not in KNOWN_PRE:
        raise _fail(path, f"its tokenizer is {model!r} with pre-tokenizer {pre!r} (mygpt reads "
                    f"gpt2 with {', '.join(KNOWN_PRE)}, and rwkv characters)")  # fmt: skip
    config: dict[str, Any] = {}
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        config["chat_template"] = template
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
    for k, i in ids.items():
        if isinstance(i, int) and 0 <= i < len(tokens):
            config[f"{k}_token"] = tokens[i]
    eos = ids["eos"] if isinstance(ids["eos"], int) else None
    generation = {"eos_token_id": eos, "bos_token_id": ids["bos"]}
    return read_hf_tokenizer(_bpe_tokenizer_json(meta, pre), config, generation, {})


def import_gguf(path: str | os.PathLike) -> Checkpoint:
    """The mygpt checkpoint (weights only) of a GGUF file, or a one-line refusal."""
    path = Path(path)
    reader = _open(path)
    meta = read_metadata(reader)
    tensors = _tensors(reader, path)
    cfg = config_from_gguf(meta, tensors, path)
    tokenizer = tokenizer_from_gguf(meta, cfg.vocab_size, path)
    params, dequantized = params_from_gguf(cfg, meta["general.architecture"], tensors, path)
    if dequantized:
        click.echo(
            f"note: {path.name}: {', '.join(sorted(dequantized))} weights dequantized to float32 "
            "(gguf.quants.dequantize)",
            err=True,
        )
    return Checkpoint(cfg, params, tokenizer, format="native", path=path)


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a GGUF file (by its magic, or its name when it doesn't exist)."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    return p.suffix == ".gguf"
