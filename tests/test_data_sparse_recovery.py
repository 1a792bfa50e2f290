from __future__ import annotations

import math

import pytest
import torch

from lightning_automl.data import SparseRecoveryDataModule
from lightning_automl.data.sampling import EpochSeededRandomSampler

SMALL = {"m": 20, "n": 40, "num_train": 3000, "num_val": 100, "num_test": 3000}


def small(**arguments) -> SparseRecoveryDataModule:
    datamodule = SparseRecoveryDataModule(**{**SMALL, **arguments})
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def data() -> SparseRecoveryDataModule:
    return small()


def test_shapes_and_batches(data):
    assert data.A.shape == (20, 40) and data.A.dtype == torch.float32
    assert {split: len(data.datasets[split]) for split in data.datasets} == {
        "train": 3000,
        "val": 100,
        "test": 3000,
    }
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededRandomSampler)
    y, x_star = next(iter(loader))
    assert y.shape == (64, 20) and x_star.shape == (64, 40)
    assert y.dtype == x_star.dtype == torch.float32
    assert len(data.val_dataloader()) == 2 and len(data.test_dataloader()) == 47


def test_matrix_is_available_before_setup_with_unit_columns():
    datamodule = SparseRecoveryDataModule(m=7, n=9)
    torch.testing.assert_close(datamodule.A.norm(dim=0), torch.ones(9))
    with pytest.raises(RuntimeError, match="setup"):
        datamodule.train_dataloader()


def test_signals_are_sparse_gaussian(data):
    x_star = data.datasets["train"].tensors[1]
    assert abs((x_star != 0).float().mean().item() - 0.1) < 0.005
    nonzero = x_star[x_star != 0]
    assert abs(nonzero.mean().item()) < 0.05 and abs(nonzero.std().item() - 1) < 0.05


@pytest.mark.parametrize("snr_db", [20.0, 40.0])
def test_empirical_snr(snr_db):
    datamodule = small(snr_db=snr_db)
    y, x_star = datamodule.datasets["test"].tensors
    clean = x_star @ datamodule.A.T
    empirical = 10 * math.log10(clean.square().sum() / (y - clean).square().sum())
    assert abs(empirical - snr_db) < 0.5


def test_several_snrs_give_each_sample_one_of_them_uniformly():
    datamodule = small(snr_db=(20.0, 30.0, 40.0), m=800)  # many measurements: a sharp SNR
    y, x_star = datamodule.datasets["train"].tensors
    clean = (x_star @ datamodule.A.T)[x_star.any(1)]  # without the samples that have no signal
    per_sample = 10 * torch.log10(
        clean.square().sum(1) / (y[x_star.any(1)] - clean).square().sum(1)
    )
    nearest = torch.tensor([20.0, 30.0, 40.0])[
        (per_sample[:, None] - torch.tensor([20.0, 30.0, 40.0])).abs().argmin(1)
    ]
    assert (per_sample - nearest).abs().max() < 1.5
    counts = torch.stack([(nearest == snr).sum() for snr in (20.0, 30.0, 40.0)])
    assert (counts - len(clean) / 3).abs().max() < 100
    single = small(snr_db=[40.0]).datasets["test"].tensors
    assert all(
        torch.equal(a, b)
        for a, b in zip(single, small(snr_db=40.0).datasets["test"].tensors, strict=True)
    )


def test_noiseless_at_infinite_snr():
    datamodule = small(snr_db=math.inf)
    y, x_star = datamodule.datasets["val"].tensors
    assert torch.equal(y, x_star @ datamodule.A.T)


def test_seeding(data):
    same = small(num_train=10)  # the test set does not depend on the other splits' sizes
    assert torch.equal(same.A, data.A)
    y, x_star = data.datasets["test"].tensors
    assert torch.equal(same.datasets["test"].tensors[0], y)
    assert torch.equal(same.datasets["test"].tensors[1], x_star)
    assert not torch.equal(data.datasets["train"].tensors[1][:100], data.datasets["val"].tensors[1])
    other = small(seed=1)
    assert not torch.equal(other.A, data.A)
    assert not torch.equal(other.datasets["test"].tensors[1], data.datasets["test"].tensors[1])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"m": 0}, "m must be a positive integer, got 0"),
        ({"n": 2.5}, "n must be a positive integer, got 2.5"),
        ({"sparsity": 0}, r"sparsity must be a number in \(0, 1\], got 0"),
        ({"sparsity": 1.5}, r"sparsity must be a number in \(0, 1\], got 1.5"),
        ({"sparsity": "0.1"}, r"sparsity must be a number in \(0, 1\], got '0.1'"),
        ({"snr_db": float("nan")}, "snr_db must be a number of dB or inf, got nan"),
        ({"snr_db": -math.inf}, "snr_db must be a number of dB or inf, got -inf"),
        ({"snr_db": (20.0, "x")}, "snr_db must be a number of dB or inf, got 'x'"),
        ({"snr_db": ()}, "snr_db must be a number of dB or a non-empty sequence of them"),
        ({"num_train": 0}, "num_train must be a positive integer, got 0"),
        ({"num_val": -1}, "num_val must be a positive integer, got -1"),
        ({"num_test": None}, "num_test must be a positive integer, got None"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"num_workers": True}, "num_workers must be a non-negative integer, got True"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        SparseRecoveryDataModule(**arguments)
