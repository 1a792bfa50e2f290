"""`LossTeacherCallback`: L2T-DLF's teacher, trained online by exact hypergradients."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_automl.core.features import ExponentialMovingAverage, classification_summaries
from lightning_automl.core.unroll import (
    InnerState,
    hypergradient,
    inner_optimizer,
    mirror_optimizer,
)
from lightning_automl.core.validation import (
    check_bool,
    check_non_negative_int,
    check_number,
    check_positive_int,
)
from lightning_automl.teaching.mixin import LossTeacherMixin
from lightning_automl.teaching.parametric_loss import Reduction
from lightning_automl.teaching.replay import (
    DEV_JOIN_SAMPLES,
    DevObjective,
    check_dev_objective,
    dev_objective_fn,
    dev_summary,
    joined_dev_batches,
    taught_loss_fn,
)
from lightning_automl.teaching.teacher import Coefficients, LossTeacher, teacher_features

__all__ = ["LossTeacherCallback", "first_validation_batches"]

COEFFICIENT_TABLE_ENTRIES = 2**20
"""At most this many numbers in the coefficients `LossTeacherCallback` computes ahead for the
steps until its next refresh (one teacher pass for all of them); at least one step's."""

PENDING_TRAIN_BATCHES = 64
"""Training batches whose logits `LossTeacherCallback` keeps before it summarises them together
for the features: one pass for many small batches, with bounded memory however rarely the
features are refreshed."""


def first_validation_batches(trainer: Trainer, count: int, user: str) -> list[Any]:
    """The first ``count`` batches of the fit's validation data, on the training device.

    Raises:
        ValueError: The fit has no validation data, or it is empty (``user`` names who needs
            it in the message).
    """
    source = trainer.fit_loop.epoch_loop.val_loop._data_source
    if not source.is_defined():
        raise ValueError(
            f"{user} needs validation data for the dev objective: pass val_dataloaders to "
            "Trainer.fit or define val_dataloader() in the module or datamodule"
        )
    batches: list[Any] = []
    for batch in source.dataloader():
        if len(batches) == count:
            break
        batches.append(trainer.strategy.batch_to_device(batch))
    if not batches:
        raise ValueError(f"{user}'s validation dataloader is empty")
    return batches


class LossTeacherCallback(Callback):
    """Teaches a `LossTeacherMixin` student with a `LossTeacher` (Wu et al., NeurIPS 2018).

    The student's ``taught_loss`` at optimizer step ``t`` is `ParametricLoss` with the
    coefficients ``phi_t = mu_theta(s_t)``, where ``s_t`` (`TEACHER_FEATURES`) holds the
    training progress ``t / total``, a moving average of the training batches' loss, accuracy,
    margin and entropy, and the same four on ``dev_batches`` validation batches. The averages are
    refreshed every ``update_every_n_steps`` optimizer steps (and reduced over DDP ranks), so every
    replica uses the same loss.

    At each refresh the teacher is first updated by the exact hypergradient of the dev
    objective ``M`` through the student's last ``unroll_steps`` updates: the callback keeps the
    student's parameters and optimizer state from ``unroll_steps`` steps back and the batches
    it trained on since, replays those updates functionally (``torch.func.functional_call``,
    the student's own SGD / momentum / Adam / AdamW rule, second-order terms included) with the
    current teacher, evaluates ``M`` on the dev batches and back-propagates to ``theta``
    (`lightning_automl.core.unroll.hypergradient`); Adam then updates the teacher. Under DDP
    every rank replays its own batches and the teacher's gradient is averaged, so all ranks
    apply the same teacher update. The replay assumes the learning rate stayed constant over
    the window and leaves out gradient clipping.

    Costs: the replay of ``K`` steps takes about twice the time of ``K`` training steps and
    memory for ``K`` steps' graphs (``checkpoint_every=c``: for ``K / c + c`` steps, with one more
    forward pass); ``frozen=True`` (a trained teacher, the episodic protocol) costs only the dev
    features.

    The teacher lives on the callback, not on the student, and its weights, Adam state, features
    and the pending replay window are saved in the callback's checkpoint state, so a resumed run
    continues as the uninterrupted one would. The same callback given to another ``fit`` (a new
    student) keeps its teacher and starts the student's features afresh.

    Args:
        pretrained: A shipped teacher's name (e.g. ``"teacher-mnist"``) or a saved path; ``None``
            for a fresh teacher.
        num_classes: The student's number of classes (a fresh teacher needs it).
        hidden_size: Hidden width of a fresh teacher (default 32).
        ce_weight: Cross-entropy's weight in the loss of a fresh teacher (default 0.5).
        coefficients: ``"tied"`` (default) or ``"full"``: the coefficients a fresh teacher sets
            (`LossTeacher`). With ``pretrained`` these four come from its card; a value passed
            must equal it.
        unroll_steps: ``K``: student updates each hypergradient goes back through (the
            truncation).
        update_every_n_steps: Optimizer steps between teacher updates, ``>= unroll_steps``.
        teacher_lr: Learning rate of the teacher's Adam optimizer.
        dev_batches: Number of validation batches (the first ones of the validation dataloader)
            that make up the dev set, loaded once per fit.
        dev_join_samples: For the dev objective, consecutive dev batches are joined into
            batches of up to this many samples (`teaching.replay.joined_dev_batches`; 0 keeps
            them as they come). Fewer, larger batches run faster; a teacher update holds one
            batch's activations. The features evaluate the batches as loaded (no graph: a
            larger batch gains nothing there, and a small CNN's took 1.7x as long per sample).
        dev_objective: ``"cross_entropy"`` or ``"smooth_error"`` (`dev_objective`).
        smooth_error_sharpness: ``k`` of the smooth error.
        checkpoint_every: Recompute the replay in segments of this many steps during the
            backward pass instead of storing its graph (``None``: store it).
        frozen: Never update the teacher; only refresh its features.
        feature_decay: Decay of the moving average of the training batches' features.
        seed: Seed of a fresh teacher's weights (the same on every rank).

    Raises:
        ValueError: An argument out of range.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        num_classes: int | None = None,
        hidden_size: int | None = None,
        ce_weight: float | None = None,
        coefficients: Coefficients | None = None,
        unroll_steps: int = 10,
        update_every_n_steps: int = 50,
        teacher_lr: float = 3e-4,
        dev_batches: int = 8,
        dev_join_samples: int = DEV_JOIN_SAMPLES,
        dev_objective: DevObjective = "cross_entropy",
        smooth_error_sharpness: float = 50.0,
        checkpoint_every: int | None = None,
        frozen: bool = False,
        feature_decay: float = 0.9,
        seed: int = 0,
    ) -> None:
        check_positive_int("unroll_steps", unroll_steps)
        check_positive_int("update_every_n_steps", update_every_n_steps)
        if unroll_steps > update_every_n_steps:
            raise ValueError(
                f"unroll_steps ({unroll_steps}) must be at most update_every_n_steps "
                f"({update_every_n_steps}): each update replays steps since the previous one"
            )
        check_number("teacher_lr", teacher_lr, "a number > 0", lambda value: value > 0)
        check_positive_int("dev_batches", dev_batches)
        check_non_negative_int("dev_join_samples", dev_join_samples)
        check_dev_objective(dev_objective, smooth_error_sharpness)
        if checkpoint_every is not None:
            check_positive_int("checkpoint_every", checkpoint_every)
        check_bool("frozen", frozen)
        self.teacher = LossTeacher.build(
            pretrained, num_classes, hidden_size, ce_weight, coefficients, seed
        )
        self.unroll_steps = unroll_steps
        self.update_every_n_steps = update_every_n_steps
        self.teacher_lr = float(teacher_lr)
        self.dev_batches = dev_batches
        self.dev_join_samples = dev_join_samples
        self.dev_objective = dev_objective
        self.smooth_error_sharpness = float(smooth_error_sharpness)
        self.checkpoint_every = checkpoint_every
        self.frozen = frozen
        self.train_features = ExponentialMovingAverage(feature_decay)
        self._train_outputs: list[tuple[Tensor, Tensor]] = []  # (logits, target) to summarise
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict[str, Any] | None = None
        self._dev: list[tuple[Any, Tensor]] = []  # (inputs, target) as loaded: the features'
        self._dev_joined: list[tuple[Any, Tensor]] = []  # `joined_dev_batches`: the objective's
        self._total_steps = 0
        self._summaries: dict[str, Tensor] | None = None  # "train" / "dev" at the last refresh
        self._window: dict[str, Any] | None = None  # the student updates the next update replays
        self._last_step = 0  # the trainer's global step at the last on_train_batch_end
        # (first step, (W, b) of each step from it): `_coefficients_at`
        self._coefficients: tuple[int, list[tuple[Tensor, Tensor]]] | None = None
        self._restored = False  # load_state_dict ran: the fit resumes this run

    # -- the student's loss -------------------------------------------------------------------

    def features(self, step: int | Tensor) -> Tensor:
        """The teacher's input ``s_t`` at optimizer step ``step``, or one row per step of a
        tensor of steps."""
        if self._summaries is None:
            raise RuntimeError("the teacher's features exist once Trainer.fit has started")
        progress = (torch.as_tensor(step, dtype=torch.float64) / self._total_steps).clamp(max=1)
        return teacher_features(progress, self._summaries["train"], self._summaries["dev"])

    def taught_loss(
        self, student: LightningModule, logits: Tensor, target: Tensor, reduction: Reduction
    ) -> Tensor:
        """The student's loss at its current step; training batches also feed the features."""
        weight, bias = self._coefficients_at(student.trainer.global_step)
        if student.training and torch.is_grad_enabled():  # summarised later, many at once
            self._train_outputs.append((logits.detach(), target))
            if len(self._train_outputs) == PENDING_TRAIN_BATCHES:
                self._summarise_train_outputs()
        return self.teacher.loss(logits, target, weight, bias, reduction)

    # -- Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, LossTeacherMixin):
            raise TypeError(
                f"LossTeacherCallback needs a module that inherits LossTeacherMixin and returns "
                f"self.taught_loss(logits, target) from training_step; {type(pl_module).__name__} "
                "does not"
            )
        pl_module._loss_teacher = self

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.teacher.to(pl_module.device)
        self._total_steps = self._training_length(trainer)
        self._dev = self._load_dev_batches(trainer, pl_module)
        self._last_step = trainer.global_step
        if not self.frozen:  # a frozen teacher never evaluates the dev objective
            if len(trainer.optimizers) != 1:
                count = len(trainer.optimizers)
                raise ValueError(f"LossTeacherCallback replays one student optimizer, got {count}")
            inner_optimizer(trainer.optimizers[0])  # refuses an update rule it cannot replay
            self._dev_joined = joined_dev_batches(self._dev, self.dev_join_samples)
        self.optimizer = torch.optim.Adam(self.teacher.parameters(), lr=self.teacher_lr)
        if self._pending_optimizer_state is not None:
            self.optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None
        if not self._restored:  # a new student: the teacher and its Adam state carry over
            self.train_features = ExponentialMovingAverage(self.train_features.decay)
            self._train_outputs = []
            self._window = None
            self._refresh(trainer, pl_module)
        self._restored = False

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.frozen:
            return
        step = trainer.global_step
        if self._window is None and (step + self.unroll_steps) % self.update_every_n_steps == 0:
            self._window = self._snapshot(trainer, pl_module, step)
        if self._window is not None:
            self._window["batches"][step - self._window["start"]].append(batch)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # accumulating gradients: no optimizer step yet
            return
        self._last_step = step
        if step % self.update_every_n_steps:
            return
        if self._window is not None and step == self._window["start"] + self.unroll_steps:
            self._update_teacher(trainer, pl_module)
        self._window = None
        self._refresh(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        optimizer = self.optimizer.state_dict() if self.optimizer else self._pending_optimizer_state
        return {
            "teacher": self.teacher.state_dict(),
            "optimizer": optimizer,
            "train_features": self.train_features.state_dict(),
            "train_outputs": self._train_outputs,
            "summaries": self._summaries,
            "window": self._window,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state_dict["teacher"])
        self._pending_optimizer_state = state_dict["optimizer"]
        self.train_features.load_state_dict(state_dict["train_features"])
        self._train_outputs = state_dict["train_outputs"]
        self._summaries = state_dict["summaries"]
        self._window = state_dict["window"]
        self._restored = True
        self._coefficients = None

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _parameter_names(pl_module: LightningModule) -> dict[Tensor, str]:
        return {param: name for name, param in pl_module.named_parameters()}

    @staticmethod
    def _training_length(trainer: Trainer) -> int:
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "LossTeacherCallback needs a known training length for its progress feature: set "
                "Trainer(max_steps=...) or use a dataloader with a length"
            )
        return max(1, int(total))

    def _load_dev_batches(
        self, trainer: Trainer, pl_module: LightningModule
    ) -> list[tuple[Any, Tensor]]:
        batches = first_validation_batches(trainer, self.dev_batches, "LossTeacherCallback")
        pairs = [pl_module.teaching_batch(batch) for batch in batches]  # type: ignore[operator]
        inputs, target = pairs[0]
        with torch.no_grad():
            logits = pl_module(inputs)
        if logits.dim() != 2 or logits.shape[1] != self.teacher.num_classes:
            raise ValueError(
                f"the teacher is for num_classes={self.teacher.num_classes}, but the student's "
                f"forward gives logits of shape {tuple(logits.shape)}"
            )
        self.teacher.loss(logits, target)  # checks the targets' range
        return pairs

    @torch.no_grad()
    def _refresh(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """New features: the training average so far and the dev set now, mean over ranks."""
        dev = dev_summary(pl_module, self._dev)
        self._summarise_train_outputs()
        train = self.train_features.value
        summaries = {"train": dev if train is None else train.to(dev.device), "dev": dev}
        self._summaries = {
            key: trainer.strategy.reduce(value, reduce_op="mean")
            for key, value in summaries.items()
        }
        self._coefficients = None

    @torch.no_grad()
    def _coefficients_at(self, step: int) -> tuple[Tensor, Tensor]:
        """``phi_t = mu_theta(s_t)`` at optimizer step ``step``. The features change only with
        the progress between refreshes, so one teacher pass sets the coefficients of a block of
        steps (at most `COEFFICIENT_TABLE_ENTRIES` numbers). The blocks are aligned to the
        refreshes, so a resumed run computes each step's row in the same batch of rows (a
        matmul's rounding may depend on its row count) as the uninterrupted run."""
        table = self._coefficients
        if table is None or not 0 <= step - table[0] < len(table[1]):
            period = self.update_every_n_steps
            per_step = self.teacher.num_classes * (self.teacher.num_classes + 1)  # W and b
            block = max(1, min(period, COEFFICIENT_TABLE_ENTRIES // per_step))
            refreshed = step - step % period
            first = refreshed + (step - refreshed) // block * block
            steps = torch.arange(first, min(first + block, refreshed + period))
            weights, biases = self.teacher(self.features(steps))
            # One pair of views per step, read by a list lookup (not a tensor index) per step.
            table = self._coefficients = (first, list(zip(weights, biases, strict=True)))
        return table[1][step - table[0]]

    def _summarise_train_outputs(self) -> None:
        """Add the training batches kept since the last call to the features' average, in order."""
        if self._train_outputs:
            self.train_features.extend(
                classification_summaries(*zip(*self._train_outputs, strict=True))
            )
            self._train_outputs = []

    def _snapshot(self, trainer: Trainer, pl_module: LightningModule, step: int) -> dict[str, Any]:
        """What the replay starts from: parameters, buffers and optimizer state at ``step``."""
        _, state = mirror_optimizer(trainer.optimizers[0], self._parameter_names(pl_module))
        return {
            "start": step,
            "params": {name: p.detach().clone() for name, p in pl_module.named_parameters()},
            "buffers": {name: b.detach().clone() for name, b in pl_module.named_buffers()},
            "optimizer_step": state.step,
            "optimizer_buffers": state.buffers,
            "batches": [[] for _ in range(self.unroll_steps)],
        }

    def _update_teacher(self, trainer: Trainer, pl_module: LightningModule) -> None:
        window = self._window
        assert window is not None and self.optimizer is not None
        inner = inner_optimizer(trainer.optimizers[0])
        state = InnerState(window["optimizer_step"], window["optimizer_buffers"])
        buffers = {name: value.clone() for name, value in window["buffers"].items()}
        start = window["start"]
        teaching_batch = pl_module.teaching_batch
        training_loss = taught_loss_fn(
            self.teacher, pl_module, buffers, lambda k: self.features(start + k)
        )
        objective = dev_objective_fn(
            pl_module,
            buffers,
            self._dev_joined,
            self.dev_objective,
            self.smooth_error_sharpness,
        )
        with torch.enable_grad():
            result = hypergradient(
                training_loss,
                objective,
                window["params"],
                state,
                inner,
                [[teaching_batch(batch) for batch in step] for step in window["batches"]],  # type: ignore[operator]
                list(self.teacher.parameters()),
                self.checkpoint_every,
            )
        for param, grad in zip(self.teacher.parameters(), result.grads, strict=True):
            param.grad = trainer.strategy.reduce(grad, reduce_op="mean")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            weight, bias = self.teacher(self.features(trainer.global_step))
        diagonal = weight.diagonal()
        classes = self.teacher.num_classes
        pl_module.log_dict(
            {
                "teacher/dev_objective": trainer.strategy.reduce(
                    result.objective, reduce_op="mean"
                ),
                "teacher/weight_diagonal": diagonal.mean(),
                "teacher/weight_off_diagonal": (weight.sum() - diagonal.sum())
                / (classes**2 - classes),
                "teacher/bias": bias.mean(),
            },
            on_step=True,
            on_epoch=False,
        )
