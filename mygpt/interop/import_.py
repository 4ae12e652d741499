"""``mygpt import HFDIR OUT.safetensors``: a Hugging Face model directory as a mygpt checkpoint.

The reverse of ``mygpt export``, for the architectures it writes (gpt2, starcoder2, arcee, llama).
A model is imported only if mygpt computes exactly the same function: every feature mygpt lacks
(an approximate GELU, non-zero attention biases, an untied head, rope scaling, ...) is a one-line
refusal naming it. Export then import gives back the same bits.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import click
import numpy as np

from mygpt.checkpoint import Checkpoint, save_checkpoint
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.interop import hf_tokenizer
from mygpt.interop.architectures import ARCHITECTURES, Architecture

# tensors transformers keeps as non-persistent buffers, which older files still carry
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
_DTYPES = {"F32": np.float32, "F16": np.float16}


def _fail(where: Path, feature: str) -> MygptError:
    return MygptError(
        f"{where}: {feature}, which mygpt does not compute exactly, so it can't be imported — "
        f"mygpt imports {', '.join(ARCHITECTURES)} models as `mygpt export` writes them"
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


def _rope_base(hf: dict, where: Path) -> float:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = (
        params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "?"
    )
    if kind != "default":
        raise _fail(where, f"it uses rope scaling ({kind!r})")
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise _fail(where, "it rotates only part of each head (partial_rotary_factor)")
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    default = 100000.0 if hf.get("model_type") == "starcoder2" else 10000.0
    return float(theta if theta is not None else hf.get("rope_theta", default))


def _check_act(hf: dict, key: str, want: str, where: Path) -> None:
    act = hf.get(key, "gelu_new" if key == "activation_function" else None)
    if act == want:
        return
    if isinstance(act, str) and ("tanh" in act or act in ("gelu_new", "gelu_fast", "quick_gelu")):
        raise _fail(
            where, f"its activation is {act!r}, an approximate (tanh) GELU, not exact erf GELU"
        )
    if want == "gelu" and act == "silu":
        raise _fail(where, "its MLP is gated (SiLU) where its config asks for a plain GELU MLP")
    raise _fail(where, f"its activation is {act!r} (mygpt computes {want!r} here)")


def config_from_hf(hf: dict, where: Path) -> tuple[Architecture, ModelConfig]:
    """The architecture and the mygpt config of an HF config.json, or a refusal naming why not."""
    kind = hf.get("model_type")
    arch = ARCHITECTURES.get(kind)
    if arch is None:
        raise _fail(where, f"its architecture is {kind!r}")
    if not hf.get("tie_word_embeddings", True):
        raise _fail(where, "its output head is not tied to the token embedding")
    if kind == "gpt2":
        _check_act(hf, "activation_function", "gelu", where)
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
            raise _fail(where, "its attention scores are not scaled by 1/sqrt(head_dim)")
        if hf.get("add_cross_attention"):
            raise _fail(where, "it has cross-attention")
        C, H = hf["n_embd"], hf["n_head"]
        fields = dict(embed_dim=C, num_heads=H, num_layers=hf["n_layer"],
                      max_seq_len=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                      mlp_hidden=hf.get("n_inner") or 4 * C)  # fmt: skip
    else:
        C, H = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, C // H):
            raise _fail(where, f"its head_dim {hf['head_dim']} is not hidden_size / heads")
        window = hf.get("sliding_window") if kind == "starcoder2" else None
        if window and window < hf.get("max_position_embeddings", math.inf):
            raise _fail(where, "it uses sliding-window attention")
        want = "silu" if kind == "llama" else "gelu"
        _check_act(hf, "hidden_act", want, where)
        eps = hf.get("norm_epsilon" if kind == "starcoder2" else "rms_norm_eps", 1e-5)
        fields = dict(embed_dim=C, num_heads=H, num_layers=hf["num_hidden_layers"],
                      max_seq_len=hf["max_position_embeddings"], norm_eps=eps,
                      num_kv_heads=hf.get("num_key_value_heads") or H,
                      rope_base=_rope_base(hf, where), mlp_hidden=hf["intermediate_size"])  # fmt: skip
    if kind == "gpt2":
        fields["num_kv_heads"] = hf.get("mygpt_num_kv_heads") or H
    try:
        cfg = ModelConfig(
            vocab_size=hf["vocab_size"], norm=arch.norm, position=arch.position,
            mlp=arch.mlp, **fields,
        )  # fmt: skip
    except MygptError as e:
        raise _fail(
            where, f"its shape has no mygpt equivalent ({str(e).split(' — ')[0]})"
        ) from None
    return arch, cfg


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 (bf16/f16 widen exactly); damage is one line."""
    from safetensors import deserialize

    if not path.is_file():
        sharded = path.with_name("model.safetensors.index.json").is_file()
        hint = "sharded checkpoints are not supported" if sharded else "export it with safetensors"
        raise MygptError(f"{path} does not exist — {hint} (mygpt never loads pickled .bin files)")
    try:
        raw = deserialize(path.read_bytes())
    except Exception as e:  # SafetensorError: truncated, corrupt header, ...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MygptError(
            f"{path} is truncated or damaged ({detail}) — download or export it again"
        ) from None
    out = {}
    for name, t in raw:
        dtype = t["dtype"]
        if dtype == "BF16":  # numpy has no bfloat16: its bits are the top half of a float32
            bits = np.frombuffer(t["data"], dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif dtype in _DTYPES:
            arr = np.frombuffer(t["data"], dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise MygptError(
                f"{path}: tensor {name!r} is {dtype}; mygpt holds float32 weights and would round "
                "it — convert the model to float32, float16 or bfloat16 first"
            )
        out[name] = arr.astype(np.float32).reshape(t["shape"])
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
    head = t.pop("lm_head.weight", None)
    if head is not None and not (embed in t and np.array_equal(head, t[embed])):
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
    tok_path = hfdir / "tokenizer.json"
    if not tok_path.is_file():
        raise MygptError(f"{hfdir} has no tokenizer.json — mygpt needs the model's tokenizer too")
    tokenizer = hf_tokenizer.from_hf(
        tok_path.read_text(encoding="utf-8"), cfg.vocab_size, str(tok_path)
    )
    tensors = read_safetensors(hfdir / "model.safetensors")
    params = params_from_hf(arch, cfg, tensors, hfdir)
    return Checkpoint(cfg, params, tokenizer, format="native", path=hfdir)


@click.command("import")
@click.argument("hfdir", type=click.Path(path_type=str))
@click.argument("output", type=click.Path(path_type=str))
def import_cmd(hfdir: str, output: str) -> None:
    """Import a Hugging Face model directory as a mygpt .safetensors checkpoint."""
    if not output.endswith(".safetensors"):
        raise MygptError(f"output {output!r} must end in .safetensors — mygpt's native checkpoint")
    ckpt = import_hf(hfdir)
    save_checkpoint(output, ckpt.config, ckpt.params, ckpt.tokenizer)
    click.echo(output)
