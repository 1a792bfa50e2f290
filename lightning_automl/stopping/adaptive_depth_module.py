"""`AdaptiveDepthModule`: a `LightningModule` trained plainly or by Learning to Stop's stages."""

from __future__ import annotations

from typing import cast

from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_automl.stopping.adaptive_depth import AdaptiveDepthMixin

__all__ = ["AdaptiveDepthModule"]

Batch = tuple[Tensor, Tensor]


class AdaptiveDepthModule(AdaptiveDepthMixin, LightningModule):
    """`AdaptiveDepthMixin` on a `LightningModule` whose batches are ``(input, target)``.

    ``training_step`` returns ``plain_loss`` (the usual full-depth loss) when no
    `StopPolicyCallback` is attached and `adaptive_depth_loss` when one is, and logs it as
    ``train/loss``. Validation and test call ``evaluate(x, target, stage)``; ``log_metric`` logs
    one of the ``metrics`` (a ``ModuleDict`` keyed like ``val_acc`` for ``val/acc``), reduced
    over the epoch and the DDP ranks.
    """

    metrics: nn.ModuleDict

    def plain_loss(self, x: Tensor, target: Tensor) -> Tensor:
        """The loss of the usual full-depth training (implemented by the model)."""
        raise NotImplementedError(f"{type(self).__name__} must implement plain_loss(x, target)")

    def evaluate(self, x: Tensor, target: Tensor, stage: str) -> None:
        """Logs the metrics of a ``val`` or ``test`` batch (implemented by the model)."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(...)")

    @property
    def policy_attached(self) -> bool:
        """Whether a trained or training policy can stop samples (Stage II on)."""
        return self.stop_schedule is not None and self.stop_schedule.stage > 1

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, target = batch
        if self.stop_schedule is None:
            loss = self.plain_loss(x, target)
        else:
            loss = self.adaptive_depth_loss(x, target)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate(*batch, stage="val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate(*batch, stage="test")

    def log_metric(self, name: str, *update: Tensor) -> None:
        """Updates the metric logged as ``name`` (e.g. ``val/acc``) with ``update`` and logs it."""
        metric = cast(Metric, self.metrics[name.replace("/", "_")])
        metric(*update)
        self.log(name, metric, prog_bar=name.startswith("val"))
