"""GPT-2, Gemma 3, Mistral with a sliding window, Phi-3 and OLMo 2, checked against transformers.

Every model is a tiny random-weight one built locally (tests/real_models.py, ``NEW_FAMILIES``): no
download. The oracle is transformers: its fp32 logits (both its SDPA and its eager attention),
``generate``'s greedy tokens past the sliding window three times, apply_chat_template's text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mygpt.backends import get_backend
from mygpt.checkpoint import load_checkpoint, save_checkpoint
from mygpt.cli import main
from mygpt.interop.export import export_hf
from mygpt.interop.import_ import import_hf
from mygpt.model import forward
from tests.real_models import (
    GEMMA_TEMPLATE,
    NEW_FAMILIES,
    WINDOW,
    build_family,
    check_chat_template,
    check_refused_by_name,
    hf_model,
    mlx_lm_logits_of_export,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("hub_offline"),
]
FAMILIES = list(NEW_FAMILIES)
IDS = [2, *range(20, 50), 7, 299, 5]  # 33 tokens: four windows of 8
PROMPT = [2, 40, 41, 42]
NEW_TOKENS = 24  # 28 positions: the window of 8 passed three times
SLIDING = ["gemma3_text", "mistral_window", "phi3"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    return {f: build_family(root / f, f) for f in FAMILIES}


def _hf_logits(hfdir, ids, attn: str = "sdpa") -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(hfdir, attn)(torch.tensor([ids])).logits[0].numpy()


def _logits(ops, cfg, params, ids) -> np.ndarray:
    p = {k: ops.asarray(v) for k, v in params.items()}
    return ops.to_numpy(forward(ops, cfg, p, ops.asarray(np.array([ids]))))[0]


def test_each_familys_features_are_read_from_its_config(models):
    cfg = {f: import_hf(models[f]).config for f in FAMILIES}
    g = cfg["gemma3_text"]
    assert (g.mlp, g.activation, g.norm_offset, g.scale_embeddings) == (
        "geglu",
        "gelu_tanh",
        1,
        True,
    )
    assert g.sandwich_norm and g.pre_norm and g.qk_norm and g.qk_norm_per_head
    assert g.layer_types == ("sliding", "sliding", "full", "sliding") and g.sliding_window == WINDOW
    assert (g.rope_base, g.rope_local_base, g.rope_scaling["rope_type"]) == (1e6, 1e4, "linear")
    assert (g.query_pre_attn_scalar, g.head_dim, g.num_kv_heads) == (20, 24, 2)
    assert cfg["gpt2"].activation == "gelu_tanh" and cfg["gpt2"].attn_bias
    assert cfg["mistral_window"].layer_types == ("sliding",) * 2
    assert cfg["phi3"].sliding_window == 12 and not cfg["phi3"].tie_embeddings
    o = cfg["olmo2"]
    assert not o.pre_norm and o.sandwich_norm and o.qk_norm and not o.qk_norm_per_head


# --- logits and generation --------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_on_both_backends(family, models, backends):
    ckpt = import_hf(models[family])
    ref = _hf_logits(models[family], IDS)
    assert np.abs(ref).max() > 1.0  # the random weights give logits of real magnitude
    # transformers' SDPA (its default) and eager attention differ by rounding only (up to 2e-5
    # here): mygpt is held to both
    for attn in ("sdpa", "eager"):
        ref = _hf_logits(models[family], IDS, attn)
        for name, ops in backends.items():
            err = np.abs(_logits(ops, ckpt.config, ckpt.params, IDS) - ref).max()
            assert err < 1e-4, f"{family} on {name} vs {attn}: max |logit diff| {err}"


@pytest.mark.parametrize("family", SLIDING)
def test_the_window_changes_the_logits(family, models, backends):
    """The window really matters on these inputs (so the exactness tests can fail)."""
    ckpt = import_hf(models[family])
    cfg = ckpt.config.replace(sliding_window=1000)  # the same layers, a window past the context
    ops = backends["torch"]
    diff = np.abs(_logits(ops, cfg, ckpt.params, IDS) - _logits(ops, ckpt.config, ckpt.params, IDS))
    assert diff[: WINDOW - 1].max() < 1e-5 and diff[16:].max() > 1e-3


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_transformers_generate(family, backend, models):
    import torch

    import mygpt

    m = mygpt.load(models[family], backend=backend, device="cpu")
    mine = list(m.stream(PROMPT, NEW_TOKENS, temperature=0, stop_ids=[]))
    out = hf_model(models[family]).generate(
        torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
        min_new_tokens=NEW_TOKENS, pad_token_id=0,
    )  # fmt: skip
    assert mine == out[0, len(PROMPT) :].tolist()


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("family", ["gemma3_text", "mistral_window"])
def test_batched_decoding_is_bit_exact_to_solo_on_a_sliding_window_model(family, backend, models):
    from mygpt.cache import RowCache
    from mygpt.generate import batch_invariance_check

    ckpt = import_hf(models[family])
    ops = get_backend(backend, "cpu")
    cfg = ckpt.config  # a sliding layer's rows keep only its window
    kept = [kv.shape[3] for kv in RowCache.allocate(ops, cfg, 2).kv]
    assert kept == [WINDOW if cfg.window(i) else cfg.max_seq_len for i in range(cfg.num_layers)]
    params = {k: ops.asarray(v) for k, v in ckpt.params.items()}
    assert batch_invariance_check(ops, ckpt.config, params, steps=2 * WINDOW + 2) == 0.0


# --- export ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_import_save_export_import_is_bit_exact(family, models, tmp_path):
    first = import_hf(models[family])
    save_checkpoint(tmp_path / "m.safetensors", first.config, first.params, first.tokenizer)
    out = export_hf(tmp_path / "m.safetensors", tmp_path / "hf")
    src = json.loads((models[family] / "config.json").read_text())
    assert json.loads((out / "config.json").read_text())["architectures"] == src["architectures"]
    back = import_hf(out)
    assert back.config.to_dict() == first.config.to_dict()
    assert back.tokenizer == first.tokenizer
    for k, v in first.params.items():
        assert v.tobytes() == back.params[k].tobytes(), k
    assert np.abs(_hf_logits(out, IDS) - _hf_logits(models[family], IDS)).max() == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tune_exports_back_and_transformers_computes_it(
    family, models, tmp_path, small_corpus
):
    import mygpt

    out = tmp_path / "ft.safetensors"
    args = ["train", str(small_corpus), "--init-from", str(models[family]), "--steps", "2",
            "--batch-size", "2", "--seq-len", "24", "--lr", "1e-3", "--backend", "torch",
            "--device", "cpu", "--output", str(out), "--print-every", "1"]  # fmt: skip
    assert main(args) == 0
    tuned, before = load_checkpoint(out), import_hf(models[family])
    changed = [k for k in before.params if not np.array_equal(tuned.params[k], before.params[k])]
    assert changed == list(before.params)  # every weight trained (norms, biases, head too)
    hf = export_hf(out, tmp_path / "hf")
    m = mygpt.load(out, backend="torch", device="cpu")
    assert np.abs(_hf_logits(hf, IDS) - m.logits(IDS)).max() < 1e-4


# --- tokenizers and templates ------------------------------------------------------------------


def test_gpt2_byte_level_tokenizer_ids_match_autotokenizer(models):
    from transformers import AutoTokenizer

    import mygpt

    m = mygpt.load(models["gpt2"], backend="torch", device="cpu")
    theirs = AutoTokenizer.from_pretrained(models["gpt2"])
    for text in ["First Citizen:\n  Before we proceed", "héllo 日本語 🙂 123456", "<|endoftext|>x"]:
        assert m.encode(text) == theirs(text)["input_ids"], text
        assert m.tokenizer.decode(m.encode(text)) == theirs.decode(theirs(text)["input_ids"])


def test_gemma_chat_template_renders_as_apply_chat_template(models):
    chat = [("user", "  Who art thou? "), ("assistant", "A ghost."), ("user", "日本語 🙂")]
    template, theirs, text = check_chat_template(models["gemma3_text"], GEMMA_TEMPLATE, chat)
    assert text.startswith("<bos><start_of_turn>user\nWho art thou?<end_of_turn>\n")
    for bad, why in (([("system", "x"), ("user", "y")], "System role not supported"),
                     ([("user", "x"), ("user", "y")], "must alternate")):  # fmt: skip
        with pytest.raises(Exception, match=why):
            theirs.apply_chat_template([{"role": r, "content": c} for r, c in bad], tokenize=False)
        with pytest.raises(Exception, match=why):
            template.prompt(bad)


# --- refusals and flags ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, edit, feature",
    [
        ("phi3", dict(rope_parameters={"rope_type": "longrope", "short_factor": [1.0] * 8,
                                       "long_factor": [2.0] * 8, "rope_theta": 1e4}), "longrope"),
        ("gemma3_text", dict(final_logit_softcapping=30.0), "soft-caps"),
        ("gemma3_text", dict(use_bidirectional_attention=True), "bidirectional"),
        ("gemma3_text", dict(hidden_activation="silu"), "'silu'"),
        ("olmo2", dict(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "'yarn'"),
        ("gpt2", dict(activation_function="quick_gelu"), "'quick_gelu'"),
    ],
    ids=["longrope", "softcap", "bidirectional", "gemma-silu", "yarn", "quick-gelu"],
)  # fmt: skip
def test_what_mygpt_does_not_compute_is_refused_by_name(
    family, edit, feature, models, tmp_path, capsys
):
    check_refused_by_name(models[family], edit, feature, tmp_path, capsys)


def test_generates_old_sliding_window_flag_says_its_new_name(models, capsys):
    assert main(["generate", "--checkpoint", str(models["gpt2"]), "--sliding-window"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rotating-cache" in err[0], err


def test_old_configs_load_with_the_models_they_meant():
    from mygpt.config import ModelConfig

    old = {"vocab_size": 50, "norm_type": "rms", "position_type": "rope", "mlp_type": "swiglu"}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.activation, cfg.sandwich_norm, cfg.pre_norm, cfg.norm_offset) == (
        "gelu",
        False,
        True,
        0.0,
    )
    assert cfg.sliding_window is None and cfg.layer_types is None and cfg.window(0) is None
    assert cfg.attn_scale == 1 / np.sqrt(cfg.head_dim)


@pytest.mark.parametrize(
    "flags, arch",
    [
        (["--activation", "gelu_tanh"], "GPT2LMHeadModel"),
        (["--norm", "rms", "--position", "rope", "--mlp", "swiglu", "--sliding-window", "8"],
         "MistralForCausalLM"),
        (["--norm", "rms", "--position", "rope", "--mlp", "geglu", "--activation", "gelu_tanh"],
         "LlamaForCausalLM"),
    ],
    ids=["gpt2-gelu-tanh", "mistral-window", "llama-geglu"],
)  # fmt: skip
def test_the_new_train_flags_train_and_export_exactly(flags, arch, tmp_path, small_corpus):
    import mygpt

    out = tmp_path / "m.safetensors"
    args = ["train", str(small_corpus), "--tokenizer", "char", "--steps", "2", "--batch-size", "2",
            "--seq-len", "24", "--max-seq-len", "32", "--embed-dim", "32", "--num-layers", "2",
            "--backend", "torch", "--device", "cpu", "--output", str(out), *flags]  # fmt: skip
    assert main(args) == 0
    hf = export_hf(out, tmp_path / "hf")
    assert json.loads((hf / "config.json").read_text())["architectures"] == [arch]
    m = mygpt.load(out, backend="torch", device="cpu")
    ids = list(range(3, 30))
    assert np.abs(_hf_logits(hf, ids) - m.logits(ids)).max() < 1e-4


def test_window_pattern_and_sandwich_norm_are_flags(tmp_path, small_corpus):
    out = tmp_path / "m.safetensors"
    args = ["train", str(small_corpus), "--tokenizer", "char", "--steps", "1", "--batch-size", "2",
            "--seq-len", "16", "--max-seq-len", "16", "--embed-dim", "32", "--num-layers", "4",
            "--norm", "rms", "--position", "rope", "--mlp", "geglu", "--sliding-window", "4",
            "--window-pattern", "2", "--sandwich-norm", "--backend", "torch", "--device", "cpu",
            "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    cfg = load_checkpoint(out).config
    assert cfg.layer_types == ("sliding", "full", "sliding", "full") and cfg.sandwich_norm
    assert "blocks.0.ln1_post.weight" in load_checkpoint(out).params


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_one_stream_cache_keeps_only_the_window(backend, models):
    """Token by token through a GrowingCache (a sliding layer drops what its window has left),
    then copied into a RowCache row (its ring) and decoded: a full forward's logits."""
    from mygpt.cache import GrowingCache, RowCache

    ckpt = import_hf(models["gemma3_text"])
    cfg, ops = ckpt.config, get_backend(backend, "cpu")
    P = {k: ops.asarray(v) for k, v in ckpt.params.items()}
    ids = np.array([IDS[:31]])
    full = ops.to_numpy(forward(ops, cfg, P, ops.asarray(ids)))[0]
    cache = GrowingCache(cfg.num_layers, cfg.max_seq_len)
    got = [ops.to_numpy(forward(ops, cfg, P, ops.asarray(ids[:, :5]), cache=cache))[0]]
    for t in range(5, 30):
        got.append(ops.to_numpy(forward(ops, cfg, P, ops.asarray(ids[:, t : t + 1]),
                                        cache=cache))[0])  # fmt: skip
    assert np.abs(np.concatenate(got) - full[:30]).max() < 1e-4  # fp32 rounding: 3e-5
    for i in range(cfg.num_layers):  # a sliding layer's buffer: 2 (window - 1 + 5) at most
        assert cache.keys[i].shape[2] <= (2 * (WINDOW + 4) if cfg.window(i) else 256)
        assert (cache.firsts[i] > 0) == (cfg.window(i) is not None)
    rows = RowCache.allocate(ops, cfg, 2)
    rows.load(ops, 1, cache)
    step = forward(ops, cfg, P, ops.asarray(np.array([[0], [IDS[30]]])),
                   cache=rows.at(np.array([cfg.max_seq_len - 1, 30])))  # fmt: skip
    assert np.abs(ops.to_numpy(step)[1, 0] - full[30]).max() < 1e-4


def test_the_books_format_refuses_what_it_cannot_say(tmp_path):
    """GPT-2's tanh GELU or a window leave the weights' names the book's: refused, not dropped."""
    from mygpt.checkpoint import save_book_checkpoint
    from mygpt.config import ModelConfig
    from mygpt.errors import MygptError
    from mygpt.model import init_params

    tok = {"kind": "char", "chars": [chr(97 + i) for i in range(20)]}
    for change in (dict(activation="gelu_tanh"), dict(sliding_window=4)):
        cfg = ModelConfig(vocab_size=20, **change)
        with pytest.raises(MygptError, match=f"has no {next(iter(change))}"):
            save_book_checkpoint(tmp_path / "m.ckpt", config=cfg, params=init_params(cfg),
                                 tokenizer=tok)  # fmt: skip


def test_what_mlx_lm_computes_of_the_exports(models, tmp_path):
    """mlx-lm's gpt2, gemma3_text and olmo2 files compute mygpt's exports (their tanh GELU is
    GPT-2's and Gemma's); its mistral (llama) and phi3 files ignore the sliding window, which the
    model card says."""
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    for family in FAMILIES:
        got, out = mlx_lm_logits_of_export(models[family], tmp_path, family, IDS)
        err = np.abs(got - _hf_logits(models[family], IDS)).max()
        windowed = family in ("mistral_window", "phi3")
        assert (err > 1.0) if windowed else (err < 1e-4), (family, err)
        card = (out / "README.md").read_text()
        assert ("ignores the sliding window" in card) == windowed, family


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_layers_with_one_base_and_two_rotations_decode_as_the_full_forward(backend):
    """Sliding and full layers with the same rope base, the full ones scaled: a decode step's
    rotations are kept per (base, frequencies), not per base."""
    from mygpt.generate import DECODE_ROWS, Decoder, Stream
    from mygpt.model import init_params
    from mygpt.parity import tiny_config

    cfg = tiny_config("rms", "rope", "gqa", mlp="swiglu", sliding_window=3, window_pattern=2,
                      rope_local_base=10000.0, rope_scaling={"rope_type": "linear", "factor": 4.0})  # fmt: skip
    ops = get_backend(backend, "cpu")
    P = {k: ops.asarray(v) for k, v in init_params(cfg, seed=3).items()}
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 12))
    full = ops.to_numpy(forward(ops, cfg, P, ops.asarray(x)))[0]
    dec = Decoder(ops, cfg, P, DECODE_ROWS, "float32")
    stream = Stream(list(x[0, :4]), temperature=0)
    row = dec.add(stream)
    got = [dec.logits([row])[row]]
    for t in range(4, 12):
        stream.ids.append(int(x[0, t]))
        got.append(dec.logits([row])[row])
    assert np.abs(np.stack(got) - full[3:]).max() < 1e-4
