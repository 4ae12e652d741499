"""The model's architecture, as one validated dataclass.

Field names are the flags users type (``--embed-dim`` sets ``embed_dim``, ``--norm`` sets
``norm``). The book's checkpoint ``config`` dict and mygpt checkpoints written before this naming
say ``norm_type``, ``position_type`` and ``mlp_type``: :meth:`ModelConfig.from_dict` reads those
too. A field the book's Part-I checkpoints lack takes its Part-I value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mygpt.errors import MygptError
from mygpt.settings import cli_fields, setting, track_given, with_given

NORM_TYPES = ("layer", "rms")
POSITION_TYPES = ("learned", "rope")
MLP_TYPES = ("gelu", "swiglu")
#: swiglu's default hidden width is 8/3 * C rounded up to a multiple of this (Llama's convention
#: with a small multiple, so tiny models keep ~the parameter count of the book's 4C GELU MLP)
SWIGLU_MULTIPLE = 8
#: the book's (and older mygpt checkpoints') names for three fields
LEGACY_NAMES = {"norm_type": "norm", "position_type": "position", "mlp_type": "mlp"}


def default_mlp_hidden(mlp_type: str, embed_dim: int) -> int:
    """The MLP's hidden width when none is given: 4C for the book's GELU MLP, ~8/3 C for SwiGLU."""
    if mlp_type == "swiglu":
        return -(-8 * embed_dim // (3 * SWIGLU_MULTIPLE)) * SWIGLU_MULTIPLE
    return 4 * embed_dim


#: the keys of Llama 3's rope scaling (the one scaling mygpt computes)
LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


def check_rope_scaling(scaling: Any, position: str = "rope") -> None:
    """Refuse anything but a complete ``llama3`` rope scaling, naming what is wrong."""
    if position != "rope":
        raise MygptError("rope_scaling needs rotary positions — drop it or use position 'rope'")
    if not isinstance(scaling, dict):
        raise MygptError(f"rope_scaling must be a mapping, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise MygptError(
            f"rope scaling {kind!r} is not computed by mygpt — only 'llama3' (Llama 3.1/3.2) is"
        )
    for key in LLAMA3_ROPE_KEYS:
        value = scaling.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise MygptError(f"llama3 rope scaling needs a positive {key}, got {value!r}")
    if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise MygptError("llama3 rope scaling needs high_freq_factor > low_freq_factor")


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray | None:
    """The rotary inverse frequencies (head_dim / 2,) as float32, computed as transformers does;
    None for plain RoPE (the backends then use ``rope_base`` directly, the book's path)."""
    if cfg.rope_scaling is None:
        return None
    scaling = tuple(float(cfg.rope_scaling[k]) for k in LLAMA3_ROPE_KEYS)
    return _llama3_inv_freq(cfg.head_dim, float(cfg.rope_base), scaling)


@functools.lru_cache(maxsize=32)
def _llama3_inv_freq(d: int, rope_base: float, scaling: tuple[float, ...]) -> np.ndarray:
    base = np.float32(rope_base)
    inv = np.float32(1.0) / (base ** (np.arange(0, d, 2).astype(np.float32) / np.float32(d)))
    s = dict(zip(LLAMA3_ROPE_KEYS, scaling))
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / np.float32(factor), inv).astype(np.float32)
    smooth = ((np.float32(old) / wavelen - np.float32(low)) / np.float32(high - low)).astype(
        np.float32
    )
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


@track_given
@dataclass(frozen=True)
class ModelConfig:
    """One architecture. Each field is also the ``mygpt train`` flag of the same name; the
    defaults are the book's Part-I values. ``vocab_size`` is None in a run's settings until the
    tokenizer is known (:meth:`with_vocab`)."""

    vocab_size: int | None = setting(None, "Vocabulary size (from the tokenizer).", cli=False)
    embed_dim: int = setting(64, "Embedding width.")
    num_heads: int = setting(4, "Attention heads.")
    num_layers: int = setting(4, "Transformer blocks.")
    max_seq_len: int = setting(64, "Context length of the model.")
    num_kv_heads: int | None = setting(
        None, "K/V heads (GQA; 1 = MQA); default = --num-heads.", type=int, derived=True
    )
    norm: str = setting(
        "layer", "layer: LayerNorm with bias (the book's); rms: RMSNorm.", choices=NORM_TYPES
    )
    position: str = setting(
        "learned",
        "learned: absolute embeddings; rope: rotary (interleaved).",
        choices=POSITION_TYPES,
    )
    # a training choice rather than a shape: it may change on --resume and --init-from
    dropout: float = setting(0.0, "On the attention probabilities (training).", shape=False)
    norm_eps: float = setting(1e-5, "Norm epsilon.", cli=False)
    rope_base: float = setting(10000.0, "RoPE base (theta).", cli=False)
    mlp: str = setting(
        "gelu", "gelu: the book's 4C MLP; swiglu: Llama's gated MLP (no biases).", choices=MLP_TYPES
    )
    mlp_hidden: int | None = setting(
        None, "swiglu hidden width (default 8/3 C, rounded up to 8).", type=int, derived=True
    )
    # --- what real open-weight models (Llama, Mistral, Qwen) add; the defaults are the book's,
    # so every earlier checkpoint means what it did. They come from an imported model's config.
    head_dim: int | None = setting(
        None, "Per-head width (default embed_dim / num_heads).", cli=False, derived=True
    )
    attn_bias: bool = setting(False, "Biases on the Q, K and V projections (Qwen2).", cli=False)
    attn_out_bias: bool = setting(
        False, "A bias on the output projection W_O (Llama's attention_bias).", cli=False
    )
    mlp_bias: bool = setting(
        False, "Biases on swiglu's gate/up/down (the gelu MLP always has them).", cli=False
    )
    qk_norm: bool = setting(False, "Per-head RMSNorm on Q and K before RoPE (Qwen3).", cli=False)
    tie_embeddings: bool = setting(
        True, "The output head is the token embedding; False: its own lm_head.weight.", cli=False
    )
    rope_scaling: dict | None = setting(
        None, "None, or Llama 3's {'rope_type': 'llama3', ...}.", cli=False
    )
    hf_model_type: str | None = setting(
        None, "The Hugging Face architecture it came from (export writes it back).", cli=False
    )
    extra: dict[str, Any] = field(
        default_factory=dict, compare=False, repr=False, metadata={"cli": False}
    )

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.mlp_hidden is None and isinstance(self.embed_dim, int):
            object.__setattr__(self, "mlp_hidden", default_mlp_hidden(self.mlp, self.embed_dim))
        heads_ok = isinstance(self.num_heads, int) and self.num_heads > 0
        if self.head_dim is None and isinstance(self.embed_dim, int) and heads_ok:
            object.__setattr__(self, "head_dim", self.embed_dim // self.num_heads)
        if self.vocab_size is not None:  # a model; a run's template is checked by the run
            self.validate()

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """This architecture for a tokenizer of ``vocab_size`` tokens (validated)."""
        return with_given(dataclasses.replace(self, vocab_size=vocab_size), self.given)

    @property
    def attn_dim(self) -> int:
        """Width of the concatenated query heads (``num_heads * head_dim``)."""
        return self.num_heads * self.head_dim

    @property
    def kv_repeat(self) -> int:
        """How many query heads share one K/V head (1 = MHA, num_heads = MQA)."""
        return self.num_heads // self.num_kv_heads

    def validate(self) -> None:
        names = (
            "embed_dim",
            "num_heads",
            "num_layers",
            "max_seq_len",
            "num_kv_heads",
            "mlp_hidden",
        )
        for name in names if self.vocab_size is None else ("vocab_size", *names):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MygptError(
                    f"{name} must be a positive integer, got {value!r} — pass a value >= 1"
                )
        if self.norm not in NORM_TYPES:
            raise MygptError(
                f"unknown norm type {self.norm!r} — use one of: {', '.join(NORM_TYPES)}"
            )
        if self.position not in POSITION_TYPES:
            raise MygptError(
                f"unknown position type {self.position!r} — use one of: {', '.join(POSITION_TYPES)}"
            )
        if self.mlp not in MLP_TYPES:
            raise MygptError(f"unknown MLP type {self.mlp!r} — use one of: {', '.join(MLP_TYPES)}")
        if self.mlp == "gelu" and self.mlp_hidden != 4 * self.embed_dim:
            raise MygptError(
                f"--mlp-hidden {self.mlp_hidden} with --mlp gelu: the book's GELU MLP is always "
                f"4 x embed_dim = {4 * self.embed_dim} wide — drop --mlp-hidden or use --mlp swiglu"
            )
        if self.embed_dim % self.num_heads and self.head_dim == self.embed_dim // self.num_heads:
            raise MygptError(
                f"--num-heads {self.num_heads} does not divide --embed-dim {self.embed_dim} — "
                "pick a head count that divides the embedding width"
            )
        if self.num_heads % self.num_kv_heads:
            raise MygptError(
                f"--num-kv-heads {self.num_kv_heads} does not divide --num-heads {self.num_heads} — "
                "use a divisor of the head count (1 = MQA, num_heads = MHA)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise MygptError(f"dropout must be in [0, 1), got {self.dropout} — e.g. --dropout 0.1")
        self._validate_real_model()

    def _validate_real_model(self) -> None:
        """The fields real open-weight models add."""
        if (
            not isinstance(self.head_dim, int)
            or isinstance(self.head_dim, bool)
            or self.head_dim < 1
        ):
            raise MygptError(f"head_dim must be a positive integer, got {self.head_dim!r}")
        if self.position == "rope" and self.head_dim % 2:
            raise MygptError(
                f"RoPE needs an even head dimension, got {self.head_dim} "
                f"(embed_dim {self.embed_dim} / num_heads {self.num_heads}) — change either"
            )
        if self.mlp_bias and self.mlp != "swiglu":
            raise MygptError(
                "mlp_bias is for the swiglu MLP (the gelu MLP always has biases) — drop it"
            )
        if self.qk_norm and self.norm != "rms":
            raise MygptError("qk_norm is an RMSNorm of each head — it needs norm 'rms'")
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling, self.position)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_flags(
        cls,
        vocab_size: int | None,
        flags: Mapping[str, Any],
        given: Iterable[str] | None = None,
    ) -> ModelConfig:
        """From a flat mapping of flag names (``embed_dim``, ``norm``, ...; other keys ignored).
        ``given`` (default: every model flag in ``flags``) is what the user asked for."""
        kw = {f.name: flags[f.name] for f in cli_fields(cls) if f.name in flags}
        cfg = cls(vocab_size=vocab_size, **kw)
        return with_given(cfg, kw if given is None else set(given) & set(kw))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], checkpoint: bool = True) -> ModelConfig:
        """Build from a native or a book config dict; missing Part-II fields take Part-I values.

        Unknown keys (e.g. the book's ``tokenizer_kind``) are kept in ``extra`` rather than rejected,
        so configs written by newer versions still load. A checkpoint's config must have a
        vocabulary size; a run's saved settings (``checkpoint=False``) need not.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        d = {LEGACY_NAMES.get(k, k): v for k, v in d.items()}
        known = {k: v for k, v in d.items() if k in names}
        if checkpoint and known.get("vocab_size") is None:
            raise MygptError(
                "checkpoint config has no vocab_size — the file is not a mygpt checkpoint"
            )
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)
