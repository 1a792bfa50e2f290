from __future__ import annotations

from lightning.pytorch import Trainer
from tiny import quiet_trainer

from lightning_automl.callbacks import MetricsSummary


def test_prints_only_the_prefixed_metrics_when_fit_ends(tiny_model, tiny_data, capsys):
    trainer = quiet_trainer(max_epochs=1, callbacks=[MetricsSummary(prefix="val")])
    trainer.fit(tiny_model, tiny_data)
    out = capsys.readouterr().out
    assert "Metrics 'val*' after epoch 1, step 8:" in out
    assert "val/loss" in out and "train/loss" not in out


def test_says_when_nothing_was_logged(tiny_model):
    trainer = Trainer(logger=False)
    assert MetricsSummary(prefix="val").table(trainer).endswith("none were logged")
