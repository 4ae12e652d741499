"""Real open-weight model families (Llama, Mistral, Qwen2, Qwen3), checked against transformers.

Every model is a tiny random-weight one built locally (tests/real_models.py): no download. The
oracle is transformers itself: its fp32 logits, AutoTokenizer's ids, apply_chat_template's text.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from mygpt.checkpoint import load_checkpoint, save_checkpoint
from mygpt.cli import main
from mygpt.interop.export import export_hf
from mygpt.interop.import_ import import_hf
from mygpt.model import forward
from mygpt.tokenizers import tokenizer_from_dict
from tests.real_models import (
    CHAT_TEMPLATE,
    FAMILIES,
    build_model,
    build_tokenizer,
    check_chat_template,
    check_refused_by_name,
    hf_logits,
    mlx_lm_logits_of_export,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("hub_offline"),
]
IDS = [3, *range(20, 52), 7, 299, 5]  # a BOS-like special, text tokens, the last regular ids
TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  leading spaces, tabs\tand 123456 digits",
    "unicode: héllo wörld — 日本語 🙂",
    "specials inside: <|im_start|>user\nhi<|im_end|>",
    "",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("real")
    return {f: build_model(root / f, f) for f in FAMILIES}


def _logits(ops, cfg, params, ids) -> np.ndarray:
    p = {k: ops.asarray(v) for k, v in params.items()}
    return ops.to_numpy(forward(ops, cfg, p, ops.asarray(np.array([ids]))))[0]


# --- 1. architectures, loaded exactly ----------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_on_both_backends(family, models, backends):
    ckpt = import_hf(models[family])
    ref = hf_logits(models[family], IDS)
    assert np.abs(ref).max() > 1.0  # the random weights give logits of real magnitude
    for name, ops in backends.items():
        err = np.abs(_logits(ops, ckpt.config, ckpt.params, IDS) - ref).max()
        assert err < 1e-5, f"{family} on {name}: max |logit diff| {err}"


def test_each_feature_is_read_from_the_config(models):
    cfg = {f: import_hf(models[f]).config for f in FAMILIES}
    assert (cfg["llama"].head_dim, cfg["llama"].num_kv_heads, cfg["llama"].tie_embeddings) == (
        24, 2, False,
    )  # fmt: skip
    assert cfg["llama"].attn_bias and cfg["llama"].attn_out_bias and cfg["llama"].mlp_bias
    assert cfg["llama"].rope_scaling["rope_type"] == "llama3" and cfg["llama"].rope_base == 5e5
    assert cfg["qwen2"].attn_bias and not cfg["qwen2"].attn_out_bias
    assert cfg["qwen3"].qk_norm and cfg["qwen3"].num_kv_heads == 1 and cfg["qwen3"].head_dim == 32
    assert cfg["mistral"].norm_eps == 1e-6 and cfg["llama_tied"].tie_embeddings


@pytest.mark.parametrize(
    "change",
    [
        dict(rope_scaling=None),  # llama3 scaling
        dict(attn_bias=False, attn_out_bias=False, mlp_bias=False),  # the biases
        dict(tie_embeddings=True),  # the untied head
    ],
    ids=["rope-scaling", "biases", "untied"],
)
def test_dropping_a_feature_changes_the_logits(change, models, backends):
    """Each feature the exactness test relies on really changes the function (so it can fail)."""
    ckpt = import_hf(models["llama"])
    cfg = dataclasses.replace(ckpt.config, **change)
    params = {k: v for k, v in ckpt.params.items() if k in _shapes(cfg)}
    ops = backends["torch"]
    diff = np.abs(_logits(ops, cfg, params, IDS) - _logits(ops, ckpt.config, ckpt.params, IDS))
    assert diff.max() > 1e-3


def _shapes(cfg):
    from mygpt.model import param_shapes

    return param_shapes(cfg)


def test_greedy_generation_matches_transformers_generate(models):
    import torch
    from transformers import AutoModelForCausalLM

    import mygpt

    m = mygpt.load(models["qwen3"], backend="torch", device="cpu")
    prompt = [3, 40, 41, 42]
    mine = list(m.stream(prompt, 12, temperature=0, stop_ids=[]))
    hf = AutoModelForCausalLM.from_pretrained(models["qwen3"], dtype=torch.float32).eval()
    out = hf.generate(
        torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
        min_new_tokens=12,
    )  # fmt: skip
    assert mine == out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "family, edit, feature",
    [
        ("qwen2", dict(use_sliding_window=True, sliding_window=8), "sliding-window attention"),
        ("llama", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "'yarn'"),
        ("llama", dict(model_type="mixtral"), "mixture-of-experts"),
        ("llama", dict(model_type="gemma"), "(1 + w) norm weights"),
        ("llama", dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
        ("llama", dict(hidden_act="relu"), "'relu'"),
    ],
    ids=["qwen2-window", "yarn", "moe", "gemma", "partial-rope", "act"],
)
def test_what_mygpt_does_not_compute_is_refused_by_name(
    family, edit, feature, models, tmp_path, capsys
):
    check_refused_by_name(models[family], edit, feature, tmp_path, capsys)


# --- export round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_save_export_import_is_bit_exact_and_loads_in_transformers(family, models, tmp_path):
    first = import_hf(models[family])
    save_checkpoint(tmp_path / "m.safetensors", first.config, first.params, first.tokenizer)
    out = export_hf(tmp_path / "m.safetensors", tmp_path / "hf")
    src_cfg = json.loads((models[family] / "config.json").read_text())
    assert (
        json.loads((out / "config.json").read_text())["architectures"] == (src_cfg["architectures"])
    )
    back = import_hf(out)
    assert back.config.to_dict() == first.config.to_dict()
    assert back.tokenizer == first.tokenizer
    for k, v in first.params.items():
        assert v.tobytes() == back.params[k].tobytes(), k
    assert np.abs(hf_logits(out, IDS) - hf_logits(models[family], IDS)).max() == 0.0


def test_mlx_lm_computes_the_exported_families_exactly(models, tmp_path):
    """mygpt's export writes rope_theta at the top level, which mlx-lm reads (transformers 5's
    own save_pretrained writes only rope_parameters, so mlx-lm runs its files at a default
    theta: 1.8-3.8 off on these models)."""
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    for family in FAMILIES:
        got, _ = mlx_lm_logits_of_export(models[family], tmp_path, family, IDS)
        assert np.abs(got - hf_logits(models[family], IDS)).max() < 1e-5, family


def test_bf16_export_halves_the_file_and_a_bf16_source_comes_back_bit_for_bit(models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from mygpt.interop.export import bf16_bits

    src = models["qwen3"]
    bf16_src = tmp_path / "bf16"
    shutil.copytree(src, bf16_src, ignore=shutil.ignore_patterns("model.safetensors"))
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(bf16_src)
    first = import_hf(bf16_src)
    save_checkpoint(tmp_path / "m.safetensors", first.config, first.params, first.tokenizer)
    out = export_hf(tmp_path / "m.safetensors", tmp_path / "hf", dtype="bfloat16")
    f32 = export_hf(tmp_path / "m.safetensors", tmp_path / "hf32")
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.52 * (f32 / "model.safetensors").stat().st_size
    back = import_hf(out)
    for k, v in first.params.items():
        assert v.tobytes() == back.params[k].tobytes(), k
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert np.abs(hf_logits(out, IDS) - hf_logits(bf16_src, IDS)).max() == 0.0
    x = np.array([1.0, 1.00390625, 1.01171875, -3.3e-3], np.float32)  # ties round to even
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert bf16_bits(x).tolist() == want.tolist()


def test_sharded_and_bf16_weights_load(models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    import mygpt

    src = models["qwen2"]
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    shard = tmp_path / "sharded"
    shutil.copytree(src, shard, ignore=shutil.ignore_patterns("model.safetensors"))
    hf.save_pretrained(shard, max_shard_size="40KB")
    assert (shard / "model.safetensors.index.json").is_file() and not (
        shard / "model.safetensors"
    ).exists()
    ckpt = import_hf(shard)
    ref = import_hf(src)
    for k, v in ref.params.items():  # bf16 widened exactly: the bf16 rounding of the fp32 weights
        want = torch.from_numpy(v).to(torch.bfloat16).float().numpy()
        assert np.array_equal(ckpt.params[k], want), k
    m = mygpt.load(shard, backend="torch", device="cpu", precision="bf16")
    assert {m.ops.dtype_of(p) for p in m.params.values()} == {"bfloat16"}
    assert m.stream([3, 40], 2, temperature=0) is not None


# --- 2. tokenizers and templates ---------------------------------------------------------------


@pytest.mark.parametrize("bos", [True, False], ids=["adds-bos", "no-bos"])
def test_tokenizer_ids_match_autotokenizer(bos, tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer(tmp_path, bos=bos)
    (tmp_path / "config.json").write_text("{}")
    from mygpt.tokenizers.hf import read_hf_tokenizer

    mine = tokenizer_from_dict(
        read_hf_tokenizer(
            (tmp_path / "tokenizer.json").read_text(),
            json.loads((tmp_path / "tokenizer_config.json").read_text()), {}, {},
        )
    )  # fmt: skip
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = mine.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert (ids[:1] == [0]) == bos  # <|begin_of_text|> is id 0
        assert mine.decode(ids) == theirs.decode(ids)
        assert mine.decode_bytes(ids).decode("utf-8") == theirs.decode(ids)
    assert mine.encode_corpus("<|im_end|>a").tolist()[0] == 3  # specials match in text


def test_chat_template_renders_as_apply_chat_template(models):
    chat = [("system", "Be brief."), ("user", "  Who art thou? "), ("assistant", "A ghost.")]
    chat += [("user", "日本語 🙂")]
    template, _, _ = check_chat_template(models["llama"], CHAT_TEMPLATE, chat)
    with pytest.raises(Exception, match="unknown role tool"):  # raise_exception, as transformers
        template.prompt([("tool", "x")])


def test_generation_stops_at_the_models_eos_ids(models):
    import mygpt

    m = mygpt.load(models["llama"], backend="torch", device="cpu")
    assert m.stop_ids == [3, 1]  # generation_config's eos ids (<|im_end|>, <|end_of_text|>)
    free = list(m.stream([0, 40, 41], 6, temperature=0, stop_ids=[]))
    assert len(free) == 6
    stopped = list(m.stream([0, 40, 41], 6, temperature=0, stop_ids=[free[2]]))
    assert stopped == free[:2]


def test_a_fine_tuned_checkpoint_carries_its_tokenizer(models, tmp_path):
    first = import_hf(models["qwen3"])
    save_checkpoint(tmp_path / "m.safetensors", first.config, first.params, first.tokenizer)
    tok = tokenizer_from_dict(load_checkpoint(tmp_path / "m.safetensors").tokenizer)
    assert tok.kind == "hf" and tok.chat_template == CHAT_TEMPLATE
    assert tok.encode("hello there") == tokenizer_from_dict(first.tokenizer).encode("hello there")


def test_serve_chat_uses_the_models_template_and_stops_at_eos(models):
    from fastapi.testclient import TestClient

    import mygpt
    from mygpt.serve.app import ServerInfo, create_app
    from mygpt.serve.chat_template import JinjaChatTemplate, template_for
    from mygpt.serve.engine import Engine

    engine = Engine(lambda: mygpt.load(models["qwen2"], backend="torch", device="cpu"))
    engine.start()
    tok = engine.model.tokenizer
    info = ServerInfo(model_id="q", max_tokens_limit=64, default_max_tokens=4,
                      template=template_for(None, tok), created=0)  # fmt: skip
    client = TestClient(create_app(engine, info))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    rendered = info.template.render([{"role": "user", "content": "hi"}])
    assert r.json()["usage"]["prompt_tokens"] == len(tok.encode(rendered, False))
    assert rendered.startswith("<|begin_of_text|><|im_start|>user\nhi<|im_end|>")
    strict = JinjaChatTemplate(
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}x"
    )
    client = TestClient(create_app(engine, dataclasses.replace(info, template=strict)))
    bad = {**body, "messages": [{"role": "system", "content": "x"}]}
    r = client.post("/v1/chat/completions", json=bad)
    assert r.status_code == 400 and "System role not supported" in r.json()["error"]["message"]


# --- 3. sources --------------------------------------------------------------------------------


def test_a_hub_id_offline_and_not_cached_is_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["generate", "--checkpoint", "no-such-org/no-such-model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "hf download" in err[0], err


def test_a_hub_id_loads_from_the_cache_offline(models, tmp_path, monkeypatch):
    import mygpt

    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-qwen3"
    snap = repo / "snapshots" / ("a" * 40)
    shutil.copytree(models["qwen3"], snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # (the env var is read at import)
    m = mygpt.load("tiny-org/tiny-qwen3", backend="torch", device="cpu")
    assert np.abs(m.logits(IDS) - hf_logits(models["qwen3"], IDS)).max() < 1e-5


# --- 4. fine-tuning ----------------------------------------------------------------------------


def test_fine_tune_exports_back_and_transformers_computes_it(models, tmp_path, small_corpus):
    import mygpt

    src = models["llama"]
    out = tmp_path / "ft.safetensors"
    args = ["train", str(small_corpus), "--init-from", str(src), "--steps", "3",
            "--batch-size", "2", "--seq-len", "32", "--lr", "1e-3", "--backend", "torch",
            "--device", "cpu", "--output", str(out), "--print-every", "1"]  # fmt: skip
    assert main(args) == 0
    tuned, before = load_checkpoint(out), import_hf(src)
    assert tuned.tokenizer == before.tokenizer
    changed = [k for k in before.params if not np.array_equal(tuned.params[k], before.params[k])]
    assert changed == list(before.params)  # every weight trained (biases, norms, head too)
    hf = export_hf(out, tmp_path / "hf")
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    m = mygpt.load(out, backend="torch", device="cpu")
    assert np.abs(hf_logits(hf, IDS) - m.logits(IDS)).max() < 1e-5
