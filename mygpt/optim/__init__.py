"""Optimizers, written once against ``Ops``: AdamW (torch's fused kernel where it is the same
formula) and Muon beside it (``--optimizer muon``)."""

from mygpt.backends.base import AdamWConfig, Optimizer
from mygpt.optim.adamw import OpsAdamW, adamw
from mygpt.optim.muon import OPTIMIZERS, Muon, MuonAdamW, MuonConfig, make_optimizer

__all__ = [
    "OPTIMIZERS",
    "AdamWConfig",
    "Muon",
    "MuonAdamW",
    "MuonConfig",
    "Optimizer",
    "OpsAdamW",
    "adamw",
    "make_optimizer",
]
