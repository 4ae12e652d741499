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
MLP_TYPES = ("gelu", "swiglu", "geglu")
#: the gated MLPs: down(act(gate(x)) * up(x)), SiLU for swiglu, the GELU of ``activation`` for geglu
GATED_MLPS = ("swiglu", "geglu")
#: the GELU of the plain and the geglu MLP: exact (erf), or tanh-approximated (GPT-2's gelu_new,
#: Gemma's gelu_pytorch_tanh: the same formula)
ACTIVATIONS = ("gelu", "gelu_tanh")
#: what each layer's attention sees: every earlier key, or only the last ``sliding_window`` ones
LAYER_TYPES = ("full", "sliding")
#: swiglu's default hidden width is 8/3 * C rounded up to a multiple of this (Llama's convention
#: with a small multiple, so tiny models keep ~the parameter count of the book's 4C GELU MLP)
SWIGLU_MULTIPLE = 8
#: the book's (and older mygpt checkpoints') names for three fields
LEGACY_NAMES = {"norm_type": "norm", "position_type": "position", "mlp_type": "mlp"}


def default_mlp_hidden(mlp_type: str, embed_dim: int) -> int:
    """The MLP's hidden width when none is given: 4C for the book's GELU MLP, ~8/3 C for the gated
    ones (SwiGLU, GeGLU)."""
    if mlp_type in GATED_MLPS:
        return -(-8 * embed_dim // (3 * SWIGLU_MULTIPLE)) * SWIGLU_MULTIPLE
    return 4 * embed_dim


#: the keys of Llama 3's rope scaling (the one scaling mygpt computes)
LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


#: the rope scalings mygpt computes exactly: Llama 3's, and the linear one (positions / factor,
#: Gemma 3 4B+'s global layers)
ROPE_SCALINGS = ("llama3", "linear")


def check_rope_scaling(scaling: Any, position: str = "rope") -> None:
    """Refuse anything but a complete ``llama3`` or ``linear`` rope scaling, naming what is wrong."""
    if position != "rope":
        raise MygptError("rope_scaling needs rotary positions — drop it or use position 'rope'")
    if not isinstance(scaling, dict):
        raise MygptError(f"rope_scaling must be a mapping, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALINGS:
        raise MygptError(
            f"rope scaling {kind!r} is not computed by mygpt — only 'llama3' (Llama 3.1/3.2) and "
            "'linear' are"
        )
    if kind == "linear":
        factor = scaling.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise MygptError(f"linear rope scaling needs a positive factor, got {factor!r}")
        return
    for key in LLAMA3_ROPE_KEYS:
        value = scaling.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise MygptError(f"llama3 rope scaling needs a positive {key}, got {value!r}")
    if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise MygptError("llama3 rope scaling needs high_freq_factor > low_freq_factor")


def rope_inv_freq(cfg: ModelConfig, layer_type: str = "full") -> np.ndarray | None:
    """The rotary inverse frequencies (head_dim / 2,) as float32, computed as transformers does;
    None for plain RoPE (the backends then use :func:`rope_base_of` directly, the book's path).
    Sliding layers with their own base (``rope_local_base``, Gemma 3) are plain RoPE."""
    if cfg.rope_scaling is None or (layer_type == "sliding" and cfg.rope_local_base is not None):
        return None
    if cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type")) == "linear":
        return _linear_inv_freq(
            cfg.head_dim, float(cfg.rope_base), float(cfg.rope_scaling["factor"])
        )
    scaling = tuple(float(cfg.rope_scaling[k]) for k in LLAMA3_ROPE_KEYS)
    return _llama3_inv_freq(cfg.head_dim, float(cfg.rope_base), scaling)


def rope_base_of(cfg: ModelConfig, layer_type: str = "full") -> float:
    """The rope base of a layer of ``layer_type``: ``rope_local_base`` for Gemma 3's sliding
    layers where it is set, else ``rope_base``."""
    if layer_type == "sliding" and cfg.rope_local_base is not None:
        return cfg.rope_local_base
    return cfg.rope_base


@functools.lru_cache(maxsize=32)
def _linear_inv_freq(d: int, rope_base: float, factor: float) -> np.ndarray:
    # transformers' _compute_linear_scaling_rope_parameters: the default frequencies / factor
    base = np.float32(rope_base)
    inv = np.float32(1.0) / (base ** (np.arange(0, d, 2).astype(np.float32) / np.float32(d)))
    return (inv / np.float32(factor)).astype(np.float32)


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


def default_layer_types(cfg: ModelConfig) -> tuple[str, ...]:
    """--window-pattern N: layer i attends fully when (i + 1) % N == 0 (transformers' Gemma 3
    rule), else within the window; no pattern: every layer within the window."""
    n = cfg.window_pattern
    layers = cfg.num_layers if isinstance(cfg.num_layers, int) and cfg.num_layers > 0 else 0
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return ("sliding",) * layers
    return tuple("full" if (i + 1) % n == 0 else "sliding" for i in range(layers))


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
        "gelu",
        "gelu: the book's 4C MLP; swiglu: Llama's gated MLP (no biases); geglu: the gated MLP "
        "with --activation's GELU (Gemma).",
        choices=MLP_TYPES,
    )
    mlp_hidden: int | None = setting(
        None, "Gated MLP hidden width (default 8/3 C, rounded up to 8).", type=int, derived=True
    )
    activation: str = setting(
        "gelu",
        "The GELU of the gelu and geglu MLPs: gelu (exact, erf) or gelu_tanh (GPT-2's gelu_new, "
        "Gemma's gelu_pytorch_tanh).",
        choices=ACTIVATIONS,
    )
    sandwich_norm: bool = setting(
        False, "Also norm each sublayer's output before the residual add (Gemma 2/3)."
    )
    sliding_window: int | None = setting(
        None,
        "Attention window: a token sees itself and the N - 1 before it (Mistral, Gemma 3); "
        "default: all earlier tokens.",
        type=int,
    )
    window_pattern: int | None = setting(
        None,
        "With --sliding-window: every Nth layer (the Nth, 2Nth, ...) attends fully, the others "
        "within the window (Gemma 3: 6); default: every layer within the window.",
        type=int,
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
    # --- what GPT-2, Gemma 3, Mistral's window, Phi-3 and OLMo 2 add (defaults: as before) ---
    pre_norm: bool = setting(
        True,
        "Norm each sublayer's input; False with sandwich_norm: OLMo 2's norms after only.",
        cli=False,
    )
    norm_offset: float = setting(
        0.0, "RMSNorm multiplies by (norm_offset + weight): Gemma's (1 + w) is 1.0.", cli=False
    )
    qk_norm_per_head: bool = setting(
        True,
        "q/k norms over each head (Qwen3, Gemma 3); False: over all of Q and K (OLMo 2).",
        cli=False,
    )
    scale_embeddings: bool = setting(
        False,
        "Token embeddings times sqrt(embed_dim), rounded to the compute dtype (Gemma).",
        cli=False,
    )
    query_pre_attn_scalar: float | None = setting(
        None, "Attention scores scaled by its -1/2 power (Gemma); default head_dim.", cli=False
    )
    layer_types: tuple[str, ...] | None = setting(
        None,
        "Per layer, 'full' or 'sliding' (from --window-pattern, or the model's).",
        cli=False,
        derived=True,
    )
    rope_local_base: float | None = setting(
        None, "The rope base of sliding layers (Gemma 3: 10000); default rope_base.", cli=False
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
        if isinstance(self.layer_types, list):  # as JSON gives it back
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.layer_types is None and self.sliding_window is not None:
            object.__setattr__(self, "layer_types", default_layer_types(self))
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
    def gated(self) -> bool:
        """Whether the MLP is gated (gate, up, down: swiglu or geglu)."""
        return self.mlp in GATED_MLPS

    def layer_type(self, layer: int) -> str:
        """'sliding' where ``layer`` attends within ``sliding_window``, else 'full'."""
        return "full" if self.layer_types is None else self.layer_types[layer]

    def window(self, layer: int) -> int | None:
        """How many keys (itself included) ``layer``'s queries see; None: all earlier ones."""
        return self.sliding_window if self.layer_type(layer) == "sliding" else None

    @property
    def attn_scale(self) -> float:
        """The attention scores' scale: 1/sqrt(head_dim), or query_pre_attn_scalar**-0.5."""
        if self.query_pre_attn_scalar is not None:
            return float(self.query_pre_attn_scalar) ** -0.5
        return 1.0 / math.sqrt(self.head_dim)

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
        if self.mlp_bias and not self.gated:
            raise MygptError(
                "mlp_bias is for the gated MLPs (the gelu MLP always has biases) — drop it"
            )
        if self.qk_norm and self.norm != "rms":
            raise MygptError("qk_norm is an RMSNorm of each head — it needs norm 'rms'")
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling, self.position)
        self._validate_variants()

    def _validate_variants(self) -> None:
        """The activation, norm and attention-window variants (GPT-2, Gemma, OLMo 2, Mistral)."""
        if self.activation not in ACTIVATIONS:
            raise MygptError(
                f"unknown activation {self.activation!r} — use one of: {', '.join(ACTIVATIONS)}"
            )
        if self.mlp == "swiglu" and self.activation != "gelu":
            raise MygptError(
                "--activation is the GELU of the gelu and geglu MLPs; swiglu's is SiLU — "
                "drop --activation or use --mlp geglu"
            )
        if self.norm_offset and self.norm != "rms":
            raise MygptError("norm_offset is for RMSNorm ((offset + w) weights) — needs norm 'rms'")
        if not self.pre_norm and not self.sandwich_norm:
            raise MygptError("a model without pre-norms needs the post-norms (sandwich_norm)")
        if self.query_pre_attn_scalar is not None and not self.query_pre_attn_scalar > 0:
            raise MygptError(
                f"query_pre_attn_scalar must be positive, got {self.query_pre_attn_scalar!r}"
            )
        self._validate_window()

    def _validate_window(self) -> None:
        w, pattern = self.sliding_window, self.window_pattern
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
            raise MygptError(f"--sliding-window must be a positive integer, got {w!r}")
        if w is not None and self.dropout > 0:
            raise MygptError(
                "--dropout with --sliding-window: the windowed attention has no dropout — drop one"
            )
        if pattern is not None:
            if w is None:
                raise MygptError("--window-pattern needs --sliding-window N — add it or drop both")
            if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
                raise MygptError(
                    f"--window-pattern must be a positive integer, got {pattern!r} — e.g. 6: "
                    "five windowed layers, then one full"
                )
        types = self.layer_types
        if types is None:
            return
        if w is None:
            raise MygptError("layer_types needs a sliding_window — the window of 'sliding' layers")
        if len(types) != self.num_layers or any(t not in LAYER_TYPES for t in types):
            raise MygptError(
                f"layer_types must name {self.num_layers} layers, each one of "
                f"{', '.join(LAYER_TYPES)}, got {list(types)!r}"
            )
        if self.rope_local_base is not None and not self.rope_local_base > 0:
            raise MygptError(f"rope_local_base must be positive, got {self.rope_local_base!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        if d["layer_types"] is not None:
            d["layer_types"] = list(d["layer_types"])  # what JSON gives back
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
