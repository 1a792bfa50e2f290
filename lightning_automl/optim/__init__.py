"""Learned optimizers as ``torch.optim.Optimizer``.

* `LSTMOptimizer`: the coordinatewise LSTM optimizer of L2L (Andrychowicz et al., NeurIPS 2016),
  usable in ``configure_optimizers`` and in a LightningCLI recipe's ``optimizer:`` key.
* `CoordinateLSTM`: its network ``m``, a plain ``nn.Module`` that meta-training calls
  functionally; `preprocess_gradient`: the paper's gradient preprocessing.
* `TypedCoordinateLSTM`: one such network per type of parameter (the paper's section 3.3).
"""

from __future__ import annotations

from lightning_automl.optim.coordinate_lstm import CoordinateLSTM, preprocess_gradient
from lightning_automl.optim.lstm import LSTMOptimizer
from lightning_automl.optim.typed_lstm import TypedCoordinateLSTM

__all__ = ["CoordinateLSTM", "LSTMOptimizer", "TypedCoordinateLSTM", "preprocess_gradient"]
