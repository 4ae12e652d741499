"""Training: ``train(TrainConfig(...))`` runs (or resumes) a run on one process or N.

The parts, each in its own module: ``config`` (the settings), ``setup`` (backend, device,
process group, precision), ``data`` (tokenizer, token cache, samplers, each rank's rows),
``state`` (weights and optimizer, fresh or resumed), ``step`` (one optimizer step),
``monitor`` (progress and metrics), ``checkpointing`` (saves), ``signals`` (Ctrl-C) and
``loop`` (the loop that ties them together). ``--dpo`` swaps in ``dpo_data`` (preference pairs)
and ``dpo`` (the reference, the DPO step and its validation).
"""

from mygpt.train.checkpointing import load_resumable
from mygpt.train.config import TrainConfig, TrainResult, resume_config
from mygpt.train.loop import continued_config, evaluate, train
from mygpt.train.step import dropout_seed, make_train_step

__all__ = [
    "TrainConfig",
    "TrainResult",
    "continued_config",
    "dropout_seed",
    "evaluate",
    "load_resumable",
    "make_train_step",
    "resume_config",
    "train",
]
