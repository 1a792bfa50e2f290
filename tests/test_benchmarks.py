"""Every benchmark runs end to end with ``--quick`` and writes its JSON report and PNG plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from shared_data import SHARED_DATA, requires_shared_data

BENCHMARKS = [
    pytest.param("early_exit", marks=requires_shared_data("mnist")),
    pytest.param("lista_stop"),
    pytest.param("l2l", marks=requires_shared_data("mnist")),
    pytest.param("l2t", marks=requires_shared_data("mnist")),
]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_run_writes_a_report_with_computed_targets(name, repo_root, tmp_path):
    out = tmp_path / f"{name}.json"
    command = [sys.executable, f"benchmarks/{name}.py", "--quick", "--out", str(out)]
    command += ["--data-dir", str(SHARED_DATA)]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == name and report["quick"] is True
    assert report["targets"] and all(isinstance(t["met"], bool) for t in report["targets"])
    assert out.with_suffix(".png").stat().st_size > 0
