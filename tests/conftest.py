from __future__ import annotations

from pathlib import Path

import pytest
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
