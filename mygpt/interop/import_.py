"""``mygpt import HFDIR OUT.safetensors``: a Hugging Face model directory as a mygpt checkpoint.

The reverse of ``mygpt export`` (gpt2, starcoder2, arcee, llama as it writes them), and real
open-weight models: Llama (llama3 or linear rope scaling, untied heads, a free head_dim, attention
and MLP biases), Mistral (its sliding window), Qwen2 (q/k/v biases), Qwen3 (q/k norms), GPT-2
(its biases and tanh GELU), Gemma 3 (docs/families.md), Phi-3 (fused projections) and OLMo 2
(norms after each sublayer), with their own tokenizer.json, chat template and EOS ids. A model is
imported only if mygpt computes exactly the same function: every feature mygpt lacks (another
rope scaling, logit soft-capping, mixture-of-experts, ...) is a one-line refusal naming it.
Export then import gives back the same bits.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mygpt.checkpoint import Checkpoint
from mygpt.config import LLAMA3_ROPE_KEYS, ROPE_SCALINGS, ModelConfig, check_rope_scaling
from mygpt.errors import MygptError
from mygpt.interop import hf_tokenizer
from mygpt.interop.architectures import ARCHITECTURES, Architecture

# tensors transformers keeps as non-persistent buffers, which older files still carry
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
_DTYPES = {"F32": np.float32, "F16": np.float16}
_WIDTHS = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1}


def _fail(where: Path, feature: str) -> MygptError:
    return MygptError(
        f"{where}: {feature}, which mygpt does not compute exactly, so it can't be imported — "
        f"mygpt loads {', '.join(ARCHITECTURES)} models (see the README's Hugging Face section)"
    )


def _read_config(hfdir: Path) -> dict[str, Any]:
    path = hfdir / "config.json"
    if not hfdir.is_dir():
        raise MygptError(f"{hfdir} is not a directory — pass a Hugging Face model directory")
    if not path.is_file():
        raise MygptError(f"{hfdir} has no config.json — pass a Hugging Face model directory")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MygptError(f"{path} is not valid JSON — the file is damaged") from None
    if not isinstance(cfg, dict):
        raise MygptError(f"{path} is not a JSON object — the file is damaged")
    return cfg


def _rope(hf: dict, where: Path, params: Any = None) -> tuple[float, dict | None]:
    """(rope_theta, the llama3 or linear scaling or None); any other scaling is refused by name.
    ``params``: one layer type's rope parameters (Gemma 3), else the model's."""
    if params is None:
        params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise _fail(where, f"its rope parameters are {params!r}")
    kind = params.get("rope_type", params.get("type", "default"))
    if float(hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))) != 1.0:
        raise _fail(where, "it rotates only part of each head (partial_rotary_factor)")
    theta = params.get("rope_theta")
    theta = float(theta if theta is not None else hf.get("rope_theta", _DEFAULT_THETA.get(
        hf.get("model_type"), 10000.0)))  # fmt: skip
    if kind == "default":
        return theta, None
    if kind in ("longrope", "su") or (kind == "yarn" and hf.get("model_type") == "phi3"):
        raise _fail(
            where, f"its rope scaling is {kind!r} (Phi-3's longrope switches its frequencies with "
            "the sequence length); mygpt computes Phi-3 models without it, such as Phi-3-mini-4k",
        )  # fmt: skip
    if kind not in ROPE_SCALINGS:
        raise _fail(where, f"it uses rope scaling {kind!r} (mygpt computes 'llama3' and 'linear')")
    keys = LLAMA3_ROPE_KEYS if kind == "llama3" else ("factor",)
    scaling = {"rope_type": kind, **{k: params.get(k) for k in keys}}
    try:
        check_rope_scaling(scaling)
    except MygptError as e:
        raise _fail(where, f"its rope scaling is incomplete ({e})") from None
    return theta, scaling


#: transformers' rope_theta default per architecture, for a config.json without one
_DEFAULT_THETA = {"starcoder2": 100000.0, "gemma3_text": 1_000_000.0}
#: the exact GELU and the tanh one under each of their names in transformers' ACT2FN
_GELUS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
          "gelu_fast": "gelu_tanh"}  # fmt: skip
#: the config key and default of each architecture's activation
_ACT_KEYS = {"gpt2": ("activation_function", "gelu_new"),
             "gemma3_text": ("hidden_activation", "gelu_pytorch_tanh")}  # fmt: skip


def _activation(hf: dict, kind: str, where: Path) -> tuple[str, str]:
    """(mlp, activation) from the config: a gated MLP's SiLU is swiglu, its GELU geglu (Llama,
    Gemma 3); the plain MLP's GELU (gpt2, starcoder2, arcee), exact or tanh."""
    key, default = _ACT_KEYS.get(kind, ("hidden_act", "silu"))
    act = hf.get(key, default)
    plain, gelus = kind in ("gpt2", "starcoder2", "arcee"), kind in ("llama", "gemma3_text")
    if act in _GELUS and (plain or gelus):
        return ("gelu" if plain else "geglu"), _GELUS[act]
    if act == "silu" and not plain and kind != "gemma3_text":
        return "swiglu", "gelu"
    if plain and act == "silu":
        raise _fail(where, "its MLP is gated (SiLU) where its config asks for a plain GELU MLP")
    raise _fail(where, f"its activation is {act!r} (mygpt computes SiLU and GELU, exact or tanh)")


#: transformers' tie_word_embeddings default per architecture, for a config.json that omits it
_TIED_BY_DEFAULT = {"gpt2": True, "starcoder2": True, "gemma3_text": True}
#: transformers' rms_norm_eps default per architecture (1e-6 for the others)
_EPS_BY_DEFAULT = {"olmo2": 1e-5, "phi3": 1e-5}
#: what the architectures mygpt refuses have that it lacks, to name it in the refusal
_KNOWN_FEATURES = {
    "mixtral": "mixture-of-experts layers", "qwen2_moe": "mixture-of-experts layers",
    "qwen3_moe": "mixture-of-experts layers", "olmoe": "mixture-of-experts layers",
    "gemma": "(1 + w) norm weights and scaled embeddings", "gemma2": "(1 + w) norm weights, "
    "scaled embeddings and logit soft-capping", "gemma3": "an image encoder (import its "
    "text model, gemma3_text)", "phi": "a parallel residual",
    "gpt_neox": "a parallel residual and partial rotary",
}  # fmt: skip


def _window(hf: dict, kind: str, where: Path) -> dict[str, Any]:
    """The sliding window: Mistral's and Phi-3's on every layer, Gemma 3's on its sliding
    layers; a window no shorter than the context is no window."""
    ctx, window = hf["max_position_embeddings"], hf.get("sliding_window")
    types = hf.get("layer_types") or []
    if kind == "gemma3_text":
        if hf.get("use_bidirectional_attention"):
            raise _fail(where, "its attention is bidirectional (use_bidirectional_attention)")
        if not types:  # transformers' rule: every sliding_window_pattern-th layer is full
            n = hf.get("sliding_window_pattern", 6)
            types = ["full_attention" if (i + 1) % n == 0 else "sliding_attention"
                     for i in range(hf["num_hidden_layers"])]  # fmt: skip
        if window is None and "sliding_attention" in types:
            window = 4096  # Gemma3TextConfig's default
        if not any(t == "sliding_attention" for t in types):
            return {}
        return dict(sliding_window=window,
                    layer_types=tuple(t.removesuffix("_attention") for t in types))  # fmt: skip
    sliding = (
        kind in ("starcoder2", "mistral", "phi3")
        or hf.get("use_sliding_window")
        or any(t == "sliding_attention" for t in types)
    )
    if not (sliding and window and window < ctx):
        return {}
    if kind not in ("mistral", "phi3"):
        raise _fail(where, f"it uses sliding-window attention (window {window} < context {ctx})")
    return dict(sliding_window=window, layer_types=("sliding",) * hf["num_hidden_layers"])


def _gemma3_fields(hf: dict, where: Path) -> dict[str, Any]:
    """Gemma 3's features: (1 + w) norms, scaled embeddings, sandwich norms, per-head q/k norms,
    its attention scale and a rope of its own for the sliding layers."""
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(cap) is not None:
            raise _fail(where, f"it soft-caps its logits ({cap})")
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise _fail(where, f"its rope parameters are {params!r}")
    base, scaling = _rope(hf, where, params.get("full_attention") or hf.get("rope_scaling") or {})
    local = params.get("sliding_attention") or {
        "rope_theta": hf.get("rope_local_base_freq", 10000.0)
    }
    local_base, local_scaling = _rope(hf, where, local)
    if local_scaling is not None:
        raise _fail(where, "its sliding layers scale their rope")
    return dict(
        rope_base=base, rope_scaling=scaling, rope_local_base=local_base, norm_offset=1.0,
        scale_embeddings=True, sandwich_norm=True, qk_norm=True,
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
        head_dim=hf.get("head_dim", 256),
    )  # fmt: skip


def _llama_family_fields(hf: dict, kind: str, where: Path) -> dict[str, Any]:
    C, H = hf["hidden_size"], hf["num_attention_heads"]
    mlp, activation = _activation(hf, kind, where)
    theta, scaling = _rope(hf, where) if kind != "gemma3_text" else (10000.0, None)
    bias = bool(hf.get("attention_bias", False))
    if kind in ("starcoder2", "mistral", "phi3"):
        bias = False  # starcoder2's use_bias biases must be zero (checked on the weights)
    eps_key = "norm_epsilon" if kind == "starcoder2" else "rms_norm_eps"
    fields = dict(
        embed_dim=C, num_heads=H, num_layers=hf["num_hidden_layers"],
        max_seq_len=hf["max_position_embeddings"], num_kv_heads=hf.get("num_key_value_heads") or H,
        head_dim=hf.get("head_dim") or C // H,
        norm_eps=hf.get(eps_key, _EPS_BY_DEFAULT.get(kind, 1e-6)), rope_base=theta,
        rope_scaling=scaling, mlp_hidden=hf["intermediate_size"], mlp=mlp, activation=activation,
        attn_bias=kind == "qwen2" or bias, attn_out_bias=bias if kind != "qwen2" else False,
        qk_norm=kind == "qwen3", **_window(hf, kind, where),
    )  # fmt: skip
    if kind in ("llama", "mistral", "qwen2", "qwen3"):
        fields["mlp_bias"] = bool(hf.get("mlp_bias", False))
    if kind in ("phi3", "olmo2"):  # no head_dim field: hidden_size / heads
        fields["head_dim"] = C // H
    if kind == "olmo2":  # norms after each sublayer only, q/k norms over all heads
        fields.update(pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_per_head=False)
    if kind == "gemma3_text":
        fields.update(_gemma3_fields(hf, where))
    return fields


def _gpt2_fields(hf: dict, where: Path) -> dict[str, Any]:
    mlp, activation = _activation(hf, "gpt2", where)
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise _fail(where, "its attention scores are not scaled by 1/sqrt(head_dim)")
    if hf.get("reorder_and_upcast_attn"):
        raise _fail(where, "it rescales its attention scores per layer (reorder_and_upcast_attn)")
    if hf.get("add_cross_attention"):
        raise _fail(where, "it has cross-attention")
    C, H = hf["n_embd"], hf["n_head"]
    # GPT-2's own attention biases; a model mygpt trained and exported has zeros there (checked)
    bias = _origin(hf, "gpt2") == "gpt2"
    return dict(embed_dim=C, num_heads=H, num_layers=hf["n_layer"], mlp=mlp,
                activation=activation, max_seq_len=hf["n_positions"],
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp_hidden=hf.get("n_inner") or 4 * C,
                num_kv_heads=hf.get("mygpt_num_kv_heads") or H, attn_bias=bias,
                attn_out_bias=bias)  # fmt: skip


def _origin(hf: dict, kind: str) -> str | None:
    """The architecture a model came from: what mygpt export recorded, else this one."""
    return hf.get("mygpt_hf_model_type") if "mygpt_num_kv_heads" in hf else kind


def config_from_hf(hf: dict, where: Path) -> tuple[Architecture, ModelConfig]:
    """The architecture and the mygpt config of an HF config.json, or a refusal naming why not."""
    kind = hf.get("model_type")
    arch = ARCHITECTURES.get(kind)
    if arch is None:
        feature = _KNOWN_FEATURES.get(kind)
        raise _fail(where, f"its architecture is {kind!r}" + (f" ({feature})" if feature else ""))
    fields = _gpt2_fields(hf, where) if kind == "gpt2" else _llama_family_fields(hf, kind, where)
    tied = hf.get("tie_word_embeddings", _TIED_BY_DEFAULT.get(kind, False))
    if kind == "gpt2" and not tied:
        raise _fail(where, "its output head is not tied to the token embedding")
    try:
        cfg = ModelConfig(
            vocab_size=hf["vocab_size"], norm=arch.norm, position=arch.position,
            tie_embeddings=bool(tied), hf_model_type=_origin(hf, kind), **fields,
        )  # fmt: skip
    except MygptError as e:
        raise _fail(
            where, f"its shape has no mygpt equivalent ({str(e).split(' — ')[0]})"
        ) from None
    return arch, cfg


def read_model_tensors(hfdir: Path) -> dict[str, np.ndarray]:
    """A model directory's weights: ``model.safetensors``, or the shards its index lists."""
    single, index = hfdir / "model.safetensors", hfdir / "model.safetensors.index.json"
    if single.is_file() or not index.is_file():
        return read_safetensors(single)
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MygptError(f"{index} is not a safetensors index — the file is damaged") from None
    out: dict[str, np.ndarray] = {}
    for shard in shards:
        if Path(shard).name != shard:
            raise MygptError(f"{index} names a shard outside the directory ({shard!r})")
        out.update(read_safetensors(hfdir / shard))
    missing = set(weight_map) - set(out)
    if missing:
        raise MygptError(
            f"{index} lists {len(missing)} tensors its shards lack (e.g. {sorted(missing)[0]!r}) "
            "— the download is incomplete; fetch the model again"
        )
    return out


def _safetensors_index(path: Path) -> tuple[dict, int]:
    """The header of a safetensors file and where its data starts; damage is one line."""
    size = path.stat().st_size

    def damaged(detail: str) -> MygptError:
        return MygptError(
            f"{path} is truncated or damaged ({detail}) — download or export it again"
        )

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return {}, -1  # the caller words it
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000 or 8 + n > size:
            raise damaged(f"its header claims {n} bytes of {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise damaged("its header is not JSON") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
        except (TypeError, KeyError, ValueError):
            raise damaged(f"entry {name!r} is malformed") from None
        if not 0 <= start <= stop or 8 + n + stop > size:
            raise damaged(f"tensor {name!r} ends past the end of the file")
        width = _WIDTHS.get(info.get("dtype"), 0)
        if width and (stop - start) != width * int(np.prod(shape, dtype=np.int64)):
            raise damaged(f"tensor {name!r} has {stop - start} bytes for shape {shape}")
    return header, 8 + n


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 (bf16/f16 widen exactly); damage is one line.

    The file is memory-mapped and each tensor widened straight from the map: one fp32 copy in
    memory, not the file's bytes as well.
    """
    if not path.is_file():
        raise MygptError(
            f"{path} does not exist — the model's weights must be safetensors (mygpt never "
            "loads pickled .bin files)"
        )
    header, base = _safetensors_index(path)
    if base < 0:
        raise MygptError(f"{path} is truncated or damaged (under 8 bytes) — download it again")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, (start, stop) = info.get("dtype"), info["data_offsets"]
        raw = mm[base + start : base + stop]
        if dtype == "BF16":  # numpy has no bfloat16: its bits are the top half of a float32
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            arr = raw.view(np.dtype(_DTYPES[dtype]).newbyteorder("<")).astype(np.float32)
        else:
            raise MygptError(
                f"{path}: tensor {name!r} is {dtype}; mygpt holds float32 weights and would round "
                "it — convert the model to float32, float16 or bfloat16 first"
            )
        out[name] = arr.reshape(info["shape"])
    del mm
    return out


def _normalise_names(tensors: dict[str, np.ndarray], arch: Architecture) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tensors.items():
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        if arch.model_type == "gpt2" and k.startswith("transformer."):
            k = k.removeprefix("transformer.")  # transformers' own save_pretrained adds it
        out[k] = v
    return out


def _expected(arch: Architecture, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    from mygpt.model import param_shapes

    zeros = {k: np.zeros(s, np.float32) for k, s in param_shapes(cfg).items()}
    return {k: v.shape for k, v in arch.to_hf(cfg, zeros).items()}


def params_from_hf(arch: Architecture, cfg: ModelConfig, tensors: dict, where: Path) -> dict:
    t = _normalise_names(tensors, arch)
    embed = "wte.weight" if arch.model_type == "gpt2" else "model.embed_tokens.weight"
    head = t.pop("lm_head.weight", None) if cfg.tie_embeddings else t.get("lm_head.weight")
    if (
        cfg.tie_embeddings
        and head is not None
        and not (embed in t and np.array_equal(head, t[embed]))
    ):
        raise _fail(where, "its output head (lm_head.weight) differs from the token embedding")
    expected = _expected(arch, cfg)
    for name, shape in expected.items():
        if name not in t and name.endswith(".bias") and (".mlp." in name or "_proj" in name):
            t[name] = np.zeros(shape, np.float32)  # a bias-free layer = zero biases, exactly
    for name in t:
        if name not in expected:
            feature = "gated MLP" if ".gate_proj." in name else "an extra tensor"
            raise _fail(where, f"it has {feature} ({name!r})")
    for name, shape in expected.items():
        if name not in t:
            raise MygptError(
                f"{where}: tensor {name!r} is missing — the model files are incomplete"
            )
        if tuple(t[name].shape) != tuple(shape):
            raise MygptError(
                f"{where}: tensor {name!r} has shape {tuple(t[name].shape)}, config.json implies "
                f"{tuple(shape)} — the files do not belong together"
            )
    params = arch.from_hf(cfg, t)
    from mygpt.model import param_shapes

    # the canonical (book state-dict) order, contiguous: what a checkpoint load gives
    return {k: np.ascontiguousarray(params[k], dtype=np.float32) for k in param_shapes(cfg)}


def import_hf(hfdir: str | os.PathLike) -> Checkpoint:
    """The mygpt checkpoint (weights only) of an HF directory, or a one-line refusal."""
    hfdir = Path(hfdir)
    hf = _read_config(hfdir)
    try:
        arch, cfg = config_from_hf(hf, hfdir)
    except (KeyError, TypeError, ValueError) as e:
        raise MygptError(
            f"{hfdir}/config.json lacks or garbles {e} — the file is damaged"
        ) from None
    tokenizer = read_tokenizer(hfdir, hf, cfg.vocab_size)
    tensors = read_model_tensors(hfdir)
    params = params_from_hf(arch, cfg, tensors, hfdir)
    return Checkpoint(cfg, params, tokenizer, format="native", path=hfdir)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise MygptError(f"{path} is not valid JSON — the file is damaged") from None
    return d if isinstance(d, dict) else {}


def read_tokenizer(hfdir: Path, hf: dict, vocab_size: int) -> dict:
    """One of mygpt's own tokenizers when ``mygpt export`` wrote it, else the model's own
    ``tokenizer.json`` with its special tokens, chat template and end-of-sequence ids."""
    from mygpt.tokenizers.hf import read_hf_tokenizer

    tok_path = hfdir / "tokenizer.json"
    if not tok_path.is_file():
        raise MygptError(f"{hfdir} has no tokenizer.json — mygpt needs the model's tokenizer too")
    text = tok_path.read_text(encoding="utf-8")
    try:
        return hf_tokenizer.from_hf(text, vocab_size, str(tok_path))
    except MygptError:
        pass  # not one of mygpt's: the model's own tokenizer
    tok_config = _read_json(hfdir / "tokenizer_config.json")
    tok_config.pop("added_tokens_decoder", None)  # tokenizer.json has them
    jinja = hfdir / "chat_template.jinja"
    if jinja.is_file():  # transformers 5 writes the template beside, not inside, the config
        tok_config["chat_template"] = jinja.read_text(encoding="utf-8")
    generation = _read_json(hfdir / "generation_config.json")
    d = read_hf_tokenizer(text, tok_config, generation, hf)
    from mygpt.tokenizers import tokenizer_from_dict

    n = tokenizer_from_dict(d).vocab_size
    if n > vocab_size:
        raise MygptError(
            f"{tok_path} has {n} tokens but the model only {vocab_size} embeddings — the "
            "tokenizer belongs to another model"
        )
    return d
