"""The layers are import-linter contracts (pyproject.toml): the core imports nothing above it,
features stand on the core, the CLI on top, and no two sibling modules import each other in a
cycle. These tests run `lint-imports` on the package, and on a copy with one bad import to show
the contracts can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def _lint_with(tmp_path, module: str, line: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on a copy of the package with ``line`` appended to ``module``."""
    root = tmp_path / "copy"
    shutil.copytree(
        REPO / "mygpt", root / "mygpt", symlinks=False, ignore=shutil.ignore_patterns("__pycache__")
    )
    path = root / "mygpt" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    return _lint(root)


def test_a_core_module_importing_a_feature_breaks_a_contract(tmp_path):
    result = _lint_with(tmp_path, "config.py", "from mygpt.train import TrainConfig")
    assert result.returncode != 0
    assert "the core imports nothing above it BROKEN" in result.stdout
    assert "mygpt.config -> mygpt.train" in result.stdout


def test_the_model_importing_a_checkpoint_module_breaks_its_contract(tmp_path):
    result = _lint_with(tmp_path, "cache.py", "from mygpt.checkpoint import load_checkpoint")
    assert result.returncode != 0
    assert (
        "the model is the model: it imports no checkpoint, feature or CLI BROKEN" in result.stdout
    )
