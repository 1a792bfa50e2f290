"""Error measures for sparse recovery."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["nmse_db"]


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
