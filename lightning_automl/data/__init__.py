"""Lightning datamodules for the datasets the methods are trained and evaluated on.

* `MNISTDataModule` and `DigitsDataModule`: image classification, both built on
  `TensorClassificationDataModule`.
* `PTBDataModule`: word-level Penn Treebank language modelling, with its
  `Vocabulary`.
* `InMemoryDataModule`: the loaders of the in-memory datamodules above and below.
* `SparseRecoveryDataModule`: synthetic compressed sensing ``y = A x* + noise`` (LISTA).

Datasets that need a download take ``data_dir`` and ``download``; a download is checked
against known sha256 digests and raises `DownloadError` when no mirror serves a good copy.
"""

from __future__ import annotations

from lightning_automl.data.digits import DigitsDataModule
from lightning_automl.data.download import DownloadError
from lightning_automl.data.in_memory import InMemoryDataModule
from lightning_automl.data.mnist import MNISTDataModule
from lightning_automl.data.ptb import PTBDataModule, Vocabulary
from lightning_automl.data.sparse_recovery import SparseRecoveryDataModule
from lightning_automl.data.tensor_classification import TensorClassificationDataModule

__all__ = [
    "DigitsDataModule",
    "DownloadError",
    "InMemoryDataModule",
    "MNISTDataModule",
    "PTBDataModule",
    "SparseRecoveryDataModule",
    "TensorClassificationDataModule",
    "Vocabulary",
]
