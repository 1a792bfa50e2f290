from __future__ import annotations

import gzip
import struct

import pytest
import torch
from shared_data import SHARED_DATA

from lightning_automl.data import MNISTDataModule
from lightning_automl.data.mnist import read_idx

MNIST_DIR = SHARED_DATA / "mnist"


@pytest.fixture(scope="module")
def mnist() -> MNISTDataModule:
    """The real MNIST, read once for the whole module."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared dataset folder {MNIST_DIR} is missing")
    datamodule = MNISTDataModule(data_dir=str(MNIST_DIR), batch_size=256)
    datamodule.setup("fit")
    return datamodule


def test_split_sizes(mnist):
    assert mnist.split_sizes == {"train": 55_000, "val": 5_000, "test": 10_000}


def test_images_and_labels(mnist):
    for split in ("train", "val", "test"):
        images, labels = mnist.datasets[split].tensors
        assert images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28)
        assert labels.dtype == torch.int64
        assert set(labels.unique().tolist()) == set(range(10))


def test_normalised_pixels(mnist):
    images = mnist.datasets["train"].tensors[0]
    assert images.mean().item() == pytest.approx(0.0, abs=0.01)
    assert images.std().item() == pytest.approx(1.0, abs=0.01)
    assert images.min().item() == pytest.approx(-mnist.MEAN / mnist.STD)


def test_dataloaders(mnist):
    x, y = next(iter(mnist.train_dataloader()))
    assert x.shape == (256, 1, 28, 28) and y.shape == (256,)
    assert len(mnist.val_dataloader()) == 20  # ceil(5000 / 256)
    assert len(mnist.test_dataloader()) == len(mnist.predict_dataloader()) == 40
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28)


def test_setup_again_reuses_the_data(mnist):
    train = mnist.datasets["train"]
    mnist.setup("test")
    assert mnist.datasets["train"] is train


def test_train_loader_shuffles_reproducibly(mnist):
    first = next(iter(mnist.train_dataloader()))[1]
    assert torch.equal(first, next(iter(mnist.train_dataloader()))[1])
    assert not torch.equal(first, mnist.datasets["train"].tensors[1][:256])


def write_idx(path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    header = struct.pack(f">I{len(dims)}I", magic, *dims)
    path.write_bytes(gzip.compress(header + data))


def write_fake_mnist(folder, num_train: int, num_test: int, num_train_labels: int | None = None):
    """Tiny MNIST-format files: image ``i`` is filled with ``i % 256``, its label is ``i % 10``."""
    for prefix, count in [("train", num_train), ("t10k", num_test)]:
        pixels = bytes(i % 256 for i in range(count) for _ in range(28 * 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051, (count, 28, 28), pixels)
        if prefix == "train" and num_train_labels is not None:
            count = num_train_labels
        labels = bytes(i % 10 for i in range(count))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049, (count,), labels)


def test_unnormalised_pixels_are_in_unit_range(tmp_path):
    write_fake_mnist(tmp_path, num_train=300, num_test=20)
    datamodule = MNISTDataModule(data_dir=str(tmp_path), val_size=100, normalize=False)
    datamodule.setup("fit")
    assert datamodule.split_sizes == {"train": 200, "val": 100, "test": 20}
    images, labels = datamodule.datasets["test"].tensors
    torch.testing.assert_close(images[:, 0, 0, 0], torch.arange(20) / 255)
    assert labels.tolist() == [i % 10 for i in range(20)]
    train_images = datamodule.datasets["train"].tensors[0]
    assert train_images.min().item() == 0.0 and train_images.max().item() == 1.0


def test_train_size_keeps_part_of_the_training_pool(tmp_path):
    write_fake_mnist(tmp_path, num_train=300, num_test=20)
    datamodule = MNISTDataModule(data_dir=str(tmp_path), val_size=100, train_size=50)
    datamodule.setup("fit")
    assert datamodule.split_sizes == {"train": 50, "val": 100, "test": 20}
    with pytest.raises(ValueError, match="val_size \\+ train_size must be at most the 300"):
        MNISTDataModule(data_dir=str(tmp_path), val_size=100, train_size=201).setup("fit")


def test_image_and_label_counts_must_match(tmp_path):
    write_fake_mnist(tmp_path, num_train=30, num_test=20, num_train_labels=29)
    with pytest.raises(ValueError, match="30 train images but 29 train labels"):
        MNISTDataModule(data_dir=str(tmp_path), val_size=10).setup("fit")


def test_missing_files_error_names_files_and_folder(tmp_path):
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as error:
        MNISTDataModule(data_dir=str(tmp_path)).setup("fit")
    message = str(error.value)
    for name in MNISTDataModule.SHA256:
        assert (name in message) == (name != "train-labels-idx1-ubyte.gz")
    assert str(tmp_path.resolve()) in message
    assert "download=True" in message and "data_dir" in message


def test_read_idx(tmp_path):
    write_idx(tmp_path / "ok.gz", 2051, (2, 2, 3), bytes(range(12)))
    assert read_idx(tmp_path / "ok.gz", 2051).tolist() == [
        [[0, 1, 2], [3, 4, 5]],
        [[6, 7, 8], [9, 10, 11]],
    ]


def test_read_idx_rejects_a_wrong_magic_number(tmp_path):
    write_idx(tmp_path / "labels.gz", 2049, (3,), bytes(3))
    with pytest.raises(ValueError, match=r"magic number 2051 \(found 2049\)"):
        read_idx(tmp_path / "labels.gz", 2051)


def test_read_idx_rejects_a_size_mismatch(tmp_path):
    write_idx(tmp_path / "short.gz", 2049, (5,), bytes(4))
    with pytest.raises(ValueError, match="holds 4 bytes of data"):
        read_idx(tmp_path / "short.gz", 2049)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("data_dir", ""),
        ("download", "yes"),
        ("val_size", -1),
        ("val_size", 60_000),
        ("val_size", 1.5),
        ("batch_size", 0),
        ("batch_size", -1),
        ("batch_size", True),
        ("num_workers", -1),
        ("seed", -1),
        ("normalize", 1),
        ("train_size", 0),
    ],
)
def test_bad_arguments(tmp_path, argument, value):
    arguments = {"data_dir": str(tmp_path), argument: value}
    with pytest.raises(ValueError, match=f"^{argument} must .* got {value!r}"):
        MNISTDataModule(**arguments)
