"""``mygpt export CKPT OUT.gguf``: a model as one GGUF file that llama.cpp (and what is built on it:
Ollama, LM Studio, llama-cpp-python) computes exactly as mygpt does.

The target is the llama.cpp graph that computes the model's function (llama.cpp as bundled in
llama-cpp-python 0.3.36, read from its source):

| mygpt                                   | GGUF architecture | how                                   |
|-----------------------------------------|-------------------|---------------------------------------|
| RMSNorm + RoPE + SwiGLU (Llama, Mistral, ``--recipe llama``) | ``llama`` | q/k/v/o and MLP biases, llama3 scaling as ``rope_freqs``, a free head_dim, tied or untied |
| ... with q/k/v biases, from Qwen2        | ``qwen2``         | when head_dim = C/H (else ``llama``)  |
| ... with q/k norms (Qwen3)               | ``qwen3``         | no output/MLP biases, no rope scaling |

Everything else is refused in one line naming what llama.cpp computes differently (the book's erf
GELU: llama.cpp's GELU graphs use the tanh approximation; LayerNorm; learned positions).

Rotary layout: llama.cpp's ``llama`` graph rotates adjacent pairs, as mygpt does, and its
converter permutes Hugging Face's half-split Q/K rows back to that order, so Q/K go out as they are
in mygpt (the converter's permute of the Hugging Face layout gives those very rows). ``qwen2`` and
``qwen3`` rotate half-split pairs (NEOX), so Q/K (and their biases and q/k-norm weights) go out in
the Hugging Face layout, as the converter leaves them.

``--dtype``: ``float32`` (exact), ``float16``/``bfloat16`` (2-D weights; norms and biases stay F32,
as the converter does), ``q8_0``/``q4_0`` (2-D weights whose rows are whole 32-weight blocks,
quantized by ``gguf.quants.quantize``, the reference; the rest stays F32). The file is written
through :func:`mygpt.fileio.atomic_write`: the old file or the whole new one, never half. With
``--ollama`` an Ollama Modelfile goes beside it (see ``ollama``), written once the new GGUF is
complete and before it takes its name, so a failure in either keeps the previous pair.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mygpt.checkpoint import Checkpoint
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.fileio import atomic_write, atomic_write_text, check_output_path
from mygpt.interop.architectures import ARCHITECTURES, interleaved_to_half
from mygpt.interop.gguf_layout import (
    MYGPT_CONFIG_KEY,
    gguf_name,
    gguf_param_name,
    llama_permute,
    rope_freq_factors,
)
from mygpt.interop.gguf_tokenizer import MYGPT_TOKENIZER_KEY, GGUFVocab, gguf_vocab
from mygpt.interop.ollama import MODELFILE, Modelfile, build_modelfile, modelfile_path
from mygpt.quant import QuantizedTensor

GGUF_DTYPES = ("float32", "float16", "bfloat16", "q8_0", "q4_0")
QK = 32  # weights per Q8_0/Q4_0 block


def _scaling_kind(cfg: ModelConfig) -> str | None:
    s = cfg.rope_scaling
    return None if s is None else s.get("rope_type", s.get("type"))


#: (what mygpt computes, what llama.cpp's llama/qwen2/qwen3 graphs do instead), by config test
_UNLIKE_LLAMA_CPP: tuple[tuple[Any, str], ...] = (
    (lambda c: c.mlp == "gelu" and c.activation == "gelu",
     "the book's erf-GELU MLP (llama.cpp's plain-GELU graphs, gpt2 and starcoder2, use the tanh "
     "approximation)"),
    (lambda c: c.mlp == "gelu" and c.activation != "gelu",
     "a plain GELU MLP (llama.cpp's gpt2 graph has one, but this export writes the llama, qwen2 "
     "and qwen3 graphs only)"),
    (lambda c: c.mlp == "geglu", "a GeGLU MLP (Gemma; not written by this export)"),
    (lambda c: c.norm == "layer", "LayerNorm (llama.cpp's llama/qwen graphs use RMSNorm)"),
    (lambda c: c.position == "learned", "learned positions (llama.cpp's llama/qwen graphs use RoPE)"),
    (lambda c: c.sandwich_norm or not c.pre_norm,
     "norms after the sublayers (llama.cpp's llama/qwen graphs norm only their inputs)"),
    (lambda c: c.norm_offset != 0, "(offset + w) norm weights (Gemma)"),
    (lambda c: c.scale_embeddings, "scaled embeddings (Gemma)"),
    (lambda c: c.query_pre_attn_scalar not in (None, c.head_dim),
     "an attention scale other than 1/sqrt(head_dim)"),
    (lambda c: c.sliding_window is not None,
     "a sliding attention window (llama.cpp's llama/qwen graphs attend to every earlier token)"),
    (lambda c: c.qk_norm and not c.qk_norm_per_head,
     "q/k norms over all heads at once (OLMo 2; llama.cpp's qwen3 norms each head)"),
    (lambda c: c.qk_norm and (c.attn_out_bias or c.mlp_bias),
     "q/k norms with an output or MLP bias (llama.cpp's qwen3 has neither)"),
    (lambda c: c.qk_norm and _scaling_kind(c) == "llama3",
     "q/k norms with llama3 rope scaling (llama.cpp's qwen3 reads no rope_freqs)"),
)  # fmt: skip


def _refusal(cfg: ModelConfig) -> str | None:
    """What llama.cpp computes differently from ``cfg`` (None: nothing)."""
    return "; ".join(why for unlike, why in _UNLIKE_LLAMA_CPP if unlike(cfg)) or None


def gguf_arch(cfg: ModelConfig) -> tuple[str, list[str]]:
    """The llama.cpp architecture computing ``cfg`` exactly and notes for stderr, or a refusal."""
    why = _refusal(cfg)
    if why is not None:
        raise MygptError(
            f"llama.cpp computes this model differently: {why} — it can't be exported to GGUF "
            "(export it as a Hugging Face directory instead)"
        )
    if cfg.qk_norm:
        return "qwen3", []
    if cfg.hf_model_type == "qwen2" and ARCHITECTURES["qwen2"].fits(cfg) is None:
        if cfg.head_dim * cfg.num_heads == cfg.embed_dim:
            return "qwen2", []
        return "llama", [
            "note: written as llama (the same function): llama.cpp's qwen2 graph assumes "
            "head_dim = embed_dim / num_heads"
        ]
    return "llama", []


# --- tensors ------------------------------------------------------------------------------------


def _rope_heads(name: str, cfg: ModelConfig) -> int | None:
    """The head count the converter permutes a tensor by (None: not permuted)."""
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return cfg.num_heads
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return cfg.num_kv_heads
    return None


def float_tensors(cfg: ModelConfig, params: dict[str, np.ndarray], arch: str) -> dict:
    """The model's float32 weights under llama.cpp's names and layout (plus ``rope_freqs``)."""
    hf = ARCHITECTURES["llama"].to_hf(cfg, params)  # every Llama-family map is the same one
    out = {}
    if _scaling_kind(cfg) == "llama3":
        out["rope_freqs.weight"] = rope_freq_factors(cfg)
    for name, w in hf.items():
        heads = _rope_heads(name, cfg)
        if arch == "llama" and heads is not None:
            w = llama_permute(w, heads)
        out[gguf_name(name)] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def _encode_tensor(name: str, w: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(data, ggml type) of one tensor under ``--dtype``: 1-D tensors stay F32 (the converter's
    rule); a 2-D tensor whose rows aren't whole blocks stays F32 under q8_0/q4_0."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    qtype = {"float32": T.F32, "float16": T.F16, "bfloat16": T.BF16, "q8_0": T.Q8_0,
             "q4_0": T.Q4_0}[dtype]  # fmt: skip
    if w.ndim == 1 or qtype == T.F32 or (dtype in ("q8_0", "q4_0") and w.shape[-1] % QK):
        return w, T.F32
    return quantize(w, qtype), qtype


def _file_type(dtype: str) -> int:
    from gguf import LlamaFileType as F

    return {"float32": F.ALL_F32, "float16": F.MOSTLY_F16, "bfloat16": F.MOSTLY_BF16,
            "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[dtype]  # fmt: skip


def checkpoint_blocks(ckpt: Checkpoint) -> dict[str, QuantizedTensor]:
    """A ``mygpt quantize``d checkpoint's own Q8_0/Q4_0 weights, by mygpt parameter name, to be
    written byte for byte (never re-quantized, never dequantized): ggml's block bytes, which is
    what GGUF holds for the tensor."""
    return {k: v for k, v in ckpt.params.items() if isinstance(v, QuantizedTensor)}


def _block_tensor(
    cfg: ModelConfig, name: str, q: QuantizedTensor, arch: str
) -> tuple[np.ndarray, Any]:
    """A quantized weight's blocks under llama.cpp's layout: Q/K rows reordered to the
    half-split layout for qwen2/qwen3 (whole rows of blocks move; no byte changes)."""
    from gguf import GGMLQuantizationType as T

    blocks = np.ascontiguousarray(q.blocks, dtype=np.uint8)
    heads = {"W_Q": cfg.num_heads, "W_K": cfg.num_kv_heads}.get(name.split(".")[-2])
    if arch != "llama" and heads is not None and name.startswith("blocks."):
        blocks = np.ascontiguousarray(blocks[interleaved_to_half(heads, cfg.head_dim)])
    return blocks, {"Q8_0": T.Q8_0, "Q4_0": T.Q4_0}[q.kind]


def gguf_tensors(ckpt: Checkpoint, arch: str, dtype: str) -> dict[str, tuple[np.ndarray, Any]]:
    """Every tensor of the file as (data, ggml type). A quantized checkpoint's blocks go out as
    they are; ``dtype`` applies to its float tensors."""
    blocks = checkpoint_blocks(ckpt)
    params = {k: np.zeros(v.shape, np.float32) if k in blocks else v
              for k, v in ckpt.params.items()}  # fmt: skip
    out = {name: _encode_tensor(name, w, dtype)
           for name, w in float_tensors(ckpt.config, params, arch).items()}  # fmt: skip
    for name, q in blocks.items():
        out[gguf_param_name(name)] = _block_tensor(ckpt.config, name, q, arch)
    return out


# --- metadata and the file ----------------------------------------------------------------------


def _hparams(w: Any, cfg: ModelConfig, dtype: str) -> None:
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.embed_dim)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.mlp_hidden)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(float(cfg.rope_base))
    if _scaling_kind(cfg) == "linear":  # llama.cpp: positions times 1/factor, as mygpt
        from gguf import RopeScalingType

        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    w.add_layer_norm_rms_eps(float(cfg.norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(_file_type(dtype))


def _writer(cfg: ModelConfig, arch: str, dtype: str, vocab: GGUFVocab, ckpt: Checkpoint) -> Any:
    import gguf

    # no general.name: llama.cpp changes how special tokens tokenize when the name contains
    # "phi3" (and fails to load without "</s>"), transformers' GGUF loader picks an architecture
    # by "mistral" in it; a checkpoint's file name must not change the model
    w = gguf.GGUFWriter(None, arch)
    _hparams(w, cfg, dtype)
    vocab.write(w)
    # what GGUF can't say (the origin architecture, llama3 scaling's parameters, the tokenizer
    # as mygpt holds it), so import gives back the same checkpoint
    w.add_string(MYGPT_CONFIG_KEY, json.dumps(cfg.to_dict()))
    w.add_string(MYGPT_TOKENIZER_KEY, json.dumps(ckpt.tokenizer))
    return w


def write_gguf(
    path: Path, w: Any, tensors: dict[str, tuple[np.ndarray, Any]],
    before_publish: Callable[[], None] | None = None,
) -> Path:  # fmt: skip
    """Write header, metadata, tensor infos and data through :func:`atomic_write` (every byte by
    ``os.write``, so the fault tests reach it); ``before_publish`` runs once the new file is
    complete, before it takes ``path``'s name."""
    from gguf.gguf_writer import WriterState

    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)

    def write(f: Any) -> None:
        w.fout, w.state = [f], WriterState.EMPTY
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.write_padding(f, f.tell())
        for ti in w.tensors[0].values():
            f.write(memoryview(np.ascontiguousarray(ti.tensor)).cast("B"))
            w.write_padding(f, ti.nbytes)
        w.fout = None

    return atomic_write(path, write, "OUT.gguf", before_publish=before_publish)


def _modelfile_writer(path: Path, modelfile: Modelfile | None) -> Callable[[], None] | None:
    """Writes the Modelfile just before the GGUF takes its name: a failure writing either keeps
    the previous pair (the Modelfile names the GGUF and its template belongs to that model)."""
    if modelfile is None:
        return None
    return lambda: atomic_write_text(modelfile_path(path), modelfile.text, MODELFILE)


def export_gguf(
    source: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32",
    base: str | None = None, ollama: bool = False,
) -> tuple[Path, str, list[str]]:  # fmt: skip
    """Write ``out`` (and with ``ollama`` an Ollama Modelfile beside it, see ``ollama``);
    returns (its path, the GGUF architecture, notes for stderr)."""
    if dtype not in GGUF_DTYPES:
        raise MygptError(f"unknown GGUF dtype {dtype!r} — use one of {', '.join(GGUF_DTYPES)}")
    from mygpt.interop.sources import load_source

    out = check_output_path(out, "OUT.gguf")  # before loading anything
    if ollama:
        check_output_path(modelfile_path(out), MODELFILE)
    ckpt = load_source(source, base=base)
    cfg = ckpt.config
    arch, notes = gguf_arch(cfg)
    vocab = gguf_vocab(ckpt.tokenizer, cfg.vocab_size)
    # the Modelfile's refusals come before any tensor work or write
    modelfile = build_modelfile(out.name, ckpt.tokenizer, vocab, cfg) if ollama else None
    tensors = gguf_tensors(ckpt, arch, dtype)
    kinds = {q.kind.lower() for q in checkpoint_blocks(ckpt).values()}
    w = _writer(cfg, arch, kinds.pop() if len(kinds) == 1 and dtype == "float32" else dtype,
                vocab, ckpt)  # fmt: skip
    path = write_gguf(out, w, tensors, before_publish=_modelfile_writer(out, modelfile))
    return path, arch, notes + vocab.notes + (modelfile.notes if modelfile else [])
