"""Print the fault matrix (write path x fault) as a Markdown table: exit code, message, whether
the previous good file is intact, temporary files left.

    uv run python scripts/fault_matrix.py            # as root: real tmpfs faults
    uv run python scripts/fault_matrix.py --patched  # the patched os.write layer instead

The harness is tests/faults.py (also run by tests/test_faults.py). Exits 1 if any cell fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import faults  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patched", action="store_true", help="never mount; patch os.write")
    args = ap.parse_args()
    os.environ.setdefault("MYGPT_THREADS", "1")
    real = not args.patched and faults.can_mount()
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MYGPT_CACHE_DIR"] = str(Path(tmp) / "cache")
        for i, case in enumerate(faults.CASES):
            inp, golden = faults.prepare(case, Path(tmp) / f"case{i}")
            for fault in faults.FAULTS:
                out = Path(tmp) / f"case{i}" / f"out-{fault}"
                outcomes.append(faults.run_fault(case, fault, inp, golden, out, real_fs=real))
                print(f"{case.name} / {fault}: {'ok' if outcomes[-1].ok else 'FAILED'}",
                      file=sys.stderr, flush=True)  # fmt: skip
    for o in outcomes:  # paths relative to the run's scratch directory, for pasting
        o.message = o.message.replace(tmp + "/", "")
    print(faults.matrix_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
