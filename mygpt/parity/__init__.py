"""Cross-backend numerical parity: the checks behind ``parity_tests/`` and ``mygpt parity``.

Every check is a plain function ``check(ref, cand, dtype) -> list[Row]``: it runs the same seeded
inputs through a *candidate* backend and, when given one, a *reference* backend (torch on the CPU,
or MLX when torch is absent), and compares. Op-level checks also compare against an independent
float64 numpy implementation, so a mistake both frameworks happen to share still fails; the
training-step checks compare each backend's real ``make_train_step`` against a float64
composition of its own gradients. With ``ref=None`` a check only does what needs no second
backend.

The package, one job per module:

* ``core``: tolerances (the table in docs/parity.md), ``Row``, ``ParityCheck``;
* ``compare``: the comparators that turn (got, want) into a row;
* ``reference``: the float64 numpy references (ops, clip, AdamW);
* ``inputs``: seeded inputs, the tiny parity model, copies in and out of a backend;
* ``op_checks``, ``model_checks``, ``train_checks``: the checks;
* ``registry``: all checks in table order, ``--quick`` and ``--slow``;
* ``runner``: which backends are tested against which reference; ``table``: the printout;
* ``cli``: the ``mygpt parity`` command.

Nothing here imports a framework: it all goes through ``mygpt.backends``, exactly like the model.
"""

from __future__ import annotations

from mygpt.parity.core import (
    GRAD_TOL,
    LOSS_TOL,
    OP_TOL,
    TRAIN_PARAM_TOL,
    ParityCheck,
    Row,
    label,
)
from mygpt.parity.inputs import tiny_config
from mygpt.parity.registry import CHECKS, checks
from mygpt.parity.runner import available_ops, reference_ops, run_check, run_parity
from mygpt.parity.table import format_table

__all__ = [
    "CHECKS",
    "GRAD_TOL",
    "LOSS_TOL",
    "OP_TOL",
    "TRAIN_PARAM_TOL",
    "ParityCheck",
    "Row",
    "available_ops",
    "checks",
    "format_table",
    "label",
    "reference_ops",
    "run_check",
    "run_parity",
    "tiny_config",
]
