"""``mygpt data``: download corpora and prepare token caches.

Results (paths, counts, times) go to stdout; progress goes to stderr.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from mygpt.errors import UsageError
from mygpt.settings import encoding_errors_option


class ByteSize(click.ParamType):
    """An integer byte count with an optional suffix: 1000000, 50M, 1.5G (powers of 1000)."""

    name = "bytes"
    _UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(value).lower())
        if not m:
            self.fail(f"{value!r} is not a byte count (e.g. 50000000, 50M, 1.5G)", param, ctx)
        return int(float(m.group(1)) * self._UNITS[m.group(2)])


@click.group(name="data")
def data() -> None:
    """Download corpora and encode them into cached token files."""


@data.command("download")
@click.argument("source")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the text files [default: ~/.cache/mygpt/data/NAME].",
)
@click.option(
    "--max-bytes",
    type=ByteSize(),
    default=0,
    show_default=True,
    help="Stop each split after this many bytes of text (0 = all); later files are not downloaded.",
)
@click.option(
    "--revision",
    default=None,
    help="Dataset revision (commit, branch or tag). wikitext-103 is pinned by default.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Use the local Hugging Face cache only (same as HF_HUB_OFFLINE=1).",
)
@click.option(
    "--hf-cache-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Hugging Face cache directory [default: HF_HUB_CACHE / HF_HOME].",
)
@click.option(
    "--text-column", default="text", show_default=True, help="Parquet column holding the text."
)
@click.option(
    "--force-download",
    is_flag=True,
    help="Download the files again and rewrite the text even if cached.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def download_cmd(
    source: str,
    out: Path | None,
    max_bytes: int,
    revision: str | None,
    offline: bool,
    hf_cache_dir: str | None,
    text_column: str,
    force_download: bool,
    quiet: bool,
) -> None:
    """Fetch SOURCE as plain text: `wikitext-103`, `hf:OWNER/NAME[:CONFIG]`, or a local path.

    \b
    Examples:
      mygpt data download wikitext-103 --out data/wikitext-103
      mygpt data download hf:wikimedia/wikipedia:20231101.en --max-bytes 200M
      mygpt data download ./my_parquet_dir --out data/mine
    """
    from mygpt.data.download import download

    t0 = time.perf_counter()
    res = download(
        source,
        out,
        max_bytes=max_bytes,
        revision=revision,
        offline=offline,
        cache_dir=hf_cache_dir,
        text_column=text_column,
        force=force_download,
        quiet=quiet,
    )
    for name, size in res.files.items():
        click.echo(f"{res.out / name}\t{size} bytes")
    click.echo(
        f"corpus: {res.out}  ({sum(res.files.values()):,} bytes, {time.perf_counter() - t0:.1f} s)"
    )


@data.command("prepare")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option(
    "--tokenizer",
    "tokenizer_kind",
    type=click.Choice(["char", "bpe", "bytebpe"]),
    default="char",
    show_default=True,
)
@click.option("--num-merges", type=click.IntRange(min=0), default=1024, show_default=True)
@click.option(
    "--bpe-train-bytes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Train BPE on the first N characters of the corpus (0 = all).",
)
@click.option(
    "--tokenizer-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Use this saved tokenizer instead of training one.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Token cache directory [default: $MYGPT_CACHE_DIR/tokens or ~/.cache/mygpt/tokens].",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the token file here (sidecar beside it) instead of the cache.",
)
@encoding_errors_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Encoder processes [default: the tokenizer's choice].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def prepare_cmd(
    corpus: Path,
    tokenizer_kind: str,
    num_merges: int,
    bpe_train_bytes: int,
    tokenizer_file: Path | None,
    cache_dir: Path | None,
    output: Path | None,
    encoding_errors: str,
    workers: int | None,
    quiet: bool,
) -> None:
    """Encode CORPUS (a text file or directory) once into a cached binary token file.

    A later `prepare` or `mygpt train` with the same corpus and tokenizer settings reuses it.
    """
    from mygpt.data.cache import prepare_corpus

    ctx = click.get_current_context()
    given = [
        f"--{n.replace('_', '-')}"
        for n in ("tokenizer_kind", "num_merges", "bpe_train_bytes")
        if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE
    ]
    if tokenizer_file is not None and given:
        # Training flags next to a tokenizer file would be silently ignored: say so instead.
        raise UsageError(f"--tokenizer-file replaces {', '.join(given)} — pass one or the other")
    res = prepare_corpus(
        corpus,
        tokenizer_kind=tokenizer_kind,
        num_merges=num_merges,
        bpe_train_bytes=bpe_train_bytes,
        tokenizer_file=tokenizer_file,
        cache_dir=cache_dir,
        progress=not quiet,
        encoding_errors=encoding_errors,
        workers=workers,
        output=output,
    )
    tok, tf, t = res.tokenizer, res.token_file, res.seconds
    click.echo(f"token file: {tf.path}")
    click.echo(
        f"tokens: {tf.num_tokens:,} ({tf.dtype.name}, {tf.nbytes:,} bytes) from "
        f"{res.source['bytes']:,} bytes of text; vocab {tok.vocab_size}"
    )
    click.echo(
        f"tokenizer: {getattr(tok, 'kind', tokenizer_kind)} "
        f"{'reused' if res.tokenizer_reused else 'trained'} in {t['tokenizer']:.2f} s; "
        f"tokens {'reused from cache' if res.tokens_reused else 'encoded'} in {t['encode']:.2f} s; "
        f"hashing {t['hash']:.2f} s; total {t['total']:.2f} s"
    )
