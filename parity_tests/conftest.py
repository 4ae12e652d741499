"""Fixtures for the parity tests: each backend on the CPU, paired with the reference.

A backend that isn't installed skips its tests (with the reason) instead of failing: a machine
with only torch, or only MLX, still runs everything that backend can be checked against (numpy).
"""

from __future__ import annotations

import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.parity import Row, format_table, reference_ops

#: the backends every test is parametrised over (CPU: the device every machine has)
BACKEND_NAMES = ("torch", "mlx")


def backend_or_skip(name: str, device: str = "cpu"):
    if name not in available_backends():
        pytest.skip(f"the {name} backend is not installed")
    return get_backend(name, device)


@pytest.fixture(params=BACKEND_NAMES)
def pair(request):
    """``(reference or None, candidate)``: the reference is paired with numpy only (None)."""
    cand = backend_or_skip(request.param)
    ref = reference_ops()
    return (None if cand is ref else ref), cand


@pytest.fixture
def cross_pair(pair):
    """A pair with two different backends (model-level checks have no numpy reference)."""
    ref, cand = pair
    if ref is None:
        pytest.skip(f"{cand.name} is the reference: model-level checks need a second backend")
    return ref, cand


def assert_rows_pass(rows: list[Row]) -> None:
    """Every comparison passed (and there was at least one: an empty check proves nothing)."""
    assert rows, "the check made no comparison"
    failed = [r for r in rows if not r.passed]
    assert not failed, "parity failures:\n" + format_table(failed)


@pytest.fixture
def check_rows():
    return assert_rows_pass
