"""LoRA fine-tuning (``--lora-rank``) on a tiny random-weight Llama built locally: adapters only
are trained, resume is bit-exact, the adapter checkpoint refuses another base, and the adapter
exports merged (transformers) and alone (peft), both computing mygpt's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import mygpt
from mygpt.cli import main
from mygpt.errors import MygptError
from mygpt.interop.import_ import import_hf
from mygpt.interop.sources import load_source
from mygpt.lora import load_adapter
from tests.conftest import TINY_SHAKESPEARE
from tests.real_models import build_model, hf_logits

pytestmark = pytest.mark.usefixtures("hub_offline")

IDS = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11]
ALL = "q,k,v,o,gate,up,down"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    build_model(root / "llama", "llama")  # llama3 rope, GQA, head_dim 24, biases, untied
    (root / "text.txt").write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:20_000])
    return root


def _train(root: Path, out: Path, steps: int, backend: str = "torch", *extra: str) -> None:
    args = ["train", str(root / "text.txt"), "--init-from", str(root / "llama"),
            "--lora-rank", "4", "--lora-alpha", "16", "--lora-targets", ALL, "--steps", str(steps),
            "--batch-size", "2", "--seq-len", "16", "--lr", "1e-2", "--backend", backend,
            "--device", "cpu", "--output", str(out), "--print-every", "1", *extra]  # fmt: skip
    assert main(args) == 0


@pytest.fixture(scope="module")
def adapter(root) -> Path:
    out = root / "adapter.safetensors"
    _train(root, out, 3)
    return out


def test_only_the_adapters_are_trained_and_saved(root, adapter):
    with safe_open(adapter, "numpy") as f:
        keys = list(f.keys())
    assert keys and all(".lora_" in k for k in keys)  # adapters and their AdamW moments only
    assert any(k.startswith("optimizer.") for k in keys)
    ad = load_adapter(adapter)
    assert ad.base == str((root / "llama").resolve()) and len(ad.base_digest) == 64
    assert set(ad.lora.targets) == set(ALL.split(",")) and ad.lora.scale == 4.0
    assert all(np.abs(v).max() > 0 for k, v in ad.tensors.items())  # every B moved off zero
    base, merged = import_hf(root / "llama"), load_source(adapter)
    changed = {k for k in base.params if not np.array_equal(base.params[k], merged.params[k])}
    assert changed and all(k.split(".")[-2] in {"W_Q", "W_K", "W_V", "W_O", "gate", "up", "down"}
                           for k in changed)  # fmt: skip


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_resume_is_bit_exact(root, tmp_path, backend):
    straight, split = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _train(root, straight, 4, backend)
    _train(root, split, 2, backend)
    assert main(["train", "--resume", str(split), "--steps", "4"]) == 0
    a, b = load_adapter(straight), load_adapter(split)
    assert a.train_state["step"] == b.train_state["step"] == 4
    for k in a.tensors:
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k])


def test_merged_export_and_peft_adapter_compute_mygpt_logits(root, adapter, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    mine = {b: mygpt.load(adapter, backend=b, device="cpu").logits(IDS) for b in ("torch", "mlx")}
    base_logits = mygpt.load(root / "llama", backend="torch", device="cpu").logits(IDS)
    assert np.abs(mine["torch"] - base_logits).max() > 1e-3  # the adapter changes the model
    assert np.abs(mine["torch"] - mine["mlx"]).max() < 1e-5
    assert main(["export", str(adapter), str(tmp_path / "merged")]) == 0
    assert np.abs(hf_logits(tmp_path / "merged", IDS) - mine["torch"]).max() < 1e-5

    assert main(["export", str(adapter), str(tmp_path / "peft"), "--peft"]) == 0
    conf = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 16.0
    with safe_open(tmp_path / "peft" / "adapter_model.safetensors", "numpy") as f:
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in f.keys()  # noqa: SIM118 (safe_open has no __contains__)
    base = AutoModelForCausalLM.from_pretrained(root / "llama", dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    with torch.no_grad():
        theirs = peft_model(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(theirs - mine["torch"]).max() < 1e-5

    # and back: peft's directory imports as the same adapter, bit for bit
    back = tmp_path / "back.safetensors"
    assert main(["import", str(tmp_path / "peft"), str(back)]) == 0
    a, b = load_adapter(adapter), load_adapter(back)
    assert a.lora == b.lora and a.base_digest == b.base_digest
    for k in a.tensors:
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k])

    # what mygpt can't compute exactly is refused by name
    conf["use_dora"] = True
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(conf))
    assert main(["import", str(tmp_path / "peft"), str(tmp_path / "dora.safetensors")]) == 1


def test_an_adapter_on_another_base_is_refused_in_one_line(root, adapter, tmp_path, capsys):
    other = build_model(tmp_path / "other", "llama", seed=1)
    with pytest.raises(MygptError, match="not the one this adapter was trained on"):
        load_source(adapter, base=str(other))
    moved = tmp_path / "moved.safetensors"
    shutil.copy(adapter, moved)
    capsys.readouterr()
    rc = main(["export", str(moved), str(tmp_path / "x"), "--base", str(other)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: ") and "sha256" in err and "\n" not in err
    # generate (and every --checkpoint command) loads base plus adapter
    rc = main(["generate", "--checkpoint", str(adapter), "--prompt", "ROMEO:",
               "--max-new-tokens", "3", "--backend", "torch", "--device", "cpu"])  # fmt: skip
    assert rc == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--lora-rank", "4"], "--init-from"),
        (["--lora-rank", "4", "--init-from", "BASE", "--lora-targets", "q,x"], "unknown target x"),
        (["--lora-rank", "4", "--init-from", "BASE", "--lora-targets", "fc1"], "no mlp.fc1"),
        (["--lora-rank", "4", "--init-from", "BASE", "--output", "a.ckpt"], "name it .safetensors"),
    ],
)
def test_bad_lora_flags_are_one_line(root, tmp_path, capsys, args, match):
    args = [a.replace("BASE", str(root / "llama")) for a in args]
    rc = main(["train", str(root / "text.txt"), "--steps", "1", "--output",
               str(tmp_path / "o.safetensors"), *args])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err[-1].startswith("error: ") and match in err[-1]


def test_resuming_an_adapter_with_other_lora_settings_is_refused(adapter, capsys):
    before = adapter.read_bytes()
    capsys.readouterr()
    rc = main(["train", "--resume", str(adapter), "--steps", "9", "--lora-rank", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err[-1].startswith("error: ") and "contradict the adapter" in err[-1]
    assert adapter.read_bytes() == before


# --- chat data: the loss counts the assistant's tokens ------------------------------------------

CHATS = [
    [{"role": "user", "content": f"What is {i} plus {i}?"},
     {"role": "assistant", "content": f"It is {2 * i}."},
     {"role": "user", "content": "Thanks"},
     {"role": "assistant", "content": "You are welcome."}]
    for i in range(30)
]  # fmt: skip


def test_chat_data_counts_the_assistant_tokens_only(root, tmp_path, capsys):
    from transformers import AutoTokenizer

    from mygpt.tokenizers import tokenizer_from_dict
    from mygpt.train.chat_data import encode_chats

    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS), encoding="utf-8")
    tok = tokenizer_from_dict(import_hf(root / "llama").tokenizer)
    ids, mask, n = encode_chats(chats, tok)
    assert n == len(CHATS) and 0 < mask.sum() < len(ids)
    # the whole stream is transformers' rendering; the counted tokens are the replies + end token
    hf = AutoTokenizer.from_pretrained(root / "llama")
    rendered = "".join(hf.apply_chat_template(m, tokenize=False) for m in CHATS)
    assert tok.decode(list(ids)) == rendered
    replies = "".join(t["content"] + "<|im_end|>\n" for m in CHATS for t in m[1::2])
    assert tok.decode(list(ids[mask == 1])) == replies

    out = tmp_path / "chat.safetensors"
    capsys.readouterr()
    args = ["train", str(chats), "--init-from", str(root / "llama"), "--lora-rank", "4",
            "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--backend", "torch",
            "--device", "cpu", "--output", str(out), "--print-every", "1"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    counted = int(mask[1:].sum())
    assert f"loss on {counted:,} assistant tokens / {len(ids):,} total" in err


def test_chat_lines_that_are_not_conversations_are_one_line(root, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"text": "x"}\n')
    rc = main(["train", str(bad), "--init-from", str(root / "llama"), "--steps", "1",
               "--output", str(tmp_path / "o.safetensors")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and "line 2" in err[-1]


def test_adapters_on_a_book_checkpoint_with_its_gelu_mlp(tmp_path, capsys):
    from mygpt.backends import get_backend
    from mygpt.model import LoraWeights, forward
    from tests.conftest import BOOK_FIXTURES

    book = BOOK_FIXTURES / "part1_ch18.ckpt"
    out = tmp_path / "book-lora.safetensors"
    args = ["train", str(TINY_SHAKESPEARE), "--init-from", str(book), "--lora-rank", "2",
            "--lora-targets", "q,k,v,o,fc1,fc2", "--steps", "2", "--batch-size", "2",
            "--seq-len", "16", "--lr", "1e-2", "--backend", "torch", "--device", "cpu",
            "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    base, ad = load_source(book), load_adapter(out)
    ids = base.params["token_embedding.embedding.weight"].shape[0] // 2 + np.arange(12) % 7
    merged = mygpt.load(out, backend="torch", device="cpu").logits(ids)
    ops = get_backend("mlx", "cpu")  # unmerged, on the other backend
    params = {k: ops.asarray(v) for k, v in base.params.items()}
    lora = LoraWeights({k: ops.asarray(v) for k, v in ad.tensors.items()}, ad.lora.scale)
    adapted = ops.to_numpy(forward(ops, base.config, params, ops.asarray(ids[None]), lora=lora))[0]
    assert np.abs(merged - adapted).max() < 1e-5
    assert np.abs(merged - mygpt.load(book, backend="torch", device="cpu").logits(ids)).max() > 1e-4
    capsys.readouterr()
    assert main(["export", str(out), str(tmp_path / "p"), "--peft"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "GPT-2" in err and "\n" not in err


def test_two_processes_train_the_same_adapters_as_one(root, tmp_path):
    """torchrun (gloo): the adapters' gradients are all-reduced as a full model's are."""
    from tests.test_distributed import check_launch, launch, logged

    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    common = ["--lora-targets", "q,v,down", "--grad-accum", "2"]
    _train(root, one, 4, "torch", *common)
    args = ["train", str(root / "text.txt"), "--init-from", str(root / "llama"),
            "--lora-rank", "4", "--lora-alpha", "16", "--steps", "4", "--batch-size", "2",
            "--seq-len", "16", "--lr", "1e-2", "--backend", "torch", "--device", "cpu",
            "--output", str(two), "--print-every", "1", *common]  # fmt: skip
    proc = launch("torch", 2, args)
    check_launch(proc)
    assert "rank 0 of 2" in proc.stderr
    la, lb = logged(one), logged(two)
    assert la.keys() == lb.keys() and max(abs(la[k] - lb[k]) for k in la) <= 1e-5
    a, b = load_adapter(one), load_adapter(two)
    assert max(float(np.abs(a.tensors[k] - b.tensors[k]).max()) for k in a.tensors) <= 1e-5
