from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import TinyAdaptive, TinyClassifier, TinyDataModule, quiet_trainer

from lightning_automl.stopping import StopPolicy, StopPolicyCallback


class EpochSnapshots(Callback):
    """Copies of the model's state, the policy's weights and the module mode after each epoch."""

    def __init__(self) -> None:
        self.model, self.policy, self.training = [], [], []

    def on_train_epoch_end(self, trainer, pl_module):
        stop_callback = next(c for c in trainer.callbacks if isinstance(c, StopPolicyCallback))
        self.model.append(copy.deepcopy(pl_module.state_dict()))
        self.policy.append(copy.deepcopy(stop_callback.policy.state_dict()))
        self.training.append([m.training for m in pl_module.modules()])


def fit(stage_epochs, tmp_path=None, ckpt_path=None, **trainer_kwargs):
    seed_everything(0)
    model = TinyAdaptive()
    stop_callback = StopPolicyCallback(stage_epochs=stage_epochs, beta=0.5)
    snapshots = EpochSnapshots()
    callbacks = [stop_callback, snapshots]
    if tmp_path is not None:
        trainer_kwargs["enable_checkpointing"] = True
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}"))
    trainer = quiet_trainer(max_epochs=sum(stage_epochs), callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, TinyDataModule(), ckpt_path=ckpt_path)
    return model, stop_callback, snapshots, trainer


def same(first: dict, second: dict) -> bool:
    return all(torch.equal(first[key], second[key]) for key in first)


def test_stages_train_the_model_then_the_policy_then_both():
    _, stop_callback, snapshots, _ = fit((2, 2, 1))
    model, policy = snapshots.model, snapshots.policy
    assert not same(model[0], model[1]) and same(policy[0], policy[1])  # Stage I: the model
    # Stage II: the policy alone; BatchNorm statistics stay put and dropout is off (eval mode).
    assert same(model[1], model[2]) and same(model[2], model[3])
    assert not same(policy[1], policy[2]) and not same(policy[2], policy[3])
    assert not any(snapshots.training[2]) and not any(snapshots.training[3])
    assert not same(model[3], model[4]) and not same(policy[3], policy[4])  # Stage III: both
    assert all(snapshots.training[4])
    assert [stop_callback.stage_at(epoch) for epoch in range(6)] == [1, 1, 2, 2, 3, 3]


def test_module_modes_are_restored_after_stage_two():
    model, _, _, _ = fit((1, 1))
    assert model.training and all(m.training for m in model.modules())


def test_stage_metrics_and_histograms_are_logged():
    _, _, _, trainer = fit((1, 1))
    metrics = trainer.callback_metrics
    assert metrics["stop/stage"] == 2
    for name in ("oracle_mean_step", "policy_mean_step", "exit_mean_step"):
        assert 1 <= metrics[f"stop/{name}"] <= TinyAdaptive.num_steps
    for name in ("oracle_hist", "exit_hist"):
        fractions = [metrics[f"stop/{name}/t{step}"] for step in (1, 2, 3)]
        torch.testing.assert_close(sum(fractions), torch.tensor(1.0))


def test_policy_steps_once_per_optimizer_step_under_accumulation():
    # 64 samples in batches of 8: 8 batches per epoch, 4 optimizer steps with accumulation 2.
    _, stop_callback, _, trainer = fit((1, 2), accumulate_grad_batches=2)
    assert trainer.global_step == 3 * 4
    steps = {float(state["step"]) for state in stop_callback.optimizer.state.values()}
    assert steps == {2 * 4}


def test_bf16_autocast_trains_every_stage():
    _, _, snapshots, trainer = fit((1, 1, 1), precision="bf16-mixed")
    assert not same(snapshots.policy[0], snapshots.policy[2])
    assert torch.isfinite(trainer.callback_metrics["stop/policy_mean_step"])


def test_resume_mid_stage_two_continues_identically(tmp_path):
    uninterrupted, uninterrupted_callback, _, _ = fit((1, 3), tmp_path / "a")
    checkpoint = tmp_path / "a" / "epoch=1.ckpt"  # after the first of three Stage II epochs
    resumed, resumed_callback, _, _ = fit((1, 3), tmp_path / "b", ckpt_path=checkpoint)
    assert same(uninterrupted.state_dict(), resumed.state_dict())
    assert same(uninterrupted_callback.policy.state_dict(), resumed_callback.policy.state_dict())


def test_predict_adaptive_uses_the_trained_policy_after_fit():
    model, stop_callback, _, _ = fit((1, 1))
    x = torch.randn(16, 8)
    model.eval()
    expected = model.predict_adaptive(x, stop_callback.policy, threshold=0.5)
    for actual, wanted in zip(model.predict_adaptive(x), expected, strict=True):
        torch.testing.assert_close(actual, wanted)


class PolicyModes(Callback):
    """The policy's mode at the start and the end of each training batch, after the hooks of
    StopPolicyCallback."""

    def __init__(self, policy) -> None:
        self.policy, self.start, self.end = policy, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start.append(self.policy.training)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end.append(self.policy.training)


def test_a_standardizing_policy_is_in_training_mode_in_training_batches_only():
    seed_everything(0)
    policy = StopPolicy(prediction_dim=3, hidden_dims=(8,), step_encoding_dim=4, standardize=True)
    modes, snapshots = PolicyModes(policy), EpochSnapshots()
    callbacks = [StopPolicyCallback((1, 1), beta=0.5, policy=policy), modes, snapshots]
    quiet_trainer(max_epochs=2, callbacks=callbacks).fit(TinyAdaptive(), TinyDataModule())
    assert all(modes.start) and not any(modes.end) and not policy.training
    statistics = [state["feature_norm.running_mean"] for state in snapshots.policy]
    assert torch.equal(statistics[0], torch.zeros(3))  # Stage I: the policy is not run
    assert not torch.equal(statistics[1], torch.zeros(3))  # Stage II: it learns them


def test_predict_adaptive_runs_the_policy_in_evaluation_mode_and_restores_its_mode():
    model, *_ = fit((1, 1))
    model.eval()  # no dropout
    policy = StopPolicy(prediction_dim=3, hidden_dims=(8,), step_encoding_dim=4, standardize=True)
    x = torch.randn(16, 8)
    expected = model.predict_adaptive(x, policy.eval())
    actual = model.predict_adaptive(x, policy.train())
    assert policy.training
    for value, wanted in zip(actual, expected, strict=True):
        assert torch.equal(value, wanted)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage_epochs": (1,), "beta": 1.0}, "stage_epochs must give"),
        ({"stage_epochs": (1, -1), "beta": 1.0}, r"stage_epochs\[1\] \(Stage 2\)"),
        ({"stage_epochs": (0, 0), "beta": 1.0}, "at least one epoch"),
        ({"stage_epochs": (1, 1), "beta": 0.0}, "beta must be a number > 0"),
        ({"stage_epochs": (1, 1), "beta": 1.0, "policy_lr": -1}, "policy_lr"),
        ({"stage_epochs": (1, 1), "beta": 1.0, "imitation_beta": 0}, "imitation_beta"),
        ({"stage_epochs": (1, 1), "beta": 1.0, "step_cost": -0.1}, "step_cost"),
        ({"stage_epochs": (1, 1), "beta": 1.0, "threshold": 2}, "threshold"),
        ({"stage_epochs": (1, 1), "beta": 1.0, "policy": torch.nn.Linear(2, 1)}, "step_logits"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        StopPolicyCallback(**kwargs)


def test_errors_before_training():
    callback = StopPolicyCallback(stage_epochs=(1, 1), beta=1.0)
    with pytest.raises(TypeError, match="AdaptiveDepthMixin"):
        quiet_trainer(max_epochs=2, callbacks=[callback]).fit(TinyClassifier(), TinyDataModule())
    with pytest.raises(ValueError, match="add up to 2 epochs but the Trainer has max_epochs=3"):
        quiet_trainer(max_epochs=3, callbacks=[callback]).fit(TinyAdaptive(), TinyDataModule())
    with pytest.raises(RuntimeError, match="needs a StopPolicyCallback"):
        quiet_trainer(max_epochs=1).fit(TinyAdaptive(), TinyDataModule())
