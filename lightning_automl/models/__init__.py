"""Plain baseline models that recipes and benchmarks train (with or without a learned component)."""

from lightning_automl.models.mlp_classifier import MLPClassifier

__all__ = ["MLPClassifier"]
