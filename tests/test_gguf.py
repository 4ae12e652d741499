"""GGUF both ways, checked against llama.cpp itself (llama-cpp-python, a dev dependency).

Models: tiny random Llama (llama3 scaling, GQA, head_dim != C/H, biases, untied), a tied Llama,
Mistral, Qwen2, Qwen3 and a Qwen2 with head_dim != C/H (written as llama), built with transformers
and imported; and two mygpt-native models with ``--recipe llama``'s architecture (one trained a
few steps with the recipe on its char tokenizer, one on a byte-level BPE). Each is exported once;
llama.cpp loads each file once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mygpt.api import Model
from mygpt.backends import get_backend
from mygpt.checkpoint import load_checkpoint, save_checkpoint
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.generate import generate
from mygpt.interop.gguf_export import export_gguf
from mygpt.interop.gguf_import import import_gguf
from mygpt.interop.gguf_layout import llama_permute
from mygpt.interop.import_ import import_hf
from mygpt.model import init_params
from mygpt.tokenizers import train_tokenizer
from tests.conftest import TINY_SHAKESPEARE, subprocess_env

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python (a dev dependency: uv sync) does not import"
)
gguf = pytest.importorskip("gguf")

HF = {  # name: (transformers family, overrides)
    "llama": ("llama", {}),
    "llama_tied": ("llama_tied", {}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "qwen2_wide_heads": ("qwen2", {"head_dim": 24}),
    "llama_linear_rope": ("llama_tied", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
}
NATIVE = ("recipe_llama", "llama_bytebpe")
MODELS = (*HF, *NATIVE)
#: the largest |llama.cpp - mygpt| fp32 logit difference accepted. Measured: 2e-6..5e-6 on these
#: models (|logits| up to ~5): both sum in fp32 in different orders (ggml's blocked dot products vs
#: torch's GEMM), so differences are a few ulps of the partial sums; 1e-4 leaves 20x headroom
#: and still catches any wrong weight, permutation or epsilon (those move logits by > 1e-2).
F32_TOL = 1e-4
POSITIONS = 64
GREEDY = 24
MIXED = (
    "In 2026 the café's naïve robot — model #12 — said:\n\t“Hello, world!” 😀 and then,\n\n"
    "   quietly, 1234567 times: don't stop. I'LL   go\r\nnow"
)


def _randomise(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Weights of O(1/sqrt(fan_in)) and norms around 1: logits far from ties (greedy is stable)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in init_params(cfg, seed).items():
        scale = 0.3 if v.ndim == 1 else 1.0 / np.sqrt(v.shape[-1])
        base = 1.0 if k.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        out[k] = (rng.standard_normal(v.shape) * scale + base).astype(np.float32)
    return out


def _train_recipe_llama(root: Path) -> Path:
    """A model trained (a few steps) with ``--recipe llama``'s flags and its char tokenizer."""
    from mygpt.recipes import get_recipe
    from mygpt.train import TrainConfig, train

    corpus = root / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = root / "recipe_llama.safetensors"
    flags = {**get_recipe("llama").flags, "warmup": 2}
    train(TrainConfig.from_flags(dict(
        data=str(corpus), output=str(out), steps=20, batch_size=8, seq_len=64, num_layers=2,
        print_every=100, backend="torch", device="cpu", cache_dir=str(root / "cache"), **flags,
    )))  # fmt: skip
    ckpt = load_checkpoint(out)
    assert (ckpt.config.norm, ckpt.config.position, ckpt.config.mlp) == ("rms", "rope", "swiglu")
    # 20 steps leave near-uniform logits: new weights of the same shapes, far from ties
    save_checkpoint(out, ckpt.config, _randomise(ckpt.config, 3), ckpt.tokenizer)
    return out


def _native_bytebpe(root: Path) -> Path:
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
    text += "def f(x):\n    return x\n  \n" * 200  # indented lines: "\n  " becomes a token
    tok = train_tokenizer("bytebpe", text, num_merges=150)
    cfg = ModelConfig(vocab_size=tok.vocab_size + 3, embed_dim=64, num_heads=4, num_kv_heads=2,
                      num_layers=2, max_seq_len=64, norm="rms", position="rope", mlp="swiglu")  # fmt: skip
    out = root / "llama_bytebpe.safetensors"  # 3 embedding rows past the tokens: padding
    save_checkpoint(out, cfg, _randomise(cfg, 1), tok.to_dict())
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from tests.real_models import build_model

    root = tmp_path_factory.mktemp("gguf_models")
    out = {}
    for name, (family, overrides) in HF.items():
        ckpt = import_hf(build_model(root / name, family, **overrides))
        out[name] = root / f"{name}.safetensors"
        save_checkpoint(out[name], ckpt.config, ckpt.params, ckpt.tokenizer)
    out["recipe_llama"] = _train_recipe_llama(root)
    out["llama_bytebpe"] = _native_bytebpe(root)
    return out


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict[tuple[str, str], tuple[Path, str]]:
    """(name, dtype) -> (the GGUF file, its architecture), made on first use."""
    root = tmp_path_factory.mktemp("gguf_files")
    cache: dict = {}

    class Files(dict):
        def __missing__(self, key):
            name, dtype = key
            path, arch, _ = export_gguf(checkpoints[name], root / f"{name}-{dtype}.gguf", dtype)
            self[key] = (path, arch)
            return self[key]

    return Files(cache)


@pytest.fixture(scope="module")
def torch_ops():
    return get_backend("torch", "cpu")


def _llama(path: Path, n_ctx: int = 128) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), logits_all=True, type_k=0, type_v=0, n_threads=1,
                           verbose=False, n_ctx=n_ctx)  # fmt: skip


def _llama_logits(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _llama_greedy(llm: llama_cpp.Llama, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def _ids(ckpt, n: int = POSITIONS) -> list[int]:
    tok = Model(ckpt, get_backend("torch", "cpu")).tokenizer
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:2000]
    return list(tok.encode(text))[:n]


def _mygpt(ckpt, ops) -> Model:
    return Model(ckpt, ops)


# --- F32: the same function ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_f32_logits_and_greedy_match_mygpt(name, checkpoints, exported, torch_ops):
    ckpt = load_checkpoint(checkpoints[name])
    path, arch = exported[name, "float32"]
    assert arch == ("qwen2" if name == "qwen2" else "qwen3" if name == "qwen3" else "llama")
    llm = _llama(path)
    m = _mygpt(ckpt, torch_ops)
    ids = _ids(ckpt)
    assert len(ids) == POSITIONS
    got, want = _llama_logits(llm, ids), m.logits(ids)
    assert got.shape == want.shape  # the token list is the embedding rows (padded)
    assert np.abs(got - want).max() < F32_TOL
    prompt = ids[:8]
    mine = list(generate(torch_ops, ckpt.config, m.params, prompt, GREEDY, temperature=0.0))
    assert _llama_greedy(llm, prompt, GREEDY) == mine


@pytest.mark.parametrize("name", MODELS)
def test_llama_cpp_tokenizes_as_mygpt(name, checkpoints, exported, torch_ops):
    ckpt = load_checkpoint(checkpoints[name])
    llm = _llama(exported[name, "float32"][0])
    tok = _mygpt(ckpt, torch_ops).tokenizer
    text = MIXED
    if name == "recipe_llama":  # a char model knows only its alphabet
        text = "".join(c for c in MIXED if c in tok.stoi) + "\nROMEO: 'tis so\n\n  x"
    plain = tok.encode(text, add_special_tokens=False) if tok.kind == "hf" else tok.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == plain
    if tok.kind == "hf":  # with the model's BOS, where its tokenizer adds one
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == tok.encode(text)
        rendered = "<|im_start|>user\nhi<|im_end|>\n"  # special tokens in text are matched
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == tok.encode(
            rendered, add_special_tokens=False
        )
    assert llm.detokenize(plain).decode("utf-8") == text


def _hf_tokenizer(pre: str) -> dict:
    """A byte-level BPE trained here with the pre-tokenizer (and normalizer, ignore_merges) of
    the real models llama.cpp names ``pre``: Llama 3, Qwen2, SmolLM."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from mygpt.interop.gguf_tokenizer import LLAMA3_REGEX, QWEN2_REGEX
    from mygpt.tokenizers.hf import read_hf_tokenizer
    from tests.real_models import SPECIALS

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "smollm")
    first = {
        "llama-bpe": pre_tokenizers.Split(Regex(LLAMA3_REGEX), "isolated", invert=False),
        "qwen2": pre_tokenizers.Split(Regex(QWEN2_REGEX), "isolated", invert=False),
        "smollm": pre_tokenizers.Digits(individual_digits=True),
    }[pre]
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([first, byte_level])
    tok.normalizer = normalizers.NFC() if pre == "qwen2" else None
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:6000]
    tok.train_from_iterator([text, MIXED * 3, "12345 67 I'LL don't  \n\n  x"], trainer)
    config = {"eos_token": "<|im_end|>"}
    return read_hf_tokenizer(tok.to_str(), config, {"eos_token_id": 3}, {})


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm"])
def test_real_models_pre_tokenizers_split_as_llama_cpp_names_them(pre, checkpoints, tmp_path):
    from mygpt.tokenizers import tokenizer_from_dict

    ckpt = load_checkpoint(checkpoints["llama_tied"])
    tok_dict = _hf_tokenizer(pre)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, ckpt.config, ckpt.params, tok_dict)
    out, _, _ = export_gguf(path, tmp_path / "m.gguf")
    assert gguf.GGUFReader(out).fields["tokenizer.ggml.pre"].contents() == pre
    llm, tok = _llama(out), tokenizer_from_dict(tok_dict)
    texts = [MIXED, "12345 67 I'LL don't  \n\n  x", "a\n  ", " leading", "tabs\t\tand  \r\n"]
    for text in texts:
        got = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert got == tok.encode(text, add_special_tokens=False), text


def test_bytebpe_differs_only_at_trailing_whitespace_after_a_newline(checkpoints, exported):
    """The one documented split difference (cl100k's \\s++$ against llama-bpe's)."""
    ckpt = load_checkpoint(checkpoints["llama_bytebpe"])
    tok = Model(ckpt, get_backend("torch", "cpu")).tokenizer
    llm = _llama(exported["llama_bytebpe", "float32"][0])
    for text in ("a b\n", "a \n\n", "x  ", "x\n\ny", "x \n y"):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    text = "return x\n  "  # one piece "\n  " in mygpt, "\n" + "  " in llama.cpp
    assert tok.encode("\n  ") == [tok.encode("\n  ")[0]]
    assert llm.tokenize(text.encode(), add_bos=False, special=False) != tok.encode(text)


def test_metadata_special_tokens_and_chat_template(checkpoints, exported):
    path, _ = exported["llama", "float32"]
    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tokens = meta["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert tokens[meta["tokenizer.ggml.bos_token_id"]] == "<|begin_of_text|>"
    assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert len(tokens) == load_checkpoint(checkpoints["llama"]).config.vocab_size
    assert tokens[-1].startswith("[PAD") and meta["tokenizer.ggml.token_type"][-1] == 5
    assert meta["llama.rope.dimension_count"] == 24 and meta["llama.attention.key_length"] == 24
    assert "rope_freqs.weight" in [t.name for t in r.tensors]
    native = gguf.GGUFReader(exported["recipe_llama", "float32"][0])
    assert native.fields["tokenizer.ggml.model"].contents() == "rwkv"
    assert "tokenizer.ggml.bos_token_id" not in native.fields  # nothing added, nothing stops


def test_llama_qk_rows_are_mygpts_own_and_qwen_rows_are_hf_half_split(checkpoints, exported):
    """The converter's permute of the Hugging Face rows gives mygpt's interleaved rows (llama);
    qwen2/qwen3 (NEOX rope) keep the Hugging Face rows."""
    from mygpt.interop.architectures import interleaved_to_half

    for name, permuted in (("llama", True), ("qwen3", False)):
        ckpt = load_checkpoint(checkpoints[name])
        cfg = ckpt.config
        r = gguf.GGUFReader(exported[name, "float32"][0])
        got = {t.name: np.array(t.data) for t in r.tensors}
        wq = ckpt.params["blocks.0.mha.W_Q.weight"]
        wk = ckpt.params["blocks.0.mha.W_K.weight"]
        hf_q = wq[interleaved_to_half(cfg.num_heads, cfg.head_dim)]
        if permuted:
            assert np.array_equal(got["blk.0.attn_q.weight"], wq)
            assert np.array_equal(llama_permute(hf_q, cfg.num_heads), wq)
            assert np.array_equal(got["blk.0.attn_k.weight"], wk)
        else:
            assert np.array_equal(got["blk.0.attn_q.weight"], hf_q)


@pytest.mark.parametrize("name", ["llama_tied", "mistral", "qwen2"])
def test_transformers_reads_the_gguf_as_mygpt_computes_it(name, checkpoints, exported, torch_ops):
    """transformers' own GGUF loader (from_pretrained(gguf_file=)) as a second oracle, on the
    models it reads exactly: it ignores key_length (a free head_dim), rope_freqs and biases,
    so the llama/qwen3 files here are llama.cpp's alone."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, _ = exported[name, "float32"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ckpt = load_checkpoint(checkpoints[name])
    ids = _ids(ckpt)
    with torch.no_grad():
        got = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - _mygpt(ckpt, torch_ops).logits(ids)).max() < F32_TOL


# --- quantized -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_quantized_blocks_are_the_reference_quantizer(dtype, checkpoints, exported):
    from gguf.quants import quantize

    ckpt = load_checkpoint(checkpoints["qwen3"])
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
    r = gguf.GGUFReader(exported["qwen3", dtype][0])
    tensors = {t.name: t for t in r.tensors}
    t = tensors["blk.1.ffn_down.weight"]
    assert t.tensor_type == qtype[dtype]
    want = quantize(ckpt.params["blocks.1.mlp.down.weight"], qtype[dtype])
    assert np.array_equal(np.array(t.data), want)
    assert tensors["blk.1.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


#: llama.cpp's quantized logits against mygpt on the same (dequantized) weights: measured max
#: |difference| 0.05-0.12 on these models (Q8_0 activations in every matmul, |logits| up to ~5);
#: twice that is the bound, far below what a wrong block or scale does (whole units)
QUANT_TOL = 0.25


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_quantized_logits_are_close_to_mygpt_on_the_dequantized_weights(
    name, dtype, exported, torch_ops
):
    """llama.cpp quantizes activations to Q8_0 inside its quantized matmuls, so its logits are
    close to, never equal to, the dequantized model's. Its top-1 agrees wherever mygpt's top two
    are further apart than that closeness, and everywhere it picks a token mygpt scores within
    it of the best. (Plain top-1 agreement on these tiny random models, whose top two logits are
    often within 0.1: 91-100%, see docs/gguf.md.)"""
    path, _ = exported[name, dtype]
    ckpt = import_gguf(path)  # dequantized to float32
    ids = _ids(ckpt)
    got = _llama_logits(_llama(path), ids)
    want = _mygpt(ckpt, torch_ops).logits(ids)
    assert np.abs(got - want).max() < QUANT_TOL
    top2 = np.sort(want, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * QUANT_TOL
    assert clear.sum() >= POSITIONS // 8  # measured 10-20 of 64
    assert np.array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear])
    picked = want[np.arange(len(ids)), got.argmax(-1)]
    assert np.all(picked >= want.max(-1) - 2 * QUANT_TOL)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.85


@pytest.fixture(scope="module")
def trained_llama(tmp_path_factory) -> Path:
    """A char model trained with ``--recipe llama`` (500 steps, ~10 s on one core) to a loss
    where most next characters are clear: on a trained model top-1 agreement means something,
    unlike on the random models above, whose top two logits are often within 0.1."""
    from mygpt.recipes import get_recipe
    from mygpt.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    out = root / "trained.safetensors"
    # the recipe's model and schedule; scaled init and a higher LR train it further in 500 steps
    flags = {**get_recipe("llama").flags, "warmup": 20, "init": "scaled", "lr": 3e-3}
    train(TrainConfig.from_flags(dict(
        data=str(corpus), output=str(out), steps=500, batch_size=16, seq_len=64, embed_dim=64,
        num_heads=4, num_layers=2, max_seq_len=256, print_every=1000, backend="torch",
        device="cpu", cache_dir=str(root / "cache"), **flags,
    )))  # fmt: skip
    return out


#: positions the Q8_0 agreement is measured on: 4 windows of 256 characters of text the model
#: did not train on (the end of Tiny Shakespeare)
TOP1_WINDOWS, TOP1_WINDOW = 4, 256


def test_q8_0_top1_agrees_with_mygpt_on_a_trained_model(trained_llama, tmp_path, torch_ops):
    """`mygpt quantize --bits 8`, export, then llama.cpp's logits against mygpt running the same
    Q8_0 blocks: the top-1 token agrees on >= 95% of positions. Measured: 99.5% (1019 of 1024;
    llama.cpp quantizes activations to Q8_0 in its matmuls, mygpt does not)."""
    from mygpt.interop.quantize import quantize_checkpoint

    q8 = tmp_path / "q8.safetensors"
    quantize_checkpoint(trained_llama, q8, 8)
    out, arch, _ = export_gguf(q8, tmp_path / "q8.gguf")
    assert arch == "llama"
    r = gguf.GGUFReader(out)
    assert {t.tensor_type for t in r.tensors if t.name.endswith("ffn_up.weight")} == {
        gguf.GGMLQuantizationType.Q8_0
    }
    ckpt = load_checkpoint(q8)
    m, llm = _mygpt(ckpt, torch_ops), _llama(out, TOP1_WINDOW)
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[-TOP1_WINDOWS * TOP1_WINDOW * 2 :]
    ids = list(m.tokenizer.encode(text))
    agree = []
    for w in range(TOP1_WINDOWS):
        window = ids[w * TOP1_WINDOW : (w + 1) * TOP1_WINDOW]
        got, want = _llama_logits(llm, window), m.logits(window)
        agree.append(got.argmax(-1) == want.argmax(-1))
    rate = float(np.concatenate(agree).mean())
    print(f"Q8_0 top-1 agreement with mygpt: {rate:.2%} of {TOP1_WINDOWS * TOP1_WINDOW}")
    assert rate >= 0.95


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_a_quantized_checkpoint_goes_out_with_its_own_blocks(name, checkpoints, exported):
    """Blocks are written byte for byte, never re-quantized: the file equals, tensor for
    tensor, the one quantizing the float model at export (Q/K rows reordered for qwen2 as whole
    rows of blocks), and llama.cpp computes the same logits from it."""
    from gguf.quants import quantize

    from mygpt.interop import gguf_export as ge
    from mygpt.interop.gguf_tokenizer import gguf_vocab
    from mygpt.quant import QuantizedTensor

    ckpt = load_checkpoint(checkpoints[name])
    cfg, params = ckpt.config, dict(ckpt.params)
    for k, v in ckpt.params.items():
        if v.ndim == 2 and v.shape[1] % 32 == 0:
            params[k] = QuantizedTensor(
                "Q4_0", v.shape, quantize(v, gguf.GGMLQuantizationType.Q4_0)
            )
    quantized = type(ckpt)(cfg, params, ckpt.tokenizer, path=ckpt.path)
    arch, _ = ge.gguf_arch(cfg)
    w = ge._writer(cfg, arch, "q4_0", gguf_vocab(ckpt.tokenizer, cfg.vocab_size), quantized)
    path = ge.write_gguf(exported["qwen3", "float32"][0].parent / f"{name}-blocks.gguf", w,
                         ge.gguf_tensors(quantized, arch, "float32"))  # fmt: skip
    mine = {t.name: t for t in gguf.GGUFReader(path).tensors}
    ref_path = exported[name, "q4_0"][0]
    ref = {t.name: t for t in gguf.GGUFReader(ref_path).tensors}
    assert mine.keys() == ref.keys()
    for k, t in ref.items():
        assert mine[k].tensor_type == t.tensor_type, k
        assert np.array_equal(np.array(mine[k].data), np.array(t.data)), k
    ids = _ids(ckpt)
    assert np.array_equal(_llama_logits(_llama(path), ids), _llama_logits(_llama(ref_path), ids))


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_mygpt_quantize_then_export_writes_the_checkpoints_blocks(name, checkpoints, exported,
                                                                  tmp_path):  # fmt: skip
    """`mygpt quantize --bits 4`, then export; the file's blocks are the checkpoint's bytes (qwen2's Q/K rows reordered whole) and
    equal the float model quantized at export, tensor for tensor."""
    from mygpt.interop.architectures import interleaved_to_half
    from mygpt.interop.quantize import quantize_checkpoint

    q = tmp_path / "q4.safetensors"
    quantize_checkpoint(checkpoints[name], q, 4)
    out, arch, _ = export_gguf(q, tmp_path / "q4.gguf")
    mine = {t.name: t for t in gguf.GGUFReader(out).tensors}
    ref = {t.name: t for t in gguf.GGUFReader(exported[name, "q4_0"][0]).tensors}
    assert mine.keys() == ref.keys()
    for k, t in ref.items():
        assert mine[k].tensor_type == t.tensor_type, k
        assert np.array_equal(np.array(mine[k].data), np.array(t.data)), k
    ckpt = load_checkpoint(q)
    cfg, wq = ckpt.config, ckpt.params["blocks.0.mha.W_Q.weight"]
    rows = interleaved_to_half(cfg.num_heads, cfg.head_dim) if arch == "qwen2" else slice(None)
    assert np.array_equal(np.array(mine["blk.0.attn_q.weight"].data), wq.blocks[rows])
    back = import_gguf(out)  # and back: the same blocks, the same float tensors
    for k, v in ckpt.params.items():
        same = (
            np.array_equal(back.params[k].blocks, v.blocks)
            if hasattr(v, "blocks")
            else (np.array_equal(back.params[k], v))
        )
        assert same, k


# --- import ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_export_import_round_trip_is_bit_exact(name, checkpoints, exported):
    ckpt = load_checkpoint(checkpoints[name])
    back = import_gguf(exported[name, "float32"][0])
    assert back.config == ckpt.config
    assert back.tokenizer == ckpt.tokenizer
    assert list(back.params) == list(ckpt.params)
    for k, v in ckpt.params.items():
        assert np.array_equal(back.params[k], v), k


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files_import_as_their_rounded_weights(dtype, checkpoints, exported):
    """F16/BF16 widen exactly: the weights come back as gguf's rounding of mygpt's, and the
    norms and biases (kept F32) as they were."""
    from gguf.quants import dequantize, quantize

    qtype = getattr(gguf.GGMLQuantizationType, {"float16": "F16", "bfloat16": "BF16"}[dtype])
    ckpt = load_checkpoint(checkpoints["llama"])
    back = import_gguf(exported["llama", dtype][0])
    for k, v in ckpt.params.items():
        want = v if v.ndim == 1 else dequantize(quantize(v, qtype), qtype)
        assert np.array_equal(back.params[k], want), k


@pytest.mark.parametrize("name", ["llama", "qwen2", "recipe_llama"])
def test_a_foreign_gguf_imports_from_its_tokenizer_keys(name, checkpoints, tmp_path, torch_ops):
    """A file llama.cpp's tools wrote (no mygpt.* keys): the tokenizer is rebuilt from
    tokenizer.ggml.*, the rope scaling from rope_freqs."""
    from mygpt.interop import gguf_export as ge
    from mygpt.interop.gguf_tokenizer import gguf_vocab

    ckpt = load_checkpoint(checkpoints[name])
    cfg = ckpt.config
    arch, _ = ge.gguf_arch(cfg)
    w = ge._writer(cfg, arch, "float32", gguf_vocab(ckpt.tokenizer, cfg.vocab_size), ckpt)
    for key in (ge.MYGPT_CONFIG_KEY, "mygpt.tokenizer"):
        del w.kv_data[0][key]
    path = ge.write_gguf(tmp_path / "foreign.gguf", w, ge.gguf_tensors(ckpt, arch, "float32"))
    back = import_gguf(path)
    assert back.config.rope_scaling == cfg.rope_scaling
    for k, v in ckpt.params.items():
        assert np.array_equal(back.params[k], v), k
    mine, theirs = Model(ckpt, torch_ops).tokenizer, Model(back, torch_ops).tokenizer
    text = "".join(c for c in MIXED if name != "recipe_llama" or c in mine.stoi)
    assert theirs.encode(text) == mine.encode(text)
    if name != "recipe_llama":
        assert theirs.chat_template == mine.chat_template
        assert theirs.stop_ids()[0] == mine.stop_ids()[0]


def test_cli_export_import_and_load(checkpoints, tmp_path):
    import mygpt

    out = tmp_path / "m.gguf"
    cmd = [sys.executable, "-m", "mygpt", "export", str(checkpoints["qwen2"]), str(out),
           "--dtype", "q8_0"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert "as GGUF qwen2 (q8_0)" in r.stderr and r.stdout.strip() == str(out)
    ck = tmp_path / "back.safetensors"
    r = subprocess.run([sys.executable, "-m", "mygpt", "import", str(out), str(ck)],
                       capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dequantized" not in r.stderr  # Q8_0 stays mygpt's blocks
    assert any(hasattr(v, "blocks") for v in load_checkpoint(ck).params.values())
    r = subprocess.run([sys.executable, "-m", "mygpt", "export", str(checkpoints["qwen2"]),
                        str(tmp_path / "hfdir"), "--dtype", "q8_0"],
                       capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert r.returncode != 0 and r.stderr.startswith("error: --dtype q8_0 is for GGUF files")
    m = mygpt.load(str(out), backend="torch")
    assert m.config == load_checkpoint(ck).config
    assert m.generate("ROMEO:", max_new_tokens=4, temperature=0.0).startswith("ROMEO:")


# --- refusals --------------------------------------------------------------------------------


def _save(tmp_path: Path, tok, **cfg_kw) -> Path:
    cfg = ModelConfig(vocab_size=tok.vocab_size, embed_dim=32, num_heads=4, num_layers=1,
                      max_seq_len=16, **cfg_kw)  # fmt: skip
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, cfg, init_params(cfg), tok.to_dict())
    return path


def _refusal(path: Path, tmp_path: Path) -> str:
    with pytest.raises(MygptError) as e:
        export_gguf(path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_what_llama_cpp_computes_differently_is_refused_in_one_line(tmp_path):
    char = train_tokenizer("char", "hello world\n")
    book = _refusal(_save(tmp_path, char), tmp_path)  # the book's Part-I model
    assert "erf-GELU" in book and "tanh" in book and "LayerNorm" in book and "learned" in book
    msg = _refusal(_save(tmp_path, char, norm="rms", position="rope", mlp="gelu"), tmp_path)
    assert "erf-GELU" in msg and "LayerNorm" not in msg
    bpe = train_tokenizer("bpe", "hello world, hello there\n" * 5, num_merges=5)
    swiglu = dict(norm="rms", position="rope", mlp="swiglu")
    assert "character-level BPE" in _refusal(_save(tmp_path, bpe, **swiglu), tmp_path)
    no_newline = train_tokenizer("char", "hello world")
    assert "newline" in _refusal(_save(tmp_path, no_newline, **swiglu), tmp_path)
    accents = train_tokenizer("char", "héllo wörld\n")  # llama.cpp hangs on "è" with this one
    assert "non-ASCII" in _refusal(_save(tmp_path, accents, **swiglu), tmp_path)


@pytest.mark.parametrize(
    ("features", "named"),
    [
        (dict(mlp="gelu", activation="gelu_tanh", norm="layer", position="learned"), "plain GELU"),
        (dict(mlp="geglu", activation="gelu_tanh"), "GeGLU"),
        (dict(sliding_window=8), "sliding attention window"),
        (dict(norm_offset=1.0, scale_embeddings=True), "(offset + w)"),
        (dict(sandwich_norm=True), "norms after the sublayers"),
        (dict(query_pre_attn_scalar=64.0), "attention scale"),
        (dict(qk_norm=True, qk_norm_per_head=False), "all heads at once"),
    ],
)
def test_the_families_features_llama_cpp_lacks_are_refused(features, named):
    """Gemma's, OLMo 2's, GPT-2's and Mistral's window features are named, not exported."""
    from mygpt.interop.gguf_export import gguf_arch

    base = dict(vocab_size=10, embed_dim=32, num_heads=4, num_layers=1, max_seq_len=16,
                norm="rms", position="rope", mlp="swiglu")  # fmt: skip
    with pytest.raises(MygptError) as e:
        gguf_arch(ModelConfig(**{**base, **features}))
    assert named in str(e.value) and "\n" not in str(e.value)
    assert gguf_arch(ModelConfig(**base)) == ("llama", [])


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text", "mistral_window", "phi3", "olmo2"])
def test_imported_families_llama_cpp_computes_otherwise_are_refused(family, tmp_path):
    from tests.real_models import build_family

    ckpt = import_hf(build_family(tmp_path / family, family))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, ckpt.config, ckpt.params, ckpt.tokenizer)
    assert "llama.cpp computes this model differently" in _refusal(path, tmp_path)


def test_a_phi3_without_a_window_is_a_llama(tmp_path, torch_ops):
    """Phi-3's fused Q|K|V and gate|up are a Llama's weights side by side: exact as llama."""
    from tests.real_models import build_family

    ckpt = import_hf(build_family(tmp_path / "phi3", "phi3", sliding_window=None))
    path = tmp_path / "phi3.safetensors"
    save_checkpoint(path, ckpt.config, ckpt.params, ckpt.tokenizer)
    out, arch, _ = export_gguf(path, tmp_path / "phi3.gguf")
    assert arch == "llama"
    ids = _ids(ckpt)
    got, want = _llama_logits(_llama(out), ids), _mygpt(ckpt, torch_ops).logits(ids)
    assert np.abs(got - want).max() < F32_TOL


def test_an_unknown_pre_tokenizer_is_refused(checkpoints, tmp_path):
    ckpt = load_checkpoint(checkpoints["llama"])
    tj = json.loads(ckpt.tokenizer["tokenizer_json"])
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    tok = {**ckpt.tokenizer, "tokenizer_json": json.dumps(tj)}
    save_checkpoint(tmp_path / "m.safetensors", ckpt.config, ckpt.params, tok)
    assert "pre-tokenizer" in _refusal(tmp_path / "m.safetensors", tmp_path)


def test_damaged_gguf_input_is_one_line(exported, tmp_path):
    path, _ = exported["qwen3", "float32"]
    data = path.read_bytes()
    for cut, what in ((len(data) // 2, "truncated"), (3, "GGUF")):
        bad = tmp_path / f"bad{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(MygptError) as e:
            import_gguf(bad)
        assert what in str(e.value) and "\n" not in str(e.value)
    garbled = tmp_path / "garbled.gguf"
    garbled.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(MygptError):
        import_gguf(garbled)


def test_export_into_a_missing_directory_is_refused_before_work(checkpoints, tmp_path):
    with pytest.raises(MygptError) as e:
        export_gguf(checkpoints["qwen3"], tmp_path / "nope" / "m.gguf")
    assert "nope" in str(e.value)


# --- Ollama: the Modelfile beside the GGUF ------------------------------------------------------

#: real models' chat templates (SmolLM2-Instruct's, Qwen2.5-Instruct's, Meta-Llama-3-Instruct's)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
#: conversations Ollama may send: every role, several turns, a system message in the middle,
#: text that looks like template syntax, and a last assistant message the model continues
CHATS = [
    [{"role": "user", "content": "Who wrote Hamlet?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Use {{ .Prompt }} and ünïcode — {% raw %} too"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "Now in French."},
     {"role": "user", "content": "b"}],
    [{"role": "system", "content": "You rhyme."}, {"role": "user", "content": "Say hi"},
     {"role": "assistant", "content": "Hi, I"}],
]  # fmt: skip


def _chat_checkpoint(root: Path, base: Path, template: str, specials: list[str], bos: bool,
                     eos: str) -> Path:  # fmt: skip
    """A checkpoint with ``base``'s weights and a tokenizer with ``specials`` and ``template``
    (also saved as a Hugging Face tokenizer directory ``root/hf`` for transformers)."""
    from mygpt.tokenizers.hf import read_hf_tokenizer
    from tests.real_models import build_tokenizer

    hf = root / "hf"
    build_tokenizer(hf, bos=bos, specials=specials, bos_token=specials[0])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0],
              "eos_token": eos, "chat_template": template}  # fmt: skip
    (hf / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = read_hf_tokenizer((hf / "tokenizer.json").read_text(encoding="utf-8"), config,
                            {"eos_token_id": specials.index(eos),
                             "bos_token_id": 0 if bos else None}, {})  # fmt: skip
    ckpt = load_checkpoint(base)
    path = root / "chat.safetensors"
    save_checkpoint(path, ckpt.config, ckpt.params, tok)
    return path


def _hf_render(hfdir: Path, chat: list[dict], tokenize: bool = False):
    """transformers' rendering: the generation prompt after a user turn; after an assistant turn,
    that turn left open (continue_final_message), as Ollama continues it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hfdir))
    last = chat[-1]["role"] == "assistant"
    out = tok.apply_chat_template(chat, tokenize=tokenize, add_generation_prompt=not last,
                                  continue_final_message=last)  # fmt: skip
    return list(out["input_ids"] if hasattr(out, "keys") else out) if tokenize else out


def _modelfile(gguf_path: Path) -> dict[str, list[str]]:
    from tests.ollama import parse_modelfile

    text = (gguf_path.parent / "Modelfile").read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for name, arg in parse_modelfile(text):
        out.setdefault(name, []).append(arg)
    return out


def _check_modelfile(out: Path) -> dict[str, list[str]]:
    """FROM names the written file (relative, as Ollama resolves it against the Modelfile's
    directory) and every stop is a token of the GGUF's vocabulary."""
    mf = _modelfile(out)
    assert mf["model"] == [f"./{out.name}"]
    assert (out.parent / mf["model"][0]).resolve() == out.resolve()
    tokens = gguf.GGUFReader(out).fields["tokenizer.ggml.tokens"].contents()
    assert all(s in tokens for s in mf.get("stop", [])), mf.get("stop")
    return mf


@pytest.mark.parametrize(
    ("template", "specials", "bos", "eos", "name"),
    [
        (SMOLLM2_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], False, "<|im_end|>",
         "ChatML"),
        (QWEN25_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], False, "<|im_end|>",
         "ChatML"),
        (LLAMA3_TEMPLATE, LLAMA3_SPECIALS, True, "<|eot_id|>", "Llama 3"),
    ],
    ids=["smollm2", "qwen2.5", "llama3"],
)  # fmt: skip
def test_ollama_template_renders_real_models_chat_templates(
    template, specials, bos, eos, name, checkpoints, tmp_path
):
    """The exact oracle: Ollama's prompt (its Go template, run by a Go-template evaluator, plus
    the BOS llama.cpp adds) equals transformers' apply_chat_template, and llama.cpp tokenizes it
    into transformers' ids."""
    from tests.ollama import ollama_prompt

    src = _chat_checkpoint(tmp_path, checkpoints["llama_tied"], template, specials, bos, eos)
    out, _, notes = export_gguf(src, tmp_path / "chat.gguf", ollama=True)
    mf = _check_modelfile(out)
    assert eos in mf["stop"] and mf["num_ctx"] == ["64"]
    assert any("strips whitespace" in n for n in notes) == (name == "Llama 3")
    llm = _llama(out)
    for chat in CHATS:
        prompt = ollama_prompt(mf["template"][0], chat)
        want = _hf_render(tmp_path / "hf", chat)
        assert (specials[0] if bos else "") + prompt == want, chat
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        assert ids == _hf_render(tmp_path / "hf", chat, tokenize=True), chat


def test_ollama_modelfile_for_the_test_models_template(checkpoints, tmp_path):
    """The ChatML template the test models carry: BOS text first (llama.cpp adds it, so the Go
    template leaves it out) and content trimmed (a note: Go templates can't trim)."""
    from mygpt.interop.ollama import recognise
    from tests.ollama import ollama_prompt
    from tests.real_models import CHAT_TEMPLATE, build_tokenizer

    build_tokenizer(tmp_path / "hf")
    out, _, notes = export_gguf(checkpoints["llama"], tmp_path / "m.gguf", ollama=True)
    mf = _check_modelfile(out)
    assert mf["stop"] == ["<|im_end|>", "<|end_of_text|>"]
    fmt = recognise(CHAT_TEMPLATE, {"bos_token": "<|begin_of_text|>"})
    assert (fmt.turn.name, fmt.prefix, fmt.default_system, fmt.trims) == (
        "ChatML", "<|begin_of_text|>", None, True)  # fmt: skip
    assert len(notes) == 1 and "strips whitespace" in notes[0]
    llm = _llama(out)
    for chat in CHATS:
        prompt = ollama_prompt(mf["template"][0], chat)
        assert "<|begin_of_text|>" + prompt == _hf_render(tmp_path / "hf", chat)
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        assert ids == _hf_render(tmp_path / "hf", chat, tokenize=True)
    # the one difference: the model's template trims, Ollama's keeps the whitespace
    padded, plain = [{"role": "user", "content": "  hi \n"}], [{"role": "user", "content": "hi"}]
    assert "<|begin_of_text|>" + ollama_prompt(mf["template"][0], plain) == _hf_render(
        tmp_path / "hf", padded
    )
    assert "\n  hi \n<|im_end|>" in ollama_prompt(mf["template"][0], padded)


@pytest.mark.parametrize("name", ["recipe_llama", "llama_bytebpe"])
def test_ollama_modelfile_without_a_chat_template_is_plain_completion(name, checkpoints, tmp_path):
    out, _, notes = export_gguf(checkpoints[name], tmp_path / "m.gguf", ollama=True)
    mf = _check_modelfile(out)
    assert mf["template"] == ["{{ .Prompt }}"]
    assert mf.get("stop") == (["<|endoftext|>"] if name == "llama_bytebpe" else None)
    assert mf["num_ctx"] == [str(load_checkpoint(checkpoints[name]).config.max_seq_len)]


@pytest.mark.parametrize(
    ("template", "why"),
    [("gemma", "refused a plain conversation"), (MISTRAL_TEMPLATE, "none of their layouts")],
)
def test_ollama_refuses_a_template_it_cant_write_exactly(template, why, checkpoints, tmp_path):
    from tests.real_models import GEMMA_TEMPLATE

    template = GEMMA_TEMPLATE if template == "gemma" else template
    ckpt = load_checkpoint(checkpoints["llama_tied"])
    tok = dict(ckpt.tokenizer, config={**ckpt.tokenizer["config"], "chat_template": template})
    src = tmp_path / "m.safetensors"
    save_checkpoint(src, ckpt.config, ckpt.params, tok)
    with pytest.raises(MygptError) as e:
        export_gguf(src, tmp_path / "out.gguf", ollama=True)
    msg = str(e.value)
    assert why in msg and "TEMPLATE yourself" in msg and "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # nothing written


def test_cli_ollama_flag(checkpoints, tmp_path):
    cmd = [sys.executable, "-m", "mygpt", "export", str(checkpoints["qwen2"]),
           str(tmp_path / "q.gguf"), "--ollama", "--dtype", "q8_0"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert f"ollama create NAME -f {tmp_path / 'Modelfile'}" in r.stderr
    assert _check_modelfile(tmp_path / "q.gguf")["stop"] == ["<|im_end|>", "<|end_of_text|>"]
    r = subprocess.run(cmd[:5] + [str(tmp_path / "hfdir"), "--ollama"], capture_output=True,
                       text=True, env=subprocess_env())  # fmt: skip
    assert r.returncode != 0 and r.stderr.startswith("error: --ollama writes a Modelfile beside")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "hfdir").exists()
    with pytest.raises(MygptError) as e:  # a missing directory: refused before any work
        export_gguf(checkpoints["qwen2"], tmp_path / "nope" / "m.gguf", ollama=True)
    assert "nope" in str(e.value)
