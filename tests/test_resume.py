"""A run interrupted and resumed from its checkpoint ends where the uninterrupted one would."""

from __future__ import annotations

import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import quiet_trainer

from lightning_automl.data import DigitsDataModule
from lightning_automl.data.sampling import EpochSeededRandomSampler
from lightning_automl.models import MLPClassifier


def fit(tmp_path, max_epochs: int, ckpt_path=None) -> MLPClassifier:
    seed_everything(0)
    model = MLPClassifier(input_dim=64, hidden_dims=[16], lr=0.01)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")
    trainer = quiet_trainer(
        max_epochs=max_epochs, enable_checkpointing=True, callbacks=[checkpoint]
    )
    trainer.fit(model, DigitsDataModule(batch_size=100), ckpt_path=ckpt_path)
    return model


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    uninterrupted = fit(tmp_path / "a", max_epochs=3)
    fit(tmp_path / "b", max_epochs=1)
    resumed = fit(tmp_path / "c", max_epochs=3, ckpt_path=tmp_path / "b" / "epoch=0.ckpt")
    for expected, actual in zip(uninterrupted.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    data = range(50)
    sampler = EpochSeededRandomSampler(data, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(data)
    assert first != second
    fresh = EpochSeededRandomSampler(data, seed=3)
    fresh.set_epoch(1)
    assert list(fresh) == second
