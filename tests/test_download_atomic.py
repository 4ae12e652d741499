"""``mygpt data download`` writes each split through fileio.atomic_write: while a split is being
written it has no name in the output directory, so a SIGKILL part-way leaves no temporary file."""

from __future__ import annotations

import os

from mygpt.data import download as dl


def test_a_split_being_written_has_no_name_yet(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n" * 1000, encoding="utf-8")
    out = tmp_path / "out"
    seen = []
    add = dl.SplitWriter.add

    def watching_add(self, texts):
        add(self, texts)
        self._fh.flush()  # the bytes are in the (unnamed) file now
        seen.append(sorted(os.listdir(out)))

    monkeypatch.setattr(dl.SplitWriter, "add", watching_add)
    dl.download(str(src), out, quiet=True)
    assert seen and all(names == [] for names in seen), seen  # a kill here leaves nothing
    assert (out / "train.txt").read_text(encoding="utf-8") == "alpha\n" * 1000
