"""``mygpt export Q.safetensors OUTDIR --mlx``: a quantized model as an mlx-lm directory.

mlx-lm loads a model whose config.json has ``"quantization": {"group_size": 32, "bits": B}``
by turning every layer with a ``.scales`` tensor into a quantized one: ``.weight`` then holds
uint32 codes in MLX's packing, ``.scales`` and ``.biases`` the affine groups. ggml's blocks are
exactly that (see ``backends/quant_mlx.py``): scale d, bias −128·d (Q8_0) or −8·d (Q4_0). The
scales are written in fp32 so mlx-lm's embedding lookup dequantizes to d·q exactly, as mygpt
does. The tensor names and row orders are the Hugging Face export's (``architectures``): the
Llama family only permutes rows, and rows of blocks permute cleanly.
"""

from __future__ import annotations

import numpy as np

from mygpt.checkpoint import Checkpoint
from mygpt.errors import MygptError
from mygpt.quant import BITS, QuantizedTensor, is_quantized

_MARK = -12345.0  # the third column of a proxy: tells it from any real weight


def _proxies(params: dict) -> tuple[dict, list[str]]:
    """Each quantized weight replaced by a (rows, 3) float array [its index, row, mark], so the
    Hugging Face layout code moves rows of it as it would move the weight's rows."""
    names = [k for k, v in params.items() if isinstance(v, QuantizedTensor)]
    out = dict(params)
    for i, name in enumerate(names):
        rows = params[name].shape[0]
        out[name] = np.stack([np.full(rows, i), np.arange(rows), np.full(rows, _MARK)], axis=1)
    return out, names


def _is_proxy(x: np.ndarray) -> bool:
    return x.ndim == 2 and x.shape[1] == 3 and bool(np.all(x[:, 2] == _MARK))


def mlx_tensors(ckpt: Checkpoint, arch) -> tuple[dict[str, np.ndarray], int]:
    """The mlx-lm tensors (HF names; quantized layers as .weight/.scales/.biases) and the bits;
    refuses a float model, an architecture mlx-lm computes differently or one whose layout
    moves weights other than by rows."""
    from mygpt.backends.quant_mlx import mlx_codes

    if not is_quantized(ckpt.params):
        raise MygptError(
            f"{ckpt.path} is not quantized — `mygpt quantize` it first, or export it without "
            "--mlx (mlx-lm loads the Hugging Face directory too)"
        )
    if not arch.mlx_lm_exact:
        raise MygptError(f"mlx-lm does not compute this model exactly ({arch.mlx_lm_note}) — "
                         "keep it in mygpt")  # fmt: skip

    kinds = {v.kind for v in ckpt.params.values() if isinstance(v, QuantizedTensor)}
    if len(kinds) != 1:
        raise MygptError("an mlx-lm directory has one bit width: this model mixes Q8_0 and Q4_0")
    proxied, names = _proxies(ckpt.params)
    out: dict[str, np.ndarray] = {}
    for hf_name, value in arch.to_hf(ckpt.config, proxied).items():
        value = np.asarray(value)
        if not _is_proxy(value):
            if value.ndim == 2 and value.shape[0] == 3 and np.all(value[2] == _MARK):
                raise MygptError(
                    f"{arch.model_type} stores {hf_name} transposed, which breaks ggml's blocks "
                    "— --mlx exports the Llama family (llama, mistral, qwen2, qwen3)"
                )
            out[hf_name] = np.ascontiguousarray(value, dtype=np.float32)
            continue
        ids = value[:, 0].astype(np.int64)
        if len(set(ids)) != 1:
            raise MygptError(
                f"{hf_name} mixes several quantized weights — can't export it to mlx-lm"
            )
        qt = ckpt.params[names[ids[0]]].rows(value[:, 1].astype(np.int64))
        stem = hf_name.removesuffix(".weight")
        d = qt.scales()
        out[f"{stem}.weight"] = mlx_codes(qt)
        out[f"{stem}.scales"] = d
        out[f"{stem}.biases"] = d * -(128 if qt.kind == "Q8_0" else 8)
    return out, BITS[kinds.pop()]
