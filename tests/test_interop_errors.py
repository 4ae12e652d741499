"""Export and import without transformers: every combination round-trips bit-exactly, and every
bad input is one line (an inexact combination, a non-empty OUTDIR, a foreign architecture, a
truncated model file, a push with no network)."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mygpt.checkpoint import load_checkpoint, save_checkpoint
from mygpt.cli import main
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.interop.architectures import interleaved_to_half
from mygpt.interop.export import FILES, export_hf
from mygpt.interop.import_ import import_hf
from mygpt.model import init_params
from mygpt.tokenizers import tokenizer_from_dict
from mygpt.tokenizers.bpe import BPETokenizer
from mygpt.tokenizers.bytebpe import ByteBPETokenizer
from tests.conftest import TINY_SHAKESPEARE

TEXT = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:5000]
CHAR = {"kind": "char", "version": 1, "chars": sorted(set(TEXT))}
EXPORTABLE = [
    ("layer", "learned", "gelu"),
    ("layer", "rope", "gelu"),
    ("rms", "rope", "gelu"),
    ("rms", "rope", "swiglu"),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _ckpt(path, norm="layer", position="learned", mlp="gelu", kv=4, tok=CHAR, **kw):
    vocab = len(tok["chars"]) if tok["kind"] == "char" else kw.pop("vocab")
    cfg = ModelConfig(
        vocab_size=vocab, embed_dim=16, num_heads=4, num_layers=2, max_seq_len=16,
        num_kv_heads=kv, norm=norm, position=position, mlp=mlp, **kw,
    )  # fmt: skip
    params = init_params(cfg, seed=7)
    # non-zero everywhere, so a bias or norm mapped to the wrong slot cannot go unnoticed
    params = {k: v + np.float32(0.01) * (i + 1) for i, (k, v) in enumerate(params.items())}
    save_checkpoint(path, cfg, params, tok)
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("combo", EXPORTABLE, ids=lambda c: "/".join(c))
def test_export_then_import_is_bit_exact(combo, kv, tmp_path):
    norm, position, mlp = combo
    src = _ckpt(tmp_path / "m.safetensors", norm, position, mlp, kv)
    out = export_hf(src, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    back, orig = import_hf(out), load_checkpoint(src)
    assert back.config.to_dict() == orig.config.to_dict() and back.tokenizer == orig.tokenizer
    assert list(back.params) == list(orig.params)
    assert all(back.params[k].tobytes() == v.tobytes() for k, v in orig.params.items())
    # and through the command, into a checkpoint file
    assert main(["import", str(out), str(tmp_path / "back.safetensors")]) == 0
    again = load_checkpoint(tmp_path / "back.safetensors")
    assert all(again.params[k].tobytes() == v.tobytes() for k, v in orig.params.items())


@pytest.mark.parametrize("kind", ["bpe", "bytebpe"])
def test_bpe_tokenizers_round_trip(kind, tmp_path):
    if kind == "bpe":
        tok = BPETokenizer.train(TEXT, 40)[0].to_dict()
    else:
        tok = ByteBPETokenizer.train(TEXT, 40)[0].to_dict()
    vocab = len(tok["chars"]) + len(tok["merges"]) if kind == "bpe" else 256 + 40 + 1
    src = _ckpt(tmp_path / "m.safetensors", "rms", "rope", tok=tok, vocab=vocab)
    assert import_hf(export_hf(src, tmp_path / "hf")).tokenizer == load_checkpoint(src).tokenizer


def test_rotary_permutation_is_the_half_split_order():
    assert interleaved_to_half(2, 6).tolist() == [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]


def test_config_json_writes_the_traps_explicitly(tmp_path):
    src = _ckpt(tmp_path / "m.safetensors", "layer", "rope")
    cfg = json.loads((export_hf(src, tmp_path / "hf") / "config.json").read_text())
    assert cfg["model_type"] == "starcoder2" and cfg["hidden_act"] == "gelu"
    assert cfg["rope_theta"] == 10000.0 and cfg["norm_epsilon"] == 1e-5
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32"
    assert "lm_head.weight" not in load_file(tmp_path / "hf" / "model.safetensors")


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "combo",
    [("rms", "learned", "gelu"), ("layer", "learned", "swiglu"), ("layer", "rope", "swiglu")],
)
def test_an_inexact_combination_is_refused_naming_those_that_export(combo, tmp_path, capsys):
    src = _ckpt(tmp_path / "m.safetensors", *combo)
    assert main(["export", str(src), str(tmp_path / "hf")]) == 1
    err = _error(capsys)
    assert f"--norm {combo[0]} --position {combo[1]} --mlp {combo[2]}" in err
    for norm, position, mlp in EXPORTABLE:
        assert f"--norm {norm} --position {position} --mlp {mlp}" in err
    assert not (tmp_path / "hf").exists()  # refused before anything was written


def test_a_non_empty_outdir_is_refused_unless_force(tmp_path, capsys):
    src = _ckpt(tmp_path / "m.safetensors")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(src), str(out)]) == 1
    err = _error(capsys)
    assert "not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["export", str(src), str(out), "--force"]) == 0
    # --force replaces the directory as a whole, and says what went with the old one
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    said = capsys.readouterr().err
    assert "removed with the old" in said and "notes.txt" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.safetensors"]


def test_a_missing_parent_of_outdir_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "no" / "hf"
    assert main(["export", str(tmp_path / "absent.safetensors"), str(out)]) == 1
    err = _error(capsys)
    assert f"mkdir -p {tmp_path / 'no'}" in err and not (tmp_path / "no").exists()


@pytest.fixture
def exported(tmp_path):
    return export_hf(_ckpt(tmp_path / "m.safetensors"), tmp_path / "hf")  # gpt2


def _edit_config(hfdir, **changes):
    path = hfdir / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _edit_tensors(hfdir, fn):
    path = hfdir / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, feature",
    [
        (lambda d: _edit_config(d, model_type="gpt_neox"), "architecture is 'gpt_neox'"),
        (lambda d: _edit_config(d, activation_function="quick_gelu"), "'quick_gelu'"),
        (lambda d: _edit_config(d, tie_word_embeddings=False), "not tied"),
        (
            lambda d: _edit_tensors(d, lambda t: t["h.0.attn.c_attn.bias"].__setitem__(3, 0.5)),
            "non-zero attention biases",
        ),
        (
            lambda d: _edit_tensors(d, lambda t: t.update({"lm_head.weight": t["wte.weight"] * 2})),
            "output head",
        ),
        (
            lambda d: _edit_tensors(
                d, lambda t: t.update({"h.0.mlp.gate_proj.weight": t["h.0.mlp.c_fc.weight"]})
            ),
            "gated MLP",
        ),
        (lambda d: _edit_config(d, mygpt_num_kv_heads=2), "not 2 identical copies"),
    ],
    ids=["architecture", "quick-gelu", "untied-config", "attn-bias", "untied-head", "gated", "kv"],
)
def test_an_unimportable_model_is_refused_naming_the_feature(
    edit, feature, exported, tmp_path, capsys
):
    edit(exported)
    out = tmp_path / "imported.safetensors"
    assert main(["import", str(exported), str(out)]) == 1
    assert feature in _error(capsys)
    assert not out.exists()


def test_a_tokenizer_not_mygpts_imports_as_the_models_own(exported, tmp_path):
    from tokenizers import Tokenizer

    path = exported / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["normalizer"] = {"type": "Lowercase"}  # not mygpt's char tokenizer any more
    path.write_text(json.dumps(tok))
    assert main(["import", str(exported), str(tmp_path / "x.safetensors")]) == 0
    mine = tokenizer_from_dict(load_checkpoint(tmp_path / "x.safetensors").tokenizer)
    assert mine.kind == "hf"
    text = "First Citizen:\nBefore we proceed"
    assert mine.encode(text) == Tokenizer.from_file(str(path)).encode(text).ids


@pytest.mark.parametrize("keep", [0.5, 0.999, 4])
def test_a_truncated_model_file_is_one_line(keep, exported, capsys, tmp_path):
    path = exported / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    assert main(["import", str(exported), str(tmp_path / "x.safetensors")]) == 1
    assert "truncated or damaged" in _error(capsys)


def test_bf16_weights_import_exactly(exported):
    """A bf16 file (as many Hub models are) widens to float32 without rounding."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    path = exported / "model.safetensors"
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in load_file(path).items()}
    save_torch(bf16, str(path), metadata={"format": "pt"})
    back = import_hf(exported)
    want = bf16["wte.weight"].float().numpy()
    got = back.params["token_embedding.embedding.weight"]
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()


def test_import_needs_a_safetensors_output(exported, capsys, tmp_path):
    assert main(["import", str(exported), str(tmp_path / "x.ckpt")]) == 1
    assert ".safetensors" in _error(capsys)
    with pytest.raises(MygptError, match="no config.json"):
        import_hf(tmp_path)


# --- push to hub -------------------------------------------------------------------------------


def test_push_to_hub_offline_fails_at_once_after_a_complete_export(tmp_path, capsys):
    src = _ckpt(tmp_path / "m.safetensors")
    t0 = time.perf_counter()
    assert main(["export", str(src), str(tmp_path / "hf"), "--push-to-hub", "me/model"]) == 1
    assert time.perf_counter() - t0 < 10
    err = _error_last(capsys)
    assert "offline" in err and "hf upload me/model" in err
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_push_to_hub_without_network_fails_in_seconds(tmp_path, capsys, monkeypatch):
    """No offline flag, but the Hub's name does not resolve (a machine with no network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def no_dns(*a, **k):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    src = _ckpt(tmp_path / "m.safetensors")
    t0 = time.perf_counter()
    assert main(["export", str(src), str(tmp_path / "hf"), "--push-to-hub", "me/model"]) == 1
    assert time.perf_counter() - t0 < 10
    err = _error_last(capsys)
    assert "can't reach the Hugging Face Hub" in err and "hf upload" in err


def test_push_to_hub_needs_a_repo_id(tmp_path, capsys):
    src = _ckpt(tmp_path / "m.safetensors")
    assert main(["export", str(src), str(tmp_path / "hf"), "--push-to-hub", "no-slash"]) == 2
    assert "USER/REPO" in _error(capsys)
    assert not (tmp_path / "hf").exists()


def _error_last(capsys) -> str:
    """The error line after the export's own status line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any("Traceback" in x for x in lines)
    return lines[-1]


def test_force_export_into_the_current_directory(tmp_path, monkeypatch, capsys):
    src = _ckpt(tmp_path / "m.safetensors")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.chdir(out)
    assert main(["export", str(src), ".", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert capsys.readouterr().out.strip() == str(out)
