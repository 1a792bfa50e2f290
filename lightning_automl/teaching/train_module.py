"""`LossTeacherTrainModule`: L2T-DLF's episodic protocol, a teacher trained across student runs."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_automl.core.features import ExponentialMovingAverage
from lightning_automl.core.pretrained import PretrainedCard
from lightning_automl.core.unroll import SGD, InnerState, hypergradient
from lightning_automl.core.validation import (
    check_non_negative_int,
    check_number,
    check_positive_int,
)
from lightning_automl.teaching.callback import first_validation_batches
from lightning_automl.teaching.replay import (
    DEV_JOIN_SAMPLES,
    DevObjective,
    check_dev_objective,
    dev_objective_fn,
    dev_summary,
    joined_dev_batches,
    taught_loss_fn,
)
from lightning_automl.teaching.students import Architecture, student_network
from lightning_automl.teaching.teacher import (
    TEACHER_FEATURES,
    Coefficients,
    LossTeacher,
    teacher_features,
)

__all__ = ["LossTeacherTrainModule"]


class LossTeacherTrainModule(LightningModule):
    """Trains a `LossTeacher` over whole student runs from scratch (Wu et al., NeurIPS 2018).

    Each training batch is one teacher update over ``unroll_steps`` student steps. Without
    ``student_batch_size`` the batch is split into ``unroll_steps`` minibatches, one per step (a
    batch of 1,280 gives 10 steps of 128). With it, the batch is the pool the student's
    minibatches of that size are drawn from, in passes over it in a new random order each (the
    last minibatch of a pass may be smaller, as a ``DataLoader`` makes them): give the whole
    training set as one batch and ``unroll_steps = episode_steps`` to optimise, as the paper
    does, the dev objective at the end of each student's whole run. The student
    (``student_network(architecture)``, fresh weights for every episode, drawn from ``seed``, the
    episode and the DDP rank) takes those steps functionally with SGD (momentum) on the taught
    loss; the dev objective on ``dev_batches`` validation batches then gives the teacher its exact
    hypergradient through them (`core.unroll.hypergradient`), and the teacher's optimizer steps
    (an update whose hypergradient is not finite is skipped). The student carries on from where
    the unroll ended; after ``episode_steps`` steps a new student starts. The teacher reads the
    features that `LossTeacherCallback` computes (progress = step / ``episode_steps``, a moving
    average of the training batches' summaries and the dev summary, both refreshed every
    ``refresh_every_n_steps`` student steps from the student's weights there, inside the unroll
    too), so the trained teacher can then be frozen in that callback to teach new students with
    no hypergradient: ``LossTeacherCallback(pretrained=..., frozen=True,
    update_every_n_steps=refresh_every_n_steps)`` over a run of ``episode_steps`` steps.

    Under DDP each rank trains its own student on its shard of the data and the teacher's
    gradient is averaged. Logs ``teacher/dev_objective`` per update and
    ``teacher/final_dev_error`` (the dev error of each finished student) and
    ``teacher/skipped_updates``. The running student,
    its optimizer state and the feature average are saved in checkpoints; a resume mid-epoch
    repeats the uninterrupted run when the dataloader is resumable (Lightning's rule).

    Args:
        architecture: The student, ``"mlp"`` or ``"cnn"`` (`student_network`).
        num_classes: Classes of the task.
        pretrained: A teacher to fine-tune (shipped name or saved path); ``None``: a fresh one.
        hidden_size: Hidden width of a fresh teacher (default 32).
        ce_weight: Cross-entropy's weight in the taught loss of a fresh teacher (default 0.5).
        coefficients: ``"tied"`` (default) or ``"full"``: the coefficients a fresh teacher sets
            (`LossTeacher`).
        student_lr: The students' SGD learning rate.
        student_momentum: The students' SGD momentum.
        episode_steps: Student steps per episode (the length of the runs it will teach).
        unroll_steps: Student steps per teacher update (the truncation).
        student_batch_size: Draw the student's minibatches of this size from each training batch
            (see above); ``None``: split the batch into ``unroll_steps`` minibatches.
        refresh_every_n_steps: Student steps between refreshes of the teacher's features
            (``None``: ``unroll_steps``).
        teacher_optimizer: ``"adam"`` or ``"sgd"`` (plain SGD: steps in proportion to the
            hypergradient, where Adam moves every parameter by about ``teacher_lr``).
        teacher_lr: The teacher's learning rate.
        teacher_max_grad_norm: Clip the hypergradient's norm to this (``None``: no clipping).
        dev_batches: Validation batches (the first ones) forming the dev set.
        dev_join_samples: As `LossTeacherCallback`'s: for the dev objective, dev batches are
            joined into batches of up to this many samples (0 keeps them as they come).
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
        coefficients: Coefficients | None = None,
        student_lr: float = 0.05,
        student_momentum: float = 0.9,
        episode_steps: int = 1600,
        unroll_steps: int = 10,
        student_batch_size: int | None = None,
        refresh_every_n_steps: int | None = None,
        teacher_optimizer: Literal["adam", "sgd"] = "adam",
        teacher_lr: float = 0.01,
        teacher_max_grad_norm: float | None = None,
        dev_batches: int = 8,
        dev_join_samples: int = DEV_JOIN_SAMPLES,
        dev_objective: DevObjective = "cross_entropy",
        smooth_error_sharpness: float = 50.0,
        feature_decay: float = 0.9,
        seed: int = 0,
    ) -> None:
        self.inner = SGD(student_lr, student_momentum)
        student_network(architecture, num_classes)  # checks the architecture
        check_positive_int("episode_steps", episode_steps)
        check_positive_int("unroll_steps", unroll_steps)
        if student_batch_size is not None:
            check_positive_int("student_batch_size", student_batch_size)
        if refresh_every_n_steps is not None:
            check_positive_int("refresh_every_n_steps", refresh_every_n_steps)
        if teacher_optimizer not in ("adam", "sgd"):
            raise ValueError(
                f"teacher_optimizer must be 'adam' or 'sgd', got {teacher_optimizer!r}"
            )
        check_number("teacher_lr", teacher_lr, "a number > 0", lambda value: value > 0)
        if teacher_max_grad_norm is not None:
            check_number(
                "teacher_max_grad_norm", teacher_max_grad_norm, "a number > 0", lambda v: v > 0
            )
        check_positive_int("dev_batches", dev_batches)
        check_non_negative_int("dev_join_samples", dev_join_samples)
        check_dev_objective(dev_objective, smooth_error_sharpness)
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.teacher = LossTeacher.build(
            pretrained, num_classes, hidden_size, ce_weight, coefficients, seed
        )
        # The student's structure only: its tensors live in the episode state, not as parameters.
        with torch.device("meta"):
            self.__dict__["student"] = student_network(architecture, num_classes)
        self.train_features = ExponentialMovingAverage(feature_decay)
        self.episode: dict[str, Any] | None = None
        self.dev: list[tuple[Tensor, Tensor]] = []  # as loaded: the features' dev set
        self.dev_joined: list[tuple[Tensor, Tensor]] = []  # `joined_dev_batches`: the objective's
        self.refresh_period = refresh_every_n_steps or unroll_steps

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
            "refresh_every_n_steps": self.refresh_period,
        }
        card_fields = {"feature_spec": feature_spec, "tasks": [students], **card_fields}
        return self.teacher.save_pretrained(path, **card_fields)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        kind = torch.optim.Adam if self.hparams["teacher_optimizer"] == "adam" else torch.optim.SGD
        return kind(self.teacher.parameters(), lr=self.hparams["teacher_lr"])

    def on_fit_start(self) -> None:
        batches = first_validation_batches(
            self.trainer, self.hparams["dev_batches"], type(self).__name__
        )
        self.dev = batches
        self.dev_joined = joined_dev_batches(batches, self.hparams["dev_join_samples"])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.episode is None:
            self.episode = self._new_episode(0)
        self._update_teacher([[pair] for pair in self._minibatches(*batch)])

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

    def _episode_seed(self, index: int) -> int:
        return self.hparams["seed"] + 1 + index * self.trainer.world_size + self.global_rank

    def _new_episode(self, index: int) -> dict[str, Any]:
        """A fresh student: weights seeded by ``seed``, the episode and the rank."""
        hparams = self.hparams
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._episode_seed(index))
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
            "summaries": None,  # (training average, dev) at the last refresh of the features
            "pending": [],  # the training minibatches' summaries since then
        }

    def _minibatches(self, inputs: Tensor, target: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The student's minibatches for the next ``unroll_steps`` steps (the class docstring)."""
        steps, size = self.hparams["unroll_steps"], self.hparams["student_batch_size"]
        if size is None:
            if len(target) < steps:
                raise ValueError(
                    f"a training batch of {len(target)} samples cannot be split into "
                    f"unroll_steps={steps} student minibatches: use batches of unroll_steps x "
                    "the student's batch, or set student_batch_size"
                )
            return list(zip(inputs.tensor_split(steps), target.tensor_split(steps), strict=True))
        episode = self.episode
        assert episode is not None
        per_pass = math.ceil(len(target) / size)
        orders: dict[int, Tensor] = {}  # pass -> its order, seeded by the episode and the pass
        minibatches = []
        for step in range(episode["step"], episode["step"] + steps):
            index, position = divmod(step, per_pass)
            if index not in orders:
                generator = torch.Generator().manual_seed(
                    self._episode_seed(episode["index"]) * per_pass * 1000 + index
                )
                orders[index] = torch.randperm(len(target), generator=generator)
            chosen = orders[index][position * size : (position + 1) * size].to(target.device)
            minibatches.append((inputs[chosen], target[chosen]))
        return minibatches

    def _dev_summary(self, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
        return dev_summary(self.__dict__["student"], self.dev, (params, buffers))

    def _features(self, step: int, params: dict[str, Tensor]) -> Tensor:
        """The teacher's input at the student's step ``step`` (weights ``params``), as
        `LossTeacherCallback` computes it: at a multiple of the refresh period, the training
        summaries since the last refresh join the moving average and the dev summary is taken."""
        episode = self.episode
        assert episode is not None
        if step % self.refresh_period == 0:
            if episode["pending"]:
                self.train_features.extend(torch.stack(episode["pending"]))
                episode["pending"].clear()
            weights = {name: value.detach() for name, value in params.items()}
            dev = self._dev_summary(weights, episode["buffers"])
            train = self.train_features.value
            episode["summaries"] = (dev if train is None else train, dev)
        progress = min(step / self.hparams["episode_steps"], 1.0)
        return teacher_features(progress, *episode["summaries"])

    def _update_teacher(self, steps: list[list[tuple[Tensor, Tensor]]]) -> None:
        episode = self.episode
        assert episode is not None
        hparams = self.hparams
        student = self.__dict__["student"]
        start = episode["step"]
        rows: dict[int, Tensor] = {}  # the features of each step of the unroll
        observe = episode["pending"].append  # the list is emptied in place at each refresh
        taught = taught_loss_fn(
            self.teacher, student, episode["buffers"], rows.__getitem__, observe
        )

        def loss_fn(params: dict[str, Tensor], k: int, pairs: Any) -> Tensor:
            if k not in rows:
                rows[k] = self._features(start + k, params)
            return taught(params, k, pairs)

        objective = dev_objective_fn(
            student,
            episode["buffers"],
            self.dev_joined,
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
        self._step_teacher(result.grads)
        episode.update(
            step=start + len(steps),
            params=result.params,
            optimizer_step=result.state.step,
            optimizer_buffers=result.state.buffers,
        )
        self.log("teacher/dev_objective", result.objective, prog_bar=True, sync_dist=True)
        if episode["step"] >= hparams["episode_steps"]:
            dev_error = 1 - self._dev_summary(result.params, episode["buffers"])[1]
            self.log("teacher/final_dev_error", dev_error, prog_bar=True, sync_dist=True)
            self.episode = self._new_episode(episode["index"] + 1)

    def _step_teacher(self, grads: list[Tensor]) -> None:
        """The teacher's step on the hypergradient averaged over the ranks, clipped; skipped
        (and counted in ``teacher/skipped_updates``) where it is not finite."""
        grads = [self.trainer.strategy.reduce(grad, reduce_op="mean") for grad in grads]
        finite = all(bool(torch.isfinite(grad).all()) for grad in grads)
        self.log("teacher/skipped_updates", float(not finite), reduce_fx="sum")
        for param, grad in zip(self.teacher.parameters(), grads, strict=True):
            param.grad = grad if finite else None  # the optimizer leaves it as it is
        if finite and self.hparams["teacher_max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(
                self.teacher.parameters(), self.hparams["teacher_max_grad_norm"]
            )
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        optimizer.step()  # also where skipped: it counts the trainer's steps
        optimizer.zero_grad()
