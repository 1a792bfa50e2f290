"""Learning-rate schedules for ``configure_optimizers`` (a duck-typed trainer: no Lightning)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

__all__ = ["cosine_decay"]


def cosine_decay(
    optimizer: torch.optim.Optimizer, decay_epochs: int, trainer: Any
) -> OptimizerLRSchedulerConfig:
    """``optimizer`` with a per-step cosine decay of its learning rates to 0 over ``decay_epochs``.

    The lr factor is `(1 + cos(pi min(s, S) / S)) / 2` at optimizer step `s`, where `S` is
    ``decay_epochs`` worth of the trainer's optimizer steps; it stays 0 after `S`.

    Returns:
        What ``configure_optimizers`` returns: ``{"optimizer", "lr_scheduler"}`` (interval
        ``"step"``).
    """
    epochs = max(1, trainer.max_epochs or 1)
    decay_steps = max(1, round(decay_epochs * trainer.estimated_stepping_batches / epochs))

    def cosine(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, decay_steps) / decay_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
