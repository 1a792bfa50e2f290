"""Shuffling that a resumed run reproduces."""

from __future__ import annotations

from collections.abc import Sized

import torch
from torch.utils.data import RandomSampler

__all__ = ["EpochSeededRandomSampler"]


class EpochSeededRandomSampler(RandomSampler):
    """A ``RandomSampler`` whose order depends only on ``seed`` and the epoch.

    Lightning calls ``set_epoch`` at the start of every training epoch, so a run resumed from a
    checkpoint sees the same batches as the uninterrupted run (a generator carried in memory
    would restart from its first permutation). Being a ``RandomSampler``, it is replaced by a
    ``DistributedSampler`` (seeded the same way) under DDP.

    Args:
        data_source: The dataset to sample from.
        seed: Base seed; epoch ``e`` uses ``seed + e``, like ``DistributedSampler``.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)
