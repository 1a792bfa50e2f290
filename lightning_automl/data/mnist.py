"""MNIST handwritten digits, read from the original gzip-compressed idx files."""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from lightning_automl.core.validation import check_bool, check_less_than, check_path
from lightning_automl.data.download import download_missing, require_files
from lightning_automl.data.tensor_classification import TensorClassificationDataModule

__all__ = ["MNISTDataModule", "read_idx"]

_LABELS_MAGIC = 2049  # unsigned bytes, one dimension
_IMAGES_MAGIC = 2051  # unsigned bytes, three dimensions


def read_idx(path: Path, magic: int) -> Tensor:
    """Read a gzip-compressed idx file of unsigned bytes into a ``uint8`` tensor.

    The idx format (LeCun and Cortes) starts with a big-endian ``uint32`` magic number,
    ``0x0800 + ndim`` for unsigned bytes, then one big-endian ``uint32`` per dimension, then the
    data in row-major order.

    Args:
        path: The ``.gz`` file.
        magic: The magic number the file must have (2049 for labels, 2051 for images).

    Raises:
        ValueError: The magic number differs, or the data size does not match the header.
    """
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    found = int.from_bytes(data[:4], "big")
    if len(data) < 4 or found != magic:
        raise ValueError(f"{path} is not an idx file with magic number {magic} (found {found})")
    ndim = magic - 0x0800
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} ends inside its idx header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise ValueError(
            f"{path} holds {len(data) - header} bytes of data, but its idx header declares "
            f"dimensions {dims} ({math.prod(dims)} bytes)"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).reshape(dims)


class MNISTDataModule(TensorClassificationDataModule):
    """MNIST: 28x28 grey-scale handwritten digits, 60,000 train and 10,000 test images.

    Y. LeCun and C. Cortes, CC BY-SA 3.0. Images are float tensors of shape ``(1, 28, 28)``
    scaled to [0, 1] and, with ``normalize``, standardised with the training-set mean 0.1307 and
    standard deviation 0.3081; labels are int64 in 0..9. ``val_size`` images are split off the
    60,000 training images (seeded); the 10,000 test images form the test set.

    With ``download=True``, `prepare_data` fetches the missing files from `MIRRORS`
    (tried in order) and keeps each only if the sha256 of its uncompressed content is the
    official one.

    Args:
        data_dir: Folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
        download: Download the files missing from ``data_dir``.
        val_size: Training images held out for validation (less than 60,000).
        train_size: Training images kept of the rest (``None``: all of them), e.g. 10,000 for
            the small-data setting of L2T-DLF's benchmark.
        batch_size: Images per batch.
        num_workers: Worker processes per dataloader.
        seed: Seed of the train/val split and of the shuffling.
        normalize: Standardise the pixels with the MNIST mean and standard deviation.
    """

    MIRRORS: tuple[str, ...] = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    )
    """Base URLs tried in order by ``download=True``."""
    SHA256: ClassVar[Mapping[str, str]] = {
        "train-images-idx3-ubyte.gz": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte.gz": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    }
    """sha256 of each file's uncompressed content (the official digests)."""
    MEAN = 0.1307
    STD = 0.3081
    NUM_TRAIN = 60_000
    num_classes = 10
    input_shape = (1, 28, 28)

    def __init__(
        self,
        data_dir: str = "data/mnist",
        download: bool = False,
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        normalize: bool = True,
        train_size: int | None = None,
    ) -> None:
        check_path("data_dir", data_dir)
        check_bool("download", download)
        check_bool("normalize", normalize)
        super().__init__(
            batch_size=batch_size,
            val_size=val_size,
            num_workers=num_workers,
            seed=seed,
            train_size=train_size,
        )
        check_less_than("val_size", val_size, self.NUM_TRAIN, "the MNIST training images")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.normalize = normalize

    def prepare_data(self) -> None:
        """Download the missing files when ``download`` is set."""
        if self.download:
            download_missing(self.data_dir, self.SHA256, self.MIRRORS, gzipped=True)

    def load_tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Read the train and test (``t10k``) images and labels."""
        require_files(self.data_dir, self.SHA256, "MNIST")
        return *self._read_split("train"), *self._read_split("t10k")

    def _read_split(self, prefix: str) -> tuple[Tensor, Tensor]:
        images = read_idx(self.data_dir / f"{prefix}-images-idx3-ubyte.gz", _IMAGES_MAGIC)
        labels = read_idx(self.data_dir / f"{prefix}-labels-idx1-ubyte.gz", _LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f"{self.data_dir.resolve()} holds {len(images)} {prefix} images "
                f"but {len(labels)} {prefix} labels"
            )
        x = images.unsqueeze(1).float().div_(255.0)
        if self.normalize:
            x.sub_(self.MEAN).div_(self.STD)
        return x, labels.long()
