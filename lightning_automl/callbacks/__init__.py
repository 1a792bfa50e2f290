"""Lightning callbacks shared by all methods (the method-specific ones live in their package)."""

from lightning_automl.callbacks.metrics_summary import MetricsSummary

__all__ = ["MetricsSummary"]
