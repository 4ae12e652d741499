"""What the one forward must not move, against fixtures written by mygpt before it (at f1a70ab,
when ``forward`` and ``decode`` were two models):

- every book checkpoint's logits, both backends, fp32 and bf16, bit for bit, and the tokens
  ``generate`` samples from them (which ran the old fixed-shape decoder);
- a run checkpointed then resumes to the weights the old code resumed it to, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mygpt
from mygpt import model
from mygpt.checkpoint import load_checkpoint
from mygpt.cli import main
from tests.conftest import BOOK_FIXTURES

FIXTURES = Path(__file__).parent / "fixtures"
BEFORE = np.load(FIXTURES / "pre_one_forward_logits.npz")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("name", ["part1_ch18", "ch27_modern", "ch28_bpe"])
def test_book_checkpoints_give_the_logits_and_tokens_they_gave_before(name, backend, precision):
    m = mygpt.load(BOOK_FIXTURES / f"{name}.ckpt", backend=backend, device="cpu",
                   precision=precision)  # fmt: skip
    ids = BEFORE[f"{name}/ids"]
    with m.ops.inference():
        logits = model.forward(m.ops, m.config, m.params, m.ops.asarray(ids), dtype=m.dtype)
    np.testing.assert_array_equal(
        m.ops.to_numpy(logits)[:, -8:], BEFORE[f"{name}/{backend}/{precision}"]
    )
    tokens = list(m.stream(m.encode("ROMEO:"), 12, temperature=0.8, seed=3))
    np.testing.assert_array_equal(tokens, BEFORE[f"{name}/{backend}/{precision}/generate"])


def test_a_run_checkpointed_before_resumes_to_the_same_weights(tmp_path):
    """Written at step 2 by the old code (torch, GQA, rope, SwiGLU); resumed to step 4 by today's,
    it ends at the weights the old code reached (pre_one_forward_run_step4.npz)."""
    ckpt = tmp_path / "run.safetensors"
    ckpt.write_bytes((FIXTURES / "pre_one_forward_run.safetensors").read_bytes())
    corpus = tmp_path / "corpus.txt"  # the run saved its corpus path relative to its directory
    corpus.write_bytes((FIXTURES / "pre_one_forward_corpus.txt").read_bytes())
    assert main(["train", str(corpus), "--resume", str(ckpt), "--steps", "4"]) == 0
    params = load_checkpoint(ckpt).params
    expected = np.load(FIXTURES / "pre_one_forward_run_step4.npz")
    assert sorted(params) == sorted(expected.files)
    for k in expected.files:
        np.testing.assert_array_equal(params[k], expected[k], err_msg=k)
