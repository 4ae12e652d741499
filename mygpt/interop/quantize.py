"""``mygpt quantize CKPT OUT --bits 8|4``: a model's weights as ggml Q8_0 or Q4_0 blocks.

The source is anything a model is loaded from (a native or book checkpoint, a Hugging Face
directory or Hub id, an adapter checkpoint, merged into its base first). Every 2-D weight whose
rows are a multiple of 32 long is quantized (embeddings, the block projections, the head; a tied
head stays tied: it is the embedding); learned position tables, norms and biases stay float.
The output is a native checkpoint whose metadata records the format (see ``mygpt.quant``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from mygpt.checkpoint import save_checkpoint
from mygpt.errors import MygptError
from mygpt.fileio import check_output_path
from mygpt.quant import TYPE_OF_BITS, QuantizedTensor, is_quantized, quantize_params


@dataclass
class QuantizeReport:
    path: Path
    kind: str
    quantized: int  # how many weights
    kept: list[str]  # 2-D weights that stay float (rows not a multiple of 32)
    bytes_before: int
    bytes_after: int
    max_moved: float  # the largest |dequantized - original| over every quantized weight
    rms_moved: float  # root-mean-square of that, relative to the weights' own RMS


def _moved(before: dict, after: dict) -> tuple[float, float]:
    worst, err2, norm2 = 0.0, 0.0, 0.0
    for name, q in after.items():
        if isinstance(q, QuantizedTensor):
            w = np.asarray(before[name], dtype=np.float64)
            diff = q.dequantize().astype(np.float64) - w
            worst = max(worst, float(np.abs(diff).max()))
            err2 += float(np.square(diff).sum())
            norm2 += float(np.square(w).sum())
    return worst, (err2 / norm2) ** 0.5 if norm2 else 0.0


def quantize_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, bits: int
) -> QuantizeReport:
    """Write ``src`` quantized to ``dst`` (a native .safetensors); returns what it did."""
    from mygpt.interop.sources import load_source

    if bits not in TYPE_OF_BITS:
        raise MygptError(f"--bits {bits}: mygpt quantizes to 8 (Q8_0) or 4 (Q4_0) bits")
    dst = Path(dst)
    check_output_path(dst, "OUT")
    if dst.exists() and Path(src).exists() and os.path.samefile(dst, src):
        raise MygptError(f"refusing to overwrite the source {src} — choose another OUT")
    ckpt = load_source(src)
    if is_quantized(ckpt.params):
        raise MygptError(
            f"{src} is already quantized — quantize the float checkpoint it came from (blocks "
            "of blocks would lose precision twice)"
        )
    params, kept = quantize_params(ckpt.params, bits)
    worst, rms = _moved(ckpt.params, params)
    before = sum(int(np.asarray(v).nbytes) for v in ckpt.params.values())
    after = sum(
        v.nbytes if isinstance(v, QuantizedTensor) else int(v.nbytes) for v in params.values()
    )
    save_checkpoint(dst, ckpt.config, params, ckpt.tokenizer)
    count = sum(isinstance(v, QuantizedTensor) for v in params.values())
    return QuantizeReport(dst, TYPE_OF_BITS[bits], count, kept, before, after, worst, rms)


@click.command("quantize")
@click.argument("ckpt", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--bits", type=click.Choice(["8", "4"]), required=True,
              help="8: ggml Q8_0 blocks; 4: ggml Q4_0 blocks (32 weights and one fp16 scale each).")  # fmt: skip
def quantize_cmd(ckpt: str, out: str, bits: str) -> None:
    """Quantize a model's weights to ggml's Q8_0 or Q4_0 blocks (a native checkpoint that
    generate, serve, eval, bench and train --lora-rank load on both backends)."""
    r = quantize_checkpoint(ckpt, out, int(bits))
    click.echo(
        f"{r.kind}: {r.quantized} weights quantized, {r.bytes_before / 1e6:.1f} MB -> "
        f"{r.bytes_after / 1e6:.1f} MB; weights moved by at most {r.max_moved:.3g} "
        f"(RMS {r.rms_moved:.2%} of the weights')",
        err=True,
    )
    if r.kept:
        click.echo(f"kept in float (rows not a multiple of 32): {', '.join(r.kept)}", err=True)
    click.echo(str(r.path))
