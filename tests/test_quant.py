"""Quantized models (issue 29): ggml's Q8_0/Q4_0 blocks byte for byte, the same dequantized
numbers on numpy, torch and MLX, quantized linears against a float64 reference, the quantize
command and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import mygpt
from mygpt import quant
from mygpt.backends import get_backend
from mygpt.checkpoint import load_checkpoint, save_checkpoint
from mygpt.cli import main
from mygpt.config import ModelConfig
from mygpt.interop.import_ import import_hf
from mygpt.model import init_params
from tests.conftest import TINY_SHAKESPEARE
from tests.real_models import build_model

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GT  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

pytestmark = pytest.mark.usefixtures("hub_offline")

KINDS = {"Q8_0": GT.Q8_0, "Q4_0": GT.Q4_0}
BACKENDS = ["torch", "mlx"]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, except that a zero's sign is free: MLX's affine form computes a Q4_0 zero
    as d*8 - 8d = +0 where ggml's d*(q - 8) gives -0 for a negative d."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.array_equal(a, b) and np.array_equal(
        a[a != 0].view(np.uint32), b[b != 0].view(np.uint32)
    )


def _awkward(rows: int = 48, cols: int = 96, seed: int = 0) -> np.ndarray:
    """Weights with the cases quantizers get wrong: zero blocks, exact halves, ties of |max|,
    a negative extreme, tiny and large scales."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    x[0, :32] = 0.0
    x[1, :32] = np.arange(32, dtype=np.float32) / 2 - 8  # halves after scaling
    x[2, :32] = 1.0
    x[2, 7] = -1.0  # |max| tie: the first one wins
    x[3, 32:64] *= 1e-4
    x[4, 64:] *= 300
    x[5, 3] = -2.5  # a negative extreme: Q4_0's d is positive
    return x


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_are_ggml_bytes_and_dequantize_exactly(kind):
    x = _awkward()
    qt = quant.quantize(x, kind)
    ref = gguf_quantize(x, KINDS[kind])
    assert qt.blocks.shape == (48, 96 // 32 * quant.BLOCK_BYTES[kind])
    assert np.array_equal(qt.blocks, ref)
    assert np.array_equal(
        qt.dequantize().view(np.uint32), gguf_dequantize(ref, KINDS[kind]).view(np.uint32)
    )
    again = quant.from_codes(kind, qt.codes(), qt.scales())
    assert np.array_equal(again.blocks, qt.blocks)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_backends_dequantize_to_the_same_bits(backend, kind):
    ops = get_backend(backend, "cpu")
    x = _awkward(seed=1)
    qt = quant.quantize(x, kind)
    w = ops.quantized(qt)
    want = gguf_dequantize(gguf_quantize(x, KINDS[kind]), KINDS[kind])
    assert _same_bits(ops.to_numpy(w), want)
    if backend == "torch" or kind == "Q8_0":  # the sign of zero too
        assert np.array_equal(ops.to_numpy(w).view(np.uint32), want.view(np.uint32))
    assert np.array_equal(w.to_record().blocks, qt.blocks)
    # a recorded bf16 compute dtype keeps the blocks: to_numpy is still the exact fp32 values
    assert ops.dtype_of(ops.cast(w, "bfloat16")) == "bfloat16"
    # embedding rows: the gathered rows dequantized
    ids = ops.asarray(np.array([[3, 0, 47], [5, 5, 1]]))
    rows = ops.to_numpy(ops.embedding(w, ids))
    assert _same_bits(rows, want[np.array([[3, 0, 47], [5, 5, 1]])])
    # fused Q|K|V: rows concatenated block by block
    w2 = ops.quantized(quant.quantize(x[:16] * 2, kind))
    fused = ops.concat([w, w2], axis=0)
    assert _same_bits(ops.to_numpy(fused), np.concatenate([want, ops.to_numpy(w2)]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_quantized_linear_matches_float64(backend, kind):
    ops = get_backend(backend, "cpu")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    qt = quant.quantize(_awkward(seed=3), kind)
    bias = rng.standard_normal(48).astype(np.float32)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T + bias
    w = ops.quantized(qt)
    y = ops.to_numpy(ops.linear(ops.asarray(x), w, ops.asarray(bias)))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    yb = ops.to_numpy(ops.linear(ops.asarray(x, "bfloat16"), ops.cast(w, "bfloat16")))
    np.testing.assert_allclose(yb, ref - bias, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


# --- the command and the file ----------------------------------------------------------------

IDS = [5, 17, 42, 99, 3, 250, 7, 64]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A SmolLM2-like tiny Llama (tied head) and its Q8_0 and Q4_0 checkpoints."""
    root = tmp_path_factory.mktemp("quant")
    build_model(root / "llama", "llama_tied")
    (root / "text.txt").write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:4000])
    for bits in ("8", "4"):
        assert main(["quantize", str(root / "llama"), str(root / f"q{bits}.safetensors"),
                     "--bits", bits]) == 0  # fmt: skip
    return root


@pytest.mark.parametrize("bits", ["8", "4"])
def test_quantize_writes_ggml_blocks_under_the_usual_names(root, bits):
    kind = quant.TYPE_OF_BITS[int(bits)]
    float_params = import_hf(root / "llama").params
    with safe_open(root / f"q{bits}.safetensors", "numpy") as f:
        meta = json.loads(f.metadata()["quantization"])
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert meta["format"] == "ggml" and meta["version"] == 1
    quantized = {k for k, v in float_params.items() if v.ndim == 2}
    assert set(meta["tensors"]) == quantized and "lm_head.weight" not in stored  # tied stays tied
    for name, w in float_params.items():
        if name in quantized:
            assert meta["tensors"][name] == {"type": kind, "shape": list(w.shape)}
            assert stored[name].dtype == np.uint8
            assert np.array_equal(stored[name], gguf_quantize(w, KINDS[kind]))
        else:  # norms stay float, bit for bit
            assert np.array_equal(stored[name], w)
    ckpt = load_checkpoint(root / f"q{bits}.safetensors")
    assert isinstance(ckpt.params["token_embedding.embedding.weight"], quant.QuantizedTensor)


def test_weights_that_do_not_fit_blocks_stay_float_and_are_listed(tmp_path, capsys):
    cfg = ModelConfig(vocab_size=65, embed_dim=48, num_heads=4, num_layers=1, max_seq_len=16,
                      position="learned")  # fmt: skip
    tok = {"kind": "char", "version": 1, "chars": [chr(32 + i) for i in range(65)]}
    save_checkpoint(tmp_path / "f.safetensors", cfg, init_params(cfg), tok)
    assert main(["quantize", str(tmp_path / "f.safetensors"), str(tmp_path / "q.safetensors"),
                 "--bits", "8"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    # fc2 reads 4C = 192 features (fits); everything else reads C = 48 (doesn't)
    assert "kept in float (rows not a multiple of 32): token_embedding.embedding.weight," in err
    params = load_checkpoint(tmp_path / "q.safetensors").params
    assert isinstance(params["blocks.0.mlp.fc2.weight"], quant.QuantizedTensor)
    assert not isinstance(params["position_embedding.weight"], quant.QuantizedTensor)
    m = mygpt.load(tmp_path / "q.safetensors", backend="torch", device="cpu")
    f = mygpt.load(tmp_path / "f.safetensors", backend="torch", device="cpu")
    assert np.abs(m.logits([1, 2, 3]) - f.logits([1, 2, 3])).max() < 0.05


def _error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: ")  # one line, no traceback
    return err[0]


def test_a_quantized_file_is_refused_where_float_weights_are_required(root, tmp_path, capsys):
    q = str(root / "q8.safetensors")
    cases = [
        (["quantize", q, str(tmp_path / "again.safetensors"), "--bits", "4"], "already quantized"),
        (["convert", q, str(tmp_path / "x.ckpt")], "the book's .ckpt format"),
        (["export", q, str(tmp_path / "hf")], "the Hugging Face format"),
        (["train", "--resume", q], "train --resume"),
        (["train", str(root / "text.txt"), "--init-from", q, "--steps", "1"], "--lora-rank"),
    ]
    for args, words in cases:
        assert main(args) != 0
        assert words in _error(capsys), args
    assert not (tmp_path / "again.safetensors").exists() and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("bits", ["8", "4"])
def test_generate_eval_and_save_on_both_backends(root, tmp_path, bits, capsys):
    q = root / f"q{bits}.safetensors"
    logits = {}
    for backend in BACKENDS:
        m = mygpt.load(q, backend=backend, device="cpu")
        logits[backend] = m.logits(IDS)
        assert all(isinstance(v, quant_weight_class()) for k, v in m.params.items()
                   if k != "ln_f.weight" and ".ln" not in k)  # fmt: skip
        m.save(tmp_path / f"{backend}.safetensors")  # the blocks, as loaded
        with (
            safe_open(tmp_path / f"{backend}.safetensors", "numpy") as a,
            safe_open(q, "numpy") as b,
        ):
            assert all(np.array_equal(a.get_tensor(k), b.get_tensor(k)) for k in b.keys())  # noqa: SIM118
        assert main(["generate", "--checkpoint", str(q), "--prompt", "ROMEO:", "--max-new-tokens",
                     "5", "--backend", backend, "--device", "cpu", "--temperature", "0"]) == 0  # fmt: skip
        assert capsys.readouterr().out.startswith("ROMEO:")
        assert main(["eval", str(root / "text.txt"), "--checkpoint", str(q), "--max-tokens", "200",
                     "--json", "--backend", backend, "--device", "cpu"]) == 0  # fmt: skip
        logits[f"{backend} ppl"] = json.loads(capsys.readouterr().out)["perplexity"]
    # the float64 reference: the dequantized weights in a float model
    ref = _float64_logits(root, q)
    for backend in BACKENDS:
        np.testing.assert_allclose(logits[backend], ref, atol=2e-4, rtol=1e-4)
    assert abs(logits["torch ppl"] / logits["mlx ppl"] - 1) < 1e-4


def quant_weight_class():
    from mygpt.backends.quant import QuantizedWeight

    return QuantizedWeight


def _float64_logits(root: Path, q: Path) -> np.ndarray:
    """transformers' float64 logits of the dequantized weights (exported as a float model)."""
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = load_checkpoint(q)
    out = root / f"{q.stem}-dequantized"
    if not out.exists():
        save_checkpoint(root / f"{q.stem}-f.safetensors", ckpt.config,
                        quant.dequantize_params(ckpt.params), ckpt.tokenizer)  # fmt: skip
        assert main(["export", str(root / f"{q.stem}-f.safetensors"), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].numpy()


# --- mlx-lm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,bits", [("llama_tied", "8"), ("llama", "4")])
def test_export_mlx_loads_in_mlx_lm_with_mygpts_logits(root, tmp_path, family, bits):
    """mlx-lm reads the blocks as its own affine groups: the same logits as mygpt's MLX backend
    (``llama``: llama3 rope, GQA, head_dim 24, biases, an untied quantized head)."""
    mx = pytest.importorskip("mlx.core")
    mlx_lm = pytest.importorskip("mlx_lm")
    src = root / "llama" if family == "llama_tied" else tmp_path / family
    if family != "llama_tied":
        build_model(src, family)
    q = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), str(q), "--bits", bits]) == 0
    assert main(["export", str(q), str(tmp_path / "mlx"), "--mlx"]) == 0
    config = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": int(bits)}
    assert (tmp_path / "mlx" / "tokenizer.json").is_file()
    model, _ = mlx_lm.load(str(tmp_path / "mlx"))
    theirs = np.array(model(mx.array([IDS]))[0].astype(mx.float32))
    ours = mygpt.load(q, backend="mlx", device="cpu").logits(IDS)
    np.testing.assert_allclose(theirs, ours, atol=2e-5, rtol=1e-5)


def test_export_mlx_refuses_a_float_model(root, tmp_path, capsys):
    assert main(["export", str(root / "llama"), str(tmp_path / "mlx"), "--mlx"]) != 0
    assert "is not quantized" in _error(capsys)
    assert not (tmp_path / "mlx").exists()


# --- QLoRA -------------------------------------------------------------------------------------


def _qlora(root: Path, out: Path, backend: str, steps: int = 2) -> None:
    args = ["train", str(root / "text.txt"), "--init-from", str(root / "q4.safetensors"),
            "--lora-rank", "4", "--lora-alpha", "16", "--lora-targets", "q,k,v,o,gate,up,down",
            "--steps", str(steps), "--batch-size", "2", "--seq-len", "16", "--lr", "1e-2",
            "--backend", backend, "--device", "cpu", "--output", str(out)]  # fmt: skip
    assert main(args) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_qlora_trains_adapters_on_the_quantized_base(root, tmp_path, backend, monkeypatch):
    import mygpt.train.state as state
    from mygpt.backends.quant import QuantizedWeight
    from mygpt.lora import base_digest, load_adapter

    held = []
    real = state.to_backend
    monkeypatch.setattr(state, "to_backend", lambda ops, v: held.append(real(ops, v)) or held[-1])
    _qlora(root, tmp_path / "a.safetensors", backend)
    # the base went to the backend in its blocks (every 2-D weight), never as floats
    assert sum(isinstance(w, QuantizedWeight) for w in held) == sum(
        isinstance(v, quant.QuantizedTensor)
        for v in load_checkpoint(root / "q4.safetensors").params.values()
    )
    ad = load_adapter(tmp_path / "a.safetensors")
    assert ad.base == str((root / "q4.safetensors").resolve())
    assert ad.base_digest == base_digest(load_checkpoint(root / "q4.safetensors").params)
    assert main(["train", "--resume", str(tmp_path / "a.safetensors"), "--steps", "3"]) == 0
    assert load_adapter(tmp_path / "a.safetensors").train_state["step"] == 3


def test_a_qlora_adapter_exports_merged_in_float_and_requantizes_only_when_asked(
    root, tmp_path, capsys
):
    ad = tmp_path / "a.safetensors"
    _qlora(root, ad, "torch")
    # merged: every weight dequantized, the adapters' deltas added, in float
    merged = mygpt.load(ad, backend="torch", device="cpu")
    assert not any(isinstance(v, quant_weight_class()) for v in merged.params.values())
    assert main(["export", str(ad), str(tmp_path / "hf")]) == 0
    with safe_open(tmp_path / "hf" / "model.safetensors", "numpy") as f:
        assert all(f.get_tensor(k).dtype == np.float32 for k in f.keys())  # noqa: SIM118
    assert main(["export", str(ad), str(tmp_path / "peft"), "--peft"]) == 0
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    assert main(["quantize", str(ad), str(tmp_path / "q.safetensors"), "--bits", "4"]) == 0
    assert "weights moved by at most" in capsys.readouterr().err
    from mygpt.interop.sources import load_source

    floats = load_source(ad).params  # the merged model the new blocks quantize
    for name, qt in load_checkpoint(tmp_path / "q.safetensors").params.items():
        if isinstance(qt, quant.QuantizedTensor):
            assert np.array_equal(qt.blocks, gguf_quantize(floats[name], GT.Q4_0))


@pytest.mark.slow
def test_the_compiled_torch_kernel_matches_float64(monkeypatch):
    """MYGPT_QUANT_KERNEL=compiled: decode-sized matmuls in one compiled pass over the codes
    (compiles for ~30 s here: one shape, one kind)."""
    monkeypatch.setenv("MYGPT_QUANT_KERNEL", "compiled")
    ops = get_backend("torch", "cpu")
    rng = np.random.default_rng(4)
    qt = quant.quantize(_awkward(seed=5), "Q4_0")
    x = rng.standard_normal((3, 96)).astype(np.float32)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    with ops.inference():
        y = ops.to_numpy(ops.linear(ops.asarray(x), ops.quantized(qt)))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
