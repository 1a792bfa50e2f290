"""Where a result came from: the git commit it was produced at."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git_commit"]


def git_commit(directory: str | Path = ".") -> str:
    """The commit checked out in ``directory`` (``-dirty`` if changed); ``""`` outside git."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40", "--match=NO-TAGS"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()
