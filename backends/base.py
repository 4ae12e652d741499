"""The tensor-ops interface the model is written against.

A backend is an *object* (thinc-style), not a module-level global: two backends can live in one
process, which is what the parity tests do. Arrays are the framework's own (``mx.array`` or
``torch.Tensor``); they cross into shared code only through ``asarray`` / ``to_numpy``. Arithmetic
that both frameworks spell the same way (``+``, ``*``, ``@``, slicing) is used directly by the model;
everything else goes through a method here, so each backend can map it to its fastest kernel.

dtypes are named by strings, ``"float32"`` or ``"bfloat16"``, so shared code never touches a
framework dtype object.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mygpt.backends.distributed import ProcessGroup
from mygpt.backends.types import Array, Params
from mygpt.errors import MygptError

DTYPES = ("float32", "bfloat16")


@dataclass
class AdamWConfig:
    """AdamW with torch's semantics on every backend: bias correction on, decoupled weight decay."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01


class Optimizer(abc.ABC):
    """AdamW over a flat parameter dict. ``step`` returns the updated dict (MLX is functional)."""

    @abc.abstractmethod
    def step(self, params: Params, grads: Params, lr: float) -> Params: ...

    @abc.abstractmethod
    def state_dict(self) -> tuple[int, dict[str, np.ndarray]]:
        """(steps taken, ``{"m.<name>": ..., "v.<name>": ...}`` as float32 numpy)."""

    @abc.abstractmethod
    def load_state_dict(self, steps: int, tensors: dict[str, np.ndarray]) -> None: ...

    def arrays(self) -> list[Array]:
        """State arrays a lazy backend must evaluate together with the parameters each step."""
        return []


class DecodeStep:
    """One batched decode step's per-row work, made once per step by :meth:`Ops.decode_step`
    and used by every layer: turn each row's Q and K heads to its position, write its new key
    and value there, attend to its own keys only.

    This one composes the backend's ops (:meth:`Ops.rope_at`, :meth:`Ops.write_kv`,
    :meth:`Ops.length_mask`, :meth:`Ops.attention`), which define what a step computes. A
    backend may return a subclass that makes the step's tables (rotations, write indices, the
    mask's layout) once instead of at every layer: a decoded token is ~100 tiny ops, each
    costing more to launch than to compute.
    """

    def __init__(
        self, ops: Ops, positions: np.ndarray, rows: int, capacity: int,
        heads: tuple[int, int, int], rope: tuple[float, np.ndarray | None] | None,
    ) -> None:  # fmt: skip
        self.ops, self.positions, self.rows = ops, positions, range(rows)
        self.heads, self.rope_args = heads, rope  # (H, Hkv, D); (base, inv_freq) or None
        self.mask = ops.length_mask(positions + 1, 1, capacity)

    def rope(self, heads: Array) -> Array:
        """(rows, H + 2 Hkv, 1, D) Q|K|V heads with Q and K rotated; V as it came."""
        H, Hkv, _ = self.heads
        base, inv_freq = self.rope_args
        return self.ops.rope_at(heads, self.positions, base, inv_freq, rotated=H + Hkv)

    def write_kv(self, kv: Array, x: Array) -> Array:
        """``x`` (rows, 2 Hkv, 1, D), keys then values, written into ``kv`` at the positions."""
        return self.ops.write_kv(kv, x, self.rows, self.positions)

    def attention(self, q: Array, kv: Array, scale: float) -> Array:
        """Each row's (rows, H, 1, D) queries over its own keys, as (rows, H * D)."""
        out = self.ops.attention(q, kv[0], kv[1], scale, mask=self.mask)
        H, _, D = self.heads
        return self.ops.reshape(out, (len(self.rows), H * D))


class Ops(abc.ABC):
    """One backend: a framework plus the device it computes on (thinc style: a concrete base).

    The base holds what both backends would otherwise repeat: the dtype-name map, ``asarray`` /
    ``to_numpy`` / ``cast`` / ``dtype_of`` / ``reshape``, device resolution and the no-op
    defaults of an eager framework. A subclass sets ``FRAMEWORK_DTYPES``, implements the few
    framework primitives (``_from_numpy``, ``_astype``, ``_host_numpy``) and the ops, and
    overrides anything it can do faster.
    """

    name: str = ""  # "mlx" | "torch"
    device: str = "cpu"  # "cpu" | "gpu" | "cuda" | "mps" (resolved, never "auto")
    device_reason: str = ""  # why this device ("requested", "CUDA is available", ...)
    threads: int | None = None  # CPU compute threads, where the backend sets them
    threads_reason: str = ""

    #: the framework's dtype object for each dtype name (``DTYPES``)
    FRAMEWORK_DTYPES: ClassVar[dict[str, Any]] = {}
    _DTYPE_NAMES: ClassVar[dict[Any, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._DTYPE_NAMES = {v: k for k, v in cls.FRAMEWORK_DTYPES.items()}

    # --- device ------------------------------------------------------------------------------
    def _resolve_device(
        self, requested: str, gpus: Sequence[tuple[str, bool, str]], hint: str
    ) -> str:
        """The device to compute on for ``--device requested``; sets ``device_reason``.

        ``gpus`` are this backend's accelerators in preference order, as (device, available
        here, what it is called): ``auto`` takes the first available one else the CPU; ``gpu``,
        or a GPU name the backend does not list (MLX's one GPU answers ``cuda`` and ``mps``),
        the first available one; a listed name must be available. ``hint`` ends the error.
        """
        found = [(dev, what) for dev, ok, what in gpus if ok]
        kinds = " or ".join(what for _, _, what in gpus)
        if requested == "auto":
            if found:
                self.device_reason = f"{found[0][1]} is available"
                return found[0][0]
            self.device_reason = f"{self.name} sees no {kinds} device here"
            return "cpu"
        self.device_reason = "requested"
        if requested == "cpu":
            return "cpu"
        named = [(dev, what) for dev, _, what in gpus if dev == requested]
        if requested == "gpu" or not named:
            if found:
                return found[0][0]
            raise MygptError(f"--device {requested}: {self.name} sees no {kinds} device — {hint}")
        if named[0][0] not in {dev for dev, _ in found}:
            raise MygptError(
                f"--device {requested}: {self.name} sees no {named[0][1]} device — {hint}"
            )
        return requested

    def activate(self) -> None:
        """Make this backend's device the one computation runs on (MLX keeps one process-wide
        default device; entry points call this so two MLX devices in one process stay apart)."""
        return None

    # --- moving data in and out -------------------------------------------------------------
    def framework_dtype(self, dtype: str) -> Any:
        """The framework's dtype object for ``dtype`` ("float32" or "bfloat16")."""
        try:
            return self.FRAMEWORK_DTYPES[dtype]
        except KeyError:
            raise MygptError(f"unknown dtype {dtype!r} — use one of: {', '.join(DTYPES)}") from None

    @abc.abstractmethod
    def _from_numpy(self, x: np.ndarray) -> Array:
        """A *copy* of ``x`` on this backend's device, in the matching framework dtype."""

    @abc.abstractmethod
    def _astype(self, x: Array, target: Any) -> Array:
        """``x`` converted to the framework dtype ``target``."""

    @abc.abstractmethod
    def _host_numpy(self, x: Array) -> np.ndarray:
        """A numpy copy of a float32 (or integer) array: a snapshot, never a view."""

    def asarray(self, x: np.ndarray | Sequence, dtype: str | None = None) -> Array:
        """A numpy array (or nested list) as a framework array on this backend's device."""
        a = self._from_numpy(np.asarray(x))
        return self.cast(a, dtype) if dtype else a

    def to_numpy(self, x: Array) -> np.ndarray:
        """A framework array as numpy; bfloat16 comes back as float32 (numpy has no bf16)."""
        if x.dtype == self.FRAMEWORK_DTYPES["bfloat16"]:  # widen on the device first
            x = self._astype(x, self.FRAMEWORK_DTYPES["float32"])
        return self._host_numpy(x)

    def cast(self, x: Array, dtype: str) -> Array:
        target = self.framework_dtype(dtype)
        return x if x.dtype == target else self._astype(x, target)  # no dispatch when it is

    def dtype_of(self, x: Array) -> str:
        return self._DTYPE_NAMES.get(x.dtype, str(x.dtype))

    # --- shape -------------------------------------------------------------------------------
    def reshape(self, x: Array, shape: Sequence[int]) -> Array:
        return x.reshape(shape)

    @abc.abstractmethod
    def transpose(self, x: Array, axes: Sequence[int]) -> Array: ...

    @abc.abstractmethod
    def concat(self, xs: Sequence[Array], axis: int) -> Array: ...

    @abc.abstractmethod
    def zeros(self, shape: Sequence[int], dtype: str) -> Array: ...

    @abc.abstractmethod
    def write(self, buf: Array, x: Array, axis: int, start: int) -> Array:
        """Copy ``x`` into ``buf`` at ``start`` along ``axis`` and return the updated buffer.

        Torch writes in place; MLX updates the slice of a buffer nothing else references, which
        it does in place too. Callers must use the returned array (MLX's may be a new object).
        """

    # --- layers ------------------------------------------------------------------------------
    @abc.abstractmethod
    def linear(self, x: Array, weight: Array, bias: Array | None = None) -> Array:
        """``x @ weight.T + bias`` (torch's weight layout: (out, in))."""

    def residual_linear(
        self, residual: Array, x: Array, weight: Array, bias: Array | None = None
    ) -> Array:
        """``residual + linear(x, weight, bias)``, which a backend may do in one matmul call."""
        return residual + self.linear(x, weight, bias)

    @abc.abstractmethod
    def embedding(self, weight: Array, ids: Array) -> Array: ...

    @abc.abstractmethod
    def layer_norm(self, x: Array, weight: Array, bias: Array, eps: float) -> Array:
        """LayerNorm with biased variance; statistics in fp32 whatever the input dtype."""

    @abc.abstractmethod
    def rms_norm(self, x: Array, weight: Array, eps: float) -> Array:
        """``x / sqrt(mean(x^2) + eps) * weight``; statistics in fp32."""

    @abc.abstractmethod
    def rope(self, x: Array, offset: int, base: float, inv_freq: np.ndarray | None = None) -> Array:
        """Rotary embedding on (B, H, T, D), interleaved pairs (2i, 2i+1), positions offset..offset+T.

        ``inv_freq`` (D/2 float32, e.g. Llama 3's scaled frequencies) replaces ``base ** (-2i/D)``.
        """

    @abc.abstractmethod
    def rope_at(
        self, x: Array, positions: np.ndarray, base: float, inv_freq: np.ndarray | None = None,
        rotated: int | None = None,
    ) -> Array:  # fmt: skip
        """:meth:`rope` with a position per row: row b's tokens are at ``positions[b] + t``.

        ``rotated``: only heads ``0..rotated-1`` turn, the rest come back as they are (a decode
        step's Q|K|V heads in one array). Every layer of a decode step passes the same
        ``positions`` object, so a backend may make the step's rotations once."""

    @abc.abstractmethod
    def write_kv(self, kv: Array, x: Array, rows: Sequence[int], starts: np.ndarray) -> Array:
        """Write new keys and values into a (2, B, Hkv, T, D) decode buffer (keys, then values)
        and return it (MLX's may be a new array; torch writes in place).

        ``x`` is (n, 2 * Hkv, t, D), the keys' heads then the values'; its row i lands in row
        ``rows[i]`` at positions ``starts[i] .. starts[i] + t - 1``."""

    @abc.abstractmethod
    def attention(
        self, q: Array, k: Array, v: Array, scale: float, dropout: float = 0.0,
        mask: Array | None = None,
    ) -> Array:  # fmt: skip
        """Causal attention on (B, H, Tq, D) x (B, Hkv, Tk, D), Hkv dividing H (GQA).

        Query head h reads K/V head ``h // (H // Hkv)`` (the book's ``repeat_interleave`` order).
        The causal mask is aligned to the *end* of the keys, so with Tq < Tk (cached decoding) the
        last query sees every key, as it would in a full forward pass. ``dropout`` > 0 drops
        attention probabilities after the softmax (the book's only dropout; training only).
        ``mask`` (from :meth:`length_mask`) replaces the causal mask: batched decoding, where
        each row has its own number of valid keys in a buffer of fixed length.
        """

    @abc.abstractmethod
    def length_mask(self, lengths: np.ndarray, tq: int, tk: int) -> Array:
        """A (B, 1, Tq, Tk) mask for :meth:`attention`: query i of row b sees key j iff
        ``j <= lengths[b] - tq + i`` (causal, aligned to each row's own last valid key). Its
        form is the backend's (torch: additive 0/-inf; MLX: boolean)."""

    def decode_step(
        self, positions: np.ndarray, rows: int, capacity: int, heads: tuple[int, int, int],
        rope: tuple[float, np.ndarray | None] | None,
    ) -> DecodeStep:  # fmt: skip
        """The :class:`DecodeStep` of ``rows`` rows at ``positions`` in buffers of ``capacity``
        positions; ``heads`` is (H, Hkv, D), ``rope`` (base, inv_freq) or None."""
        return DecodeStep(self, positions, rows, capacity, heads, rope)

    @abc.abstractmethod
    def softmax(self, x: Array, axis: int = -1) -> Array:
        """Softmax computed in fp32 (MLX needs ``precise=True`` for that)."""

    @abc.abstractmethod
    def gelu(self, x: Array) -> Array:
        """Exact (erf) GELU, as the book uses."""

    @abc.abstractmethod
    def silu(self, x: Array) -> Array: ...

    @abc.abstractmethod
    def dropout(self, x: Array, p: float) -> Array:
        """Inverted dropout with the framework's RNG (training only; no cross-backend parity)."""

    @abc.abstractmethod
    def cross_entropy(self, logits: Array, targets: Array, mask: Array | None = None) -> Array:
        """Mean cross-entropy over all positions, computed in fp32; returns a scalar array.

        With ``mask`` (0/1, the targets' shape) only the positions it marks count: the sum of
        their losses over their number (0 when none is marked), as a chat's assistant tokens.

        For (B, T) targets it is the mean over rows of each row's mean (the same number, summed
        hierarchically): a batch split evenly across data-parallel ranks then averages to the
        whole batch's loss to within an ulp, where one flat fp32 sum drifted by ~10 ulps.
        """

    # --- training ----------------------------------------------------------------------------
    @abc.abstractmethod
    def value_and_grad(
        self, fn: Callable[..., Array], compile: bool = False
    ) -> Callable[..., tuple[Array, Params]]:
        """``fn(params, *args) -> scalar`` becomes ``(params, *args) -> (scalar, grads)``.

        ``compile=True`` runs it through the framework's graph compiler (slow to start: 25-50 s).
        """

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (a pure function of arrays and dicts of arrays) through the framework's graph
        compiler; ``--compile`` compiles the optimizer step with it. Eager where there is none."""
        return fn

    @abc.abstractmethod
    def clip_grad_norm(self, grads: Params, max_norm: float) -> tuple[Params, Array]:
        """Scale grads so their global L2 norm is at most ``max_norm`` (computed in fp32).

        Returns the clipped grads and the norm *before* clipping, as torch's ``clip_grad_norm_``.
        The scale is ``min(1, max_norm / (norm + 1e-6))`` on both backends.
        """

    @abc.abstractmethod
    def adamw(self, params: Params, config: AdamWConfig) -> Optimizer: ...

    # --- data parallel ---------------------------------------------------------------------
    dist: ProcessGroup = ProcessGroup()  # the one-process group until init_distributed

    def init_distributed(self) -> ProcessGroup:
        """Join the process group a launcher (torchrun, mlx.launch) started this process in, or
        a one-process group when none did. The result is also ``self.dist``."""
        self.dist = ProcessGroup(self)
        return self.dist

    def trainable(self, params: Params) -> Params:
        """Parameters ready for training (torch: leaf tensors that require grad)."""
        return params

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """No autograd bookkeeping inside (torch's ``inference_mode``)."""
        yield

    # --- scalars and sync --------------------------------------------------------------------
    def native_bf16(self) -> tuple[bool, str]:
        """Whether this device computes bf16 natively, and why (for ``--precision auto``)."""
        return False, "unknown device"

    def item(self, x: Array) -> float:
        """A scalar array as a Python float (this forces evaluation: a host sync)."""
        return float(x.item())

    def eval(self, *xs: Any) -> None:
        """Force pending computation (MLX is lazy); a no-op where execution is eager."""
        return None

    def synchronize(self) -> None:
        """Wait for the device to finish (for timing); a no-op on the CPU."""
        return None

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory measurement (see ``peak_memory``)."""
        return None

    def peak_memory(self) -> int | None:
        """Bytes the framework's allocator held at most since ``reset_peak_memory``, or None
        where the framework keeps no such counter (torch on the CPU: measure the process RSS)."""
        return None

    @contextlib.contextmanager
    def no_grad(self) -> Iterator[None]:
        """No autograd recording inside (an optimizer's arithmetic on parameters); unlike
        ``inference`` the arrays made here may later be leaves of a backward pass."""
        yield

    @abc.abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the framework RNG (dropout only: weights and batches come from numpy)."""

    def describe(self) -> str:
        if self.device == "cpu" and self.threads:
            return f"{self.name} on cpu ({self.threads} threads: {self.threads_reason})"
        return f"{self.name} on {self.device}"
