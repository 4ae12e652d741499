"""DPO (``mygpt train PAIRS.jsonl --dpo``) on a tiny random-weight Llama built locally: at step 1
the policy is the reference (the sigmoid loss is ln 2, the margins 0) on both backends, every
precision and reference kind; the loss and rewards match a float64 recomputation from
transformers' log-probs of the exported policy and the reference; resume is bit-exact; trl's
row formats, its truncation rule, and one-line refusals of bad rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mygpt.cli import main
from mygpt.errors import MygptError
from mygpt.interop.import_ import import_hf
from mygpt.tokenizers import tokenizer_from_dict
from tests.real_models import build_model

pytestmark = pytest.mark.usefixtures("hub_offline")

BETA = 0.1


def _pairs(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        if i % 3 == 0:  # standard format: strings (EOS appended, as trl does)
            rows.append({"prompt": f"Q: {i} plus {i}? A:", "chosen": f" {2 * i}.",
                         "rejected": f" {2 * i + 1}, I think."})  # fmt: skip
        elif i % 3 == 1:  # conversational, explicit prompt
            rows.append({"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                         "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
                         "rejected": [{"role": "assistant", "content": "No idea."}]})  # fmt: skip
        else:  # conversational, implicit prompt (trl's extract_prompt)
            user = {"role": "user", "content": f"Double {i}?"}
            rows.append({"chosen": [user, {"role": "assistant", "content": f"{2 * i}"}],
                         "rejected": [user, {"role": "assistant", "content": f"{i}"}]})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    build_model(root / "llama", "llama")  # GQA, biases, untied head, a ChatML template
    lines = "".join(json.dumps(r) + "\n" for r in _pairs(24))
    (root / "pairs.jsonl").write_text(lines, encoding="utf-8")
    return root


def _args(root: Path, out: Path, steps: int, backend: str, *extra: str) -> list[str]:
    return ["train", str(root / "pairs.jsonl"), "--dpo", "--init-from", str(root / "llama"),
            "--steps", str(steps), "--batch-size", "4", "--seq-len", "48", "--lr", "2e-3",
            "--backend", backend, "--device", "cpu", "--output", str(out), "--print-every", "1",
            "--val-split", "0.34", "--eval-batches", "2", *extra]  # fmt: skip


def _log(out: Path) -> list[dict]:
    path = out.with_name(out.stem + ".metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _weights(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(out)


TRL_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected")  # fmt: skip


@pytest.mark.parametrize(
    "backend,precision,extra",
    [
        ("torch", "fp32", ()),
        ("mlx", "fp32", ("--lora-rank", "4")),
        ("torch", "bf16", ("--dpo-precompute-ref", "--grad-accum", "2")),
        ("mlx", "bf16", ()),
    ],  # fmt: skip
    ids=["torch-fp32-frozen", "mlx-fp32-lora", "torch-bf16-precomputed-accum", "mlx-bf16-frozen"],
)
def test_step_one_is_ln2_with_zero_margins(root, tmp_path, backend, precision, extra):
    out = tmp_path / "o.safetensors"
    assert main(_args(root, out, 2, backend, "--precision", precision, *extra)) == 0
    first = _log(out)[0]
    assert first["step"] == 1 and set(TRL_NAMES) <= first.keys()
    assert abs(first["loss"] - math.log(2)) < 1e-6  # fp32 ln 2 (the loss is always fp32)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert first[k] == 0.0, k  # the policy *is* the reference: exactly zero
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    evals = [r for r in _log(out) if "val_loss" in r]
    assert evals and all(f"eval_{k}" in evals[-1] for k in TRL_NAMES)
    second = _log(out)[1]
    assert second["step"] == 2 and second["loss"] < first["loss"]  # it learned something


def test_ipo_at_step_one_is_its_target_squared(root, tmp_path):
    out = tmp_path / "o.safetensors"
    assert main(_args(root, out, 1, "mlx", "--dpo-loss", "ipo", "--dpo-beta", "0.25")) == 0
    assert _log(out)[0]["loss"] == (1 / (2 * 0.25)) ** 2  # z = 0: (0 - 1/(2 beta))^2, exactly


def _hf_logps(hfdir: Path, x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sum over the masked targets of log p(y | x), transformers in float64."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hfdir, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(torch.tensor(x)).logits
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(y)[..., None])[..., 0]
    return (logp.numpy() * mask).sum(-1)


def test_loss_and_rewards_match_float64_transformers(root, tmp_path):
    """The last validation (after the last step, on the held-out pairs) against transformers'
    float64 log-probs of the exported policy and the untouched reference."""
    from mygpt.train.dpo_data import encode_pairs

    out = tmp_path / "policy.safetensors"
    assert main(_args(root, out, 3, "torch", "--precision", "fp32")) == 0
    assert main(["export", str(out), str(tmp_path / "hf")]) == 0
    last = [r for r in _log(out) if "val_loss" in r][-1]
    tok = tokenizer_from_dict(import_hf(root / "llama").tokenizer)
    pairs, _ = encode_pairs(root / "pairs.jsonl", tok, 48, 24)
    held = pairs.part(slice(int(len(pairs) * 0.66), None)).part(slice(0, 8))  # 2 batches of 4
    x, y, mask, _ = held.rows(np.arange(len(held)))
    pol = _hf_logps(tmp_path / "hf", x, y, mask)
    ref = _hf_logps(root / "llama", x, y, mask)
    b = len(held)
    rc, rr = BETA * (pol[:b] - ref[:b]), BETA * (pol[b:] - ref[b:])
    loss = np.mean(np.logaddexp(0.0, -(rc - rr)))  # -log sigmoid(beta z)
    want = {"val_loss": loss, "eval_rewards/chosen": rc.mean(), "eval_rewards/rejected": rr.mean(),
            "eval_rewards/margins": (rc - rr).mean(), "eval_rewards/accuracies": (rc > rr).mean(),
            "eval_logps/chosen": pol[:b].mean(), "eval_logps/rejected": pol[b:].mean()}  # fmt: skip
    assert abs(want["eval_rewards/margins"]) > 1e-2  # the policy moved: a real comparison
    for k, v in want.items():
        assert abs(last[k] - v) <= 1e-5 * max(1.0, abs(v)), (k, last[k], v)


@pytest.mark.parametrize(
    "backend,extra",
    [("torch", ()), ("mlx", ("--dpo-precompute-ref",)), ("torch", ("--lora-rank", "4"))],
    ids=["torch-frozen", "mlx-precomputed", "torch-lora"],
)
def test_resume_is_bit_exact(root, tmp_path, backend, extra):
    straight, split = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(_args(root, straight, 4, backend, *extra)) == 0
    assert main(_args(root, split, 2, backend, *extra)) == 0
    assert main(["train", "--resume", str(split), "--steps", "4"]) == 0
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    la = [r for r in _log(straight) if "loss" in r]
    lb = [r for r in _log(split) if "loss" in r]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["rewards/margins"] for r in la] == [r["rewards/margins"] for r in lb]


def test_a_changed_reference_is_refused_on_resume(root, tmp_path, capsys):
    import shutil

    llama = tmp_path / "llama"
    shutil.copytree(root / "llama", llama)
    out = tmp_path / "o.safetensors"
    args = _args(root, out, 2, "torch")
    args[args.index(str(root / "llama"))] = str(llama)
    assert main(args) == 0
    from safetensors.numpy import load_file, save_file

    f = next(llama.glob("*.safetensors"))  # the reference changes under the run
    w = load_file(f)
    k = next(iter(w))
    w[k] = w[k] + 1.0
    save_file(w, f, metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "not the model this DPO run started from" in err


def test_trl_truncation_keeps_the_prompts_end_and_the_responses_start():
    from mygpt.train.dpo_data import truncate

    p, c, r = list(range(10)), [20, 21, 22, 23, 24, 25], [30, 31]
    assert truncate(p, c, r, 16, 8) == (p, c, r, False)
    # too long: the prompt keeps its last 8 tokens; 8 + 6 <= 14 then fits
    assert truncate(p, c, r, 14, 8) == (p[-8:], c, r, True)
    # still too long: the responses keep their first 12 - 8 = 4 tokens
    assert truncate(p, c, r, 12, 8) == (p[-8:], c[:4], r, True)


def test_rows_are_trls_formats_and_the_loss_counts_responses_only(root):
    from mygpt.train.dpo_data import encode_pairs

    tok = tokenizer_from_dict(import_hf(root / "llama").tokenizer)
    pairs, cut = encode_pairs(root / "pairs.jsonl", tok, 48, 24)
    assert len(pairs) == 24 and cut == 0
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(root / "llama")  # trl appends its eos_token_id
    x, y, mask = pairs.x, pairs.y, pairs.mask
    # row 0 (strings): the chosen targets are " 0." + EOS; the prompt's ids are never counted
    assert list(y[0, 0][mask[0, 0] == 1]) == hf(" 0.", add_special_tokens=False)["input_ids"] + [
        hf.eos_token_id
    ]
    n_prompt = len(hf("Q: 0 plus 0? A:", add_special_tokens=False)["input_ids"])
    assert mask[0, 0, : n_prompt - 1].sum() == 0 and mask[0, 0, n_prompt - 1] == 1
    # row 1 (messages): what the chat template adds after the generation prompt
    assert tok.decode(list(y[1, 1][mask[1, 1] == 1])) == "No idea.<|im_end|>\n"
    # row 2 (implicit prompt): the shared user turn is the prompt
    assert tok.decode(list(y[2, 0][mask[2, 0] == 1])) == "4<|im_end|>\n"
    assert tok.decode(list(x[2, 0][: int(pairs.length[2, 0]) - 1])).startswith("<|begin_of_text|>")


def test_truncated_pairs_are_counted_in_one_line(root, tmp_path, capsys):
    from mygpt.train.dpo_data import encode_pairs

    out = tmp_path / "o.safetensors"
    args = _args(root, out, 1, "torch")
    args[args.index("48")] = "28"
    assert main(args) == 0
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("dpo data:")]
    assert len(line) == 1 and "15 training pairs, 8 held out" in line[0]
    n = int(line[0].split("· ")[1].split()[0])
    # the pairs whose prompt + longer response (+1: the window's targets) exceed 29 tokens
    tok = tokenizer_from_dict(import_hf(root / "llama").tokenizer)
    long = encode_pairs(root / "pairs.jsonl", tok, 64, 32)[0].length.max(-1) > 29
    assert n == int(long.sum()) and 0 < n < 24


@pytest.mark.parametrize(
    "line,match",
    [
        ("not json", "line 2 is not JSON"),
        ('{"prompt": "a", "chosen": "b"}', 'no "chosen" and "rejected"'),
        ('{"prompt": "a", "chosen": ["b"], "rejected": "c"}', "all strings or all message lists"),
        ('{"prompt": "a", "chosen": "", "rejected": "c"}', "empty response"),
        (
            '{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}',
            "share no leading messages",
        ),
    ],  # fmt: skip
)
def test_a_malformed_row_is_refused_with_its_line_number(root, tmp_path, capsys, line, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_pairs(1)[0]) + "\n" + line + "\n", encoding="utf-8")
    capsys.readouterr()
    rc = main(["train", str(bad), "--dpo", "--init-from", str(root / "llama"), "--steps", "1",
               "--output", str(tmp_path / "o.safetensors")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and "line 2" in err[-1] and match in err[-1]


def test_dpo_without_a_model_or_on_text_is_refused(root, tmp_path, capsys):
    for args in (["train", str(root / "pairs.jsonl"), "--dpo"],
                 ["train", "--dpo", "--init-from", str(root / "llama")]):  # fmt: skip
        capsys.readouterr()
        assert main([*args, "--output", str(tmp_path / "o.safetensors")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and err[-1].startswith("error: ") and "--dpo" in err[-1]


def test_the_pair_sampler_resumes_mid_epoch():
    from mygpt.train.dpo_data import PairSampler

    a = PairSampler(10, 4, seed=3)
    seen = np.concatenate([a.sample() for _ in range(5)])  # 20 = two whole epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    b, c = PairSampler(10, 4, seed=3), PairSampler(10, 4, seed=3)
    b.sample(), b.sample(), b.sample()
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert [list(b.sample()) for _ in range(3)] == [list(c.sample()) for _ in range(3)]
    with pytest.raises(MygptError, match="not this pair file"):
        PairSampler(11, 4, seed=3).load_state_dict(b.state_dict())


def test_two_processes_train_the_same_policy_as_one(root, tmp_path):
    """torchrun (gloo): DPO's gradients and metrics are averaged over ranks as the loss is."""
    from tests.test_distributed import check_launch, launch

    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert main(_args(root, one, 3, "torch", "--grad-accum", "2")) == 0
    proc = launch("torch", 2, _args(root, two, 3, "torch", "--grad-accum", "2"))
    check_launch(proc)
    assert "rank 0 of 2" in proc.stderr
    la, lb = _log(one), _log(two)
    assert len(la) == len(lb)
    for ra, rb in zip(la, lb):
        for k in ("loss", "val_loss", "rewards/margins", "eval_rewards/margins", "logps/chosen"):
            if k in ra:
                assert abs(ra[k] - rb[k]) <= 1e-5 * max(1.0, abs(ra[k])), (k, ra[k], rb[k])
    a, b = _weights(one), _weights(two)
    # per tensor, max |diff| / max |value|, the parity table's 1e-4 for trained parameters (Adam's
    # first steps are ~lr * sign(g): an element whose g is near 0 moves by +-lr). Not W_K's bias: its true gradient is 0 (a key bias
    # shifts every score of a query alike, and softmax ignores shifts), so it is pure rounding
    # noise, which Adam (g / sqrt(v)) turns into steps of +-lr either way
    rel = {k: float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max())
           for k in a if "optim" not in k and "W_K.bias" not in k}  # fmt: skip
    assert max(rel.values()) <= 1e-4, max(rel.items(), key=lambda kv: kv[1])
