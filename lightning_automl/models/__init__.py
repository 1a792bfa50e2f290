"""Plain baseline models that recipes and benchmarks train (with or without a learned component)."""

from lightning_automl.models.mlp_classifier import MLPClassifier
from lightning_automl.models.taught_classifier import TaughtClassifier

__all__ = ["MLPClassifier", "TaughtClassifier"]
