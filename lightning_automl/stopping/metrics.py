"""Error measures for sparse recovery."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NMSEDecibels", "nmse_db"]


def nmse_db(estimate: Tensor, target: Tensor) -> float:
    """Normalised mean squared error in dB, `10 log10(sum ||x - x*||^2 / sum ||x*||^2)`.

    The sums run over the whole batch, as in the LISTA-stop experiment (Chen et al., ICML 2020):
    the ratio of expectations, not the mean of per-sample ratios.

    Args:
        estimate: Estimates `x`, e.g. ``(B, n)``.
        target: Ground truth `x*`, of the same shape.

    Raises:
        ValueError: The shapes differ, or ``target`` is all zeros.
    """
    if estimate.shape != target.shape:
        raise ValueError(
            f"estimate and target must have the same shape, got {tuple(estimate.shape)} and "
            f"{tuple(target.shape)}"
        )
    energy = target.square().sum().item()
    if energy == 0:
        raise ValueError("target must not be all zeros (its NMSE is undefined)")
    return 10 * math.log10((estimate - target).square().sum().item() / energy)


class NMSEDecibels(Metric):
    """`nmse_db` accumulated over batches (and DDP ranks): both sums first, then the ratio."""

    full_state_update = False
    error: Tensor
    energy: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "energy", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, estimate: Tensor, target: Tensor) -> None:
        self.error += (estimate - target).double().square().sum()
        self.energy += target.double().square().sum()

    def compute(self) -> Tensor:
        return 10 * torch.log10(self.error / self.energy)
