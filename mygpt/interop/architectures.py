"""Which standard Hugging Face architecture computes a mygpt model exactly, and the weight maps.

Each mygpt combination maps to one architecture that ``transformers`` loads without remote code
(the table says what each needs; the functions below carry the traps):

| mygpt                                 | Hugging Face   | notes                                  |
|---------------------------------------|----------------|----------------------------------------|
| layer norm + learned positions, gelu  | ``gpt2``       | GQA/MQA K/V repeated to every head     |
| layer norm + rope, gelu               | ``starcoder2`` | zero q/k/v/o biases                    |
| rms norm + rope, gelu                 | ``arcee``      | Llama with a non-gated MLP, MLP biases |
| rms norm + rope, swiglu               | ``llama``      | exactly a Llama                        |

Real models add ``mistral``, ``qwen2`` (q/k/v biases) and ``qwen3`` (q/k norms); with
``head_dim``, biases, an untied head and llama3 rope scaling they share the Llama weight map.
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
    mlp: str
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
        out[f"{a}.q_norm.weight"] = _rope_rows(p[f"{b}.mha.q_norm.weight"], 1, D)
        out[f"{a}.k_norm.weight"] = _rope_rows(p[f"{b}.mha.k_norm.weight"], 1, D)
    return out


def _llama_family_to_hf(cfg: ModelConfig, p: Tensors) -> Tensors:
    layer_norm = cfg.norm == "layer"
    out = {"model.embed_tokens.weight": p["token_embedding.embedding.weight"]}
    for i in range(cfg.num_layers):
        b, h = f"blocks.{i}", f"model.layers.{i}"
        out.update(_attn_to_hf(cfg, p, b, f"{h}.self_attn"))
        for ln, hf_ln in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
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
    if cfg.mlp == "swiglu":
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
    if cfg.qk_norm:
        p[f"{b}.mha.q_norm.weight"] = _rope_rows_back(t[f"{a}.q_norm.weight"], 1, D)
        p[f"{b}.mha.k_norm.weight"] = _rope_rows_back(t[f"{a}.k_norm.weight"], 1, D)
    return p


def _llama_family_from_hf(cfg: ModelConfig, t: Tensors) -> Tensors:
    layer_norm = cfg.norm == "layer"
    p = {"token_embedding.embedding.weight": t["model.embed_tokens.weight"]}
    for i in range(cfg.num_layers):
        b, h = f"blocks.{i}", f"model.layers.{i}"
        p.update(_attn_from_hf(cfg, t, b, f"{h}.self_attn"))
        for ln, hf_ln in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
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


def _plain_only(cfg: ModelConfig) -> str | None:
    """What a book-style architecture (gpt2, starcoder2, arcee) can't hold of ``cfg``."""
    if cfg.head_dim * cfg.num_heads != cfg.embed_dim:
        return "a head_dim other than embed_dim / num_heads"
    for name, what in (("attn_bias", "attention biases"), ("attn_out_bias", "an output bias"),
                       ("qk_norm", "q/k norms"), ("rope_scaling", "rope scaling")):  # fmt: skip
        if getattr(cfg, name):
            return what
    return None if cfg.tie_embeddings else "an untied output head"


def _llama_fits(cfg: ModelConfig) -> str | None:
    if cfg.qk_norm:
        return "q/k norms (Qwen3)"
    if cfg.attn_bias != cfg.attn_out_bias:
        return "biases on q/k/v but not on the output projection (Qwen2)"
    return None


def _mistral_fits(cfg: ModelConfig) -> str | None:
    if cfg.attn_bias or cfg.attn_out_bias or cfg.mlp_bias or cfg.qk_norm:
        return "biases or q/k norms"
    return "rope scaling" if cfg.rope_scaling else None


def _qwen2_fits(cfg: ModelConfig) -> str | None:
    if not cfg.attn_bias or cfg.attn_out_bias:
        return "no q/k/v biases, or an output bias"
    if cfg.mlp_bias or cfg.qk_norm:
        return "MLP biases or q/k norms"
    return "rope scaling" if cfg.rope_scaling else None


def _qwen3_fits(cfg: ModelConfig) -> str | None:
    if not cfg.qk_norm:
        return "no q/k norms"
    if cfg.attn_bias != cfg.attn_out_bias or cfg.mlp_bias:
        return "biases on q/k/v but not the output, or MLP biases"
    return "rope scaling" if cfg.rope_scaling else None


_LLAMA = (_llama_family_to_hf, _llama_family_from_hf)
ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture(
            "gpt2", "GPT2LMHeadModel", "layer", "learned", "gelu", _gpt2_to_hf, _gpt2_from_hf,
            False, "mlx-lm's gpt2.py hard-codes the tanh-approximate GELU", _plain_only,
        ),
        Architecture(
            "starcoder2", "Starcoder2ForCausalLM", "layer", "rope", "gelu", *_LLAMA, True,
            "exact (erf) nn.gelu", _plain_only,
        ),
        Architecture(
            "arcee", "ArceeForCausalLM", "rms", "rope", "gelu", *_LLAMA, False,
            "mlx-lm has no arcee model (its llama.py hard-codes SiLU)", _plain_only,
        ),
        Architecture(
            "llama", "LlamaForCausalLM", "rms", "rope", "swiglu", *_LLAMA, True, "plain llama",
            _llama_fits,
        ),
        Architecture(
            "qwen2", "Qwen2ForCausalLM", "rms", "rope", "swiglu", *_LLAMA, True, "exact on mygpt's export (a top-level rope_theta)",
            _qwen2_fits,
        ),
        Architecture(
            "qwen3", "Qwen3ForCausalLM", "rms", "rope", "swiglu", *_LLAMA, True, "exact on mygpt's export (a top-level rope_theta)",
            _qwen3_fits,
        ),
        Architecture(
            "mistral", "MistralForCausalLM", "rms", "rope", "swiglu", *_LLAMA, True, "exact on mygpt's export (a top-level rope_theta)",
            _mistral_fits,
        ),
    )
}  # fmt: skip


def exportable() -> str:
    """The exportable combinations, as flags, for error messages."""
    seen = {}
    for a in ARCHITECTURES.values():
        seen.setdefault((a.norm, a.position, a.mlp), a.model_type)
    return "; ".join(f"--norm {n} --position {p} --mlp {m} ({t})" for (n, p, m), t in seen.items())


def architecture_for(cfg: ModelConfig) -> Architecture:
    """The architecture that computes ``cfg`` exactly, or a one-line refusal.

    The one the model was imported from wins (a Mistral exports as a Mistral), else the first
    standard one that holds every feature of the model.
    """
    same = (cfg.norm, cfg.position, cfg.mlp)
    candidates = [a for a in ARCHITECTURES.values() if (a.norm, a.position, a.mlp) == same]
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
    C = cfg.embed_dim
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
        return {
            **common,
            "n_embd": C,
            "n_head": cfg.num_heads,
            "n_layer": cfg.num_layers,
            "n_positions": cfg.max_seq_len,
            "n_ctx": cfg.max_seq_len,  # mlx-lm's gpt2 reads this name
            "n_inner": cfg.mlp_hidden,
            "activation_function": "gelu",  # erf GELU; "gelu_new" would be the tanh one
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    rope = {
        "rope_theta": cfg.rope_base,  # top level: mlx-lm reads only this
        "rope_parameters": {**(scaling or {"rope_type": "default"}), "rope_theta": cfg.rope_base},
        "rope_scaling": scaling,
    }
    out = {
        **common,
        **rope,
        "hidden_size": C,
        "intermediate_size": cfg.mlp_hidden,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "num_hidden_layers": cfg.num_layers,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "attention_dropout": 0.0,
    }
    if arch.model_type == "starcoder2":
        out.update(
            hidden_act="gelu", use_bias=True, norm_epsilon=cfg.norm_eps, residual_dropout=0.0,
            embedding_dropout=0.0, sliding_window=None,
        )  # fmt: skip
        return out
    out.update(
        hidden_act="silu" if cfg.mlp == "swiglu" else "gelu",
        rms_norm_eps=cfg.norm_eps,
    )
    if arch.model_type in ("llama", "arcee"):
        out.update(mlp_bias=cfg.mlp == "gelu" or cfg.mlp_bias, attention_bias=cfg.attn_bias,
                   pretraining_tp=1)  # fmt: skip
    elif arch.model_type == "mistral":
        out.update(sliding_window=None)
    else:  # qwen2 (q/k/v biases built in), qwen3 (attention_bias; q/k norms built in)
        if arch.model_type == "qwen3":
            out["attention_bias"] = cfg.attn_bias
        out.update(use_sliding_window=False, sliding_window=None,
                   max_window_layers=cfg.num_layers,
                   layer_types=["full_attention"] * cfg.num_layers)  # fmt: skip
    return out
