"""`LossTeacherTrainModule`: L2T-DLF's episodic protocol, a teacher trained across student runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_automl.core.features import ExponentialMovingAverage
from lightning_automl.core.pretrained import PretrainedCard
from lightning_automl.core.unroll import SGD, InnerState, hypergradient
from lightning_automl.core.validation import check_number, check_positive_int
from lightning_automl.teaching.callback import first_validation_batches
from lightning_automl.teaching.replay import (
    DevObjective,
    check_dev_objective,
    dev_objective_fn,
    dev_summary,
    taught_loss_fn,
)
from lightning_automl.teaching.students import Architecture, student_network
from lightning_automl.teaching.teacher import TEACHER_FEATURES, LossTeacher, teacher_features

__all__ = ["LossTeacherTrainModule"]


class LossTeacherTrainModule(LightningModule):
    """Trains a `LossTeacher` over whole student runs from scratch (Wu et al., NeurIPS 2018).

    Each training batch is one teacher update: it is split into ``unroll_steps`` minibatches,
    one per student step (a batch of 1,280 gives 10 steps of 128). The student
    (``student_network(architecture)``, fresh weights for every episode, drawn from ``seed``, the
    episode and the DDP rank) takes those steps functionally with SGD (momentum) on the taught
    loss; the dev objective on ``dev_batches`` validation batches then gives the teacher its exact
    hypergradient through them (`core.unroll.hypergradient`), and the teacher's Adam steps. The
    student carries on from where the unroll ended; after ``episode_steps`` steps a new student
    starts. The teacher reads the features that `LossTeacherCallback` computes (progress = step /
    ``episode_steps``, a moving average of the training batches' summaries, the dev summary
    refreshed at each update), so the trained teacher can then be frozen in that callback to
    teach new students with no hypergradient: ``LossTeacherCallback(pretrained=...,
    frozen=True, update_every_n_steps=unroll_steps)`` over a run of ``episode_steps`` steps.

    Under DDP each rank trains its own student on its shard of the data and the teacher's
    gradient is averaged. Logs ``teacher/dev_objective`` per update and
    ``teacher/final_dev_error`` (the dev error of each finished student). The running student,
    its optimizer state and the feature average are saved in checkpoints; a resume mid-epoch
    repeats the uninterrupted run when the dataloader is resumable (Lightning's rule).

    Args:
        architecture: The student, ``"mlp"`` or ``"cnn"`` (`student_network`).
        num_classes: Classes of the task.
        pretrained: A teacher to fine-tune (shipped name or saved path); ``None``: a fresh one.
        hidden_size: Hidden width of a fresh teacher (default 32).
        ce_weight: Cross-entropy's weight in the taught loss of a fresh teacher (default 0.5).
        student_lr: The students' SGD learning rate.
        student_momentum: The students' SGD momentum.
        episode_steps: Student steps per episode (the length of the runs it will teach).
        unroll_steps: Student steps per teacher update (the truncation).
        teacher_lr: The teacher's Adam learning rate.
        dev_batches: Validation batches (the first ones) forming the dev set.
        dev_objective: ``"cross_entropy"`` or ``"smooth_error"``.
        smooth_error_sharpness: ``k`` of the smooth error.
        feature_decay: Decay of the moving average of the training batches' features.
        seed: Seed of the teacher's and the students' initial weights.
    """

    def __init__(
        self,
        architecture: Architecture = "mlp",
        num_classes: int = 10,
        pretrained: str | None = None,
        hidden_size: int | None = None,
        ce_weight: float | None = None,
        student_lr: float = 0.05,
        student_momentum: float = 0.9,
        episode_steps: int = 1600,
        unroll_steps: int = 10,
        teacher_lr: float = 0.01,
        dev_batches: int = 8,
        dev_objective: DevObjective = "cross_entropy",
        smooth_error_sharpness: float = 50.0,
        feature_decay: float = 0.9,
        seed: int = 0,
    ) -> None:
        self.inner = SGD(student_lr, student_momentum)
        student_network(architecture, num_classes)  # checks the architecture
        check_positive_int("episode_steps", episode_steps)
        check_positive_int("unroll_steps", unroll_steps)
        check_number("teacher_lr", teacher_lr, "a number > 0", lambda value: value > 0)
        check_positive_int("dev_batches", dev_batches)
        check_dev_objective(dev_objective, smooth_error_sharpness)
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.teacher = LossTeacher.build(pretrained, num_classes, hidden_size, ce_weight, seed)
        # The student's structure only: its tensors live in the episode state, not as parameters.
        with torch.device("meta"):
            self.__dict__["student"] = student_network(architecture, num_classes)
        self.train_features = ExponentialMovingAverage(feature_decay)
        self.episode: dict[str, Any] | None = None
        self.dev: list[tuple[Tensor, Tensor]] = []

    def save_pretrained(self, path: str | os.PathLike[str], **card_fields: Any) -> PretrainedCard:
        """Save the teacher (`LossTeacher.save_pretrained`); the card also gets the features it
        reads and the students it was trained on, unless ``card_fields`` give them."""
        hparams = self.hparams
        students = (
            f"{hparams['architecture']} students from scratch, SGD lr {hparams['student_lr']} "
            f"momentum {hparams['student_momentum']}, {hparams['episode_steps']} steps each"
        )
        feature_spec = {
            "features": list(TEACHER_FEATURES),
            "progress": "student step / episode_steps",
            "refresh_every_n_steps": hparams["unroll_steps"],
        }
        card_fields = {"feature_spec": feature_spec, "tasks": [students], **card_fields}
        return self.teacher.save_pretrained(path, **card_fields)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.teacher.parameters(), lr=self.hparams["teacher_lr"])

    def on_fit_start(self) -> None:
        self.dev = first_validation_batches(
            self.trainer, self.hparams["dev_batches"], type(self).__name__
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.episode is None:
            self.episode = self._new_episode(0)
        inputs, target = batch
        steps = self.hparams["unroll_steps"]
        if len(target) < steps:
            raise ValueError(
                f"a training batch of {len(target)} samples cannot be split into unroll_steps="
                f"{steps} student minibatches: use batches of unroll_steps x the student's batch"
            )
        minibatches = zip(inputs.tensor_split(steps), target.tensor_split(steps), strict=True)
        self._update_teacher([[pair] for pair in minibatches])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["teacher_training"] = {
            "episode": self.episode,
            "train_features": self.train_features.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["teacher_training"]
        self.episode = state["episode"]
        self.train_features.load_state_dict(state["train_features"])

    # -- internals ----------------------------------------------------------------------------

    def _new_episode(self, index: int) -> dict[str, Any]:
        """A fresh student: weights seeded by ``seed``, the episode and the rank."""
        hparams = self.hparams
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(
                hparams["seed"] + 1 + index * self.trainer.world_size + self.global_rank
            )
            network = student_network(hparams["architecture"], hparams["num_classes"])
        params = {name: p.detach().to(self.device) for name, p in network.named_parameters()}
        buffers = {name: b.to(self.device) for name, b in network.named_buffers()}
        state = self.inner.init_state(params)
        self.train_features = ExponentialMovingAverage(self.train_features.decay)
        return {
            "index": index,
            "step": 0,
            "params": params,
            "buffers": buffers,
            "optimizer_step": state.step,
            "optimizer_buffers": state.buffers,
            "dev_summary": self._dev_summary(params, buffers),
        }

    def _dev_summary(self, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
        return dev_summary(self.__dict__["student"], self.dev, (params, buffers))

    def _update_teacher(self, steps: list[list[tuple[Tensor, Tensor]]]) -> None:
        episode = self.episode
        assert episode is not None
        hparams = self.hparams
        student = self.__dict__["student"]
        start, dev_summary = episode["step"], episode["dev_summary"]
        features_at = self._features_at(start, dev_summary)
        observed: list[Tensor] = []  # the training batches' summaries, before each update
        loss_fn = taught_loss_fn(
            self.teacher, student, episode["buffers"], features_at, observed.append
        )
        objective = dev_objective_fn(
            student,
            episode["buffers"],
            self.dev,
            hparams["dev_objective"],
            hparams["smooth_error_sharpness"],
        )
        result = hypergradient(
            loss_fn,
            objective,
            episode["params"],
            InnerState(episode["optimizer_step"], episode["optimizer_buffers"]),
            self.inner,
            steps,
            list(self.teacher.parameters()),
        )
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        for param, grad in zip(self.teacher.parameters(), result.grads, strict=True):
            param.grad = self.trainer.strategy.reduce(grad, reduce_op="mean")
        optimizer.step()
        optimizer.zero_grad()
        for summary in observed:
            self.train_features.update(summary)
        episode.update(
            step=start + len(steps),
            params=result.params,
            optimizer_step=result.state.step,
            optimizer_buffers=result.state.buffers,
            dev_summary=self._dev_summary(result.params, episode["buffers"]),
        )
        self.log("teacher/dev_objective", result.objective, prog_bar=True, sync_dist=True)
        if episode["step"] >= hparams["episode_steps"]:
            dev_error = 1 - episode["dev_summary"][1]
            self.log("teacher/final_dev_error", dev_error, prog_bar=True, sync_dist=True)
            self.episode = self._new_episode(episode["index"] + 1)

    def _features_at(self, start: int, dev_summary: Tensor) -> Callable[[int], Tensor]:
        """The teacher's input at each step of the next unroll, as `LossTeacherCallback`'s."""
        train_summary = self.train_features.value
        train = dev_summary if train_summary is None else train_summary
        episode_steps = self.hparams["episode_steps"]

        def features_at(k: int) -> Tensor:
            return teacher_features(min((start + k) / episode_steps, 1.0), train, dev_summary)

        return features_at
