"""``Ops`` is a concrete base: declared attributes, and the code both backends used to repeat
(dtype maps, asarray/to_numpy/cast/dtype_of/reshape, device resolution) lives in it once."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.backends.base import DTYPES, Ops
from mygpt.errors import MygptError

BACKENDS = available_backends()
SHARED = ("asarray", "to_numpy", "cast", "dtype_of", "reshape", "item", "describe")


def _classes():
    out = []
    if "torch" in BACKENDS:
        from mygpt.backends.torch_backend import TorchOps

        out.append(TorchOps)
    if "mlx" in BACKENDS:
        from mygpt.backends.mlx_backend import MLXOps

        out.append(MLXOps)
    return out


def test_the_base_declares_what_shared_code_reads():
    for attr in ("name", "device", "device_reason", "threads", "threads_reason"):
        assert attr in Ops.__annotations__, attr


@pytest.mark.parametrize("name", BACKENDS)
def test_each_backend_fills_the_declared_attributes(name):
    ops = get_backend(name, "cpu")
    assert (ops.name, ops.device) == (name, "cpu")
    assert ops.device_reason == "requested"
    assert (ops.threads is None) == (ops.threads_reason == "")
    assert set(ops.FRAMEWORK_DTYPES) == set(DTYPES)


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.__name__)
def test_the_shared_code_is_not_repeated_in_a_backend(cls):
    assert not [m for m in SHARED if m in cls.__dict__]


@pytest.mark.parametrize("name", BACKENDS)
def test_dtype_helpers_round_trip(name):
    ops = get_backend(name, "cpu")
    x = np.array([[1.0, 1.0 + 2**-9, -3.25]], dtype=np.float32)  # 1 + 2^-9 is not a bf16
    b = ops.asarray(x, "bfloat16")
    assert ops.dtype_of(b) == "bfloat16"
    back = ops.to_numpy(b)
    assert back.dtype == np.float32 and back.tolist() == [[1.0, 1.0, -3.25]]
    f = ops.cast(b, "float32")
    assert ops.dtype_of(f) == "float32" and ops.cast(f, "float32") is f  # no copy when it is
    assert ops.to_numpy(ops.reshape(ops.asarray(x), (3, 1))).shape == (3, 1)
    assert ops.dtype_of(ops.asarray(np.arange(3))) == str(ops.asarray(np.arange(3)).dtype)
    with pytest.raises(MygptError, match="unknown dtype 'float16'"):
        ops.cast(f, "float16")


def _resolve(requested, cuda=False, mps=False):
    me = SimpleNamespace(name="torch", device_reason="")
    gpus = [("cuda", cuda, "CUDA"), ("mps", mps, "MPS")]
    device = Ops._resolve_device(me, requested, gpus, "use --device cpu")
    return device, me.device_reason


@pytest.mark.parametrize(
    "requested, cuda, mps, want",
    [
        ("auto", True, True, ("cuda", "CUDA is available")),
        ("auto", False, True, ("mps", "MPS is available")),
        ("auto", False, False, ("cpu", "torch sees no CUDA or MPS device here")),
        ("cpu", True, True, ("cpu", "requested")),
        ("gpu", False, True, ("mps", "requested")),
        ("cuda", True, False, ("cuda", "requested")),
    ],
)
def test_device_resolution(requested, cuda, mps, want):
    assert _resolve(requested, cuda, mps) == want


@pytest.mark.parametrize(
    "requested, cuda, mps, message",
    [
        ("gpu", False, False, "--device gpu: torch sees no CUDA or MPS device — use --device cpu"),
        ("mps", True, False, "--device mps: torch sees no MPS device — use --device cpu"),
        ("cuda", False, True, "--device cuda: torch sees no CUDA device — use --device cpu"),
    ],
)
def test_an_unavailable_device_is_a_one_line_error(requested, cuda, mps, message):
    with pytest.raises(MygptError) as e:
        _resolve(requested, cuda, mps)
    assert str(e.value) == message


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.__name__)
def test_every_backend_method_takes_the_interfaces_arguments(cls):
    """A backend's override of an ``Ops`` method takes the same parameters, in the same order,
    with the same defaults: the model calls the interface, so a backend that renames or drops an
    argument would break only on that backend."""
    import inspect

    for name, base_fn in inspect.getmembers(Ops, inspect.isfunction):
        if name.startswith("_") or name not in vars(cls):
            continue
        want = inspect.signature(base_fn).parameters
        got = inspect.signature(getattr(cls, name)).parameters
        assert [(p.name, p.kind, p.default) for p in got.values()] == [
            (p.name, p.kind, p.default) for p in want.values()
        ], f"{cls.__name__}.{name}{inspect.signature(getattr(cls, name))} differs from Ops"
