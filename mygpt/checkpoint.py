"""Checkpoints: the native safetensors format, the book's ``.ckpt`` format, and conversion.

Native format (``.safetensors``, one file): the model parameters under their names, optimizer
tensors under ``optimizer.<name>`` (a prefix no parameter name starts with), and string metadata
holding ``format`` ("mygpt"), ``format_version``, the architecture ``config``, the ``tokenizer``
state and the ``train_state`` (JSON). safetensors is chosen because it is not pickle (loading a file
cannot run code), both frameworks read it, and it stores bf16 bit-exactly.

Book format (``.ckpt``): the dict the book's ``torch.save`` writes. Reading and writing go through
``backends.torch_io`` (the only module that imports torch), with ``weights_only=True``.

The format of a file is detected from its first bytes, never from its suffix: users rename files.
"""

from __future__ import annotations

import collections
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.fileio import atomic_write_bytes, check_output_path
from mygpt.quant import METADATA_KEY, QuantizedTensor, from_metadata, refuse_quantized, to_metadata
from mygpt.tokenizers.bpe import BOOK_PATTERN

FORMAT_NAME = "mygpt"
FORMAT_VERSION = 1
OPTIMIZER_PREFIX = "optimizer."
BOOK_BUFFER_SUFFIXES = (".mha.causal_mask", ".mha.rope_cos", ".mha.rope_sin")
NATIVE_SUFFIXES = (".safetensors",)
BOOK_SUFFIXES = (".ckpt", ".pt", ".pth")
# extra keys of a resumable .ckpt written by `mygpt train` (the book's loader ignores them)
BOOK_TRAIN_STATE_KEY = "mygpt_train_state"
BOOK_OPTIMIZER_KEY = "mygpt_optimizer_state"

_ZIP_MAGIC = b"PK\x03\x04"


def writes_book_format(path: str | os.PathLike) -> bool:
    """Whether a checkpoint *written* to ``path`` takes the book's format (its suffix says so).

    The one home of that rule: ``train --output``, ``convert`` and the resume hint all ask here.
    (Reading never trusts a suffix: :func:`detect_format` looks at the bytes.)
    """
    return Path(path).suffix.lower() in BOOK_SUFFIXES


# The largest safetensors header we accept (the reference implementation's own limit).
_MAX_HEADER = 100_000_000


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, framework-free.

    ``params`` are float32 numpy arrays named like the book's state dict (no buffers), in the
    canonical order of :func:`expected_param_shapes`. ``train_state`` is None for a weights-only
    file (every book file); ``optimizer_state`` is empty when absent.
    """

    config: ModelConfig
    params: dict[str, np.ndarray]
    tokenizer: dict
    train_state: dict | None = None
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)
    format: str = "native"
    path: Path | None = None
    #: a LoRA adapter (``mygpt.lora.Adapter``) on these weights, loaded unmerged
    adapter: Any = None


# --------------------------------------------------------------------------------------------
# Parameter layout


def expected_param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes a model with ``config`` has, in the book's key order.

    The model file owns the layout; checkpoints validate against that one definition.
    """
    from mygpt.model import param_shapes

    return param_shapes(config)


def _check_params(
    params: Mapping[str, Any], config: ModelConfig, where: str
) -> dict[str, np.ndarray]:
    """Validate names and shapes against ``config``; return float32 arrays in canonical order."""
    expected = expected_param_shapes(config)
    for name in expected:
        if name not in params:
            raise MygptError(
                f"{where}: parameter {name!r} is missing (expected shape {expected[name]}) — "
                "the weights do not match the config; the file is damaged or was edited"
            )
    for name in params:
        if name not in expected:
            raise MygptError(
                f"{where}: unexpected parameter {name!r} for this config (norm "
                f"{config.norm!r}, position {config.position!r}, "
                f"{config.num_layers} layers) — the weights do not match the config"
            )
    out: dict[str, Any] = {}
    for name, shape in expected.items():
        if isinstance(params[name], QuantizedTensor):  # ggml blocks: their logical shape counts
            out[name] = _check_quantized(params[name], name, shape, where)
            continue
        value = np.asarray(params[name])
        if tuple(value.shape) != shape:
            raise MygptError(
                f"{where}: parameter {name!r} has shape {tuple(value.shape)}, expected {shape} "
                "from the config — the weights do not match the config; the file is damaged or "
                "was edited"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise MygptError(
                f"{where}: parameter {name!r} has dtype {value.dtype}, expected float32 — "
                "the file is damaged or not a mygpt checkpoint"
            )
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _check_quantized(
    value: QuantizedTensor, name: str, shape: tuple[int, ...], where: str
) -> QuantizedTensor:
    if tuple(value.shape) != shape:
        raise MygptError(
            f"{where}: quantized parameter {name!r} stands for shape {value.shape}, expected "
            f"{shape} from the config — the file is damaged or was edited"
        )
    return value


def _config_from_dict(d: Any, where: str) -> ModelConfig:
    if not isinstance(d, dict):
        raise MygptError(f"{where}: the config is not a mapping — the file is damaged")
    try:
        return ModelConfig.from_dict(d)
    except MygptError as e:
        problem, _, hint = str(e).partition(" — ")
        hint = f" ({hint})" if hint else ""
        raise MygptError(
            f"{where} has an invalid model config: {problem}{hint} — the file was edited or "
            "written by a newer mygpt; upgrade mygpt or use another checkpoint"
        ) from None
    except TypeError as e:
        raise MygptError(f"{where}: invalid model config ({e}) — the file is damaged") from None


def _check_tokenizer(tok: Any, where: str) -> dict:
    if not isinstance(tok, dict) or not isinstance(tok.get("kind"), str):
        raise MygptError(
            f"{where}: the tokenizer state is missing or has no 'kind' — the file is damaged"
        )
    return tok


def _mygpt_version() -> str:
    try:
        from importlib.metadata import version

        return version("mygpt")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        return "unknown"


# --------------------------------------------------------------------------------------------
# Native format


def save_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig,
    params: Mapping[str, Any],
    tokenizer: dict,
    train_state: dict | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
) -> None:
    """Write a native checkpoint (one safetensors file) atomically.

    ``params`` and ``optimizer_state`` are numpy arrays (the caller converts backend arrays).
    The file is written to a temp path beside ``path``, fsynced, then renamed over it: killing the
    process at any moment leaves the previous checkpoint intact.
    """
    from safetensors.numpy import save

    path = Path(path)
    where = f"saving {path}"
    checked = _check_params(params, config, where)
    _check_tokenizer(tokenizer, where)
    tensors = {k: v.blocks if isinstance(v, QuantizedTensor) else v for k, v in checked.items()}
    for name, value in (optimizer_state or {}).items():
        # safetensors reads raw memory: the array must be C-contiguous and own a plain dtype.
        tensors[OPTIMIZER_PREFIX + name] = np.ascontiguousarray(value)
    try:
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "mygpt_version": _mygpt_version(),
            "config": json.dumps(config.to_dict()),
            "tokenizer": json.dumps(tokenizer, ensure_ascii=False),
            "train_state": json.dumps(train_state, ensure_ascii=False),
        }
        quantization = to_metadata(checked)
        if quantization is not None:  # which tensors hold ggml blocks, and what they stand for
            metadata[METADATA_KEY] = quantization
    except (TypeError, ValueError) as e:
        raise MygptError(
            f"{where}: the tokenizer or training state is not JSON-serialisable ({e})"
        ) from None
    # serialised in memory, then written by atomic_write: every OS failure is a one-line error
    # and the previous checkpoint stays intact (safetensors' own writer raises SafetensorError)
    atomic_write_bytes(path, save(tensors, metadata=metadata), "checkpoint")


def _read_safetensors_header(path: Path, size: int) -> tuple[dict, int]:
    """Parse and sanity-check the header; returns (header, header_length)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise MygptError(
                f"{path} is truncated (its safetensors header says {n} bytes, the file has "
                f"{size}) — the save was interrupted or the copy is incomplete; use another copy"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MygptError(
            f"{path} has a corrupt safetensors header — the file is damaged; use another copy"
        ) from None
    if not isinstance(header, dict):
        raise MygptError(f"{path} has a corrupt safetensors header — the file is damaged")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            end = max(end, int(stop))
        except (TypeError, KeyError, ValueError):
            raise MygptError(
                f"{path} has a corrupt safetensors header (entry {name!r}) — the file is damaged"
            ) from None
    if 8 + n + end > size:
        raise MygptError(
            f"{path} is truncated ({size} bytes, the tensors need {8 + n + end}) — the save was "
            "interrupted or the copy is incomplete; use another copy or an earlier checkpoint"
        )
    return header, n


def _load_native(path: Path, size: int) -> Checkpoint:
    header, _ = _read_safetensors_header(path, size)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise MygptError(
            f"{path} is a safetensors file but not a mygpt checkpoint (no mygpt metadata) — "
            "pass a checkpoint written by `mygpt train` or `mygpt convert`"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise MygptError(
            f"{path} has an unreadable format_version {meta.get('format_version')!r} — "
            "the file is damaged"
        ) from None
    if version > FORMAT_VERSION:
        raise MygptError(
            f"{path} uses checkpoint format version {version}, but this mygpt reads up to "
            f"version {FORMAT_VERSION} (it was written by mygpt {meta.get('mygpt_version', '?')}) "
            "— upgrade mygpt: pip install -U mygpt"
        )
    if version < 1:
        raise MygptError(f"{path} has an invalid format_version {version} — the file is damaged")
    fields = {}
    for key in ("config", "tokenizer", "train_state"):
        if key not in meta:
            raise MygptError(f"{path} has no {key!r} in its metadata — the file is damaged")
        try:
            fields[key] = json.loads(meta[key])
        except json.JSONDecodeError:
            raise MygptError(
                f"{path}: the {key!r} metadata is not valid JSON — the file is damaged"
            ) from None
    config = _config_from_dict(fields["config"], str(path))
    tokenizer = _check_tokenizer(fields["tokenizer"], str(path))
    train_state = fields["train_state"]
    if train_state is not None and not isinstance(train_state, dict):
        raise MygptError(f"{path}: the train_state metadata is not a mapping — the file is damaged")

    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
    except Exception as e:  # SafetensorError, dtype numpy cannot hold, ...
        raise MygptError(
            f"{path} could not be read as safetensors ({str(e).strip().splitlines()[0]}) — "
            "the file is damaged; use another copy"
        ) from None
    params = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    optimizer_state = {
        k[len(OPTIMIZER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)
    }
    params = from_metadata(meta.get(METADATA_KEY), params, str(path))
    params = _check_params(params, config, str(path))
    return Checkpoint(
        config=config,
        params=params,
        tokenizer=tokenizer,
        train_state=train_state,
        optimizer_state=dict(sorted(optimizer_state.items())),
        format="native",
        path=path,
    )


# --------------------------------------------------------------------------------------------
# Book format


def _book_tokenizer(raw: dict, where: str) -> dict:
    """The book's tokenizer fields as the tokenizer package's dict (Part-I files: char)."""
    kind = raw.get("tokenizer_kind", "char")
    state = raw.get("tokenizer_state")
    chars = raw.get("tokenizer_chars")
    if isinstance(state, dict) and "chars" in state:
        chars = state["chars"]
    if not isinstance(chars, (list, tuple)) or not all(isinstance(c, str) for c in chars):
        raise MygptError(
            f"{where}: no tokenizer alphabet (tokenizer_chars) — not a book checkpoint, or damaged"
        )
    if kind == "char":
        return {"kind": "char", "version": 1, "chars": list(chars)}
    if kind == "bpe":
        merges = state.get("merges") if isinstance(state, dict) else None
        if not isinstance(merges, (list, tuple)) or not all(
            isinstance(m, (list, tuple)) and len(m) == 2 for m in merges
        ):
            raise MygptError(
                f"{where}: BPE tokenizer without a valid merge list — the file is damaged"
            )
        return {
            "kind": "bpe",
            "version": 1,
            "pattern": BOOK_PATTERN,
            "chars": list(chars),
            "merges": [[str(a), str(b)] for a, b in merges],
        }
    raise MygptError(
        f"{where}: unknown tokenizer kind {kind!r} — the book writes 'char' or 'bpe'; "
        "the file is damaged or from another program"
    )


def _book_train_state(raw: dict, where: str) -> tuple[dict | None, dict[str, np.ndarray]]:
    """The training state mygpt adds to the ``.ckpt`` files it trains (none in the book's own)."""
    if BOOK_TRAIN_STATE_KEY not in raw:
        return None, {}
    try:
        train_state = json.loads(raw[BOOK_TRAIN_STATE_KEY])
        tensors = raw.get(BOOK_OPTIMIZER_KEY, {})
        optimizer = {str(k): np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    except (TypeError, ValueError, AttributeError):
        raise MygptError(
            f"{where}: the training state mygpt stored in this .ckpt is damaged — load it for "
            "its weights only (e.g. `mygpt convert`), or resume from another checkpoint"
        ) from None
    if not isinstance(train_state, dict) or "step" not in train_state:
        raise MygptError(f"{where}: the stored training state has no step — the file is damaged")
    return train_state, optimizer


def _load_book(path: Path) -> Checkpoint:
    from mygpt.backends.torch_io import read_torch_checkpoint

    raw = read_torch_checkpoint(path)
    if "model_state_dict" not in raw or "config" not in raw:
        raise MygptError(
            f"{path} is a PyTorch file but not a book checkpoint (no model_state_dict/config) — "
            "pass a .ckpt written by the book's mygpt or by `mygpt convert`"
        )
    state = raw["model_state_dict"]
    if not isinstance(state, dict):
        raise MygptError(f"{path}: model_state_dict is not a mapping — the file is damaged")
    config = _config_from_dict(raw["config"], str(path))
    params = {k: v for k, v in state.items() if not k.endswith(BOOK_BUFFER_SUFFIXES)}
    params = _check_params(params, config, str(path))
    tokenizer = _book_tokenizer(raw, str(path))
    train_state, optimizer_state = _book_train_state(raw, str(path))
    return Checkpoint(
        config=config,
        params=params,
        tokenizer=tokenizer,
        train_state=train_state,
        optimizer_state=optimizer_state,
        format="book",
        path=path,
    )


def _causal_mask(n: int) -> np.ndarray:
    """The book's additive mask buffer: 0 on and below the diagonal, -inf above."""
    mask = np.zeros((n, n), dtype=np.float32)
    mask[np.triu_indices(n, k=1)] = -np.inf
    return mask


def _book_module_metadata(config: ModelConfig) -> collections.OrderedDict:
    """The ``_metadata`` torch attaches to a state dict (module name -> version) for the book model.

    ``load_state_dict`` passes these versions to each module; reproducing them keeps a converted
    file indistinguishable from one the book wrote.
    """
    names = ["", "token_embedding", "token_embedding.embedding"]
    if config.position == "learned":
        names.append("position_embedding")
    names += ["embed_drop", "blocks"]
    for i in range(config.num_layers):
        b = f"blocks.{i}"
        names += [b, f"{b}.ln1", f"{b}.mha"]
        names += [f"{b}.mha.{m}" for m in ("W_Q", "W_K", "W_V", "W_O", "attn_drop", "out_drop")]
        names += [f"{b}.ln2", f"{b}.mlp"]
        names += [f"{b}.mlp.{m}" for m in ("fc1", "act", "fc2", "drop")]
    names.append("ln_f")
    return collections.OrderedDict((n, {"version": 1}) for n in names)


def _book_state_dict(config: ModelConfig, params: dict[str, np.ndarray]) -> collections.OrderedDict:
    """Params plus regenerated buffers, in the book's key order (buffers follow ln1 in a block)."""
    sd: collections.OrderedDict = collections.OrderedDict()
    mask = _causal_mask(config.max_seq_len)
    cos = sin = None
    if config.position == "rope":
        from mygpt.backends.torch_io import book_rope_tables

        cos, sin = book_rope_tables(config.max_seq_len, config.head_dim, config.rope_base)
    # The book registers the buffers in the attention module, which comes right after ln1 (weight,
    # then bias for LayerNorm) in registration order, hence in the state dict.
    last_ln1 = ".ln1.bias" if config.norm == "layer" else ".ln1.weight"
    for name, value in params.items():
        sd[name] = value
        if name.startswith("blocks.") and name.endswith(last_ln1):
            block = name[: -len(last_ln1)]
            sd[f"{block}.mha.causal_mask"] = mask.copy()
            if cos is not None:
                sd[f"{block}.mha.rope_cos"] = cos.copy()
                sd[f"{block}.mha.rope_sin"] = sin.copy()
    sd._metadata = _book_module_metadata(config)  # type: ignore[attr-defined]
    return sd


def _book_tokenizer_fields(tokenizer: dict, where: str) -> tuple[list[str], str, dict]:
    kind = tokenizer.get("kind")
    if kind == "char":
        chars = list(tokenizer["chars"])
        return chars, "char", {"chars": chars}
    if kind == "bpe":
        pattern = tokenizer.get("pattern", BOOK_PATTERN)
        if pattern != BOOK_PATTERN:
            raise MygptError(
                f"{where}: this BPE tokenizer pre-tokenises with {pattern!r}, the book only with "
                f"{BOOK_PATTERN!r} — keep the native .safetensors checkpoint"
            )
        chars = list(tokenizer["chars"])
        merges = [(str(a), str(b)) for a, b in tokenizer["merges"]]
        return chars, "bpe", {"chars": chars, "merges": merges}
    if kind == "bytebpe":
        raise MygptError(
            f"{where}: byte-level BPE tokenizers can't be written in the book's .ckpt format "
            "(the book knows only 'char' and character-level 'bpe') — keep the native "
            ".safetensors checkpoint"
        )
    raise MygptError(
        f"{where}: tokenizer kind {kind!r} has no book .ckpt equivalent — keep the native "
        ".safetensors checkpoint"
    )


def save_book_checkpoint(
    path: str | os.PathLike,
    ckpt_or_pieces: Checkpoint | Mapping[str, Any] | None = None,
    *,
    config: ModelConfig | None = None,
    params: Mapping[str, Any] | None = None,
    tokenizer: dict | None = None,
    resumable: bool = False,
) -> None:
    """Write a ``.ckpt`` the book's loader accepts (needs torch): same keys, key order, buffers.

    Pass a :class:`Checkpoint`, a mapping with ``config``/``params``/``tokenizer``, or those as
    keywords. By default optimizer and training state are dropped, as the book has none. With
    ``resumable`` (``mygpt train --output x.ckpt``) a Checkpoint's training state and AdamW moments
    ride along under the extra keys ``mygpt_train_state`` (JSON text) and ``mygpt_optimizer_state``
    (tensors), which the book's loader never reads, so ``--resume x.ckpt`` continues the run.
    """
    extra: dict[str, Any] = {}
    if resumable and isinstance(ckpt_or_pieces, Checkpoint) and ckpt_or_pieces.train_state:
        extra = {
            BOOK_TRAIN_STATE_KEY: json.dumps(ckpt_or_pieces.train_state),
            BOOK_OPTIMIZER_KEY: dict(ckpt_or_pieces.optimizer_state),
        }
    path = Path(path)
    where = f"writing {path}"
    if isinstance(ckpt_or_pieces, Checkpoint):
        config, params, tokenizer = (
            ckpt_or_pieces.config,
            ckpt_or_pieces.params,
            ckpt_or_pieces.tokenizer,
        )
    elif ckpt_or_pieces is not None:
        config = ckpt_or_pieces["config"]
        params = ckpt_or_pieces["params"]
        tokenizer = ckpt_or_pieces["tokenizer"]
    if config is None or params is None or tokenizer is None:
        raise TypeError("save_book_checkpoint needs a Checkpoint or config, params and tokenizer")
    refuse_quantized(params, where, "the book's .ckpt format")
    defaults = ModelConfig(vocab_size=1)
    # (and none of what GPT-2, Gemma, Mistral's window and OLMo 2 add, whose weights may look
    # like the book's while computing something else)
    for name in ("norm_eps", "rope_base", "activation", "sliding_window", "sandwich_norm",
                 "pre_norm", "norm_offset", "scale_embeddings", "query_pre_attn_scalar",
                 "rope_local_base"):  # fmt: skip
        if getattr(config, name) != getattr(defaults, name):
            raise MygptError(
                f"{where}: the book's format has no {name} and fixes it at "
                f"{getattr(defaults, name)}; this model uses {getattr(config, name)} — keep the "
                "native .safetensors checkpoint"
            )
    if config.mlp != "gelu":
        raise MygptError(
            f"{where}: the book's format has only its GELU MLP; this model uses --mlp "
            f"{config.mlp} — keep the native .safetensors checkpoint"
        )
    checked = _check_params(params, config, where)
    _check_tokenizer(tokenizer, where)
    chars, kind, state = _book_tokenizer_fields(tokenizer, where)
    book_config = {
        "vocab_size": config.vocab_size,
        "embed_dim": config.embed_dim,
        "num_heads": config.num_heads,
        "num_kv_heads": config.num_kv_heads,
        "num_layers": config.num_layers,
        "max_seq_len": config.max_seq_len,
        "norm_type": config.norm,
        "position_type": config.position,
        "tokenizer_kind": kind,
    }
    obj = {
        "model_state_dict": _book_state_dict(config, checked),
        "tokenizer_chars": list(chars),
        "tokenizer_kind": kind,
        "tokenizer_state": state,
        "config": book_config,
        **extra,
    }
    from mygpt.backends.torch_io import write_torch_checkpoint

    write_torch_checkpoint(path, obj)


# --------------------------------------------------------------------------------------------
# Loading and conversion


def detect_format(path: str | os.PathLike) -> str:
    """ "native" or "book", from the file's first bytes; a one-line MygptError for anything else."""
    path = Path(path)
    if not path.exists():
        raise MygptError(f"checkpoint {path} does not exist — check the path (or train one first)")
    if path.is_dir():
        raise MygptError(f"checkpoint {path} is a directory — pass the checkpoint file inside it")
    size = path.stat().st_size
    if size == 0:
        raise MygptError(
            f"checkpoint {path} is empty (0 bytes) — the save was interrupted; "
            "use an earlier checkpoint or retrain"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_ZIP_MAGIC):
        return "book"
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and n < 2**48:
            return "native"
    raise MygptError(
        f"{path} is not a checkpoint (neither a mygpt .safetensors nor a PyTorch .ckpt) — "
        "pass a file written by `mygpt train` or by the book's mygpt"
    )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a native or book checkpoint, validated against its own config.

    Every problem (missing, empty, truncated, foreign, too new, inconsistent) is a one-line
    :class:`MygptError` naming the file, the problem and the fix.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "book":
        return _load_book(path)
    return _load_native(path, path.stat().st_size)


def _target_format(dst: Path, to: str | None) -> str:
    if to is not None:
        if to not in ("native", "book"):
            raise MygptError(f"unknown checkpoint format {to!r} — use 'native' or 'book'")
        return to
    suffix = dst.suffix.lower()
    if suffix in NATIVE_SUFFIXES:
        return "native"
    if suffix in BOOK_SUFFIXES:
        return "book"
    raise MygptError(
        f"can't tell the target format from {dst.name!r} — name it .safetensors (native) or "
        ".ckpt (book), or pass to='native'|'book'"
    )


def convert(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, to: str | None = None
) -> Path:
    """Convert between the native and the book format; returns the written path.

    The target format comes from ``to`` or else ``dst``'s suffix; without ``dst`` the source's
    name with the other format's suffix is used. Book -> native keeps weights, config and
    tokenizer; native -> book drops optimizer and training state (the book cannot resume).
    """
    src = Path(src)
    ckpt = load_checkpoint(src)
    if dst is None:
        target = to or ("native" if ckpt.format == "book" else "book")
        dst = src.with_suffix(".safetensors" if target == "native" else ".ckpt")
    dst = Path(dst)
    target = _target_format(dst, to)
    if target == "book":
        refuse_quantized(ckpt.params, str(src), "the book's .ckpt format")
    check_output_path(dst, "output")
    if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):
        raise MygptError(
            f"refusing to overwrite the source checkpoint {src} — choose another output path"
        )
    if dst.is_dir():
        raise MygptError(f"output {dst} is a directory — pass a file path")
    if target == "native":
        save_checkpoint(
            dst,
            ckpt.config,
            ckpt.params,
            ckpt.tokenizer,
            train_state=ckpt.train_state,
            optimizer_state=ckpt.optimizer_state,
        )
    else:
        save_book_checkpoint(dst, ckpt)
    return dst
