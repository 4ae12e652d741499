"""The progress display: a bar with the live numbers on a terminal, plain lines otherwise."""

from __future__ import annotations

from mygpt.progress import Progress


def test_bar_shows_step_loss_val_lr_and_speed(capsys):
    p = Progress(total=100, enabled=True)
    p.update(10, loss=2.5, lr=1e-3, tokens_per_s=12345.0)
    p.update(20, loss=2.25, val=2.4, lr=5e-4)
    p.write("step 20: loss = 2.2500")
    p.close()
    out, err = capsys.readouterr()
    assert "step 20: loss = 2.2500" in out  # result lines stay on stdout
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    for piece in ("20/100", "loss=2.2500", "val=2.4000", "lr=5.00e-04", "tok/s=12,345"):
        assert piece in last, (piece, last)


def test_plain_lines_without_a_terminal(capsys):
    p = Progress(total=100, enabled=False)
    p.update(10, loss=2.5)
    p.write("step 10: loss = 2.5000")
    p.close()
    out, err = capsys.readouterr()
    assert out == "step 10: loss = 2.5000\n" and err == ""


def test_a_terminal_without_a_size_still_gets_a_bar(monkeypatch):
    """A fresh pseudo-terminal reports 0 columns; tqdm sized by it printed nothing at all."""
    import os
    import pty
    import select
    import sys

    master, slave = pty.openpty()
    assert os.get_terminal_size(slave).columns == 0
    with os.fdopen(slave, "w") as term:
        monkeypatch.setattr(sys, "stderr", term)
        p = Progress(total=100, enabled=True)
        p.update(10, loss=2.5, lr=1e-3)
        p.bar.refresh()
        term.flush()
        shown = b""
        while select.select([master], [], [], 0.5)[0]:  # a pty hands data over asynchronously
            shown += os.read(master, 65536)
        p.close()
    shown = shown.decode()
    os.close(master)
    assert "10/100" in shown and "loss=2.5000" in shown, repr(shown)
