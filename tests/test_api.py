"""The Python API and the convert/plot commands: checkpoints move between backends and formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mygpt
from mygpt.checkpoint import load_checkpoint
from mygpt.cli import main
from tests.conftest import BOOK_FIXTURES


@pytest.mark.parametrize("src,dst", [("mlx", "torch"), ("torch", "mlx")])
def test_native_checkpoint_from_one_backend_reloads_bit_exactly_on_the_other(src, dst, tmp_path):
    a = mygpt.load(BOOK_FIXTURES / "ch27_modern.ckpt", backend=src, device="cpu")
    path = tmp_path / "m.safetensors"
    a.save(path)
    b = mygpt.load(path, backend=dst, device="cpu")
    assert b.config == a.config and b.tokenizer.to_dict() == a.tokenizer.to_dict()
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.ops.to_numpy(b.params[name]), a.ops.to_numpy(value))
    ids = a.encode("ROMEO:\nBut soft")
    np.testing.assert_allclose(b.logits(ids), a.logits(ids), atol=1e-4)


def test_convert_book_to_native_and_back_keeps_the_logits(tmp_path, capsys):
    book = BOOK_FIXTURES / "ch28_bpe.ckpt"
    native = tmp_path / "bpe.safetensors"
    back = tmp_path / "bpe.ckpt"
    assert main(["convert", str(book), str(native)]) == 0
    assert main(["convert", str(native), str(back)]) == 0
    out = capsys.readouterr()
    assert str(native) in out.out and str(back) in out.out
    assert "optimizer and training state are dropped" in out.err
    ref = np.load(BOOK_FIXTURES / "ch28_bpe.npz")
    for path in (native, back):
        m = mygpt.load(path, backend="torch", device="cpu")
        np.testing.assert_allclose(m.logits(ref["input_ids"]), ref["logits"], atol=1e-5)
    assert load_checkpoint(back).format == "book"


def test_convert_refuses_to_overwrite_its_source(capsys):
    book = BOOK_FIXTURES / "part1_ch18.ckpt"
    assert main(["convert", str(book), str(book)]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_plot_draws_several_runs(tmp_path, capsys):
    runs = []
    for name, scale in (("a", 1.0), ("b", 0.8)):
        path = tmp_path / f"{name}.metrics.jsonl"
        lines = [
            json.dumps({"step": s, "loss": scale * 4 / s**0.3, "lr": 1e-3}) for s in range(1, 101)
        ]
        lines.append(json.dumps({"step": 100, "val_loss": scale * 1.5}))
        path.write_text("\n".join(lines) + "\n")
        runs.append(str(path))
    png = tmp_path / "loss.png"
    assert main(["plot", *runs, "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "missing.safetensors")]) == 1
    assert "no metrics file" in capsys.readouterr().err
