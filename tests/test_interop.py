"""The Hugging Face format both ways: transformers and mlx-lm compute mygpt's models exactly.

Five models: the three book fixtures and two trained here (a byte-level BPE model, a SwiGLU
model). Each is exported once per module; transformers and mlx-lm load each once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mygpt.backends import get_backend
from mygpt.checkpoint import load_checkpoint
from mygpt.generate import generate
from mygpt.interop.architectures import ARCHITECTURES, architecture_for
from mygpt.interop.export import export_hf
from mygpt.interop.import_ import import_hf
from mygpt.model import forward
from mygpt.tokenizers import tokenizer_from_dict
from mygpt.train import TrainConfig, train
from tests.conftest import BOOK_FIXTURES, TINY_SHAKESPEARE

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

# text none of the models trained on (Tiny Shakespeare has no digits in this form, no accents,
# no emoji, no U+001C-U+001F separators)
UNSEEN = (
    "In 2026 the café's naïve robot — model #12 — said:\n\t“Hello, world!” 😀 and then,\n\n"
    "   quietly, 1234567 times: don't stop.\x1c\x1f end"
)
FIXTURES = ("part1_ch18", "ch27_modern", "ch28_bpe")
TRAINED = {
    # byte-level BPE on a rotary LayerNorm GQA model: exports as starcoder2 (mlx-lm: exact)
    "bytebpe": dict(tokenizer="bytebpe", num_merges=60, norm="layer", position="rope", num_kv_heads=2),
    # exactly a Llama
    "swiglu": dict(norm="rms", position="rope", mlp="swiglu", num_kv_heads=2),
}  # fmt: skip
MODELS = (*FIXTURES, *TRAINED)
GREEDY = 50
PROMPT = 8


@pytest.fixture(autouse=True, scope="module")
def _offline():
    """No test reaches the network; restored afterwards (other modules test the online paths)."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if saved is None:
        del os.environ["HF_HUB_OFFLINE"]
    else:
        os.environ["HF_HUB_OFFLINE"] = saved


@pytest.fixture(scope="module")
def torch_ops():
    return get_backend("torch", "cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Path of each model's mygpt checkpoint (the two trained ones: tiny, a few steps)."""
    root = tmp_path_factory.mktemp("ckpts")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = {name: str(BOOK_FIXTURES / f"{name}.ckpt") for name in FIXTURES}
    for name, flags in TRAINED.items():
        path = root / f"{name}.safetensors"
        tc = TrainConfig.from_flags(dict(
            data=str(corpus), output=str(path), steps=80, lr=1e-2, batch_size=8, seq_len=64,
            embed_dim=32, num_heads=4, num_layers=2, max_seq_len=64, print_every=100,
            backend="torch", device="cpu", cache_dir=str(root / "cache"), **flags,
        ))  # fmt: skip
        train(tc)
        out[name] = str(path)
    return out


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    return {name: str(export_hf(path, root / name)) for name, path in checkpoints.items()}


@pytest.fixture(scope="module")
def hf_models(exported):
    models = {}
    for name, path in exported.items():
        m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        models[name] = m.eval()
    return models


def _ids(name: str, ckpt) -> np.ndarray:
    if name in FIXTURES:
        return np.load(BOOK_FIXTURES / f"{name}.npz")["input_ids"]
    tok = tokenizer_from_dict(ckpt.tokenizer)
    return np.array([tok.encode(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:300])[:64]])


def _mygpt_logits(ops, ckpt, ids) -> np.ndarray:
    params = {k: ops.asarray(v) for k, v in ckpt.params.items()}
    return ops.to_numpy(forward(ops, ckpt.config, params, ops.asarray(ids)))


def _mygpt_greedy(ops, ckpt, prompt: list[int]) -> list[int]:
    params = {k: ops.asarray(v) for k, v in ckpt.params.items()}
    return list(generate(ops, ckpt.config, params, prompt, GREEDY, temperature=0.0))


@pytest.mark.parametrize("name", MODELS)
def test_transformers_logits_match_mygpt(name, checkpoints, hf_models, torch_ops):
    ckpt = load_checkpoint(checkpoints[name])
    ids = _ids(name, ckpt)
    want = _mygpt_logits(torch_ops, ckpt, ids)
    with torch.no_grad():
        got = hf_models[name](torch.tensor(ids)).logits.numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    if name in FIXTURES:  # and the book's own logits, so the comparison is not mygpt vs itself
        assert np.abs(got - np.load(BOOK_FIXTURES / f"{name}.npz")["logits"]).max() <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_transformers_greedy_tokens_are_mygpts(name, checkpoints, hf_models, torch_ops):
    ckpt = load_checkpoint(checkpoints[name])
    assert ckpt.config.max_seq_len >= PROMPT + GREEDY  # past it mygpt crops, HF does not
    prompt = _ids(name, ckpt)[0, :PROMPT].tolist()
    want = _mygpt_greedy(torch_ops, ckpt, prompt)
    with torch.no_grad():
        out = hf_models[name].generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, PROMPT, dtype=torch.long),
            max_new_tokens=GREEDY,
            do_sample=False,
            top_k=None,
            top_p=None,
            temperature=None,
            eos_token_id=None,
            pad_token_id=0,
        )  # fmt: skip (an explicit mask: id 0 is a real token here, not padding)
    assert out[0, PROMPT:].tolist() == want
    assert len(set(want)) > 1 or name in FIXTURES  # a trained model's greedy text is not one token


@pytest.mark.parametrize("name", MODELS)
def test_exported_tokenizer_gives_mygpts_ids(name, checkpoints, exported):
    ckpt = load_checkpoint(checkpoints[name])
    mine = tokenizer_from_dict(ckpt.tokenizer)
    hf = transformers.AutoTokenizer.from_pretrained(exported[name])
    texts = [TINY_SHAKESPEARE.read_text(encoding="utf-8")[:2000], UNSEEN]
    if name in FIXTURES:
        texts.append(json.loads((BOOK_FIXTURES / f"{name}.json").read_text())["text"])
    for text in texts:
        if mine.kind == "char":
            known = "".join(c for c in text if c in mine.stoi)  # unknown chars: an error in both
            assert hf(known)["input_ids"] == mine.encode(known)
            if known != text:
                with pytest.raises(Exception, match="UNK|unk"):  # tokenizers raises its own type
                    hf(text)
            text = known
        elif mine.kind == "bpe":  # the book's corpus policy: unknown characters are dropped
            assert hf(text)["input_ids"] == mine.encode_corpus(text).tolist()
        else:  # HF matches special tokens in text, as mygpt's allowed_special="all"
            assert hf(text)["input_ids"] == mine.encode(text, allowed_special="all")
        assert hf.decode(hf(text)["input_ids"]) == mine.decode(hf(text)["input_ids"])
    if name in FIXTURES:
        fx = np.load(BOOK_FIXTURES / f"{name}.npz")
        prompt = json.loads((BOOK_FIXTURES / f"{name}.json").read_text())["text"]
        want = fx["input_ids"][0].tolist()  # the book's ids: the prompt's first T tokens
        assert hf(prompt)["input_ids"][: len(want)] == want


@pytest.mark.parametrize("name", MODELS)
def test_export_import_is_bit_exact(name, checkpoints, exported):
    ckpt = load_checkpoint(checkpoints[name])
    back = import_hf(exported[name])
    assert back.config.to_dict() == ckpt.config.to_dict()
    assert back.tokenizer == ckpt.tokenizer
    assert list(back.params) == list(ckpt.params)
    for k, v in ckpt.params.items():
        assert back.params[k].dtype == np.float32
        assert back.params[k].tobytes() == v.tobytes(), k


# --- mlx-lm ------------------------------------------------------------------------------------

MLX_EXACT = [name for name in MODELS if name in TRAINED]  # starcoder2 and llama (see below)


@pytest.fixture(scope="module")
def mlx_lm():
    return pytest.importorskip("mlx_lm")


def test_which_architectures_mlx_lm_computes_exactly():
    exact = {a.model_type for a in ARCHITECTURES.values() if a.mlx_lm_exact}
    assert exact == {"starcoder2", "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2"}


@pytest.mark.parametrize("name", MLX_EXACT)
def test_mlx_lm_greedy_tokens_are_mygpts(name, mlx_lm, checkpoints, exported, torch_ops):
    ckpt = load_checkpoint(checkpoints[name])
    assert architecture_for(ckpt.config).mlx_lm_exact
    model, tokenizer = mlx_lm.load(exported[name])
    prompt = _ids(name, ckpt)[0, :PROMPT].tolist()
    got = [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=GREEDY)]
    assert got == _mygpt_greedy(torch_ops, ckpt, prompt)


def test_mlx_lm_gpt2_is_not_exact_and_arcee_is_missing(
    mlx_lm, checkpoints, exported, torch_ops, monkeypatch
):
    """Why the book fixtures are not in the mlx-lm list: mlx-lm's gpt2 computes the tanh GELU
    (mygpt with the tanh GELU swapped in matches it; the exact model is off by more than 1e-4),
    and mlx-lm has no arcee model."""
    import mlx.core as mx

    ckpt = load_checkpoint(checkpoints["part1_ch18"])
    ids = _ids("part1_ch18", ckpt)
    model, _ = mlx_lm.load(exported["part1_ch18"])
    got = np.array(model(mx.array(ids)).astype(mx.float32))
    assert np.abs(got - _mygpt_logits(torch_ops, ckpt, ids)).max() > 1e-4
    tanh_gelu = lambda x: torch.nn.functional.gelu(x, approximate="tanh")  # noqa: E731
    monkeypatch.setattr(torch_ops, "gelu", tanh_gelu)
    assert np.abs(got - _mygpt_logits(torch_ops, ckpt, ids)).max() < 5e-5
    with pytest.raises(ValueError, match="arcee"):
        mlx_lm.load(exported["ch27_modern"])


# --- the other direction: a model imported, trained further -----------------------------------


def test_init_from_an_imported_model_trains_on(exported, checkpoints, tmp_path):
    imported = tmp_path / "imported.safetensors"
    from mygpt.cli import main

    assert main(["import", exported["swiglu"], str(imported)]) == 0
    out = tmp_path / "more.safetensors"
    corpus = tmp_path / "c.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    args = ["train", str(corpus), "--init-from", str(imported), "--steps", "3", "--output",
            str(out), "--batch-size", "8", "--seq-len", "64", "--backend", "torch",
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 0
    log = out.with_name("more.metrics.jsonl").read_text().splitlines()
    first = json.loads(log[0])["loss"]
    assert first < 4.0  # a fresh model of this init starts near 40 (the book's N(0,1) embedding)
    more = load_checkpoint(out)
    assert more.config.to_dict() == load_checkpoint(checkpoints["swiglu"]).config.to_dict()
    assert more.train_state["step"] == 3 and more.train_state["optimizer_steps"] == 3
    # the architecture comes from the checkpoint: asking for another one is refused
    assert main([*args, "--embed-dim", "48"]) == 1


def test_an_imported_model_generates_the_same_on_both_backends(exported, tmp_path, capsys):
    from mygpt.cli import main

    imported = tmp_path / "imported.safetensors"
    assert main(["import", exported["bytebpe"], str(imported)]) == 0
    capsys.readouterr()
    outs = []
    for backend in ("torch", "mlx"):
        args = ["generate", "--checkpoint", str(imported), "--prompt", "ROMEO:", "--temperature",
                "0", "--max-new-tokens", "20", "--backend", backend, "--device", "cpu"]  # fmt: skip
        assert main(args) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(outs[0]) > len("ROMEO:\n")


def test_hf_directory_can_be_init_from_directly(exported, tmp_path):
    from mygpt.train.init_from import load_init_source

    ckpt = load_init_source(exported["bytebpe"])
    assert ckpt.tokenizer["kind"] == "bytebpe"


def test_model_card_names_architecture_settings_and_losses(exported, checkpoints):
    text = (Path(exported["swiglu"]) / "README.md").read_text(encoding="utf-8")
    loss = load_checkpoint(checkpoints["swiglu"]).train_state["loss"]
    assert "`LlamaForCausalLM`" in text and "swiglu, hidden 88" in text
    assert "| steps | 80 |" in text and f"train loss: {loss:.4f}" in text
    assert "## Final losses" in text and "trained steps | 80" in text
