from __future__ import annotations

from collections import Counter
from unittest import mock

import pytest
import torch
from sklearn.datasets import load_digits
from tiny import quiet_trainer

from lightning_automl.data import DigitsDataModule, TensorClassificationDataModule
from lightning_automl.models import MLPClassifier


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    return datamodule


def rows(x: torch.Tensor, y: torch.Tensor) -> Counter[tuple[float, ...]]:
    """The multiset of ``(features..., label)`` rows."""
    return Counter(tuple(row) for row in torch.cat([x, y[:, None].float()], dim=1).tolist())


def test_split_sizes(digits):
    assert digits.split_sizes == {"train": 1200, "val": 297, "test": 300}


def test_features_and_labels(digits):
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (64, 64) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    everything = torch.cat([digits.datasets[split].tensors[0] for split in digits.datasets])
    assert everything.min().item() == 0.0 and everything.max().item() == 1.0
    assert set(digits.datasets["test"].tensors[1].tolist()) == set(range(10))
    assert digits.num_classes == 10 and digits.input_shape == (64,)


def test_splits_partition_the_data_and_are_seeded(digits):
    again = DigitsDataModule(seed=0)
    again.setup()
    other = DigitsDataModule(seed=1)
    other.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(again.datasets[split].tensors[0], digits.datasets[split].tensors[0])
    assert not torch.equal(other.datasets["test"].tensors[0], digits.datasets["test"].tensors[0])
    x, y = load_digits(return_X_y=True)
    everything = rows(torch.as_tensor(x, dtype=torch.float32) / 16, torch.as_tensor(y))
    splits = [rows(*dataset.tensors) for dataset in digits.datasets.values()]
    assert sum(splits, Counter()) == everything


def test_setup_for_several_stages_loads_once(monkeypatch):
    datamodule = DigitsDataModule()
    load = mock.Mock(wraps=datamodule.load_tensors)
    monkeypatch.setattr(datamodule, "load_tensors", load)
    for stage in ("fit", "validate", "test", "predict"):
        datamodule.setup(stage)
    assert load.call_count == 1


def test_loaders_before_setup_are_an_error():
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().train_dataloader()


def test_base_class_checks_what_subclasses_load():
    class WrongShape(TensorClassificationDataModule):
        num_classes = 2
        input_shape = (3,)

        def load_tensors(self):
            x, y = torch.zeros(4, 5), torch.zeros(4, dtype=torch.int64)
            return x, y, x, y

    with pytest.raises(ValueError, match=r"WrongShape.load_tensors\(\) returned train tensors"):
        WrongShape(batch_size=2, val_size=1, num_workers=0, seed=0).setup()


def test_trains_with_a_lightning_trainer(tmp_path):
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    model = MLPClassifier(input_dim=64, hidden_dims=[], lr=0.05)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=100))
    assert trainer.global_step == 12  # ceil(1200 / 100)
    assert trainer.callback_metrics["val/loss"] < 2.3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
        ({"val_size": -1}, "val_size must be a non-negative integer, got -1"),
        ({"test_size": 2.0}, "test_size must be a non-negative integer, got 2.0"),
        ({"num_workers": -1}, "num_workers must be a non-negative integer, got -1"),
        ({"seed": "0"}, "seed must be a non-negative integer, got '0'"),
        (
            {"val_size": 1000, "test_size": 797},
            r"val_size \+ test_size must be less than 1797 \(the digits samples\), got 1797",
        ),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        DigitsDataModule(**arguments)
