"""The GPT, defined once, as plain functions over a backend ``ops`` object.

Pre-norm decoder blocks, ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``, a final norm and an
output head tied to the token embedding, exactly the book's architecture. Part II's choices are
config fields: RMSNorm instead of LayerNorm, rotary instead of learned positions, fewer K/V heads
than query heads (GQA/MQA). So are the real families' variants: the tanh GELU and GeGLU (GPT-2,
Gemma), Gemma's (1 + w) norms, sandwich norms, scaled embeddings and attention scale, OLMo 2's
norms after each sublayer and q/k norms over all heads, sliding-window layers with a rope base
of their own (Mistral, Gemma 3).

Parameters are a flat ``dict[str, array]`` named like the book's ``state_dict``, so a book
checkpoint loads by name and a native checkpoint is just that dict. There is no ``nn.Module``: the
same ``forward`` runs on MLX and on PyTorch, which is what makes the two comparable op for op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mygpt.backends.base import Array, Mask, Params, Positions
from mygpt.cache import Cache
from mygpt.config import ModelConfig, rope_base_of, rope_inv_freq
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
        if cfg.pre_norm:
            norm(f"{b}.ln1")
        for n, rows in (("Q", A), ("K", kv), ("V", kv)):
            shapes[f"{b}.mha.W_{n}.weight"] = (rows, C)
            if cfg.attn_bias:
                shapes[f"{b}.mha.W_{n}.bias"] = (rows,)
        if cfg.qk_norm:  # per head (Qwen3, Gemma 3) or over all of Q and of K (OLMo 2)
            per_head = cfg.qk_norm_per_head
            shapes[f"{b}.mha.q_norm.weight"] = (cfg.head_dim if per_head else A,)
            shapes[f"{b}.mha.k_norm.weight"] = (cfg.head_dim if per_head else kv,)
        shapes[f"{b}.mha.W_O.weight"] = (C, A)
        if cfg.attn_out_bias:
            shapes[f"{b}.mha.W_O.bias"] = (C,)
        if cfg.sandwich_norm:  # on the attention's output (Gemma 2/3, OLMo 2)
            norm(f"{b}.ln1_post")
        if cfg.pre_norm:
            norm(f"{b}.ln2")
        shapes.update(_mlp_shapes(cfg, b))
        if cfg.sandwich_norm:  # on the MLP's output
            norm(f"{b}.ln2_post")
    norm("ln_f")
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, C)
    return shapes


def _mlp_shapes(cfg: ModelConfig, b: str) -> dict[str, tuple[int, ...]]:
    C, H = cfg.embed_dim, cfg.mlp_hidden
    if cfg.gated:  # Llama's (Gemma's) gated MLP: down(act(gate(x)) * up(x)), biases optional
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
_NORMS = ("ln1", "ln2", "ln1_post", "ln2_post", "ln_f", "q_norm", "k_norm")
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
        if name.split(".")[-2] in _NORMS:  # weights 1 as applied: (norm_offset + w)
            p = np.full(shape, 1 - cfg.norm_offset) if name.endswith("weight") else np.zeros(shape)
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


# --- weights, prepared once ----------------------------------------------------------------


@dataclass
class LoraWeights:
    """Low-rank adapters on some linears (``mygpt.lora``): ``{"blocks.0.mha.W_Q.lora_A": A,
    ".lora_B": B, ...}``; each adapted linear adds ``(x @ A^T) @ B^T * scale`` to its output."""

    tensors: Params
    scale: float
    dropout: float = 0.0


@dataclass
class Adapter:
    """One linear's LoRA pair, cast to the compute dtype."""

    a: Array
    b: Array
    scale: float
    dropout: float = 0.0

    def delta(self, ops, x: Array, train: bool) -> Array:
        if train and self.dropout > 0:  # peft's lora_dropout: on the adapter's input only
            x = ops.dropout(x, self.dropout)
        return ops.linear(ops.linear(x, self.a), self.b) * self.scale


@dataclass
class Linear:
    """One linear layer, ready to run: ``x @ weight.T + bias``, plus its adapters' deltas
    (LoRA, unmerged). The model's every matmul but attention's goes through :meth:`__call__`.

    A fused linear (Q|K|V) has one adapter slot per part; ``parts`` are the parts' widths.
    """

    weight: Array
    bias: Array | None = None
    adapters: tuple[Adapter | None, ...] = ()
    parts: tuple[int, ...] = ()

    def __call__(self, ops, x: Array, train: bool = False) -> Array:
        y = ops.linear(x, self.weight, self.bias)
        return y if not self.adapters else y + self._delta(ops, x, train)

    def residual(self, ops, r: Array, x: Array, train: bool = False) -> Array:
        """``r + self(x)``, in one matmul call where the backend can (no adapters)."""
        if self.adapters:
            return r + self(ops, x, train)
        return ops.residual_linear(r, x, self.weight, self.bias)

    def _delta(self, ops, x: Array, train: bool) -> Array:
        if len(self.adapters) == 1:
            return self.adapters[0].delta(ops, x, train)
        # a fused linear: each part's delta, zeros where a part has no adapter
        dtype = ops.dtype_of(x)
        return ops.concat([a.delta(ops, x, train) if a is not None
                           else ops.zeros((*x.shape[:-1], n), dtype)
                           for a, n in zip(self.adapters, self.parts)], axis=-1)  # fmt: skip


@dataclass
class Norm:
    weight: Array
    bias: Array | None = None  # LayerNorm's; RMSNorm has none


@dataclass
class Block:
    """One decoder block's weights, by the model's own short names."""

    ln1: Norm | None  # None: no norm before the sublayer (OLMo 2)
    qkv: Linear  # W_Q | W_K | W_V, fused: one matmul
    o: Linear
    ln2: Norm | None
    mlp: dict[str, Linear]  # gate, up, down (SwiGLU, GeGLU) or fc1, fc2 (GELU)
    q_norm: Array | None = None  # q/k RMSNorm weights: per head (Qwen3, Gemma) or whole (OLMo 2)
    k_norm: Array | None = None
    ln1_post: Norm | None = None  # the sandwich's norms of each sublayer's output (Gemma, OLMo 2)
    ln2_post: Norm | None = None
    kind: str = "full"  # the layer type: "full" or "sliding" (its mask and rotation)
    window: int | None = None  # how many keys a sliding layer's queries see
    rope: tuple[float, np.ndarray | None] | None = None  # (base, inv_freq) of a rotary layer


@dataclass
class Weights:
    """The parameters made ready for :func:`forward`: cast to the compute dtype, each block's
    Q|K|V fused, LoRA adapters attached to their linears, looked up by short names.

    Inference prepares once per load (``prepare``); training prepares inside the differentiated
    function, once per step, so every weight still gets its gradient. The embedding tables stay
    fp32: a token's row is summed with its position's before the cast.
    """

    embedding: Array
    position: Array | None  # learned positions' table; None with rope
    blocks: list[Block]
    final_norm: Norm
    head: Linear  # the tied embedding (cast) or lm_head
    dtype: str


def prepare(
    ops, cfg: ModelConfig, params: Params, dtype: str = "float32", lora: LoraWeights | None = None
) -> Weights:
    """``params`` (book names) as the :class:`Weights` :func:`forward` runs on."""

    def get(name: str, present: bool = True) -> Array | None:
        return ops.cast(params[name], dtype) if present and name in params else None

    def norm_w(name: str) -> Array | None:  # Gemma's (1 + w), added in fp32 before the cast
        w = params.get(name)
        return None if w is None else ops.cast(w + cfg.norm_offset if cfg.norm_offset else w, dtype)

    def norm(prefix: str, present: bool = True) -> Norm | None:
        if not present:
            return None
        return Norm(norm_w(f"{prefix}.weight"), get(f"{prefix}.bias", cfg.norm == "layer"))

    def adapter(name: str) -> Adapter | None:
        a = lora.tensors.get(f"{name}.lora_A") if lora is not None else None
        if a is None:
            return None
        b = ops.cast(lora.tensors[f"{name}.lora_B"], dtype)
        return Adapter(ops.cast(a, dtype), b, lora.scale, lora.dropout)

    def linear(name: str, bias: bool) -> Linear:
        found = adapter(name)
        adapters = (found,) if found is not None else ()
        return Linear(get(f"{name}.weight"), get(f"{name}.bias", bias), adapters)

    mlp_bias = cfg.mlp == "gelu" or cfg.mlp_bias
    mlp_names = ("gate", "up", "down") if cfg.gated else ("fc1", "fc2")
    kv = cfg.num_kv_heads * cfg.head_dim
    blocks = []
    for i in range(cfg.num_layers):
        b = f"blocks.{i}"
        names = [f"{b}.mha.W_{n}" for n in "QKV"]
        # Q, K and V from one matmul: a token is dozens of tiny ops that each cost more to
        # launch than to compute (8% per token on CPU)
        parts = [adapter(n) for n in names]
        qkv = Linear(
            ops.concat([get(f"{n}.weight") for n in names], axis=0),
            ops.concat([get(f"{n}.bias") for n in names], axis=0) if cfg.attn_bias else None,
            tuple(parts) if any(parts) else (),
            (cfg.attn_dim, kv, kv),
        )
        blocks.append(Block(
            ln1=norm(f"{b}.ln1", cfg.pre_norm), qkv=qkv,
            o=linear(f"{b}.mha.W_O", cfg.attn_out_bias), ln2=norm(f"{b}.ln2", cfg.pre_norm),
            mlp={n: linear(f"{b}.mlp.{n}", mlp_bias) for n in mlp_names},
            q_norm=norm_w(f"{b}.mha.q_norm.weight"), k_norm=norm_w(f"{b}.mha.k_norm.weight"),
            ln1_post=norm(f"{b}.ln1_post", cfg.sandwich_norm),
            ln2_post=norm(f"{b}.ln2_post", cfg.sandwich_norm),
            kind=cfg.layer_type(i), window=cfg.window(i), rope=_rope_of(cfg, cfg.layer_type(i)),
        ))  # fmt: skip
    emb = params["token_embedding.embedding.weight"]
    head = ops.cast(emb, dtype) if cfg.tie_embeddings else get("lm_head.weight")
    return Weights(emb, params.get("position_embedding.weight"), blocks, norm("ln_f"),
                   Linear(head), dtype)  # fmt: skip


def _rope_of(cfg: ModelConfig, kind: str) -> tuple[float, np.ndarray | None] | None:
    """A layer type's rotation, ``(base, inv_freq)``; None without rope."""
    return (rope_base_of(cfg, kind), rope_inv_freq(cfg, kind)) if cfg.position == "rope" else None


# --- forward ---------------------------------------------------------------------------------


@dataclass
class _Pass:
    """What every layer of one forward pass shares: where its tokens are, the cache, and by
    layer type ('full', 'sliding') the mask."""

    positions: Positions
    masks: dict[str, Mask | None]
    cache: Cache | None
    dropout: float
    train: bool
    scale: float  # the attention scores' scale
    act: Callable[[Array], Array]  # the MLP's activation


def _layer_masks(cfg: ModelConfig, mask: Mask | None, cache: Cache | None) -> dict:
    """Each layer type's mask. A sliding layer adds its window to the cache's mask, or takes the
    cache's own (``window_mask``: a cache that keeps only the window)."""
    if cfg.layer_types is None:
        return {"full": mask}
    masks = {}
    for kind in dict.fromkeys(cfg.layer_types):
        masks[kind] = mask
        if kind == "sliding":
            own = getattr(cache, "window_mask", None)
            masks[kind] = own or Mask(lengths=None if mask is None else mask.lengths,
                                      window=cfg.sliding_window)  # fmt: skip
    return masks


def _activation(ops, cfg: ModelConfig) -> Callable[[Array], Array]:
    """The MLP's activation: SiLU (SwiGLU), or the GELU, exact or tanh-approximated."""
    if cfg.mlp == "swiglu":
        return ops.silu
    return ops.gelu_tanh if cfg.activation == "gelu_tanh" else ops.gelu


def embedding_scale(cfg: ModelConfig, dtype: str) -> float:
    """Gemma's sqrt(embed_dim), rounded to the compute dtype first (as its bf16 weights round
    it), so ``x * scale`` is one rounding of an exact product on either backend."""
    scale = np.float32(math.sqrt(cfg.embed_dim))
    if dtype == "bfloat16":  # round to nearest even at 16 bits
        u = int(scale.view(np.uint32))
        scale = np.uint32((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).view(np.float32)
    return float(scale)


def forward(
    ops,
    cfg: ModelConfig,
    params: Params | Weights,
    ids: Array,
    *,
    cache: Cache | None = None,
    dtype: str = "float32",
    train: bool = False,
    lora: LoraWeights | None = None,
) -> Array:
    """Logits (B, T, vocab) for token ids (B, T): the model, for every caller.

    ``params``: the checkpoint's dict (prepared here, as training does every step) or
    :class:`Weights` from :func:`prepare` (inference: once per load; then ``dtype`` and ``lora``
    are the prepared ones). ``dtype="bfloat16"`` is mixed precision: fp32 master weights are cast
    as they are prepared, the norms' statistics, softmax and loss stay fp32 inside the backend
    ops. ``cache`` (``mygpt.cache``): ``None`` for training and eval; otherwise ``ids`` are the
    tokens after those already cached, and the cache says where they are and what they see.
    """
    w = params if isinstance(params, Weights) else prepare(ops, cfg, params, dtype, lora)
    T = ids.shape[1]
    positions, mask = cache.begin(T) if cache is not None else (Positions(0, T), None)
    _check_length(cfg, positions, cache)
    # The book's only dropout is on the attention probabilities, after the softmax.
    ps = _Pass(positions, _layer_masks(cfg, mask, cache), cache, cfg.dropout if train else 0.0,
               train, cfg.attn_scale, _activation(ops, cfg))  # fmt: skip
    x = ops.embedding(w.embedding, ids)
    if w.position is not None:
        x = x + _position_rows(ops, w.position, positions)
    if T == 1:  # one token a row (decoding): (rows, features), no time axis; a decoded token is
        # ~100 tiny ops, and a 3-D input costs every linear a fold into 2-D and back
        x = ops.reshape(x, (ids.shape[0], x.shape[-1]))
    x = ops.cast(x, w.dtype)
    if cfg.scale_embeddings:
        x = x * embedding_scale(cfg, w.dtype)
    for i, blk in enumerate(w.blocks):
        h = _attention(ops, cfg, blk, _norm(ops, cfg, blk.ln1, x), i, ps)
        if blk.ln1_post is None:
            x = blk.o.residual(ops, x, h, train)
        else:  # the sandwich: the output projection's result normed before the residual add
            x = x + _norm(ops, cfg, blk.ln1_post, blk.o(ops, h, train))
        h = _mlp(ops, blk, _norm(ops, cfg, blk.ln2, x), ps)
        x = x + (h if blk.ln2_post is None else _norm(ops, cfg, blk.ln2_post, h))
    if cache is not None:
        cache.end(T)
    logits = w.head(ops, _norm(ops, cfg, w.final_norm, x))  # tied head: logits = x @ E^T
    return ops.reshape(logits, (ids.shape[0], 1, -1)) if T == 1 else logits


def _check_length(cfg: ModelConfig, positions: Positions, cache: Cache | None) -> None:
    T = positions.length
    if cache is None and cfg.max_seq_len < T:
        raise MygptError(
            f"sequence of {T} tokens is longer than max_seq_len {cfg.max_seq_len} — "
            "use a shorter --seq-len or train with a larger --max-seq-len"
        )
    if cfg.position != "learned":
        return
    start = positions.start  # (no numpy on an int: a compiled training step would break there)
    end = (start if isinstance(start, int) else int(start.max())) + T
    if end > cfg.max_seq_len:
        raise MygptError(
            f"sequence of {end} tokens is longer than max_seq_len {cfg.max_seq_len} — "
            "crop the context (generation does this) or train with a larger --max-seq-len"
        )


def _position_rows(ops, table: Array, positions: Positions) -> Array:
    """Learned positions' rows for the new tokens (fp32): (T, C), or (B, T, C) per row."""
    if not positions.per_row:
        return table[positions.start : positions.start + positions.length]
    at = positions.start[:, None] + np.arange(positions.length)
    return ops.embedding(table, ops.asarray(at))


def _norm(ops, cfg: ModelConfig, norm: Norm | None, x: Array) -> Array:
    """The block's norm: RMSNorm, or LayerNorm (with a bias); None: ``x`` as it is."""
    if norm is None:
        return x
    if cfg.norm == "rms":
        return ops.rms_norm(x, norm.weight, cfg.norm_eps)
    return ops.layer_norm(x, norm.weight, norm.bias, cfg.norm_eps)


def _attention(ops, cfg: ModelConfig, blk: Block, x: Array, layer: int, ps: _Pass) -> Array:
    """The attention sublayer up to W_O: (B, T, H * D) from normed (B, T, C), or (B, H * D)
    from (B, C) when decoding one token a row."""
    B, T = x.shape[0], ps.positions.length
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qkv = blk.qkv(ops, x, ps.train)
    if cfg.qk_norm and not cfg.qk_norm_per_head:  # OLMo 2: over all of Q and all of K
        A, kv = cfg.attn_dim, Hkv * D
        qkv = ops.concat([ops.rms_norm(qkv[..., :A], blk.q_norm, cfg.norm_eps),
                          ops.rms_norm(qkv[..., A : A + kv], blk.k_norm, cfg.norm_eps),
                          qkv[..., A + kv :]], axis=-1)  # fmt: skip
    if T == 1:  # one token a row (decoding): (B, heads, 1, D) is the same memory, no transpose
        heads = ops.reshape(qkv, (B, H + 2 * Hkv, 1, D))
    else:
        heads = ops.transpose(ops.reshape(qkv, (B, T, H + 2 * Hkv, D)), (0, 2, 1, 3))
    if cfg.qk_norm and cfg.qk_norm_per_head:  # Qwen3: RMSNorm over each head, before rope
        heads = ops.concat([ops.rms_norm(heads[:, :H], blk.q_norm, cfg.norm_eps),
                            ops.rms_norm(heads[:, H : H + Hkv], blk.k_norm, cfg.norm_eps),
                            heads[:, H + Hkv :]], axis=1)  # fmt: skip
    if blk.rope is not None:  # one rotary call turns Q and K; V stays beside K
        heads = ops.rope(heads, ps.positions, *blk.rope, heads=H + Hkv)
    q, kv = heads[:, :H], heads[:, H:]  # K|V as one array: the cache stores it in one write
    if ps.cache is not None:
        k, v = ps.cache.update(ops, layer, kv, blk.window)
    else:
        k, v = kv[:, :Hkv], kv[:, Hkv:]
    # K/V heads are not repeated here: both backends' attention kernels read head h's K/V from
    # head h // (H / Hkv), the book's repeat_interleave order, without materialising copies.
    out = ops.attention(q, k, v, ps.scale, dropout=ps.dropout, mask=ps.masks[blk.kind])
    if T == 1:
        return ops.reshape(out, (B, H * D))
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (B, T, H * D))


def _mlp(ops, blk: Block, h: Array, ps: _Pass) -> Array:
    """SwiGLU, ``down(silu(gate(h)) * up(h))``, GeGLU (the same with a GELU), or the book's GELU
    MLP, ``fc2(gelu(fc1(h)))``; the GELU exact or tanh-approximated (``cfg.activation``)."""
    mlp, train = blk.mlp, ps.train
    if "gate" in mlp:
        gated = ps.act(mlp["gate"](ops, h, train)) * mlp["up"](ops, h, train)
        return mlp["down"](ops, gated, train)
    return mlp["fc2"](ops, ps.act(mlp["fc1"](ops, h, train)), train)


def loss_fn(
    ops,
    cfg: ModelConfig,
    params: Params,
    x: Array,
    y: Array,
    dtype: str = "float32",
    *,
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
    mlp = (3 if cfg.gated else 2) * C * cfg.mlp_hidden  # gate+up+down or fc1+fc2
    matmul = L * (2 * C * A + 2 * C * kv + mlp) + C * cfg.vocab_size
    attention = L * 2 * seq_len * A  # QK^T and AV, causal halves it, x2 mul-add
    return 6 * matmul + 6 * attention
