"""``--mlp swiglu``: Llama's gated MLP through config, both backends, checkpoints, FLOPs and bench."""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.bench import _shape_from
from mygpt.checkpoint import load_checkpoint, save_book_checkpoint
from mygpt.cli import main
from mygpt.config import ModelConfig, default_mlp_hidden
from mygpt.errors import MygptError
from mygpt.model import count_params, flops_per_token, forward, init_params, param_shapes


def test_default_hidden_width_is_8_thirds_rounded_up_to_8():
    assert default_mlp_hidden("swiglu", 64) == 176  # 170.67 -> 176
    assert default_mlp_hidden("swiglu", 48) == 128  # exactly 8/3 * 48
    assert default_mlp_hidden("swiglu", 192) == 512
    assert default_mlp_hidden("gelu", 64) == 256
    assert ModelConfig(vocab_size=10, mlp="swiglu", mlp_hidden=100).mlp_hidden == 100


def test_swiglu_parameters_and_count():
    cfg = ModelConfig(vocab_size=65, mlp="swiglu", num_layers=1)
    shapes = param_shapes(cfg)
    assert shapes["blocks.0.mlp.gate.weight"] == (176, 64)
    assert shapes["blocks.0.mlp.up.weight"] == (176, 64)
    assert shapes["blocks.0.mlp.down.weight"] == (64, 176)
    assert not any(k.endswith(".bias") and ".mlp." in k for k in shapes)  # no biases
    gelu = ModelConfig(vocab_size=65, num_layers=1)
    assert count_params(cfg) - count_params(gelu) == 3 * 64 * 176 - (2 * 64 * 256 + 256 + 64)


def test_bad_mlp_settings_are_one_line_errors():
    with pytest.raises(MygptError, match="unknown MLP type 'relu'"):
        ModelConfig(vocab_size=10, mlp="relu")
    with pytest.raises(MygptError, match="--mlp-hidden 100 with --mlp gelu"):
        ModelConfig(vocab_size=10, mlp_hidden=100)
    with pytest.raises(MygptError, match="mlp_hidden must be a positive integer"):
        ModelConfig(vocab_size=10, mlp="swiglu", mlp_hidden=0)


def test_forward_is_down_of_silu_gate_times_up():
    """Against numpy: one layer's MLP output, so a swapped gate/up or a missing silu fails."""
    ops = get_backend("torch", "cpu")
    cfg = ModelConfig(vocab_size=11, embed_dim=8, num_heads=2, num_layers=1, max_seq_len=8,
                      norm="rms", position="rope", mlp="swiglu", mlp_hidden=12)  # fmt: skip
    p = init_params(cfg, seed=3)
    # an attention that adds nothing isolates the MLP: zero W_O
    p["blocks.0.mha.W_O.weight"][:] = 0
    ids = np.array([[1, 5, 2, 7]])
    got = ops.to_numpy(
        forward(ops, cfg, {k: ops.asarray(v) for k, v in p.items()}, ops.asarray(ids))
    )

    def rms(x, w):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * w

    x = p["token_embedding.embedding.weight"][ids[0]].astype(np.float64)
    h = rms(x, p["blocks.0.ln2.weight"])
    g, u = h @ p["blocks.0.mlp.gate.weight"].T, h @ p["blocks.0.mlp.up.weight"].T
    x = x + (g / (1 + np.exp(-g)) * u) @ p["blocks.0.mlp.down.weight"].T
    want = rms(x, p["ln_f.weight"]) @ p["token_embedding.embedding.weight"].T
    assert np.abs(got[0] - want).max() < 1e-4


def test_flops_count_the_three_matrices():
    gelu = ModelConfig(vocab_size=65, num_layers=2)
    swiglu = ModelConfig(vocab_size=65, num_layers=2, mlp="swiglu")
    diff = flops_per_token(swiglu, 64) - flops_per_token(gelu, 64)
    assert diff == 6 * 2 * (3 * 64 * 176 - 2 * 64 * 256)


def test_bench_takes_the_mlp_from_the_llama_recipe_and_flags():
    cfg, _ = _shape_from("llama", {})
    assert cfg.mlp == "swiglu" and cfg.norm == "rms" and cfg.position == "rope"
    cfg, _ = _shape_from(None, {"mlp": "swiglu", "mlp_hidden": 96})
    assert cfg.mlp == "swiglu" and cfg.mlp_hidden == 96


@pytest.mark.parametrize("backend", available_backends())
def test_trains_saves_resumes_and_refuses_the_book_format(backend, small_corpus, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    args = ["train", str(small_corpus), "--mlp", "swiglu", "--mlp-hidden", "40", "--norm", "rms",
            "--position", "rope", "--embed-dim", "16", "--num-heads", "2", "--num-layers", "1",
            "--max-seq-len", "16", "--seq-len", "16", "--batch-size", "4", "--steps", "4",
            "--lr", "1e-2", "--output", str(out), "--backend", backend, "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.config.mlp == "swiglu" and ckpt.config.mlp_hidden == 40
    assert ckpt.params["blocks.0.mlp.gate.weight"].shape == (40, 16)
    assert main(["train", str(small_corpus), "--resume", str(out), "--steps", "6"]) == 0
    assert load_checkpoint(out).train_state["step"] == 6
    capsys.readouterr()
    assert main(["convert", str(out), str(tmp_path / "m.ckpt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "--mlp swiglu" in err and "native" in err
    with pytest.raises(MygptError, match="only its GELU MLP"):
        save_book_checkpoint(tmp_path / "x.ckpt", ckpt)
    assert not (tmp_path / "m.ckpt").exists()


def test_init_from_a_book_checkpoint_keeps_its_model_and_tokenizer(small_corpus, tmp_path):
    """A book .ckpt (Part-I format) trains further as a new run: same architecture and alphabet."""
    from tests.conftest import BOOK_FIXTURES

    book = BOOK_FIXTURES / "part1_ch18.ckpt"
    out = tmp_path / "more.safetensors"
    args = ["train", str(small_corpus), "--init-from", str(book), "--steps", "2", "--output",
            str(out), "--batch-size", "4", "--backend", "torch", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    src, more = load_checkpoint(book), load_checkpoint(out)
    assert more.config.to_dict() == src.config.to_dict() and more.tokenizer == src.tokenizer
    assert more.train_state["step"] == 2
    assert main([*args, "--tokenizer", "bpe"]) == 1  # its tokenizer comes with the weights
