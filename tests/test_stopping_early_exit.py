from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything
from tiny import TinyDataModule, quiet_trainer

from lightning_automl.stopping import EarlyExitClassifier, StopPolicyCallback


def tiny(**kwargs) -> EarlyExitClassifier:
    sizes = {"input_dim": 8, "num_classes": 3, "width": 8, "hidden": 8, "num_blocks": 3}
    return EarlyExitClassifier(**{**sizes, "lr": 0.01, **kwargs})


def test_full_depth_forward_is_the_last_step_and_exits_match_the_full_computation():
    seed_everything(0)
    model = tiny().eval()
    x = torch.randn(32, 8)
    steps = model.forward_steps(x)
    torch.testing.assert_close(steps[-1], torch.log_softmax(model(x), dim=-1))
    policy = model.build_stop_policy()
    with torch.no_grad():
        policy.mlp[-1].bias.fill_(0.3)  # some samples stop at each step
    log_probs, stopped_at = model.predict_adaptive(x, policy)
    stacked = torch.stack(steps)
    torch.testing.assert_close(log_probs, stacked[stopped_at, torch.arange(32)])


def test_trains_plainly_without_the_callback_and_by_stages_with_it():
    seed_everything(0)
    model = tiny()
    trainer = quiet_trainer(max_epochs=3)
    before = trainer.validate(model, TinyDataModule(), verbose=False)[0]["val/loss"]
    trainer.fit(model, TinyDataModule())
    assert trainer.validate(model, TinyDataModule(), verbose=False)[0]["val/loss"] < before

    staged = tiny()
    trainer = quiet_trainer(max_epochs=3, callbacks=[StopPolicyCallback((2, 1), beta=0.5)])
    trainer.fit(staged, TinyDataModule())
    results = trainer.validate(staged, TinyDataModule(), verbose=False)[0]
    assert 1 <= results["val/exit_mean_step"] <= 3
    assert 0 <= results["val/exit_acc"] <= 1


@pytest.mark.parametrize(
    ("name", "value"), [("num_blocks", 0), ("width", -1), ("lr", 0.0), ("lr_decay_epochs", 0)]
)
def test_bad_arguments_are_refused(name, value):
    with pytest.raises(ValueError, match=name):
        tiny(**{name: value})


def test_cosine_decay_reaches_zero_after_lr_decay_epochs_and_stays_there():
    model = tiny(lr_decay_epochs=2)
    trainer = quiet_trainer(max_epochs=3)  # TinyDataModule: 8 optimizer steps per epoch
    trainer.fit(model, TinyDataModule())
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 24
    factors = [scheduler.lr_lambdas[0](step) for step in (0, 8, 16, 20)]
    assert factors == pytest.approx([1, 0.5, 0, 0])
