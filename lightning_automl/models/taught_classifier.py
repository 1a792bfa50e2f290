"""`TaughtClassifier`: the MNIST students of L2T-DLF's experiments, taught or trained with CE."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_automl.core.validation import check_number
from lightning_automl.teaching.mixin import LossTeacherMixin
from lightning_automl.teaching.students import Architecture, student_network

__all__ = ["TaughtClassifier"]


class TaughtClassifier(LossTeacherMixin, LightningModule):
    """An MNIST student trained with a teacher's loss (``loss="taught"``) or with cross-entropy.

    Logs ``train/loss``, ``val/loss``, ``val/error`` and ``test/error`` (fraction misclassified).
    With ``loss="taught"`` the `Trainer` needs a `LossTeacherCallback`.

    Args:
        architecture: ``"mlp"`` or ``"cnn"`` (`student_network`).
        loss: ``"taught"`` or ``"cross_entropy"``.
        lr: SGD's learning rate.
        momentum: SGD's momentum.
        weight_decay: SGD's weight decay.
    """

    def __init__(
        self,
        architecture: Architecture = "mlp",
        loss: Literal["taught", "cross_entropy"] = "taught",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        if loss not in ("taught", "cross_entropy"):
            raise ValueError(f"loss must be 'taught' or 'cross_entropy', got {loss!r}")
        check_number("lr", lr, "a number > 0", lambda value: value > 0)
        check_number("momentum", momentum, "a number in [0, 1)", lambda value: 0 <= value < 1)
        check_number("weight_decay", weight_decay, "a number >= 0", lambda value: value >= 0)
        network = student_network(architecture)
        super().__init__()
        self.save_hyperparameters()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        if self.hparams["loss"] == "taught":
            loss = self.taught_loss(logits, y)
        else:
            loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=stage == "val")
        error = (logits.argmax(-1) != y).float().mean()
        self.log(f"{stage}/error", error, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hparams = self.hparams
        return torch.optim.SGD(
            self.parameters(),
            lr=hparams["lr"],
            momentum=hparams["momentum"],
            weight_decay=hparams["weight_decay"],
        )
