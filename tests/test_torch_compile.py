"""--compile on the torch backend: the model's loss traces as one graph.

A graph break inside the model splits the step into many small graphs, and a break inside a
function called once per layer (a norm, attention) makes dynamo recompile it per call site until it
hits its recompile limit and falls back to eager: compiling then costs a minute and gains nothing.
``torch._dynamo.explain`` traces without running inductor, so this stays a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from mygpt.backends import available_backends, get_backend
from mygpt.config import ModelConfig
from mygpt.model import init_params, loss_fn

pytestmark = pytest.mark.skipif("torch" not in available_backends(), reason="needs torch")


@pytest.mark.parametrize(
    "arch",
    [
        dict(norm="layer", position="learned"),
        dict(norm="rms", position="rope", num_kv_heads=2, dropout=0.1),
    ],
    ids=["ch17", "ch27+dropout"],
)
def test_the_training_loss_is_one_graph(arch):
    import torch

    ops = get_backend("torch", "cpu")
    cfg = ModelConfig(vocab_size=65, embed_dim=32, num_heads=4, num_layers=2, **arch)
    params = ops.trainable({k: ops.asarray(v) for k, v in init_params(cfg, 0).items()})
    rng = np.random.default_rng(0)
    x, y = (ops.asarray(rng.integers(0, 65, (4, 16))) for _ in range(2))

    def loss_of(p, x, y):
        return loss_fn(ops, cfg, p, x, y, dtype="float32", train=True)

    torch._dynamo.reset()
    report = torch._dynamo.explain(loss_of)(params, x, y)
    reasons = [b.reason.splitlines()[0] for b in report.break_reasons]
    assert report.graph_break_count == 0, reasons
    assert report.graph_count == 1
