"""Save a learned component with its card when ``fit`` ends: how shipped weights are made."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lightning_automl.core.validation import check_path

__all__ = ["SavePretrained"]


class SavePretrained(Callback):
    """At the end of ``fit``, rank 0 calls ``pl_module.save_pretrained(path, ...)``.

    With a `ModelCheckpoint` that monitors a metric, the weights of its best checkpoint are
    loaded first, so the component saved is the best one seen, not the last. The card records
    the command line that ran (a recipe run records ``lightning-automl fit -c RECIPE``), the git
    commit, the monitored metric's best value and the last logged metrics whose name starts
    with ``metrics_prefix``. A ``fast_dev_run`` saves nothing.

    Args:
        path: Where to write ``PATH.safetensors`` and ``PATH.json``, e.g.
            ``lightning_automl/pretrained/l2l-quadratic`` to ship it.
        metrics_prefix: Logged metrics recorded on the card.
        description: One line for humans, on the card.
    """

    def __init__(self, path: str, metrics_prefix: str = "val", description: str = "") -> None:
        check_path("path", path)
        self.path = path
        self.metrics_prefix = metrics_prefix
        self.description = description

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "save_pretrained", None)):
            raise TypeError(
                f"SavePretrained needs a module with save_pretrained(path, **card_fields); "
                f"{type(pl_module).__name__} has none"
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(trainer, "fast_dev_run", False):  # set by Trainer(fast_dev_run=...)
            rank_zero_info(f"SavePretrained: fast_dev_run, {self.path} is not written")
            return
        metrics = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith(self.metrics_prefix)
        }
        best = trainer.checkpoint_callback
        if isinstance(best, ModelCheckpoint) and best.monitor and best.best_model_path:
            checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
            pl_module.load_state_dict(checkpoint["state_dict"])
            metrics[f"best {best.monitor}"] = float(best.best_model_score or float("nan"))
        if trainer.is_global_zero:
            command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
            pl_module.save_pretrained(  # type: ignore[operator]
                self.path, command=command, metrics=metrics, description=self.description
            )
