from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.multiprocess
def fit_with_two_processes(repo_root, tmp_path, which: str) -> list[dict]:
    """Runs tests/ddp_fit_script.py and returns the report of each rank."""
    script = repo_root / "tests" / "ddp_fit_script.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), which],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.multiprocess
def test_ddp_two_cpu_processes_keep_replicas_identical(repo_root, tmp_path):
    reports = fit_with_two_processes(repo_root, tmp_path, "classifier")
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in reports)
    # Each rank reads its own shard of the data, yet gradients are averaged, so the replicas agree.
    assert reports[0]["first_batch_sum"] != reports[1]["first_batch_sum"]
    assert reports[0]["parameters"] == reports[1]["parameters"]
    assert reports[0]["moved"] > 0


@pytest.mark.multiprocess
def test_ddp_stop_policy_callback_keeps_model_and_policy_identical(repo_root, tmp_path):
    # The policies start from different seeds on the two ranks: rank 0's is broadcast, and
    # the policy gradients are averaged, so both stages end with identical replicas.
    reports = fit_with_two_processes(repo_root, tmp_path, "adaptive")
    assert reports[0]["first_batch_sum"] != reports[1]["first_batch_sum"]
    assert reports[0]["parameters"] == reports[1]["parameters"]
    assert reports[0]["policy"] == reports[1]["policy"]


@pytest.mark.multiprocess
def test_ddp_lstm_optimizer_keeps_replicas_identical(repo_root, tmp_path):
    # Each rank builds its own LSTMOptimizer with a different global random state; the network's
    # weights come from its seed, and the gradients are averaged, so the replicas agree.
    reports = fit_with_two_processes(repo_root, tmp_path, "lstm")
    assert reports[0]["first_batch_sum"] != reports[1]["first_batch_sum"]
    assert reports[0]["parameters"] == reports[1]["parameters"]
    assert reports[0]["moved"] > 0


@pytest.mark.multiprocess
def test_ddp_loss_teacher_applies_the_same_teacher_update_on_every_rank(repo_root, tmp_path):
    # Each rank replays its own batches; the teacher's hypergradient is averaged over the ranks,
    # so the teachers (and the students they teach) stay identical.
    reports = fit_with_two_processes(repo_root, tmp_path, "taught")
    assert reports[0]["first_batch_sum"] != reports[1]["first_batch_sum"]
    assert reports[0]["parameters"] == reports[1]["parameters"]
    assert reports[0]["teacher"] == reports[1]["teacher"]
    assert reports[0]["teacher_moved"] > 0
