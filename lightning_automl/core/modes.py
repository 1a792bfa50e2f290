"""Module modes: run a block with a module in evaluation mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["evaluation_mode"]


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` inside the block; its previous mode after."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)
