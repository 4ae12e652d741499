"""What every parity check shares: the tolerances, the result row and the check record.

Tolerances are the table in docs/parity.md (fp32: 1e-5 on ops and the loss, 1e-4 on gradients
and 30-step parameters; bf16: about 2 ulp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mygpt.backends.base import DTYPES, Ops

#: forward ops: |cand - ref| <= atol + rtol * |ref| elementwise
OP_TOL = {"float32": (1e-5, 1e-5), "bfloat16": (2e-2, 1.6e-2)}
#: gradients: max |cand - ref| / max |ref|, per tensor
GRAD_TOL = {"float32": 1e-4, "bfloat16": 5e-2}
#: scalar losses: |cand - ref| / max(|ref|, 1) -- relative for the ~41 first loss of the book's
#: init, absolute once the loss is below 1
LOSS_TOL = {"float32": 1e-5, "bfloat16": 2e-3}
#: parameters after the fp32 training run, max |cand - ref| / max |ref| per tensor
TRAIN_PARAM_TOL = 1e-4

#: the ``vs`` of a comparison against the float64 numpy references
NUMPY = "numpy-f64"


@dataclass(frozen=True)
class Row:
    """One comparison: ``device`` is the candidate (``backend:device``), ``vs`` what it met."""

    name: str
    dtype: str
    device: str
    max_abs: float
    max_rel: float
    tolerance: str
    passed: bool
    vs: str = ""


#: ``check(ref, cand, dtype) -> rows``; ``ref`` is None when the candidate is the reference
Check = Callable[[Ops | None, Ops, str], list[Row]]


@dataclass(frozen=True)
class ParityCheck:
    """A named check, the dtypes it applies to, and whether ``--quick`` keeps it.

    ``slow`` checks (a graph compile: 25-50 s on a small CPU) run only when asked for
    (``mygpt parity --slow``); ``kind`` groups checks for the tests.
    """

    name: str
    fn: Check
    dtypes: tuple[str, ...] = DTYPES
    quick: bool = True
    kind: str = "op"  # "op" | "model" | "optimizer" | "train" | "step" | "cache"
    slow: bool = False

    def __call__(self, ref: Ops | None, cand: Ops, dtype: str) -> list[Row]:
        return self.fn(ref, cand, dtype)


def label(ops: Ops) -> str:
    return f"{ops.name}:{ops.device}"
