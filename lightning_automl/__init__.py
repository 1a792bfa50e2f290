"""lightning_automl: learned training components for PyTorch Lightning.

The subpackages are imported on demand (``lightning_automl.data``, ``lightning_automl.pretrained``,
one per method), so ``import lightning_automl`` stays light.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
