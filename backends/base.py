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
from dataclasses import dataclass, field
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


@dataclass(eq=False)
class Positions:
    """Where a forward pass's new tokens sit: row b's token t is at ``start + t`` (one start for
    every row), or at ``start[b] + t`` (a start per row: batched decoding).

    Made once per forward pass by its cache; every layer passes the same object, so a backend
    keeps the step's tables (rotations, write indices) in ``tables`` at first use instead of
    making them again at each layer: a decoded token is ~100 tiny ops, each costing more to
    launch than to compute.
    """

    start: int | np.ndarray
    length: int  # new tokens per row
    tables: dict = field(default_factory=dict)

    @property
    def per_row(self) -> bool:
        return not isinstance(self.start, int)


@dataclass(eq=False)
class Mask:
    """Which keys a query sees: the one :meth:`Ops.attention`'s ``mask``. ``None`` there means
    causal, aligned to the last key (query i of Tq sees keys ``j <= Tk - Tq + i``).

    ``lengths``: each row its own number of valid keys in a buffer of fixed length (batched
    decoding): row b's query i sees keys ``j <= lengths[b] - Tq + i``. ``window``: besides, only
    the last ``window`` keys up to that one (a sliding window). ``tables`` are the backend's,
    made at first use and shared by every layer of the step.
    """

    lengths: np.ndarray | None = None
    window: int | None = None
    tables: dict = field(default_factory=dict)

    def sees(self, batch: int, tq: int, tk: int) -> np.ndarray:
        """The mask as booleans, (batch, 1, tq, tk): True where query i of row b sees key j
        (no ``lengths``: every row has all ``tk`` keys)."""
        lengths = np.full(batch, tk) if self.lengths is None else self.lengths
        last = np.asarray(lengths, dtype=np.int64)[:, None, None, None] - tq
        last = last + np.arange(tq)[:, None]  # (B, 1, tq, 1): each query's last key
        keys = np.arange(tk)
        seen = keys <= last
        if self.window is not None:
            seen &= keys > last - self.window
        return seen


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
    #: whether ``write``/``write_kv`` change the buffer itself (torch), so views of it stay current
    writes_in_place: bool = False

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
    def quantized(self, qt: Any) -> Any:
        """A ``mygpt.quant.QuantizedTensor`` (ggml's Q8_0/Q4_0 blocks) on this device, kept in its
        blocks: a weight that ``cast``, ``concat`` (rows), ``linear``, ``residual_linear``,
        ``embedding`` and ``to_numpy`` take wherever they take a float one."""

    @abc.abstractmethod
    def _host_numpy(self, x: Array) -> np.ndarray:
        """A numpy copy of a float32 (or integer) array: a snapshot, never a view."""

    def asarray(self, x: np.ndarray | Sequence, dtype: str | None = None) -> Array:
        """A numpy array (or nested list) as a framework array on this backend's device."""
        a = self._from_numpy(np.asarray(x))
        return self.cast(a, dtype) if dtype else a

    def asarray_for_one_row(self, x: np.ndarray) -> Array:
        """A linear's (out, in) weight held the way this backend multiplies one row by it fastest:
        the same values and shape as :meth:`asarray`'s, maybe another memory layout. A layout's
        kernel rounds its own way, so a model is held one way for all its paths;
        ``mygpt.api.Model`` asks for this where a model decodes one row at a time."""
        return self.asarray(x)

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
        return x.reshape(*shape)  # (torch parses a tuple argument slower: ~0.5 us a call)

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
    def rope(
        self, x: Array, positions: Positions | int, base: float, inv_freq: np.ndarray | None = None,
        heads: int | None = None,
    ) -> Array:  # fmt: skip
        """Rotary embedding on (B, H, T, D), interleaved pairs (2i, 2i+1), at ``positions`` (an
        int: every row's tokens at offset..offset+T).

        ``inv_freq`` (D/2 float32, e.g. Llama 3's scaled frequencies) replaces ``base ** (-2i/D)``.
        ``heads``: rotate only the first ``heads`` of axis 1 and return the rest as they are (the
        model's Q|K|V heads: Q and K turn, V does not, and K|V stay one array for the cache).
        """

    @abc.abstractmethod
    def write_kv(self, buf: Array, kv: Array, rows: Sequence[int], at: Positions) -> Array:
        """Write new keys and values into a (2, B, Hkv, T, D) buffer (keys, then values) and
        return it (MLX's may be a new array; torch writes in place).

        ``kv`` is (n, 2 Hkv, t, D), the keys' heads then the values'; its row i lands in buffer
        row ``rows[i]`` at positions ``at.start[i] .. at.start[i] + t - 1``."""

    @abc.abstractmethod
    def attention(
        self, q: Array, k: Array, v: Array, scale: float, dropout: float = 0.0,
        mask: Mask | None = None,
    ) -> Array:  # fmt: skip
        """Attention on (B, H, Tq, D) x (B, Hkv, Tk, D), Hkv dividing H (GQA): the model's one
        attention op, for training, prefill and (batched) decoding alike.

        Query head h reads K/V head ``h // (H // Hkv)`` (the book's ``repeat_interleave`` order).
        ``mask`` is one of the :class:`Mask` kinds; ``None`` is causal aligned to the *end* of the
        keys, so with Tq < Tk (cached decoding) the last query sees every key, as it would in a
        full forward pass. ``dropout`` > 0 drops attention probabilities after the softmax (the
        book's only dropout; training only). Each backend picks its kernel inside.
        """

    @abc.abstractmethod
    def softmax(self, x: Array, axis: int = -1) -> Array:
        """Softmax computed in fp32 (MLX needs ``precise=True`` for that)."""

    @abc.abstractmethod
    def gelu(self, x: Array) -> Array:
        """Exact (erf) GELU, as the book uses."""

    @abc.abstractmethod
    def gelu_tanh(self, x: Array) -> Array:
        """The tanh-approximated GELU (GPT-2's ``gelu_new``, Gemma's ``gelu_pytorch_tanh``),
        computed in fp32 for bf16 inputs as torch computes it."""

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

    def fused_adamw(self, params: Params, config: AdamWConfig) -> Optimizer | None:
        """The framework's own AdamW where it computes ``mygpt.optim.OpsAdamW``'s formula
        faster (torch's fused kernel); None where the one written against ``Ops`` is the one."""
        return None

    def sqrt(self, x: Array) -> Array:
        return x**0.5

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
