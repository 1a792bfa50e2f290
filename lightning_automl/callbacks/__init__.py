"""Lightning callbacks shared by all methods (the method-specific ones live in their package)."""

from lightning_automl.callbacks.metrics_summary import MetricsSummary
from lightning_automl.callbacks.save_pretrained import SavePretrained

__all__ = ["MetricsSummary", "SavePretrained"]
