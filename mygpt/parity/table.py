"""The parity table: rows aligned for a terminal, failures marked, a one-line summary."""

from __future__ import annotations

from collections.abc import Sequence

from mygpt.parity.core import Row

_HEAD = ("op", "dtype", "device", "vs", "max abs err", "max rel err", "tolerance", "pass")
_NUMERIC = {4, 5}


def _cells(r: Row) -> tuple[str, ...]:
    return (
        r.name,
        r.dtype,
        r.device,
        r.vs,
        f"{r.max_abs:.2e}",
        f"{r.max_rel:.2e}",
        r.tolerance,
        "ok" if r.passed else "FAIL",
    )


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table, failures marked, and a one-line summary."""
    body = [_cells(r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(_HEAD, *body)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in _NUMERIC else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [fmt(_HEAD), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    failed = sum(not r.passed for r in rows)
    lines.append("")
    lines.append(
        "max rel err: |err| / (|want| + atol/rtol) elementwise, / max|want| per tensor ('of max'),"
        " / max(|want|, 1) for losses; a row passes when max rel err <= its tolerance"
    )
    if any(r.vs == "itself" for r in rows):
        lines.append(
            "'engaged' rows: the step variant really clipped (max abs err: the smallest gradient "
            "norm) or dropped (the loss gap dropout made); max rel err: threshold / that"
        )
    lines.append(
        f"{len(rows)} comparisons, {failed} failed"
        if failed
        else f"{len(rows)} comparisons, all passed"
    )
    return "\n".join(lines)
