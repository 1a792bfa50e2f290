from __future__ import annotations

import pytest
import torch

from lightning_automl.stopping.policy import StopPolicy, step_encoding


def test_step_logits_equal_one_call_per_step():
    torch.manual_seed(0)
    policy = StopPolicy(prediction_dim=6, summary_dim=3, hidden_dims=(8,), step_encoding_dim=4)
    predictions, summary = torch.randn(5, 2, 6), torch.randn(2, 3)
    logits = policy.step_logits(predictions, summary)
    assert logits.shape == (5, 2)
    for t in range(5):
        step = torch.full((2,), t)
        torch.testing.assert_close(logits[t], policy(predictions[t], step, summary))


def test_the_step_index_changes_the_decision():
    encoding = step_encoding(torch.arange(20), 16)
    assert encoding.shape == (20, 16)
    assert torch.cdist(encoding, encoding).add(torch.eye(20)).min() > 0.1  # all distinct
    policy = StopPolicy(prediction_dim=2, hidden_dims=(4,))
    same_prediction = torch.zeros(3, 2)
    assert policy(same_prediction, torch.tensor([0, 5, 9])).unique().numel() == 3


def test_pretrained_round_trip(tmp_path):
    policy = StopPolicy(prediction_dim=4, summary_dim=2, hidden_dims=(8, 4))
    policy.save_pretrained(tmp_path / "policy", tasks=["toy"])
    loaded = StopPolicy.from_pretrained(tmp_path / "policy")
    x, step, summary = torch.randn(3, 4), torch.arange(3), torch.randn(3, 2)
    torch.testing.assert_close(loaded(x, step, summary), policy(x, step, summary))


def test_standardize_normalises_the_features_by_batch_then_running_statistics(tmp_path):
    torch.manual_seed(0)
    policy = StopPolicy(prediction_dim=2, hidden_dims=(4,), step_encoding_dim=0, standardize=True)
    seen = []
    policy.mlp.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x, step = torch.randn(64, 2) * torch.tensor([100.0, 1.0]) + 5, torch.zeros(64).long()
    policy(x, step)
    torch.testing.assert_close(seen[-1].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[-1].var(0, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    policy.eval()
    assert torch.equal(policy(x[:1], step[:1]), policy(x, step)[:1])  # running statistics
    policy.save_pretrained(tmp_path / "policy")
    loaded = StopPolicy.from_pretrained(tmp_path / "policy").eval()
    assert loaded.standardize
    torch.testing.assert_close(loaded(x, step), policy(x, step))


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match="prediction_dim must be >= 1"):
        StopPolicy(prediction_dim=0)
    with pytest.raises(ValueError, match="hidden_dims"):
        StopPolicy(prediction_dim=2, hidden_dims=(0,))
    policy = StopPolicy(prediction_dim=2, summary_dim=1)
    with pytest.raises(ValueError, match="reads a summary of 1 features"):
        policy(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="expects 2 prediction and 1 summary features"):
        policy(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1))
