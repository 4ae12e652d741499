"""mygpt/fileio.py on its own: atomic files and directories, modes, errors, stale temp files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mygpt.errors import MygptError
from mygpt.fileio import atomic_directory, atomic_write, atomic_write_bytes
from tests import faults


def test_writer_exception_keeps_old_file_and_leaves_nothing(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"old")

    def bad(f):
        f.write(b"half")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        atomic_write(p, bad)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_stale_named_temp_of_a_dead_process_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (tmp_path / f".f.{dead}.tmp").write_bytes(b"left by a SIGKILL")
    atomic_write_bytes(tmp_path / "f", b"new")
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_directory_replaces_as_a_whole(tmp_path):
    d = tmp_path / "export"
    with atomic_directory(d) as new:
        new.write_bytes("a.json", b"1")
    assert sorted(os.listdir(d)) == ["a.json"]
    d.chmod(0o750)
    with pytest.raises(RuntimeError), atomic_directory(d) as new:
        new.write_bytes("a.json", b"2")
        raise RuntimeError("export failed half-way")
    assert (d / "a.json").read_bytes() == b"1" and os.listdir(tmp_path) == ["export"]
    with atomic_directory(d) as new:
        new.write_bytes("b.json", b"3")
        new.write_text("c.txt", "é")
    assert sorted(os.listdir(d)) == ["b.json", "c.txt"] and os.listdir(tmp_path) == ["export"]
    assert (d / "c.txt").read_text(encoding="utf-8") == "é"
    assert d.stat().st_mode & 0o777 == 0o750  # the replaced directory's mode is kept


def test_atomic_directory_files_have_no_name_until_the_end(tmp_path):
    """What a SIGKILL part-way would leave: nothing beside the old directory."""
    d = tmp_path / "export"
    with atomic_directory(d) as new:
        new.write_bytes("a.bin", b"x" * 100_000)
        assert os.listdir(tmp_path) == []
    assert os.listdir(d) == ["a.bin"]


@pytest.mark.skipif(not faults.HAS_PROC, reason="the patched os.write reads /proc")
def test_atomic_directory_on_a_full_disk(tmp_path):
    d = tmp_path / "export"
    with atomic_directory(d) as new:
        new.write_bytes("w.bin", b"x" * 10_000)
    full = faults.patched_enospc(tmp_path, 3000)
    with full, pytest.raises(MygptError, match="no space left") as e, atomic_directory(d) as new:
        new.write_bytes("w.bin", b"y" * 10_000)
    assert f"writing {d} (the previous export is unchanged)" in str(e.value)
    assert (d / "w.bin").read_bytes() == b"x" * 10_000 and os.listdir(tmp_path) == ["export"]


@pytest.mark.parametrize("make", ["missing", "file", "readonly"])
def test_atomic_directory_refuses_before_any_work(tmp_path, make):
    d = tmp_path / "no" / "export" if make == "missing" else tmp_path / "export"
    if make == "file":
        d.write_bytes(b"")
    elif make == "readonly":
        d.mkdir(mode=0o555)
    want = {"missing": "does not exist — create it first", "file": "is a file — pass a directory",
            "readonly": "is read-only — make it writable"}[make]  # fmt: skip
    ran = []
    with pytest.raises(MygptError, match=want), atomic_directory(d):
        ran.append(1)
    assert not ran and not (tmp_path / "no").exists()


def test_atomic_directory_replaces_the_current_directory_named_dot(tmp_path, monkeypatch):
    d = tmp_path / "export"
    d.mkdir()
    monkeypatch.chdir(d)
    with atomic_directory(".") as new:
        new.write_bytes("a.json", b"1")
    assert os.listdir(tmp_path) == ["export"] and os.listdir(d) == ["a.json"]
