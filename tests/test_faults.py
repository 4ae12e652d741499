"""The fault matrix: every path that writes x every fault (see tests/faults.py).

After each fault the command exits non-zero with one ``error: ... — ...`` line and no traceback,
the previous good file still loads bit for bit, and no temporary file is left.
"""

from __future__ import annotations

import pytest

from tests import faults

REAL_FS = faults.can_mount()
# the harness finds a process's open files through /proc (which file a write goes to)
pytestmark = pytest.mark.skipif(not faults.HAS_PROC, reason="fault injection reads /proc")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache: dict[str, tuple] = {}

    def get(case: faults.WriteCase):
        if case.name not in cache:
            cache[case.name] = faults.prepare(case, tmp_path_factory.mktemp("case"))
        return cache[case.name]

    return get


@pytest.mark.parametrize("fault", faults.FAULTS)
@pytest.mark.parametrize("case", faults.CASES, ids=lambda c: c.name.replace(" ", "-"))
def test_fault(case, fault, prepared, tmp_path):
    inp, golden = prepared(case)
    o = faults.run_fault(case, fault, inp, golden, tmp_path / "out", real_fs=REAL_FS)
    print(faults.matrix_table([o]))
    assert not o.traceback, o.message
    assert o.exit_code not in (0, None), o
    if fault != "killed":
        assert o.message.startswith("error: ") and " — " in o.message, o.message
    assert o.intact, o
    assert o.temp_files == 0, o


def test_enospc_from_the_patched_layer(prepared, tmp_path):
    """The fallback for machines where no tmpfs can be mounted gives the same result."""
    case = faults.CASES[0]
    inp, golden = prepared(case)
    o = faults.run_fault(case, "enospc", inp, golden, tmp_path / "out", real_fs=False)
    assert o.ok, o
    assert "no space left" in o.message


def test_eacces_from_the_patched_layer(prepared, tmp_path):
    """Without a mount, root (whom mode bits don't stop) gets EACCES from a patched os.open."""
    case = faults.CASES[5]  # the plot: quick
    inp, golden = prepared(case)
    o = faults.run_fault(case, "eacces_dir", inp, golden, tmp_path / "out", real_fs=False)
    assert o.ok, o
    assert "permission denied" in o.message


EXPORT = next(c for c in faults.CASES if c.name == "HF export directory")


@pytest.mark.parametrize("fault", ["enospc", "eacces_dir"])
def test_export_directory_under_the_patched_layer(fault, prepared, tmp_path):
    """The export directory meets the patched os.write / os.open faults like a real tmpfs."""
    inp, golden = prepared(EXPORT)
    o = faults.run_fault(EXPORT, fault, inp, golden, tmp_path / "out", real_fs=False)
    assert o.ok, o
    assert ("no space left" if fault == "enospc" else "permission denied") in o.message


def test_an_export_killed_into_a_new_directory_leaves_no_directory(prepared, tmp_path):
    """No previous export: a SIGKILL part-way leaves neither OUTDIR nor a temporary directory."""
    inp, _ = prepared(EXPORT)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["export", str(inp / "src1.safetensors"), str(out / "hf")]
    assert faults.run_killed(argv, out, inp) == -9  # killed while stalled in a write
    assert list(out.iterdir()) == []


OLLAMA = next(c for c in faults.CASES if c.name == "Ollama Modelfile")


def test_a_modelfile_that_fails_keeps_the_previous_gguf(prepared, tmp_path):
    """The disk fills exactly when the new GGUF is complete: the Modelfile's write fails, and
    the GGUF is not published either, so the previous pair stays (the Modelfile names the GGUF
    and holds that model's template)."""
    import dataclasses

    inp, golden = prepared(OLLAMA)
    gguf_bytes = (golden / "model.gguf").read_bytes()
    case = dataclasses.replace(OLLAMA, leave=len(gguf_bytes))  # the new GGUF's size: the same
    o = faults.run_fault(case, "enospc", inp, golden, tmp_path / "out", real_fs=False)
    assert o.ok, o
    assert "no space left" in o.message, o.message
    assert "(the previous Modelfile is unchanged)" in o.message, o.message
    assert (tmp_path / "out" / "model.gguf").read_bytes() == gguf_bytes
