"""Learned optimizers as ``torch.optim.Optimizer``.

* `LSTMOptimizer`: the coordinatewise LSTM optimizer of L2L (Andrychowicz et al., NeurIPS 2016),
  usable in ``configure_optimizers`` and in a LightningCLI recipe's ``optimizer:`` key.
* `CoordinateLSTM`: its network ``m``, a plain ``nn.Module`` that meta-training calls
  functionally; `preprocess_gradient`: the paper's gradient preprocessing.
"""

from __future__ import annotations

from lightning_automl.optim.coordinate_lstm import CoordinateLSTM, preprocess_gradient
from lightning_automl.optim.lstm import LSTMOptimizer

__all__ = ["CoordinateLSTM", "LSTMOptimizer", "preprocess_gradient"]
