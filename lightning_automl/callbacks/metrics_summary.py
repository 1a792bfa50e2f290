"""Print the final validation metrics when ``fit`` ends."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["MetricsSummary"]


class MetricsSummary(Callback):
    """Prints, on rank 0, the last logged metrics whose name starts with ``prefix``.

    ``fit`` shows metrics only in the progress bar, which scrolls away; this leaves a table at
    the end of the run (e.g. of ``val/acc`` and ``val/loss``).

    Args:
        prefix: Only metrics whose name starts with it are shown.
    """

    def __init__(self, prefix: str = "val") -> None:
        self.prefix = prefix

    def table(self, trainer: Trainer) -> str:
        """The metrics of ``trainer.callback_metrics`` that start with ``prefix``, one a line."""
        metrics = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith(self.prefix)
        }
        header = (
            f"Metrics '{self.prefix}*' after epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}:"
        )
        if not metrics:
            return f"{header} none were logged"
        width = max(len(name) for name in metrics)
        rows = [f"  {name:<{width}}  {value:.4f}" for name, value in metrics.items()]
        return "\n".join([header, *rows])

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        print(self.table(trainer))
