"""llama.cpp's tensor names and layouts, shared by GGUF export and import (see gguf_export)."""

from __future__ import annotations

import numpy as np

from mygpt.config import ModelConfig

MYGPT_CONFIG_KEY = "mygpt.config"

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face Llama-family tensor name."""
    stem, kind = hf_name.rsplit(".", 1)
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    _, _, i, rest = stem.split(".", 3)  # model.layers.<i>.<rest>
    return f"blk.{i}.{_LAYER_NAMES[rest]}.{kind}"


def hf_name(gguf_tensor: str) -> str:
    """The inverse of :func:`gguf_name`."""
    stem, kind = gguf_tensor.rsplit(".", 1)
    top = {v: k for k, v in _TOP_NAMES.items()}
    if stem in top:
        return f"{top[stem]}.{kind}"
    _, i, short = stem.split(".", 2)
    layer = {v: k for k, v in _LAYER_NAMES.items()}
    return f"model.layers.{i}.{layer[short]}.{kind}"


_PARAM_TOP = {"token_embedding.embedding.weight": "token_embd.weight",
              "lm_head.weight": "output.weight"}  # fmt: skip
_PARAM_SHORT = {"mha.W_Q": "attn_q", "mha.W_K": "attn_k", "mha.W_V": "attn_v",
                "mha.W_O": "attn_output", "mlp.gate": "ffn_gate", "mlp.up": "ffn_up",
                "mlp.down": "ffn_down"}  # fmt: skip


def gguf_param_name(name: str) -> str:
    """llama.cpp's name for a mygpt 2-D weight (the ones that can be quantized)."""
    if name in _PARAM_TOP:
        return _PARAM_TOP[name]
    _, i, part, short, kind = name.split(".")  # blocks.<i>.<mha|mlp>.<W_Q|gate|...>.weight
    return f"blk.{i}.{_PARAM_SHORT[f'{part}.{short}']}.{kind}"


def mygpt_param_name(gguf_tensor: str) -> str:
    """The inverse of :func:`gguf_param_name`."""
    top = {v: k for k, v in _PARAM_TOP.items()}
    if gguf_tensor in top:
        return top[gguf_tensor]
    _, i, short, kind = gguf_tensor.split(".")
    part = {v: k for k, v in _PARAM_SHORT.items()}[short]
    return f"blocks.{i}.{part}.{kind}"


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's ``LlamaModel.permute``: half-split rows -> adjacent pairs."""
    return np.ascontiguousarray(
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`llama_permute`."""
    return np.ascontiguousarray(
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def rope_freq_factors(cfg: ModelConfig) -> np.ndarray:
    """Llama 3 scaling as llama.cpp takes it: a divisor per frequency (the converter's formula)."""
    s, d = cfg.rope_scaling, cfg.head_dim
    freqs = 1.0 / (cfg.rope_base ** (np.arange(0, d, 2, dtype=np.float32) / d))
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)
