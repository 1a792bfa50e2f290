"""L2L: meta-training of the coordinatewise LSTM optimizer (Andrychowicz et al., NeurIPS 2016).

* `L2LMetaModule`: the `LightningModule` that meta-trains the network of `LSTMOptimizer` over a
  task family by truncated BPTT; ``module.save_pretrained(path)`` exports it.
* `MNISTMLPFamily`: the paper's MNIST MLP tasks, read from a data folder (for recipes).
* `ParallelTasks`, `InnerState`, `start_inner_loop`, `inner_step`, `run_unroll`, `loss_curve`: the
  torch-only inner loop it differentiates, usable without a Trainer.
"""

from __future__ import annotations

from lightning_automl.l2l.meta_module import L2LMetaModule
from lightning_automl.l2l.mnist_family import MNISTMLPFamily
from lightning_automl.l2l.unroll import (
    InnerState,
    ParallelTasks,
    inner_step,
    loss_curve,
    run_unroll,
    start_inner_loop,
)

__all__ = [
    "InnerState",
    "L2LMetaModule",
    "MNISTMLPFamily",
    "ParallelTasks",
    "inner_step",
    "loss_curve",
    "run_unroll",
    "start_inner_loop",
]
