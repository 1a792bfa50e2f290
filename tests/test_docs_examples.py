"""The Python examples of the method pages run as written (in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = [DOCS / "pretrained.md", *sorted((DOCS / "methods").glob("*.md"))]
EXAMPLES = [
    pytest.param(code, id=f"{page.stem}-{index}")
    for page in PAGES
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})
