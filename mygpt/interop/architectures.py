"""Which standard Hugging Face architecture computes a mygpt model exactly, and the weight maps.

Each mygpt combination maps to one architecture that ``transformers`` loads without remote code
(the table says what each needs; the functions below carry the traps):

| mygpt                                 | Hugging Face   | notes                                  |
|---------------------------------------|----------------|----------------------------------------|
| layer norm + learned positions, gelu  | ``gpt2``       | GQA/MQA K/V repeated to every head     |
| layer norm + rope, gelu               | ``starcoder2`` | zero q/k/v/o biases                    |
| rms norm + rope, gelu                 | ``arcee``      | Llama with a non-gated MLP, MLP biases |
| rms norm + rope, swiglu               | ``llama``      | exactly a Llama                        |

Real models add ``mistral`` (a sliding window), ``qwen2`` (q/k/v biases), ``qwen3`` (q/k norms),
``gemma3_text`` (sandwich and (1 + w) norms, GeGLU, scaled embeddings, sliding and full layers)
and ``olmo2`` (norms after each sublayer, q/k norms over all heads): with ``head_dim``, biases,
an untied head and rope scaling they share the Llama weight map, its norms named by
:func:`block_norm_names`; ``phi3`` fuses its Q|K|V and gate|up; ``gpt2`` also holds GPT-2's own
biases and tanh GELU. Which one holds a model is :data:`FEATURES` arithmetic (``_fits``).
Export writes back the architecture a model was imported from (``hf_model_type``) when it holds
the model's features (``Architecture.fits``), else the first standard one that does.

Everything else (RMSNorm with learned positions, SwiGLU without RMSNorm + RoPE) has no standard
architecture that computes it exactly, and export refuses it.

mygpt rotates interleaved pairs (2i, 2i+1); every rotary architecture here rotates half-split
pairs (i, i + D/2). Reordering each head's rows of W_Q and W_K to ``[0, 2, 4, ..., 1, 3, 5, ...]``
turns one into the other exactly (transformers' ``convert_llama_weights_to_hf.permute``); q/k
biases and q/k-norm weights follow their rows.

Every map is a pure permutation/transposition/copy of float32 arrays, so export followed by
import gives back the very same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mygpt.config import ModelConfig
from mygpt.errors import MygptError

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class Architecture:
    model_type: str
    hf_class: str
    norm: str
    position: str
    mlps: tuple[str, ...]  # the MLP kinds it holds (llama: swiglu, and geglu by its hidden_act)
    to_hf: Callable[[ModelConfig, Tensors], Tensors]
    from_hf: Callable[[ModelConfig, Tensors], Tensors]
    mlx_lm_exact: bool  # whether mlx-lm's implementation of it computes the same function
    mlx_lm_note: str
    #: why the architecture can't hold a config's features (None: it can)
    fits: Callable[[ModelConfig], str | None]


def interleaved_to_half(num_heads: int, head_dim: int) -> np.ndarray:
    """Row order that turns interleaved rotary pairs into half-split ones, per head."""
    within = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    return (np.arange(num_heads)[:, None] * head_dim + within[None, :]).ravel()


def _rope_rows(w: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    return w[interleaved_to_half(heads, head_dim)]


def _rope_rows_back(w: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    out = np.empty_like(w)
    out[interleaved_to_half(heads, head_dim)] = w
    return out


def repeat_kv(w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """K/V head j copied to query heads j*rep ... j*rep+rep-1 (exact: the same function)."""
    D = cfg.head_dim
    return np.repeat(w.reshape(cfg.num_kv_heads, D, -1), cfg.kv_repeat, axis=0).reshape(
        cfg.num_heads * D, -1
    )


def unrepeat_kv(w: np.ndarray, cfg: ModelConfig, what: str) -> np.ndarray:
    """The inverse of :func:`repeat_kv`; refuses when the copies are not identical."""
    D, rep = cfg.head_dim, cfg.kv_repeat
    heads = w.reshape(cfg.num_kv_heads, rep, D, -1)
    if not all(np.array_equal(heads[:, 0], heads[:, r]) for r in range(1, rep)):
        raise MygptError(
            f"{what}: the K/V heads are not {rep} identical copies, so the model is not the "
            f"{cfg.num_kv_heads}-K/V-head model its config names — remove 'mygpt_num_kv_heads' "
            "from config.json to import it as plain multi-head attention"
        )
    return np.ascontiguousarray(heads[:, 0].reshape(cfg.num_kv_heads * D, -1))


# --- gpt2: LayerNorm + learned positions -----------------------------------------------------


def _gpt2_to_hf(cfg: ModelConfig, p: Tensors) -> Tensors:
    # unprefixed names, as the original GPT-2 files have them (transformers and mlx-lm read these)
    C = cfg.embed_dim
    out = {"wte.weight": p["token_embedding.embedding.weight"]}
    out["wpe.weight"] = p["position_embedding.weight"]
    for i in range(cfg.num_layers):
        b, h = f"blocks.{i}", f"h.{i}"
        qkv = [p[f"{b}.mha.W_Q.weight"]]
        qkv += [repeat_kv(p[f"{b}.mha.W_{n}.weight"], cfg) for n in "KV"]
        # Conv1D keeps weights as [in, out]; c_attn's output columns are [Q | K | V]
        out[f"{h}.attn.c_attn.weight"] = np.concatenate(qkv, axis=0).T
        out[f"{h}.attn.c_attn.bias"] = np.zeros(3 * C, np.float32)
        out[f"{h}.attn.c_proj.weight"] = p[f"{b}.mha.W_O.weight"].T
        out[f"{h}.attn.c_proj.bias"] = np.zeros(C, np.float32)
        if cfg.attn_bias:  # real GPT-2 (checked equal K/V heads: attn_bias is MHA-only here)
            out[f"{h}.attn.c_attn.bias"] = np.concatenate([p[f"{b}.mha.W_{n}.bias"] for n in "QKV"])
            out[f"{h}.attn.c_proj.bias"] = p[f"{b}.mha.W_O.bias"]
        for ln, hf_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[f"{h}.{hf_ln}.weight"] = p[f"{b}.{ln}.weight"]
            out[f"{h}.{hf_ln}.bias"] = p[f"{b}.{ln}.bias"]
        for fc, conv in (("fc1", "c_fc"), ("fc2", "c_proj")):
            out[f"{h}.mlp.{conv}.weight"] = p[f"{b}.mlp.{fc}.weight"].T
            out[f"{h}.mlp.{conv}.bias"] = p[f"{b}.mlp.{fc}.bias"]
    out["ln_f.weight"] = p["ln_f.weight"]
    out["ln_f.bias"] = p["ln_f.bias"]
    return out


def _gpt2_from_hf(cfg: ModelConfig, t: Tensors) -> Tensors:
    p = {"token_embedding.embedding.weight": t["wte.weight"]}
    p["position_embedding.weight"] = t["wpe.weight"]
    for i in range(cfg.num_layers):
        b, h = f"blocks.{i}", f"h.{i}"
        if cfg.attn_bias:  # GPT-2's own biases (a mygpt export's are zeros: attn_bias False)
            for n, bias in zip("QKV", np.split(t[f"{h}.attn.c_attn.bias"], 3)):
                p[f"{b}.mha.W_{n}.bias"] = bias
            p[f"{b}.mha.W_O.bias"] = t[f"{h}.attn.c_proj.bias"]
        else:
            for name in (f"{h}.attn.c_attn.bias", f"{h}.attn.c_proj.bias"):
                require_zero(t[name], name, "non-zero attention biases")
        q, k, v = np.split(t[f"{h}.attn.c_attn.weight"].T, 3, axis=0)
        p[f"{b}.mha.W_Q.weight"] = q
        p[f"{b}.mha.W_K.weight"] = unrepeat_kv(k, cfg, f"layer {i} W_K")
        p[f"{b}.mha.W_V.weight"] = unrepeat_kv(v, cfg, f"layer {i} W_V")
        p[f"{b}.mha.W_O.weight"] = t[f"{h}.attn.c_proj.weight"].T
        for ln, hf_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
            p[f"{b}.{ln}.weight"] = t[f"{h}.{hf_ln}.weight"]
            p[f"{b}.{ln}.bias"] = t[f"{h}.{hf_ln}.bias"]
        for fc, conv in (("fc1", "c_fc"), ("fc2", "c_proj")):
            p[f"{b}.mlp.{fc}.weight"] = t[f"{h}.mlp.{conv}.weight"].T
            p[f"{b}.mlp.{fc}.bias"] = t[f"{h}.mlp.{conv}.bias"]
    p["ln_f.weight"] = t["ln_f.weight"]
    p["ln_f.bias"] = t["ln_f.bias"]
    return p


# --- the Llama family: model.layers.i.self_attn.{q,k,v,o}_proj -------------------------------


def _attn_to_hf(cfg: ModelConfig, p: Tensors, b: str, a: str) -> Tensors:
    """One block's attention, under ``a`` (``model.layers.i.self_attn``)."""
    H, Hkv, D, C = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
    heads = {"q": H, "k": Hkv}
    out = {}
    for n in "qkv":
        w = p[f"{b}.mha.W_{n.upper()}.weight"]
        out[f"{a}.{n}_proj.weight"] = _rope_rows(w, heads[n], D) if n in heads else w
        if cfg.attn_bias:
            bias = p[f"{b}.mha.W_{n.upper()}.bias"]
            out[f"{a}.{n}_proj.bias"] = _rope_rows(bias, heads[n], D) if n in heads else bias
        elif cfg.norm == "layer":  # starcoder2's use_bias covers q/k/v/o: zeros, exactly
            out[f"{a}.{n}_proj.bias"] = np.zeros(heads.get(n, Hkv) * D, np.float32)
    out[f"{a}.o_proj.weight"] = p[f"{b}.mha.W_O.weight"]
    if cfg.attn_out_bias:
        out[f"{a}.o_proj.bias"] = p[f"{b}.mha.W_O.bias"]
    elif cfg.norm == "layer":
        out[f"{a}.o_proj.bias"] = np.zeros(C, np.float32)
    if cfg.qk_norm:  # the norm's weight follows its features into the half-split order
        for n in "qk":
            w = p[f"{b}.mha.{n}_norm.weight"]
            out[f"{a}.{n}_norm.weight"] = _rope_rows(w, len(w) // D, D)
    return out


def block_norm_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(mygpt, HF) names of a block's norms. Llama: input_layernorm before attention and
    post_attention_layernorm before the MLP; Gemma's sandwich adds a norm after each sublayer
    (then "post_attention" is after attention and pre_feedforward before the MLP); OLMo 2 keeps
    only the norms after."""
    names = [("ln1", "input_layernorm")] if cfg.pre_norm else []
    if cfg.sandwich_norm:
        names.append(("ln1_post", "post_attention_layernorm"))
    if cfg.pre_norm:
        names.append(("ln2", "pre_feedforward_layernorm" if cfg.sandwich_norm
                      else "post_attention_layernorm"))  # fmt: skip
    if cfg.sandwich_norm:
        names.append(("ln2_post", "post_feedforward_layernorm"))
    return names


def _llama_family_to_hf(cfg: ModelConfig, p: Tensors) -> Tensors:
    layer_norm = cfg.norm == "layer"
    out = {"model.embed_tokens.weight": p["token_embedding.embedding.weight"]}
    for i in range(cfg.num_layers):
        b, h = f"blocks.{i}", f"model.layers.{i}"
        out.update(_attn_to_hf(cfg, p, b, f"{h}.self_attn"))
        for ln, hf_ln in block_norm_names(cfg):
            out[f"{h}.{hf_ln}.weight"] = p[f"{b}.{ln}.weight"]
            if layer_norm:
                out[f"{h}.{hf_ln}.bias"] = p[f"{b}.{ln}.bias"]
        out.update(_mlp_to_hf(cfg, p, b, f"{h}.mlp"))
    out["model.norm.weight"] = p["ln_f.weight"]
    if layer_norm:
        out["model.norm.bias"] = p["ln_f.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = p["lm_head.weight"]
    return out


def _mlp_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(mygpt name, HF name) of the MLP's tensors under a block."""
    if cfg.gated:
        kinds = ("weight", "bias") if cfg.mlp_bias else ("weight",)
        return [(f"{n}.{w}", f"{n}_proj.{w}") for n in ("gate", "up", "down") for w in kinds]
    fc1, fc2 = ("c_fc", "c_proj") if cfg.norm == "layer" else ("up_proj", "down_proj")
    return [
        (f"fc{j}.{w}", f"{hf}.{w}") for j, hf in ((1, fc1), (2, fc2)) for w in ("weight", "bias")
    ]


def _mlp_to_hf(cfg: ModelConfig, p: Tensors, b: str, h: str) -> Tensors:
    return {f"{h}.{hf}": p[f"{b}.mlp.{mine}"] for mine, hf in _mlp_names(cfg)}


def _attn_from_hf(cfg: ModelConfig, t: Tensors, b: str, a: str) -> Tensors:
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    heads = {"q": H, "k": Hkv}
    p = {}
    for n in "qkvo":
        w, bias, mine = t[f"{a}.{n}_proj.weight"], t.get(f"{a}.{n}_proj.bias"), f"W_{n.upper()}"
        p[f"{b}.mha.{mine}.weight"] = _rope_rows_back(w, heads[n], D) if n in heads else w
        keeps = cfg.attn_out_bias if n == "o" else cfg.attn_bias
        if keeps:
            p[f"{b}.mha.{mine}.bias"] = _rope_rows_back(bias, heads[n], D) if n in heads else bias
        elif bias is not None:
            require_zero(bias, f"{a}.{n}_proj.bias", "non-zero attention biases")
    if cfg.qk_norm:  # per head (D,) or over all heads (OLMo 2: H*D, Hkv*D)
        for n in "qk":
            w = t[f"{a}.{n}_norm.weight"]
            p[f"{b}.mha.{n}_norm.weight"] = _rope_rows_back(w, len(w) // D, D)
    return p


def _llama_family_from_hf(cfg: ModelConfig, t: Tensors) -> Tensors:
    layer_norm = cfg.norm == "layer"
    p = {"token_embedding.embedding.weight": t["model.embed_tokens.weight"]}
    for i in range(cfg.num_layers):
        b, h = f"blocks.{i}", f"model.layers.{i}"
        p.update(_attn_from_hf(cfg, t, b, f"{h}.self_attn"))
        for ln, hf_ln in block_norm_names(cfg):
            p[f"{b}.{ln}.weight"] = t[f"{h}.{hf_ln}.weight"]
            if layer_norm:
                p[f"{b}.{ln}.bias"] = t[f"{h}.{hf_ln}.bias"]
        for mine, hf in _mlp_names(cfg):
            p[f"{b}.mlp.{mine}"] = t[f"{h}.mlp.{hf}"]
    p["ln_f.weight"] = t["model.norm.weight"]
    if layer_norm:
        p["ln_f.bias"] = t["model.norm.bias"]
    if not cfg.tie_embeddings:
        p["lm_head.weight"] = t["lm_head.weight"]
    return p


def require_zero(x: np.ndarray, name: str, feature: str) -> None:
    if np.any(x != 0):
        raise MygptError(
            f"{name} is non-zero: the model has {feature}, which mygpt does not compute — "
            "only models mygpt can compute exactly import"
        )


#: what a model has beyond the book's GPT and a plain Llama, by key, as a refusal names it
FEATURES = {
    "norm_offset": "(1 + w) norm weights", "scale_embeddings": "scaled embeddings",
    "attn_scale": "an attention scale other than 1/sqrt(head_dim)",
    "sandwich_norm": "norms after each sublayer", "no_pre_norm": "no norms before the sublayers",
    "qk_norm": "q/k norms per head", "qk_norm_full": "q/k norms over all heads",
    "gelu_tanh": "the tanh GELU", "sliding": "a sliding attention window",
    "window_pattern": "sliding and full attention layers",
    "rope_local_base": "a rope base of its own for sliding layers",
    "rope_llama3": "llama3 rope scaling", "rope_linear": "linear rope scaling",
    "attn_bias": "q/k/v biases", "attn_out_bias": "an output-projection bias",
    "mlp_bias": "MLP biases", "untied": "an untied output head",
    "head_dim": "a head_dim other than embed_dim / num_heads",
}  # fmt: skip


def features(cfg: ModelConfig) -> set[str]:
    """The :data:`FEATURES` keys ``cfg`` has."""
    have = {k for k, on in (
        ("norm_offset", cfg.norm_offset != 0), ("scale_embeddings", cfg.scale_embeddings),
        ("attn_scale", cfg.query_pre_attn_scalar not in (None, cfg.head_dim)),
        ("sandwich_norm", cfg.sandwich_norm), ("no_pre_norm", not cfg.pre_norm),
        ("qk_norm", cfg.qk_norm and cfg.qk_norm_per_head),
        ("qk_norm_full", cfg.qk_norm and not cfg.qk_norm_per_head),
        ("gelu_tanh", cfg.activation == "gelu_tanh"),
        ("rope_local_base", cfg.rope_local_base is not None),
        ("attn_bias", cfg.attn_bias), ("attn_out_bias", cfg.attn_out_bias),
        ("mlp_bias", cfg.mlp_bias), ("untied", not cfg.tie_embeddings),
        ("head_dim", cfg.head_dim * cfg.num_heads != cfg.embed_dim),
    ) if on}  # fmt: skip
    types = set(cfg.layer_types or ())
    if "sliding" in types:
        have.add("sliding" if types == {"sliding"} else "window_pattern")
    if cfg.rope_scaling:
        have.add("rope_" + cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type")))
    return have


def _fits(
    allowed: str = "", required: str = "", check: Callable[[ModelConfig], str | None] | None = None
) -> Callable[[ModelConfig], str | None]:
    """An architecture's ``fits``: the features it may have and those it must have (space-separated
    :data:`FEATURES` keys), and a check of anything else."""
    need = set(required.split())
    may = set(allowed.split()) | need

    def fits(cfg: ModelConfig) -> str | None:
        have = features(cfg)
        missing = sorted(need - have)
        if missing:
            return f"no {FEATURES[missing[0]]}"
        extra = sorted(have - may)
        if extra:
            return FEATURES[extra[0]]
        return check(cfg) if check is not None else None

    return fits


def _same_biases(cfg: ModelConfig) -> str | None:
    if cfg.attn_bias != cfg.attn_out_bias:
        return "biases on q/k/v but not on the output projection (Qwen2), or the reverse"
    return None


def _gpt2_biases(cfg: ModelConfig) -> str | None:
    if cfg.attn_bias and cfg.num_kv_heads != cfg.num_heads:
        return "attention biases with grouped K/V heads"
    return _same_biases(cfg)


def _no_output_bias(cfg: ModelConfig) -> str | None:
    return "an output-projection bias" if cfg.attn_out_bias else None


# --- Phi-3: the Llama names with Q|K|V and gate|up fused -----------------------------------


def _phi3_to_hf(cfg: ModelConfig, p: Tensors) -> Tensors:
    out = _llama_family_to_hf(cfg, p)
    for i in range(cfg.num_layers):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv = [out.pop(f"{a}.{n}_proj.weight") for n in "qkv"]
        out[f"{a}.qkv_proj.weight"] = np.concatenate(qkv)
        # gate_up_proj(x).chunk(2): the first half of its rows is the gate
        gate_up = [out.pop(f"{m}.{n}_proj.weight") for n in ("gate", "up")]
        out[f"{m}.gate_up_proj.weight"] = np.concatenate(gate_up)
    return out


def _phi3_from_hf(cfg: ModelConfig, t: Tensors) -> Tensors:
    t = dict(t)
    kv = cfg.num_kv_heads * cfg.head_dim
    for i in range(cfg.num_layers):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv = np.split(t.pop(f"{a}.qkv_proj.weight"), [cfg.attn_dim, cfg.attn_dim + kv])
        for n, w in zip("qkv", qkv):
            t[f"{a}.{n}_proj.weight"] = w
        gate, up = np.split(t.pop(f"{m}.gate_up_proj.weight"), 2)
        t[f"{m}.gate_proj.weight"], t[f"{m}.up_proj.weight"] = gate, up
    return _llama_family_from_hf(cfg, t)


_LLAMA = (_llama_family_to_hf, _llama_family_from_hf)
_BIASES = "attn_bias attn_out_bias"
_GEMMA = "norm_offset scale_embeddings sandwich_norm qk_norm"
ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture(
            "gpt2", "GPT2LMHeadModel", "layer", "learned", ("gelu",), _gpt2_to_hf, _gpt2_from_hf,
            False, "mlx-lm's gpt2.py hard-codes the tanh-approximate GELU (exact for gelu_tanh)",
            _fits(f"gelu_tanh {_BIASES}", check=_gpt2_biases),
        ),
        Architecture(
            "starcoder2", "Starcoder2ForCausalLM", "layer", "rope", ("gelu",), *_LLAMA, True,
            "exact (erf) nn.gelu", _fits("gelu_tanh"),
        ),
        Architecture(
            "arcee", "ArceeForCausalLM", "rms", "rope", ("gelu",), *_LLAMA, False,
            "mlx-lm has no arcee model (its llama.py hard-codes SiLU)", _fits("gelu_tanh"),
        ),
        Architecture(
            "llama", "LlamaForCausalLM", "rms", "rope", ("swiglu", "geglu"), *_LLAMA, True,
            "plain llama (mlx-lm's llama.py hard-codes SiLU: not a geglu model)",
            _fits(f"{_BIASES} mlp_bias untied head_dim rope_llama3 rope_linear gelu_tanh",
                  check=_same_biases),
        ),
        Architecture(
            "qwen2", "Qwen2ForCausalLM", "rms", "rope", ("swiglu",), *_LLAMA, True,
            "exact on mygpt's export (a top-level rope_theta)",
            _fits("untied head_dim", "attn_bias", check=_no_output_bias),
        ),
        Architecture(
            "qwen3", "Qwen3ForCausalLM", "rms", "rope", ("swiglu",), *_LLAMA, True,
            "exact on mygpt's export (a top-level rope_theta)",
            _fits(f"{_BIASES} untied head_dim", "qk_norm", check=_same_biases),
        ),
        Architecture(
            "mistral", "MistralForCausalLM", "rms", "rope", ("swiglu",), *_LLAMA, True,
            "exact on mygpt's export (a top-level rope_theta)", _fits("untied head_dim sliding"),
        ),
        Architecture(
            "phi3", "Phi3ForCausalLM", "rms", "rope", ("swiglu",), _phi3_to_hf, _phi3_from_hf,
            True, "exact without a window (its phi3.py ignores sliding_window)",
            _fits("untied sliding"),
        ),
        Architecture(
            "olmo2", "Olmo2ForCausalLM", "rms", "rope", ("swiglu",), *_LLAMA, True,
            "exact (its olmo2.py)", _fits(f"{_BIASES} untied rope_llama3 rope_linear",
                                       "sandwich_norm no_pre_norm qk_norm_full", _same_biases),
        ),
        Architecture(
            "gemma3_text", "Gemma3ForCausalLM", "rms", "rope", ("geglu",), *_LLAMA, False,
            "mlx-lm's gemma3_text.py hard-codes the tanh GELU (exact for --activation gelu_tanh)",
            _fits(f"{_BIASES} untied head_dim attn_scale gelu_tanh sliding window_pattern "
                  "rope_local_base rope_linear rope_llama3", _GEMMA, _same_biases),
        ),
    )
}  # fmt: skip


def mlx_lm_verdict(arch: Architecture, cfg: ModelConfig) -> str:
    """What mlx-lm computes of ``cfg`` exported as ``arch``, for the model card. Measured on
    tiny random models: its gpt2, gemma3_text and olmo2 files match transformers within 2.1e-5,
    its llama (Mistral) and phi3 files ignore a sliding window (logits off by 4.4 past it)."""
    if cfg.layer_types is not None and arch.model_type in ("mistral", "phi3"):
        return "its model ignores the sliding window, so it differs past the window"
    if arch.model_type in ("gpt2", "gemma3_text") and cfg.activation == "gelu_tanh":
        return "computes this model (its tanh GELU) exactly"
    return "computes this model exactly" if arch.mlx_lm_exact else arch.mlx_lm_note


def exportable() -> str:
    """The exportable combinations, as flags, for error messages."""
    seen: dict[tuple[str, str, str], str] = {}
    for a in ARCHITECTURES.values():
        for mlp in a.mlps:
            seen.setdefault((a.norm, a.position, mlp), a.model_type)
    return "; ".join(f"--norm {n} --position {p} --mlp {m} ({t})" for (n, p, m), t in seen.items())


def architecture_for(cfg: ModelConfig) -> Architecture:
    """The architecture that computes ``cfg`` exactly, or a one-line refusal.

    The one the model was imported from wins (a Mistral exports as a Mistral), else the first
    standard one that holds every feature of the model.
    """
    candidates = [
        a for a in ARCHITECTURES.values()
        if (a.norm, a.position) == (cfg.norm, cfg.position) and cfg.mlp in a.mlps
    ]  # fmt: skip
    if not candidates:
        raise MygptError(
            f"no standard Hugging Face architecture computes --norm {cfg.norm} --position "
            f"{cfg.position} --mlp {cfg.mlp} exactly, so it can't be exported — "
            f"these combinations export: {exportable()}"
        )
    candidates.sort(key=lambda a: a.model_type != cfg.hf_model_type)
    reasons = []
    for a in candidates:
        why = a.fits(cfg)
        if why is None:
            return a
        reasons.append(f"{a.model_type}: {why}")
    raise MygptError(
        f"no standard Hugging Face architecture holds this model exactly ({'; '.join(reasons)}) "
        "— it can't be exported"
    )


def hf_config(cfg: ModelConfig, arch: Architecture, special: dict[str, Any]) -> dict[str, Any]:
    """config.json: every value written explicitly (the libraries' defaults differ)."""
    common = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
        **special,
        # what mygpt needs back on import that the target cannot say (GPT-2 has no K/V heads)
        "mygpt_num_kv_heads": cfg.num_kv_heads,
        # and where the model came from (None: trained by mygpt), so a round trip is exact
        "mygpt_hf_model_type": cfg.hf_model_type,
    }
    if arch.model_type == "gpt2":
        return {**common, **_gpt2_config(cfg)}
    out = {**common, **_rope_config(cfg), **_llama_shape(cfg)}
    kind = arch.model_type
    tanh = cfg.activation == "gelu_tanh"
    if kind == "starcoder2":
        out.update(
            hidden_act="gelu_pytorch_tanh" if tanh else "gelu", use_bias=True,
            norm_epsilon=cfg.norm_eps, residual_dropout=0.0, embedding_dropout=0.0,
            sliding_window=None,
        )  # fmt: skip
        return out
    act = "silu" if cfg.mlp == "swiglu" else "gelu_pytorch_tanh" if tanh else "gelu"
    out.update(hidden_act=act, rms_norm_eps=cfg.norm_eps)
    if kind in ("llama", "arcee"):
        out.update(mlp_bias=cfg.mlp == "gelu" or cfg.mlp_bias, attention_bias=cfg.attn_bias,
                   pretraining_tp=1)  # fmt: skip
    elif kind in ("mistral", "phi3"):
        out.update(sliding_window=cfg.sliding_window)
        if kind == "phi3":  # no head_dim field: it is hidden_size / heads (fits checks)
            out.pop("head_dim")
            out.update(resid_pdrop=0.0, embd_pdrop=0.0,
                       original_max_position_embeddings=cfg.max_seq_len)  # fmt: skip
    elif kind == "olmo2":
        out.pop("head_dim")
        out["attention_bias"] = cfg.attn_bias
    elif kind == "gemma3_text":
        out.update(_gemma3_config(cfg))
    else:  # qwen2 (q/k/v biases built in), qwen3 (attention_bias; q/k norms built in)
        if kind == "qwen3":
            out["attention_bias"] = cfg.attn_bias
        out.update(use_sliding_window=False, sliding_window=None,
                   max_window_layers=cfg.num_layers,
                   layer_types=["full_attention"] * cfg.num_layers)  # fmt: skip
    return out


def _gpt2_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "n_embd": cfg.embed_dim,
        "n_head": cfg.num_heads,
        "n_layer": cfg.num_layers,
        "n_positions": cfg.max_seq_len,
        "n_ctx": cfg.max_seq_len,  # mlx-lm's gpt2 reads this name
        "n_inner": cfg.mlp_hidden,
        # "gelu" is the exact (erf) GELU, "gelu_new" the tanh one
        "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _rope_params(cfg: ModelConfig, base: float, scaling: dict | None) -> dict[str, Any]:
    return {**(scaling or {"rope_type": "default"}), "rope_theta": base}


def _rope_config(cfg: ModelConfig) -> dict[str, Any]:
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    return {
        "rope_theta": cfg.rope_base,  # top level: mlx-lm reads only this
        "rope_parameters": _rope_params(cfg, cfg.rope_base, scaling),
        "rope_scaling": scaling,
    }


def _llama_shape(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_hidden,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "num_hidden_layers": cfg.num_layers,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "attention_dropout": 0.0,
    }


def _gemma3_config(cfg: ModelConfig) -> dict[str, Any]:
    """Gemma 3's own keys: its activation's name, its layer types with a rope per type."""
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    full = _rope_params(cfg, cfg.rope_base, scaling)
    local = full if cfg.rope_local_base is None else _rope_params(cfg, cfg.rope_local_base, None)
    types = cfg.layer_types or ("full",) * cfg.num_layers
    out = {
        "hidden_activation": "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "gelu",
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar or cfg.head_dim,
        "sliding_window": cfg.sliding_window,
        "layer_types": [f"{t}_attention" for t in types],
        "rope_parameters": {"full_attention": full, "sliding_attention": local},
        "rope_local_base_freq": local["rope_theta"],  # mlx-lm's name for the sliding layers' base
        "attention_bias": cfg.attn_bias,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
    }
    pattern = _pattern_of(types)
    if pattern is not None:  # mlx-lm reads the pattern, not layer_types
        out["sliding_window_pattern"] = pattern
    return out


def _pattern_of(types: tuple[str, ...]) -> int | None:
    """N when every Nth layer is full and the others sliding (Gemma 3's rule), else None."""
    full = [i for i, t in enumerate(types) if t == "full"]
    if not full:
        return len(types) + 1
    n = full[0] + 1
    want = tuple("full" if (i + 1) % n == 0 else "sliding" for i in range(len(types)))
    return n if want == tuple(types) else None
