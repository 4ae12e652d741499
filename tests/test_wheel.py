"""The wheel installs ``mygpt`` alone, and an installed mygpt works beside a user's own
``backends/`` package (issue 15: a top-level ``backends`` in the wheel was shadowed by one in the
working directory and could be overwritten by any other wheel shipping that name).

Built and installed offline: ``uv build`` (sdist, then the wheel from it), then ``uv pip install --no-deps`` into a fresh
venv whose dependencies come from this checkout's venv through a ``.pth`` line (a ``.pth`` file's
own path entries are not scanned for further ``.pth`` files, so the checkout's editable install
does not leak in: the test asserts it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT.parent / "shared" / "fixtures" / "book"

pytestmark = pytest.mark.slow

USER_BACKENDS = '''"""A user's own package that happens to be called backends."""
USERS_OWN = True
'''

CHECK_LOAD = f"""
import sys, numpy as np, backends, mygpt
assert backends.USERS_OWN, "not the user's backends"
assert "site-packages" in mygpt.__file__ and {str(ROOT)!r} not in mygpt.__file__, mygpt.__file__
assert {str(ROOT)!r} not in sys.path, sys.path
ref = np.load({str(BOOK / "part1_ch18.npz")!r})
for backend in ("torch", "mlx"):
    m = mygpt.load({str(BOOK / "part1_ch18.ckpt")!r}, backend=backend, device="cpu")
    err = np.abs(m.logits(ref["input_ids"][0]) - ref["logits"][0]).max()
    assert err < 1e-4, (backend, err)
    print(backend, "max |logit - book| =", err)
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _build_wheel(uv: str, out: Path, env: dict[str, str]) -> Path:
    # sdist, then the wheel from the unpacked sdist: the route that once lost the symlinked
    # mygpt/backends (hatchling's sdist drops directory symlinks)
    _run([uv, "build", "--offline", "--out-dir", str(out), str(ROOT)], ROOT, env)
    (wheel,) = out.glob("mygpt-*.whl")
    return wheel


def _venv_with_wheel(uv: str, wheel: Path, where: Path, env: dict[str, str]) -> Path:
    _run([sys.executable, "-m", "venv", "--without-pip", str(where)], where.parent, env)
    python = where / "bin" / "python"
    _run(
        [uv, "pip", "install", "--offline", "--no-deps", "--python", str(python), str(wheel)],
        where.parent,
        env,
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            where.parent,
            env,
        ).strip()
    )
    # the dependencies (numpy, torch, mlx, ...) from this checkout's venv, without its mygpt
    (site / "_mygpt_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_holds_mygpt_only_and_works_beside_a_users_backends(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    if not (BOOK / "part1_ch18.ckpt").exists():
        pytest.skip("the book fixtures (../shared/fixtures/book) are not here")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    wheel = _build_wheel(uv, tmp_path / "dist", env)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"mygpt", wheel.name.split("-py")[0] + ".dist-info"}, tops
    assert {"mygpt/backends/base.py", "mygpt/backends/torch_backend.py"} <= set(names)
    python = _venv_with_wheel(uv, wheel, tmp_path / "venv", env)

    work = tmp_path / "work"
    (work / "backends").mkdir(parents=True)
    (work / "backends" / "__init__.py").write_text(USER_BACKENDS)
    out = _run([str(python), "-c", CHECK_LOAD], work, env)
    assert out.count("max |logit - book|") == 2
    # the console script, with the user's directory on the import path as well
    parity = _run(
        [str(python.parent / "mygpt"), "parity", "--quick"], work, env | {"PYTHONPATH": str(work)}
    )
    assert "all passed" in parity and "step grad-accum 2" in parity
