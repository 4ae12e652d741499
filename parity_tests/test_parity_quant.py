"""Quantized-model rows (ggml Q8_0 / Q4_0): torch vs MLX logits, loss and QLoRA gradients on the
same blocks in fp32 and bf16, batched decoding on quantized weights; and a row that fails when
one backend reads the blocks wrong."""

from __future__ import annotations

import pytest

from mygpt.parity import CHECKS, run_check

QUANT_CHECKS = [c for c in CHECKS if c.kind == "quant"]


def test_quant_rows_are_registered():
    names = {c.name for c in QUANT_CHECKS}
    assert {"quantized Q8_0 model", "quantized Q4_0 model"} <= names
    assert {"quantized Q8_0 batched decode", "quantized Q4_0 batched decode"} <= names


@pytest.mark.parametrize("check", QUANT_CHECKS, ids=lambda c: c.name)
def test_quant_rows_pass(check, pair, check_rows):
    ref, cand = pair
    if ref is None and "model" in check.name:
        pytest.skip(f"{cand.name} is the reference: the model rows compare two backends")
    for dtype in check.dtypes:
        rows = run_check(check, ref, cand, dtype)
        check_rows(rows)


def test_a_misread_nibble_order_fails_the_logits_row(cross_pair, monkeypatch):
    """Swapping the two halves of every Q4_0 block on one backend must show in the rows."""
    from mygpt.backends import quant_mlx

    ref, cand = cross_pair
    check = next(c for c in QUANT_CHECKS if c.name == "quantized Q4_0 model")
    real = quant_mlx.mlx_codes

    def swapped(qt):
        words = real(qt)  # uint32 words of 8 nibbles: 4 words a block; swap the block's halves
        rows = words.shape[0]
        return words.reshape(rows, -1, 2, 2)[:, :, ::-1].reshape(rows, -1).copy()

    monkeypatch.setattr(quant_mlx, "mlx_codes", swapped)
    rows = run_check(check, ref, cand, "float32")
    assert not all(r.passed for r in rows if "logits" in r.name)
