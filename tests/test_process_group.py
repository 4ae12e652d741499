"""The ProcessGroup plumbing shared by both engines, on a simulated world (no launcher needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mygpt.backends import get_backend
from mygpt.backends.distributed import BUCKET_BYTES, PeerLost, ProcessGroup
from mygpt.errors import MygptError


class FakeWorld(ProcessGroup):
    """Rank ``rank`` of ``world`` ranks whose peers all hold ``peer_scale`` x this rank's arrays."""

    def __init__(self, ops, world=2, rank=0, peer_scale=3.0):
        super().__init__(ops)
        self.world_size, self.rank, self.peer_scale = world, rank, peer_scale
        self.calls = 0

    def _all_sum(self, x):
        self.calls += 1
        return x * (1.0 + self.peer_scale * (self.world_size - 1))

    def _all_sum_host(self, x):
        return x * (1.0 + self.peer_scale * (self.world_size - 1))

    def _all_gather_host(self, x):
        return np.stack([x] * self.world_size)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_gradients_are_averaged_in_few_buckets(backend):
    ops = get_backend(backend, "cpu")
    rng = np.random.default_rng(0)
    shapes = {f"w{i}": (64, 33) for i in range(20)}
    shapes["big"] = (BUCKET_BYTES // 4 // 2 + 1, 2)  # alone fills a bucket past the limit
    grads = {k: ops.asarray(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
    group = FakeWorld(ops, world=2, peer_scale=3.0)
    out = group.all_reduce_grads(grads)
    assert list(out) == list(grads)
    assert group.calls == 2  # the big tensor's bucket and one for the 20 small ones
    for k in grads:
        assert tuple(out[k].shape) == shapes[k]
        np.testing.assert_allclose(ops.to_numpy(out[k]), 2.0 * ops.to_numpy(grads[k]), rtol=1e-6)


def test_one_process_group_is_the_identity():
    ops = get_backend("torch", "cpu")
    g = {"a": ops.asarray(np.ones((2, 2), np.float32))}
    group = ProcessGroup(ops)
    assert group.all_reduce_grads(g) is g
    assert group.mean([1.5, 2.0]) == [1.5, 2.0]
    assert group.wait_for_main() is True
    assert group.describe() == "single process"


def test_a_lost_peer_becomes_one_line_naming_it():
    class Broken(FakeWorld):
        def _all_sum_host(self, x):
            raise RuntimeError("[ring] connection to a peer was lost\nmore detail")

    group = Broken(get_backend("torch", "cpu"), world=2, rank=0)
    with pytest.raises(PeerLost) as e:
        group.mean([1.0])
    msg = str(e.value)
    assert "\n" not in msg
    assert "rank 0 lost contact with rank 1 during an all-reduce of the logged losses" in msg
    assert "connection to a peer was lost" in msg and "--resume" in msg


def test_a_hung_peer_ends_the_process_after_the_timeout():
    """A collective that never returns: the watchdog exits with a one-line error, in seconds."""
    code = textwrap.dedent(
        """
        import time
        from mygpt.backends.distributed import ProcessGroup
        class Hung(ProcessGroup):
            world_size, rank = 3, 1
            def _all_sum_host(self, x):
                time.sleep(60)
        Hung().barrier("the checkpoint barrier")
        """
    )
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=50,
        env={**__import__("os").environ, "MYGPT_DIST_TIMEOUT": "2"},
    )
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: rank 1 lost contact with a peer rank (the launcher's log names it) during the "
        "checkpoint barrier (no answer for 2 s; MYGPT_DIST_TIMEOUT sets it) — the last "
        "checkpoint is intact; fix the lost process and rerun with --resume"
    ]


def test_ranks_with_different_weights_are_refused(small_corpus, tmp_path):
    from mygpt.train import TrainConfig
    from mygpt.train.data import load_data
    from mygpt.train.setup import Run
    from mygpt.train.state import check_ranks_agree

    ops = get_backend("torch", "cpu")

    class Disagreeing(FakeWorld):
        def _all_gather_host(self, x):
            other = x.copy()
            other[-1] ^= 1  # the last digest: the initial weights
            return np.stack([x, other])

    tc = TrainConfig.from_flags(
        dict(data=str(small_corpus), output=str(tmp_path / "m.safetensors"))
    )
    run = Run(ops, Disagreeing(ops), "float32")
    rd = load_data(Run(ops, ProcessGroup(ops), "float32"), tc)
    params = {"w": np.zeros(3, np.float32)}
    with pytest.raises(MygptError, match="rank 1 has different initial weights from rank 0"):
        check_ranks_agree(run, tc, rd, params)
    check_ranks_agree(Run(ops, FakeWorld(ops), "float32"), tc, rd, params)  # agreeing: fine


def test_rows_split_the_global_batch_evenly():
    ops = get_backend("torch", "cpu")
    from mygpt.train.setup import Run

    seen = []
    for rank in range(4):
        run = Run(ops, FakeWorld(ops, world=4, rank=rank), "float32")
        seen.extend(range(16)[run.rows(16)])
    assert seen == list(range(16))
