"""Typed means typed: an architecture or tokenizer flag the user gave is checked against the
checkpoint that --resume or --init-from brings, whatever its value (equal to the default
included); run flags given on resume take effect, and the start line lists them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mygpt.checkpoint import load_checkpoint
from mygpt.cli import main
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.train import TrainConfig, train
from tests.conftest import BOOK_FIXTURES, TINY_SHAKESPEARE

# A model whose every architecture setting differs from the default: each flag below, typed with
# the default value or with another value, contradicts it.
ARCH = {
    "embed_dim": 48,
    "num_heads": 6,
    "num_layers": 2,
    "max_seq_len": 32,
    "num_kv_heads": 2,
    "norm": "rms",
    "position": "rope",
    "mlp": "swiglu",
    "mlp_hidden": 40,
}
# flag -> (the default's value, another value that is not the checkpoint's)
CASES = {
    "embed_dim": ("64", "96"),
    "num_heads": ("4", "3"),
    "num_layers": ("4", "1"),
    "max_seq_len": ("64", "48"),
    "num_kv_heads": ("4", "3"),  # default: one K/V head per query head (4 by default)
    "norm": ("layer", "layer"),
    "position": ("learned", "learned"),
    "mlp": ("gelu", "gelu"),
    "mlp_hidden": ("256", "64"),  # the default gelu width (4 x 64), and another
}


def _flags(d: dict) -> list[str]:
    return [a for k, v in d.items() for a in ("--" + k.replace("_", "-"), str(v))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "small.txt"
    p.write_text(TINY_SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def run_ckpt(corpus, tmp_path_factory) -> Path:
    """A resumable run (2 of 4 steps) with the ARCH architecture."""
    out = tmp_path_factory.mktemp("run") / "run.safetensors"
    settings = dict(steps=2, batch_size=2, seq_len=16, backend="torch", device="cpu", **ARCH)
    train(TrainConfig.from_flags(dict(data=str(corpus), output=str(out), **settings)))
    return out


def _error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1, err
    assert len(err) >= 1 and err[-1].startswith("error: ")
    return err[-1]


@pytest.mark.parametrize("which", ["default", "other"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("how", ["--resume", "--init-from"])
def test_a_typed_architecture_flag_that_contradicts_the_checkpoint_is_refused(
    how, name, which, run_ckpt, corpus, tmp_path, capsys
):
    value = CASES[name][0 if which == "default" else 1]
    flag = "--" + name.replace("_", "-")
    before = run_ckpt.read_bytes()
    out = tmp_path / "new.safetensors"
    argv = ["train", str(corpus), how, str(run_ckpt), flag, value, "--output", str(out)]
    line = _error(capsys, argv)
    # one line naming the flag, both values and the fix
    assert f"{flag} {value} contradicts" in line and str(ARCH[name]) in line, line
    assert f"drop {flag}" in line and how in line, line
    assert run_ckpt.read_bytes() == before and not out.exists()


def test_the_issues_init_from_cases_on_the_book_checkpoint(corpus, tmp_path, capsys):
    """`--init-from ch28_bpe.ckpt` (6 heads, rms, 48 wide, rope, 2 layers) with each flag the
    issue tried: all were silently ignored before."""
    src = str(BOOK_FIXTURES / "ch28_bpe.ckpt")
    for flag, value, theirs in [
        ("--num-heads", "4", "6"),
        ("--norm", "layer", "rms"),
        ("--embed-dim", "64", "48"),
        ("--position", "learned", "rope"),
        ("--num-layers", "4", "2"),
        ("--tokenizer", "char", "bpe"),
    ]:
        out = tmp_path / "x.safetensors"
        argv = ["train", str(corpus), "--init-from", src, flag, value, "--output", str(out)]
        line = _error(capsys, argv)
        assert f"{flag} {value} contradicts" in line and theirs in line, line


def test_typed_flags_that_agree_are_accepted_and_run_flags_take_effect(
    run_ckpt, corpus, tmp_path, capsys
):
    resumed = tmp_path / "resumed.safetensors"
    resumed.write_bytes(run_ckpt.read_bytes())
    agree = _flags({k: ARCH[k] for k in ("embed_dim", "num_heads", "norm", "mlp_hidden")})
    argv = ["train", "--resume", str(resumed), *agree, "--steps", "4", "--lr", "0.0005"]
    argv += ["--tokenizer", "char", "--print-every", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    # the start line lists what changed from the saved run, and only that
    changed = next(line for line in err.splitlines() if "changed settings" in line)
    assert "--steps 2 → 4" in changed and "--lr 0.001 → 0.0005" in changed
    assert "--print-every 500 → 1" in changed and "--embed-dim" not in changed
    args = load_checkpoint(resumed).train_state["args"]
    assert args["steps"] == 4 and args["lr"] == 0.0005 and args["print_every"] == 1
    assert args["model"]["embed_dim"] == 48 and args["model"]["norm"] == "rms"


def test_a_typed_tokenizer_flag_on_resume_is_checked(run_ckpt, capsys):
    for flag, value in [("--tokenizer", "bpe"), ("--num-merges", "7")]:
        line = _error(capsys, ["train", "--resume", str(run_ckpt), flag, value])
        assert f"{flag} {value} contradicts" in line and "--resume" in line, line


def test_resume_and_init_from_together_are_refused(run_ckpt, capsys):
    line = _error(capsys, ["train", "--resume", str(run_ckpt), "--init-from", str(run_ckpt)])
    assert "--init-from" in line and "--resume" in line


def test_python_api_checks_what_the_caller_passed(run_ckpt, corpus, tmp_path):
    # the model's default head count, passed explicitly: it contradicts the 6-head run
    with pytest.raises(MygptError, match="--num-heads 4 contradicts"):
        train(TrainConfig(model=ModelConfig(num_heads=4)), resume=str(run_ckpt))
    with pytest.raises(MygptError, match="--norm layer contradicts"):
        train(
            TrainConfig(
                data=str(corpus),
                output=str(tmp_path / "x.safetensors"),
                init_from=str(run_ckpt),
                model=ModelConfig(norm="layer"),
            )
        )
    with pytest.raises(MygptError, match="--num-heads 4 contradicts"):
        train(None, resume=str(run_ckpt), overrides={"num_heads": 4})


def test_init_from_takes_the_checkpoints_shape_for_the_run(run_ckpt, corpus, tmp_path):
    """--seq-len is checked against the source model's context (32), not the default (64)."""
    out = tmp_path / "ft.safetensors"
    tc = TrainConfig(
        data=str(corpus),
        output=str(out),
        init_from=str(run_ckpt),
        steps=1,
        batch_size=2,
        seq_len=32,
        backend="torch",
        device="cpu",
    )
    train(tc)
    args = load_checkpoint(out).train_state["args"]
    assert {k: args["model"][k] for k in ARCH} == ARCH


def test_checkpoints_with_flat_settings_still_resume(run_ckpt, tmp_path):
    """Checkpoints written before the architecture moved into TrainConfig.model saved the
    settings flat, under the old names: they load and resume."""
    from mygpt.train.config import TrainConfig as TC

    ckpt = load_checkpoint(run_ckpt)
    args = ckpt.train_state["args"]
    flat = {k: v for k, v in args.items() if k != "model"} | dict(args["model"])
    flat["norm_type"] = flat.pop("norm")
    tc = TC.from_dict(json.loads(json.dumps(flat)))
    assert tc.model.norm == "rms" and tc.model.embed_dim == 48 and tc.steps == 2


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_checkpoint_written_before_the_core_change_samples(backend):
    """tests/fixtures/pre_core_run.safetensors was written by mygpt at f8a8f80 (flat settings,
    ModelConfig's old field names): it loads and samples on both backends."""
    import mygpt

    m = mygpt.load(FIXTURES / "pre_core_run.safetensors", backend=backend, device="cpu")
    assert (m.config.norm, m.config.position, m.config.mlp) == ("rms", "rope", "swiglu")
    ids = list(m.stream(m.encode("ROMEO:"), 8, temperature=0.0))
    assert len(ids) == 8


def test_a_checkpoint_written_before_the_core_change_resumes_exactly(tmp_path, capsys):
    """Resumed from step 2 to 4 by today's code, it ends at the weights the old code reached
    resuming it the same way (tests/fixtures/pre_core_run_step4.npz, written by f8a8f80)."""
    import numpy as np

    ckpt = tmp_path / "run.safetensors"
    ckpt.write_bytes((FIXTURES / "pre_core_run.safetensors").read_bytes())
    corpus = FIXTURES / "pre_core_corpus.txt"  # the run's corpus (it saved a /tmp path)
    assert main(["train", str(corpus), "--resume", str(ckpt), "--steps", "4"]) == 0
    assert "--steps 2 → 4" in capsys.readouterr().err
    params = load_checkpoint(ckpt).params
    expected = np.load(FIXTURES / "pre_core_run_step4.npz")
    assert sorted(params) == sorted(expected.files)
    for k in expected.files:
        np.testing.assert_array_equal(params[k], expected[k], err_msg=k)
