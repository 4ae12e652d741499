"""The GPT, defined once, as plain functions over a backend ``ops`` object.

Pre-norm decoder blocks, ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``, a final norm and an
output head tied to the token embedding, exactly the book's architecture. Part II's choices are
config fields: RMSNorm instead of LayerNorm, rotary instead of learned positions, fewer K/V heads
than query heads (GQA/MQA).

Parameters are a flat ``dict[str, array]`` named like the book's ``state_dict``, so a book
checkpoint loads by name and a native checkpoint is just that dict. There is no ``nn.Module``: the
same ``forward`` runs on MLX and on PyTorch, which is what makes the two comparable op for op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mygpt.backends.base import Array, Params
from mygpt.config import ModelConfig, rope_inv_freq
from mygpt.errors import MygptError

# --- parameters ------------------------------------------------------------------------------


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the book's state-dict order (minus its buffers)."""
    C, A, kv = cfg.embed_dim, cfg.attn_dim, cfg.num_kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.embedding.weight": (cfg.vocab_size, C)}
    if cfg.position == "learned":
        shapes["position_embedding.weight"] = (cfg.max_seq_len, C)

    def norm(prefix: str) -> None:
        shapes[f"{prefix}.weight"] = (C,)
        if cfg.norm == "layer":
            shapes[f"{prefix}.bias"] = (C,)

    for i in range(cfg.num_layers):
        b = f"blocks.{i}"
        norm(f"{b}.ln1")
        for n, rows in (("Q", A), ("K", kv), ("V", kv)):
            shapes[f"{b}.mha.W_{n}.weight"] = (rows, C)
            if cfg.attn_bias:
                shapes[f"{b}.mha.W_{n}.bias"] = (rows,)
        if cfg.qk_norm:
            shapes[f"{b}.mha.q_norm.weight"] = (cfg.head_dim,)
            shapes[f"{b}.mha.k_norm.weight"] = (cfg.head_dim,)
        shapes[f"{b}.mha.W_O.weight"] = (C, A)
        if cfg.attn_out_bias:
            shapes[f"{b}.mha.W_O.bias"] = (C,)
        norm(f"{b}.ln2")
        shapes.update(_mlp_shapes(cfg, b))
    norm("ln_f")
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, C)
    return shapes


def _mlp_shapes(cfg: ModelConfig, b: str) -> dict[str, tuple[int, ...]]:
    C, H = cfg.embed_dim, cfg.mlp_hidden
    if cfg.mlp == "swiglu":  # Llama's gated MLP: down(silu(gate(x)) * up(x)), biases optional
        out: dict[str, tuple[int, ...]] = {}
        for n, shape in (("gate", (H, C)), ("up", (H, C)), ("down", (C, H))):
            out[f"{b}.mlp.{n}.weight"] = shape
            if cfg.mlp_bias:
                out[f"{b}.mlp.{n}.bias"] = shape[:1]
        return out
    return {
        f"{b}.mlp.fc1.weight": (H, C),
        f"{b}.mlp.fc1.bias": (H,),
        f"{b}.mlp.fc2.weight": (C, H),
        f"{b}.mlp.fc2.bias": (C,),
    }


def count_params(cfg: ModelConfig) -> int:
    return sum(math.prod(s) for s in param_shapes(cfg).values())


INITS = ("book", "scaled")
_RESIDUAL_OUT = (".mha.W_O.weight", ".mlp.fc2.weight", ".mlp.down.weight")


def init_params(cfg: ModelConfig, seed: int = 0, init: str = "book") -> dict[str, np.ndarray]:
    """Seeded numpy weights, so every backend starts equal.

    ``book`` (the default): PyTorch's defaults. Embeddings N(0, 1); linear weights and biases
    U(±1/sqrt(fan_in)); norm weights 1, biases 0. The N(0, 1) embedding doubles as the output head,
    which is why the first loss is ~41, not ~ln(V): the book's numbers depend on it.

    ``scaled`` (nanoGPT's / GPT-2's): every matrix and embedding N(0, 0.02), the projections that
    write into the residual stream (attention W_O, the MLP's fc2 / down) N(0, 0.02 / sqrt(2 L)),
    biases 0, norm weights 1. Logits start near 0, so the first loss is ~ln(V).
    """
    if init not in INITS:
        raise MygptError(f"unknown --init {init!r} — use one of: {', '.join(INITS)}")
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(cfg).items():
        if name.split(".")[-2] in ("ln1", "ln2", "ln_f", "q_norm", "k_norm"):
            p = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif init == "scaled":
            if not name.endswith("weight"):
                p = np.zeros(shape)
            else:
                std = 0.02 / math.sqrt(2 * cfg.num_layers) if name.endswith(_RESIDUAL_OUT) else 0.02
                p = rng.standard_normal(shape) * std
        elif "embedding" in name:
            p = rng.standard_normal(shape)
        else:
            fan_in = shape[-1] if name.endswith("weight") else _fan_in(name, cfg)
            bound = 1.0 / math.sqrt(fan_in)
            p = rng.uniform(-bound, bound, shape)
        params[name] = p.astype(np.float32)
    return params


def _fan_in(bias_name: str, cfg: ModelConfig) -> int:
    # A bias shares its layer's fan-in: fc1 reads C features, fc2 reads the hidden width (4C).
    if ".fc2." in bias_name or ".down." in bias_name:
        return cfg.mlp_hidden
    return cfg.attn_dim if ".W_O." in bias_name else cfg.embed_dim


# --- KV cache --------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    Beyond ``max_len`` entries the oldest are dropped (a rotating cache). With rotary positions
    that is well defined, as scores depend only on relative positions; it is *not* what re-running
    the cropped window gives (see ``mygpt.generate``), so the exact generator never lets the cache
    grow past the window.

    Each layer writes into a buffer that doubles as needed up to ``2 * max_len`` positions rather
    than concatenating a new array per token: attention reads a view of the last ``max_len`` entries,
    and when the buffer is full its newest entries move to the front, once per ``max_len`` tokens.
    """

    num_layers: int
    max_len: int
    offset: int = 0  # absolute position of the next token
    keys: list[Array | None] = field(default_factory=list)
    values: list[Array | None] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # per layer: buffer index after the newest entry

    def __post_init__(self) -> None:
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        self.ends = [0] * self.num_layers

    def update(self, ops, layer: int, k: Array, v: Array) -> tuple[Array, Array]:
        """Append (B, Hkv, T, D) keys and values; return those attention sees (<= max_len)."""
        t, n = k.shape[2], self.max_len
        if t > n:  # only the newest max_len can ever be seen again
            k, v, t = k[:, :, -n:], v[:, :, -n:], n
        if self.keys[layer] is None:
            # start small and double: a real model's context (32k positions) would otherwise
            # preallocate gigabytes for a short chat
            self.keys[layer] = ops.zeros((*k.shape[:2], min(2 * n, max(256, 2 * t)), k.shape[3]),
                                         ops.dtype_of(k))  # fmt: skip
            self.values[layer] = ops.zeros(self.keys[layer].shape, ops.dtype_of(v))
        keys, values, end = self.keys[layer], self.values[layer], self.ends[layer]
        cap = keys.shape[2]
        if end + t > cap and cap < 2 * n:  # grow (copying the entries so far)
            grown = min(2 * n, max(2 * cap, end + t))
            keys = ops.write(ops.zeros((*keys.shape[:2], grown, keys.shape[3]), ops.dtype_of(k)),
                             keys[:, :, :end], axis=2, start=0)  # fmt: skip
            values = ops.write(ops.zeros(keys.shape, ops.dtype_of(v)),
                               values[:, :, :end], axis=2, start=0)  # fmt: skip
        if end + t > 2 * n:  # full: keep the newest n - t entries, at the front
            keep = n - t  # (their source starts at end - keep >= n + t > keep: no overlap)
            keys = ops.write(keys, keys[:, :, end - keep : end], axis=2, start=0)
            values = ops.write(values, values[:, :, end - keep : end], axis=2, start=0)
            end = keep
        keys = ops.write(keys, k, axis=2, start=end)
        values = ops.write(values, v, axis=2, start=end)
        end += t
        self.keys[layer], self.values[layer], self.ends[layer] = keys, values, end
        begin = max(0, end - n)
        return keys[:, :, begin:end], values[:, :, begin:end]


@dataclass
class SlotCache:
    """A fixed-shape KV cache for batched decoding: ``rows`` rows of ``capacity`` positions.

    Every layer's keys and values are one (2, rows, Hkv, capacity, D) buffer (keys, then
    values), allocated up front; row r holds one stream, its entry for absolute position p at
    index p. :func:`decode` always attends over the whole capacity with a per-row length mask,
    so a row's arithmetic is the same whatever the other rows hold (see DESIGN.md, "Serving
    exactly").
    """

    rows: int
    capacity: int
    kv: list[Array]

    @classmethod
    def allocate(cls, ops, cfg: ModelConfig, rows: int, dtype: str = "float32") -> SlotCache:
        shape = (2, rows, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim)
        return cls(rows, cfg.max_seq_len, [ops.zeros(shape, dtype) for _ in range(cfg.num_layers)])

    @staticmethod
    def nbytes(cfg: ModelConfig, rows: int, dtype: str = "float32") -> int:
        per_row = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.max_seq_len * cfg.head_dim
        return rows * per_row * (2 if dtype == "bfloat16" else 4)

    def load(self, ops, row: int, cache: KVCache) -> None:
        """Copy a prefilled :class:`KVCache` (one row, not past its window) into ``row``."""
        for i in range(len(self.kv)):
            end = cache.ends[i]
            heads = ops.concat([cache.keys[i][:, :, :end], cache.values[i][:, :, :end]], axis=1)
            self.kv[i] = ops.write_kv(self.kv[i], heads, [row], np.zeros(1, dtype=np.int64))


# --- forward ---------------------------------------------------------------------------------


@dataclass
class LoraWeights:
    """Low-rank adapters on some linears (``mygpt.lora``): ``{"blocks.0.mha.W_Q.lora_A": A,
    ".lora_B": B, ...}``; each adapted linear adds ``(x @ A^T) @ B^T * scale`` to its output."""

    tensors: Params
    scale: float
    dropout: float = 0.0

    def delta(self, ops, name: str, x: Array, dtype: str, train: bool) -> Array | None:
        """The adapter's contribution to linear ``name`` (``blocks.0.mha.W_Q``), or None."""
        a = self.tensors.get(f"{name}.lora_A")
        if a is None:
            return None
        if train and self.dropout > 0:  # peft's lora_dropout: on the adapter's input only
            x = ops.dropout(x, self.dropout)
        h = ops.linear(
            ops.linear(x, ops.cast(a, dtype)), ops.cast(self.tensors[f"{name}.lora_B"], dtype)
        )
        return h * self.scale


def _plus(ops, lora: LoraWeights | None, name: str, x: Array, y: Array, dtype: str, train: bool):
    d = lora.delta(ops, name, x, dtype, train) if lora is not None else None
    return y if d is None else y + d


def _norm(ops, cfg: ModelConfig, params: Params, prefix: str, x: Array, dtype: str) -> Array:
    bias = ops.cast(params[f"{prefix}.bias"], dtype) if cfg.norm == "layer" else None
    return _norm_of(ops, cfg, x, ops.cast(params[f"{prefix}.weight"], dtype), bias)


def _norm_of(ops, cfg: ModelConfig, x: Array, weight: Array, bias: Array | None) -> Array:
    """The block's norm with its weights given: RMSNorm, or LayerNorm (with ``bias``)."""
    if cfg.norm == "rms":
        return ops.rms_norm(x, weight, cfg.norm_eps)
    return ops.layer_norm(x, weight, bias, cfg.norm_eps)


def _qkv(
    ops,
    cfg: ModelConfig,
    p: Callable[[str], Array],
    b: str,
    x: Array,
    *,
    lora: LoraWeights | None = None,
    train: bool = False,
):
    """(Q and K heads together, V heads), (B, H + Hkv, T, D) and (B, Hkv, T, D), before rope;
    with ``lora``, the adapters' deltas are added to the fused projection."""
    B, T, _ = x.shape
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # Q, K and V from one matmul and one rotary call for Q and K together: a token is dozens of
    # tiny ops that each cost more to launch than to compute (8% per token on CPU)
    w_qkv = ops.concat([p(f"{b}.mha.W_{n}.weight") for n in "QKV"], axis=0)
    b_qkv = ops.concat([p(f"{b}.mha.W_{n}.bias") for n in "QKV"], axis=0) if cfg.attn_bias else None
    qkv = ops.linear(x, w_qkv, b_qkv)
    if lora is not None:
        qkv = _qkv_lora(ops, cfg, lora, b, x, qkv, train)
    heads = ops.transpose(ops.reshape(qkv, (B, T, H + 2 * Hkv, D)), (0, 2, 1, 3))
    qk, v = heads[:, : H + Hkv], heads[:, H + Hkv :]
    if cfg.qk_norm:
        qk = ops.concat(_qk_norm(ops, cfg, qk, p(f"{b}.mha.q_norm.weight"),
                                 p(f"{b}.mha.k_norm.weight")), axis=1)  # fmt: skip
    return qk, v


def _qk_norm(ops, cfg: ModelConfig, qk: Array, q_weight: Array, k_weight: Array):
    """Qwen3's RMSNorm over each head's D features, before the rotation: (Q heads, K heads)
    normed, from ``qk`` (B, H + Hkv, T, D) (or more heads after them, which it ignores)."""
    H, Hkv = cfg.num_heads, cfg.num_kv_heads
    qn = ops.rms_norm(qk[:, :H], q_weight, cfg.norm_eps)
    kn = ops.rms_norm(qk[:, H : H + Hkv], k_weight, cfg.norm_eps)
    return qn, kn


def _attention(
    ops,
    cfg: ModelConfig,
    p: Callable[[str], Array],
    b: str,
    x: Array,
    layer: int,
    cache: KVCache | None,
    offset: int,
    dropout: float,
    lora: LoraWeights | None = None,
    train: bool = False,
) -> Array:
    B, T, C = x.shape
    H, D = cfg.num_heads, cfg.head_dim
    qk, v = _qkv(ops, cfg, p, b, x, lora=lora, train=train)
    if cfg.position == "rope":
        qk = ops.rope(qk, offset, cfg.rope_base, rope_inv_freq(cfg))
    q, k = qk[:, :H], qk[:, H:]
    if cache is not None:
        k, v = cache.update(ops, layer, k, v)
    # K/V heads are not repeated here: both backends' attention kernels read head h's K/V from
    # head h // (H / Hkv), the book's repeat_interleave order, without materialising copies.
    out = ops.attention(q, k, v, scale=1.0 / math.sqrt(D), dropout=dropout)
    out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (B, T, H * D))
    bias = p(f"{b}.mha.W_O.bias") if cfg.attn_out_bias else None
    dt = ops.dtype_of(out)
    return _plus(
        ops, lora, f"{b}.mha.W_O", out, ops.linear(out, p(f"{b}.mha.W_O.weight"), bias), dt, train
    )


def _qkv_lora(ops, cfg: ModelConfig, lora: LoraWeights, b: str, x: Array, qkv: Array, train: bool):
    """The fused Q|K|V projection plus the adapters on whichever of them have one."""
    dtype = ops.dtype_of(x)
    deltas = [lora.delta(ops, f"{b}.mha.W_{n}", x, dtype, train) for n in "QKV"]
    if all(d is None for d in deltas):
        return qkv
    rows = (cfg.attn_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim)
    parts = [
        d if d is not None else ops.zeros((*x.shape[:2], r), dtype) for d, r in zip(deltas, rows)
    ]
    return qkv + ops.concat(parts, axis=-1)


def _mlp(
    ops,
    cfg: ModelConfig,
    p: Callable[[str], Array],
    b: str,
    h: Array,
    lora: LoraWeights | None = None,
    train: bool = False,
) -> Array:
    bias_of = cfg.mlp == "gelu" or cfg.mlp_bias

    def lin(n: str, a: Array) -> Array:
        bias = p(f"{b}.mlp.{n}.bias") if bias_of else None
        y = ops.linear(a, p(f"{b}.mlp.{n}.weight"), bias)
        return _plus(ops, lora, f"{b}.mlp.{n}", a, y, ops.dtype_of(a), train)

    return _mlp_of(ops, cfg, lin, h)


def _mlp_of(ops, cfg: ModelConfig, lin: Callable[[str, Array], Array], h: Array) -> Array:
    """The MLP given its linears by name: SwiGLU (gate, up, down) or GELU (fc1, fc2)."""
    if cfg.mlp == "swiglu":
        return lin("down", ops.silu(lin("gate", h)) * lin("up", h))
    return lin("fc2", ops.gelu(lin("fc1", h)))


def forward(
    ops,
    cfg: ModelConfig,
    params: Params,
    ids: Array,
    *,
    cache: KVCache | None = None,
    dtype: str = "float32",
    train: bool = False,
    lora: LoraWeights | None = None,
) -> Array:
    """Logits (B, T, vocab) for token ids (B, T).

    ``dtype="bfloat16"`` is mixed precision: fp32 master weights are cast as they are used, the
    norms' statistics, softmax and loss stay fp32 inside the backend ops. With ``cache``, ``ids``
    are the tokens after those already cached. ``lora``: adapters added to their linears.
    """
    T = ids.shape[1]
    offset = cache.offset if cache is not None else 0
    if cfg.position == "learned" and offset + T > cfg.max_seq_len:
        raise MygptError(
            f"sequence of {offset + T} tokens is longer than max_seq_len {cfg.max_seq_len} — "
            "crop the context (generation does this) or train with a larger --max-seq-len"
        )
    if cache is None and cfg.max_seq_len < T:
        raise MygptError(
            f"sequence of {T} tokens is longer than max_seq_len {cfg.max_seq_len} — "
            "use a shorter --seq-len or train with a larger --max-seq-len"
        )

    def p(name: str) -> Array:
        return ops.cast(params[name], dtype)

    # The book's only dropout is on the attention probabilities, after the softmax.
    dropout = cfg.dropout if train else 0.0
    emb = params["token_embedding.embedding.weight"]
    x = ops.embedding(emb, ids)
    if cfg.position == "learned":
        x = x + params["position_embedding.weight"][offset : offset + T]
    x = ops.cast(x, dtype)
    for i in range(cfg.num_layers):
        b = f"blocks.{i}"
        h = _norm(ops, cfg, params, f"{b}.ln1", x, dtype)
        x = x + _attention(ops, cfg, p, b, h, i, cache, offset, dropout, lora, train)
        h = _norm(ops, cfg, params, f"{b}.ln2", x, dtype)
        x = x + _mlp(ops, cfg, p, b, h, lora, train)
    x = _norm(ops, cfg, params, "ln_f", x, dtype)
    if cache is not None:
        cache.offset += T
    if not cfg.tie_embeddings:
        return ops.linear(x, p("lm_head.weight"))
    return ops.linear(x, ops.cast(emb, dtype))  # tied head: logits = x @ E^T


@dataclass
class DecodeWeights:
    """Weights made ready for :func:`decode`, once: cast to the decode dtype, each block's W_Q,
    W_K and W_V (and biases) concatenated, and looked up per layer by short names.

    A decoded token is about a hundred tiny ops that each cost more to launch than to compute;
    casting, concatenating or formatting parameter names at every step would add dozens more (a
    cast gives the same values whenever it is made). The embedding tables stay fp32: a token's
    row is summed with its position's before the cast, as :func:`forward` does.
    """

    embedding: Array
    position: Array | None  # learned positions' table (fp32), None with rope
    layers: list[dict[str, Array | None]]  # ln1, qkv, q_norm, k_norm, o, ln2, mlp.*, biases
    final_norm: tuple[Array, Array | None]
    head: Array  # the output projection: the tied embedding (cast) or lm_head


def decode_weights(ops, cfg: ModelConfig, params: Params, dtype: str = "float32") -> DecodeWeights:
    """``params`` made ready for :func:`decode` (see :class:`DecodeWeights`)."""

    def get(name: str) -> Array | None:
        return ops.cast(params[name], dtype) if name in params else None

    def norm(prefix: str) -> tuple[Array, Array | None]:
        return get(f"{prefix}.weight"), get(f"{prefix}.bias")

    mlp = ("gate", "up", "down") if cfg.mlp == "swiglu" else ("fc1", "fc2")
    layers = []
    for i in range(cfg.num_layers):
        b = f"blocks.{i}"
        qkv = [get(f"{b}.mha.W_{n}.weight") for n in "QKV"]
        biases = [get(f"{b}.mha.W_{n}.bias") for n in "QKV"]
        layer = {
            "ln1": norm(f"{b}.ln1"), "ln2": norm(f"{b}.ln2"),
            "qkv": ops.concat(qkv, 0),
            "qkv.bias": ops.concat(biases, 0) if cfg.attn_bias else None,
            "q_norm": get(f"{b}.mha.q_norm.weight"), "k_norm": get(f"{b}.mha.k_norm.weight"),
            "o": get(f"{b}.mha.W_O.weight"), "o.bias": get(f"{b}.mha.W_O.bias"),
        }  # fmt: skip
        for n in mlp:
            layer[n], layer[f"{n}.bias"] = get(f"{b}.mlp.{n}.weight"), get(f"{b}.mlp.{n}.bias")
        layers.append(layer)
    emb = params["token_embedding.embedding.weight"]
    return DecodeWeights(
        embedding=emb,
        position=params.get("position_embedding.weight"),
        layers=layers,
        final_norm=norm("ln_f"),
        head=ops.cast(emb, dtype) if cfg.tie_embeddings else get("lm_head.weight"),
    )


def decode(
    ops,
    cfg: ModelConfig,
    weights: DecodeWeights,
    tokens: np.ndarray,
    positions: np.ndarray,
    slots: SlotCache,
) -> Array:
    """Logits (rows, vocab) for one new token per row of ``slots``, each at its own position.

    ``weights`` come from :func:`decode_weights`. ``tokens[r]`` is row r's newest token and
    ``positions[r]`` its absolute position (the row's cached length); its key and value are
    written at that index and it attends to keys ``0..positions[r]``. Always the full (rows, 1)
    x capacity shape: rows with nothing to do still compute, so no row's result depends on the
    others. Activations are (rows, features): with one token per row there is no time axis.
    The same layers as :func:`forward`, written for this shape.
    """
    positions = np.array(positions, dtype=np.int64)
    R, H, Hkv, D = slots.rows, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    scale = 1.0 / math.sqrt(D)

    def norm(x: Array, weight_bias: tuple[Array, Array | None]) -> Array:
        return _norm_of(ops, cfg, x, *weight_bias)

    x = ops.embedding(weights.embedding, ops.asarray(np.asarray(tokens)))
    if weights.position is not None:
        x = x + ops.embedding(weights.position, ops.asarray(positions))
    x = ops.cast(x, ops.dtype_of(weights.head))
    rope = (cfg.rope_base, rope_inv_freq(cfg)) if cfg.position == "rope" else None
    step = ops.decode_step(positions, R, slots.capacity, (H, Hkv, D), rope)
    for i, layer in enumerate(weights.layers):

        def lin(n: str, a: Array, layer: dict = layer) -> Array:
            return ops.linear(a, layer[n], layer[f"{n}.bias"])

        qkv = lin("qkv", norm(x, layer["ln1"]))
        heads = ops.reshape(qkv, (R, H + 2 * Hkv, 1, D))  # (rows, Q|K|V heads, 1 token, D)
        if cfg.qk_norm:
            qk = _qk_norm(ops, cfg, heads, layer["q_norm"], layer["k_norm"])
            heads = ops.concat([*qk, heads[:, H + Hkv :]], axis=1)
        if rope is not None:
            heads = step.rope(heads)
        kv = slots.kv[i] = step.write_kv(slots.kv[i], heads[:, H:])
        x = ops.residual_linear(x, step.attention(heads[:, :H], kv, scale), layer["o"],
                                layer["o.bias"])  # fmt: skip
        x = x + _mlp_of(ops, cfg, lin, norm(x, layer["ln2"]))
    return ops.linear(norm(x, weights.final_norm), weights.head)


def loss_fn(
    ops,
    cfg: ModelConfig,
    params: Params,
    x: Array,
    y: Array,
    dtype: str = "float32",
    train: bool = True,
    lora: LoraWeights | None = None,
    mask: Array | None = None,
) -> Array:
    """Mean cross-entropy of next-token prediction over every position (fp32), or over the
    positions ``mask`` marks (a chat's assistant tokens)."""
    logits = forward(ops, cfg, params, x, dtype=dtype, train=train, lora=lora)
    return ops.cross_entropy(logits, y) if mask is None else ops.cross_entropy(logits, y, mask)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM-style accounting.

    6 x (non-embedding matmul params + tied head) plus attention's score and value products.
    """
    C, L, A = cfg.embed_dim, cfg.num_layers, cfg.attn_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    mlp = (3 if cfg.mlp == "swiglu" else 2) * C * cfg.mlp_hidden  # gate+up+down or fc1+fc2
    matmul = L * (2 * C * A + 2 * C * kv + mlp) + C * cfg.vocab_size
    attention = L * 2 * seq_len * A  # QK^T and AV, causal halves it, x2 mul-add
    return 6 * matmul + 6 * attention
