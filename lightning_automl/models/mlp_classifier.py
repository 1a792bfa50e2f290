"""A multilayer perceptron classifier: the hand-designed baseline of the quickstart."""

from __future__ import annotations

from itertools import pairwise
from typing import cast

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["MLPClassifier"]


class MLPClassifier(LightningModule):
    """An MLP over flattened inputs, trained with cross-entropy and AdamW.

    Logs ``{stage}/loss`` and ``{stage}/acc`` for ``train``, ``val`` and ``test`` to every
    Lightning logger and the progress bar. The optimizer can be replaced from a LightningCLI
    recipe with the ``optimizer:`` key.

    Args:
        input_dim: Number of input features once flattened (64 for digits, 784 for MNIST).
        num_classes: Number of classes.
        hidden_dims: Width of each hidden layer.
        dropout: Dropout probability after each hidden layer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        input_dim: int = 64,
        num_classes: int = 10,
        hidden_dims: list[int] | None = None,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_dims = [128] if hidden_dims is None else list(hidden_dims)
        if min(input_dim, num_classes, *hidden_dims) < 1:
            raise ValueError(
                "input_dim, num_classes and hidden_dims must be positive integers, got "
                f"{input_dim}, {num_classes} and {hidden_dims}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if lr <= 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr} and {weight_decay}")
        self.save_hyperparameters()
        widths = [input_dim, *hidden_dims]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)
        # ModuleDict keys cannot be "train" (a Module method), hence the suffix.
        self.accuracy = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes) for stage in ("train", "val", "test")}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_classes)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy = cast(MulticlassAccuracy, self.accuracy[f"{stage}_acc"])
        accuracy(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True, on_step=on_step, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        self._shared_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self(batch[0]).argmax(dim=-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
