"""LossTeacherTrainModule: the episodic protocol of L2T-DLF."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, seed_everything
from tiny import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_automl.data.sampling import EpochSeededRandomSampler
from lightning_automl.teaching import LossTeacher, LossTeacherCallback, LossTeacherTrainModule


class FakeDigits(LightningDataModule):
    """48 training and 32 validation 'images' (1 x 28 x 28) of 10 classes.

    Training batches of 24 (3 student steps of 8), validation batches of 8.
    """

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        y = torch.arange(80) % 10
        x = torch.randn(80, 1, 28, 28, generator=generator) * 0.5 + y[:, None, None, None] / 10
        self.train, self.val = TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])

    def train_dataloader(self):
        sampler = EpochSeededRandomSampler(self.train, seed=0)
        return DataLoader(self.train, batch_size=24, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=8)


class Episodes(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((pl_module.episode["index"], pl_module.episode["step"]))


def teacher_training(**overrides) -> LossTeacherTrainModule:
    settings = {"episode_steps": 6, "unroll_steps": 3, "teacher_lr": 0.05, "dev_batches": 2}
    return LossTeacherTrainModule(**{**settings, **overrides})


def test_teacher_learns_over_episodes_that_restart_from_scratch() -> None:
    seed_everything(0)
    module = teacher_training()
    episodes = Episodes()
    trainer = quiet_trainer(max_steps=4, callbacks=[episodes], log_every_n_steps=1)
    trainer.fit(module, FakeDigits())
    # 4 teacher updates of 3 student steps each; a new student after every 6 steps.
    assert episodes.seen == [(0, 3), (1, 0), (1, 3), (2, 0)]
    assert trainer.global_step == 4
    assert "teacher/dev_objective" in trainer.callback_metrics
    assert "teacher/final_dev_error" in trainer.callback_metrics
    untrained = LossTeacher(num_classes=10)
    assert not torch.equal(module.teacher.head.weight, untrained.head.weight)


def test_new_students_differ_per_episode_and_rank() -> None:
    module = teacher_training()
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, FakeDigits())
    first = module._new_episode(0)["params"]
    again = module._new_episode(0)["params"]
    second = module._new_episode(1)["params"]
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["1.weight"], second["1.weight"])


def test_checkpoint_restores_the_teacher_and_the_running_student(tmp_path) -> None:
    # After 4 updates of 3 steps the second student is mid-episode (step 3 of 9); it, the
    # teacher and the summaries of its 3 steps, not yet in the feature average, come back from
    # the checkpoint.
    seed_everything(0)
    module = teacher_training(episode_steps=9)
    trainer = quiet_trainer(max_steps=4)
    trainer.fit(module, FakeDigits())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    restored = teacher_training(episode_steps=9)
    quiet_trainer(max_steps=4).fit(restored, FakeDigits(), ckpt_path=tmp_path / "run.ckpt")
    assert (restored.episode["index"], restored.episode["step"]) == (1, 3)
    for name, value in module.episode["params"].items():
        assert torch.equal(restored.episode["params"][name], value)
    for kind, buffers in module.episode["optimizer_buffers"].items():
        for name, value in buffers.items():
            assert torch.equal(restored.episode["optimizer_buffers"][kind][name], value)
    for expected, actual in zip(
        module.teacher.parameters(), restored.teacher.parameters(), strict=True
    ):
        assert torch.equal(actual, expected)
    assert len(module.episode["pending"]) == 3
    for expected, actual in zip(
        module.episode["pending"], restored.episode["pending"], strict=True
    ):
        assert torch.equal(actual, expected)


def test_trained_teacher_is_saved_and_frozen_in_the_callback(tmp_path) -> None:
    module = teacher_training(hidden_size=7, ce_weight=0.4)
    quiet_trainer(max_steps=2).fit(module, FakeDigits())
    module.save_pretrained(tmp_path / "teacher", description="test")
    callback = LossTeacherCallback(pretrained=str(tmp_path / "teacher"), frozen=True)
    for expected, actual in zip(
        module.teacher.parameters(), callback.teacher.parameters(), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert callback.teacher.loss.ce_weight == 0.4


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="architecture must be 'mlp' or 'cnn', got 'rnn'"):
        LossTeacherTrainModule(architecture="rnn")
    with pytest.raises(ValueError, match="unroll_steps must be a positive integer"):
        LossTeacherTrainModule(unroll_steps=0)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        LossTeacherTrainModule(student_lr=0.0)
    with pytest.raises(ValueError, match="student_batch_size must be a positive integer"):
        LossTeacherTrainModule(student_batch_size=0)
    with pytest.raises(ValueError, match="refresh_every_n_steps must be a positive integer"):
        LossTeacherTrainModule(refresh_every_n_steps=0)
    with pytest.raises(
        ValueError, match="teacher_optimizer must be 'adam' or 'sgd', got 'rmsprop'"
    ):
        LossTeacherTrainModule(teacher_optimizer="rmsprop")
    with pytest.raises(ValueError, match="teacher_max_grad_norm must be a number > 0"):
        LossTeacherTrainModule(teacher_max_grad_norm=0.0)
    module = teacher_training()

    class NoValidation(FakeDigits):
        val_dataloader = LightningDataModule.val_dataloader

    with pytest.raises(ValueError, match="needs validation data"):
        quiet_trainer(max_steps=1).fit(module, NoValidation())
    with pytest.raises(
        ValueError, match="batch of 24 samples cannot be split into unroll_steps=25"
    ):
        quiet_trainer(max_steps=1).fit(teacher_training(unroll_steps=25), FakeDigits())


def test_student_minibatches_come_in_shuffled_passes_over_the_batch() -> None:
    # A pool of 24 samples and minibatches of 10: passes of 10, 10 and 4 samples.
    module = teacher_training(unroll_steps=5, student_batch_size=10)
    quiet_trainer(max_steps=1).fit(module, FakeDigits())
    module.episode = module._new_episode(0)
    inputs, target = torch.arange(24.0)[:, None], torch.arange(24)
    minibatches = module._minibatches(inputs, target)
    assert [len(y) for _, y in minibatches] == [10, 10, 4, 10, 10]
    first_pass = torch.cat([y for _, y in minibatches[:3]])
    assert sorted(first_pass.tolist()) == list(range(24))
    assert all(torch.equal(x[:, 0].long(), y) for x, y in minibatches)
    second_pass = torch.cat([y for _, y in minibatches[3:]])
    assert not torch.equal(second_pass, first_pass[:20])
    again = module._minibatches(inputs, target)  # a resumed run draws the same ones
    assert all(torch.equal(y, z) for (_, y), (_, z) in zip(minibatches, again, strict=True))
    module.episode["step"] = 3  # the next unroll starts with the second pass
    assert torch.equal(module._minibatches(inputs, target)[0][1], minibatches[3][1])


def test_features_refresh_inside_the_unroll() -> None:
    # Unrolls of 3 steps, features refreshed every 2: the summaries change at steps 2 and 4,
    # and the rows of steps 2 and 3 (in different unrolls) share them.
    seed_everything(0)
    module = teacher_training(refresh_every_n_steps=2, teacher_lr=0.0001)
    rows: dict[int, torch.Tensor] = {}
    features = module._features

    def spy(step, params):
        rows[step] = features(step, params)
        return rows[step]

    module._features = spy
    quiet_trainer(max_steps=2).fit(module, FakeDigits())
    dev = {step: row[5:] for step, row in rows.items()}  # after progress and the train summary
    assert sorted(rows) == [0, 1, 2, 3, 4, 5]
    assert torch.equal(dev[0], dev[1]) and torch.equal(dev[2], dev[3])
    assert torch.equal(dev[4], dev[5])
    assert not torch.equal(dev[1], dev[2]) and not torch.equal(dev[3], dev[4])
    train = {step: row[1:5] for step, row in rows.items()}
    assert torch.equal(train[0], dev[0])  # no training batch yet: the dev summary stands in
    assert torch.equal(train[2], train[3]) and not torch.equal(train[2], train[1])
    assert not torch.equal(train[4], train[3])


def test_teacher_step_is_clipped_sgd_and_skips_non_finite_hypergradients(monkeypatch) -> None:
    import lightning_automl.teaching.train_module as train_module

    real = train_module.hypergradient
    scale = {"value": 10.0}

    def fixed_gradient(*args, **kwargs):
        result = real(*args, **kwargs)
        grads = [torch.full_like(grad, scale["value"]) for grad in result.grads]
        return result._replace(grads=grads)

    monkeypatch.setattr(train_module, "hypergradient", fixed_gradient)
    module = teacher_training(teacher_optimizer="sgd", teacher_lr=0.1, teacher_max_grad_norm=1.0)
    before = [param.detach().clone() for param in module.teacher.parameters()]
    count = sum(param.numel() for param in before)
    quiet_trainer(max_steps=1).fit(module, FakeDigits())
    for old, new in zip(before, module.teacher.parameters(), strict=True):
        torch.testing.assert_close(new.detach(), old - 0.1 / count**0.5)
    scale["value"] = float("inf")
    trained = [param.detach().clone() for param in module.teacher.parameters()]
    trainer = quiet_trainer(max_steps=2, log_every_n_steps=1)
    trainer.fit(module, FakeDigits())
    for old, new in zip(trained, module.teacher.parameters(), strict=True):
        assert torch.equal(new, old)
    assert trainer.callback_metrics["teacher/skipped_updates"] == 1
