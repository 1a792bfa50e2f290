from __future__ import annotations

import math

import pytest
import torch

from lightning_automl.stopping import ResidualStopPolicy


def policy_and_inputs() -> tuple[ResidualStopPolicy, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(4, 6, generator=generator)
    x_star = torch.randn(3, 6, generator=generator)
    x_t = x_star + 0.1 * torch.randn(3, 6, generator=generator)
    policy = ResidualStopPolicy.for_matrix(A, hidden_dims=(8,), step_encoding_dim=4)
    return policy, A, x_t, x_star @ A.T


def test_features_are_log_energy_ratios_and_the_fraction_of_nonzeros():
    policy, A, x_t, y = policy_and_inputs()
    x_t[0, :2] = 0.0
    features = policy.features(x_t, y)
    assert features.shape == (3, policy.feature_dim()) == (3, 4)
    for features_b, x_b, y_b in zip(features, x_t, y, strict=True):
        residual = y_b - A @ x_b
        expected = [
            math.log10(residual.square().sum() / y_b.square().sum()),
            math.log10((A.T @ residual).square().sum() / (A.T @ y_b).square().sum()),
            math.log10(x_b.square().sum() / y_b.square().sum()),
            (x_b != 0).float().mean().item(),
        ]
        torch.testing.assert_close(features_b, torch.tensor(expected))
    assert features[0, 3] == 4 / 6


def test_an_exact_fit_gives_finite_features():
    policy, A, x_t, _ = policy_and_inputs()
    features = policy.features(x_t, x_t @ A.T)
    assert features.isfinite().all()
    assert (features[:, 0] < -30).all()


def test_the_policy_is_scale_free():
    policy, _, x_t, y = policy_and_inputs()
    step = torch.arange(3)
    torch.testing.assert_close(policy(1e3 * x_t, step, 1e3 * y), policy(x_t, step, y))


def test_the_sensing_matrix_travels_with_the_weights(tmp_path):
    policy, A, x_t, y = policy_and_inputs()
    policy.save_pretrained(tmp_path / "policy")
    loaded = ResidualStopPolicy.from_pretrained(tmp_path / "policy")
    assert torch.equal(loaded.A, A)
    torch.testing.assert_close(
        loaded.step_logits(x_t.expand(2, 3, 6), y), policy.step_logits(x_t.expand(2, 3, 6), y)
    )


def test_the_measurements_are_required():
    policy, _, x_t, _ = policy_and_inputs()
    with pytest.raises(ValueError, match="reads the measurements y"):
        policy(x_t, torch.arange(3))
