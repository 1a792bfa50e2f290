"""scikit-learn's bundled 8x8 handwritten digits: a small real dataset that needs no download."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_automl.core.validation import check_less_than, check_non_negative_int
from lightning_automl.data.tensor_classification import TensorClassificationDataModule

__all__ = ["DigitsDataModule"]


class DigitsDataModule(TensorClassificationDataModule):
    """The 1,797 8x8 digits of ``sklearn.datasets.load_digits`` as 64 features in [0, 1].

    A copy of the test set of the UCI optical recognition of handwritten digits dataset, shipped
    with scikit-learn. Pixels (0..16) are divided by 16; labels are int64 in 0..9. ``test_size``
    samples are drawn with a permutation seeded by ``seed``, then ``val_size`` from the rest; the
    remainder (1,200 with the defaults) is the training set.

    Args:
        batch_size: Samples per batch.
        val_size: Samples held out for validation.
        test_size: Samples held out for testing (``val_size + test_size`` < 1,797).
        num_workers: Worker processes per dataloader.
        seed: Seed of the splits and of the shuffling.
    """

    NUM_SAMPLES = 1797
    num_classes = 10
    input_shape = (64,)

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int = 297,
        test_size: int = 300,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size, val_size=val_size, num_workers=num_workers, seed=seed
        )
        check_non_negative_int("test_size", test_size)
        check_less_than(
            "val_size + test_size", val_size + test_size, self.NUM_SAMPLES, "the digits samples"
        )
        self.save_hyperparameters()
        self.test_size = test_size

    def load_tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Load the digits and draw the test split."""
        from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

        x_array, y_array = load_digits(return_X_y=True)
        x = torch.as_tensor(x_array, dtype=torch.float32) / 16.0
        y = torch.as_tensor(y_array, dtype=torch.int64)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        test_index, pool_index = order[: self.test_size], order[self.test_size :]
        return x[pool_index], y[pool_index], x[test_index], y[test_index]
