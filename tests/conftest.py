from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import TinyClassifier, TinyDataModule

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def tiny_model() -> TinyClassifier:
    return TinyClassifier()


@pytest.fixture
def tiny_data() -> TinyDataModule:
    return TinyDataModule()


@pytest.fixture
def one_thread():
    """One torch thread: for tests of tiny tensors, where more threads only add synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
