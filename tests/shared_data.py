"""Where the tests find the real datasets: ``../shared/data`` from the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["SHARED_DATA", "requires_shared_data"]

SHARED_DATA: Path = Path(__file__).resolve().parents[2] / "shared" / "data"


def requires_shared_data(name: str) -> pytest.MarkDecorator:
    """Skip the marked test or module when ``SHARED_DATA / name`` is not a folder."""
    folder = SHARED_DATA / name
    return pytest.mark.skipif(
        not folder.is_dir(), reason=f"shared dataset folder {folder} is missing"
    )
