"""A shared base for classification datasets that fit in memory as tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_automl.core.validation import check_non_negative_int, check_positive_int
from lightning_automl.data.in_memory import InMemoryDataModule

__all__ = ["TensorClassificationDataModule"]


class TensorClassificationDataModule(InMemoryDataModule, ABC):
    """Train / val / test dataloaders over in-memory ``(x, y)`` tensors.

    A subclass sets the class attributes ``num_classes`` and ``input_shape`` (the shape of one
    sample) and implements `load_tensors`. `setup` loads the data once, whatever the
    stage, and splits ``val_size`` samples off the training pool with a permutation seeded by
    ``seed``; the next ``train_size`` samples of that permutation (all the rest by default) form
    the training set. The loaders are those of `InMemoryDataModule`.

    Args:
        batch_size: Samples per batch in every loader.
        val_size: Samples taken from the training pool for validation.
        train_size: Samples of the rest of the pool used for training (``None``: all).
        num_workers: Worker processes per loader (0 loads in the main process).
        seed: Seed of the train/val split and of the train loader's shuffling.
    """

    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(
        self,
        batch_size: int,
        val_size: int,
        num_workers: int,
        seed: int,
        train_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_non_negative_int("val_size", val_size)
        if train_size is not None:
            check_positive_int("train_size", train_size)
        self.val_size = val_size
        self.train_size = train_size

    @abstractmethod
    def load_tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Read the data as ``(train_x, train_y, test_x, test_y)``.

        ``*_x`` have shape ``(N, *input_shape)`` and ``*_y`` are int64 class ids of shape ``(N,)``;
        ``train_*`` is the pool the validation split is taken from.
        """

    def setup(self, stage: str | None = None) -> None:
        """Load the tensors and build the three splits; later calls (other stages) reuse them."""
        if self.datasets:
            return
        train_x, train_y, test_x, test_y = self.load_tensors()
        for name, x, y in [("train", train_x, train_y), ("test", test_x, test_y)]:
            if tuple(x.shape[1:]) != tuple(self.input_shape) or y.shape != (len(x),):
                raise ValueError(
                    f"{type(self).__name__}.load_tensors() returned {name} tensors of shapes "
                    f"{tuple(x.shape)} and {tuple(y.shape)}; expected {('N', *self.input_shape)} "
                    "and ('N',)"
                )
        if self.val_size >= len(train_x):
            raise ValueError(
                f"val_size must be less than the {len(train_x)} training samples, "
                f"got {self.val_size}"
            )
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.seed))
        if self.train_size is not None and self.val_size + self.train_size > len(train_x):
            raise ValueError(
                f"val_size + train_size must be at most the {len(train_x)} training samples, "
                f"got {self.val_size} + {self.train_size}"
            )
        val_index, train_index = order[: self.val_size], order[self.val_size :]
        train_index = train_index[: self.train_size]
        self.datasets = {
            "train": TensorDataset(train_x[train_index], train_y[train_index]),
            "val": TensorDataset(train_x[val_index], train_y[val_index]),
            "test": TensorDataset(test_x, test_y),
        }
