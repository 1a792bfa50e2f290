"""`LossTeacherMixin`: a `LightningModule` trained with the loss a teacher sets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_automl.teaching.parametric_loss import Reduction

if TYPE_CHECKING:
    from lightning_automl.teaching.callback import LossTeacherCallback

__all__ = ["LossTeacherMixin"]


class LossTeacherMixin:
    """Gives a classification `LightningModule` ``taught_loss(logits, target)``.

    Return it from ``training_step`` in place of cross-entropy and add a `LossTeacherCallback`
    to the `Trainer`::

        class Net(LossTeacherMixin, LightningModule):
            def training_step(self, batch, batch_idx):
                x, y = batch
                return self.taught_loss(self(x), y)

    The callback unrolls the student's updates functionally: it computes the logits of a batch
    as ``self(inputs)`` with ``(inputs, target) = self.teaching_batch(batch)``, so ``forward``
    must give the logits that ``training_step`` passes to ``taught_loss``.
    """

    _loss_teacher: LossTeacherCallback | None = None

    def taught_loss(self, logits: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
        """The teacher's `ParametricLoss` of ``logits`` ``(B, C)`` for targets ``(B,)``.

        ``reduction``: ``"mean"``, ``"sum"`` or ``"none"`` (per sample).

        Raises:
            RuntimeError: No `LossTeacherCallback` in the `Trainer`.
        """
        if self._loss_teacher is None:
            raise RuntimeError(
                f"{type(self).__name__}.taught_loss needs a LossTeacherCallback in "
                "Trainer(callbacks=[...])"
            )
        return self._loss_teacher.taught_loss(self, logits, target, reduction)  # type: ignore[arg-type]

    def teaching_batch(self, batch: Any) -> tuple[Any, Tensor]:
        """``(inputs, target)`` of a training or validation batch; by default ``batch`` is
        an ``(inputs, target)`` pair. Override it for other batch layouts."""
        if isinstance(batch, tuple | list) and len(batch) == 2:
            return batch[0], batch[1]
        raise TypeError(
            f"{type(self).__name__}.teaching_batch expects (inputs, target) batches, got "
            f"{type(batch).__name__}; override teaching_batch(batch) to return them"
        )
