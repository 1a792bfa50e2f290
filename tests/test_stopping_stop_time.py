from __future__ import annotations

import pytest
import torch

from lightning_automl.stopping.stop_time import (
    imitation_loss,
    oracle_loss,
    oracle_stop_distribution,
    stop_log_distribution,
    stop_steps,
    variational_loss,
)


def test_oracle_is_the_softmin_of_the_step_losses():
    losses = torch.rand(6, 4, dtype=torch.float64) * 3
    beta = 0.7
    weights = torch.exp(-losses / beta)
    torch.testing.assert_close(oracle_stop_distribution(losses, beta), weights / weights.sum(0))


def test_oracle_loss_is_the_negative_log_sum_exp_and_weights_steps_by_the_oracle():
    losses = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    beta = 0.5
    loss = oracle_loss(losses, beta)
    expected = -torch.log(torch.exp(-losses / beta).sum(0)).mean()
    torch.testing.assert_close(loss, expected)
    (gradient,) = torch.autograd.grad(loss, losses)
    # d/d loss_t of -log sum exp(-loss / beta) = q*(t) / beta, divided by B for the mean
    oracle = oracle_stop_distribution(losses.detach(), beta)
    torch.testing.assert_close(gradient, oracle / beta / losses.size(1))


def test_a_per_sample_unit_sets_each_samples_temperature_and_keeps_the_gradient_weights():
    losses = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    beta, unit = 0.5, torch.tensor([0.1, 1.0, 20.0], dtype=torch.float64)
    oracle = oracle_stop_distribution(losses.detach(), beta, unit)
    for b in range(3):
        torch.testing.assert_close(
            oracle[:, b],
            oracle_stop_distribution(losses[:, b : b + 1].detach(), beta * unit[b].item())[:, 0],
        )
    loss = oracle_loss(losses, beta, unit)
    expected = -(unit * torch.logsumexp(-losses / (beta * unit), dim=0)).mean()
    torch.testing.assert_close(loss, expected)
    (gradient,) = torch.autograd.grad(loss, losses)
    torch.testing.assert_close(gradient, oracle / beta / losses.size(1))
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(oracle_loss(losses, beta, ones), oracle_loss(losses, beta))
    torch.testing.assert_close(
        oracle_stop_distribution(losses, beta, ones), oracle_stop_distribution(losses, beta)
    )


def test_with_a_unit_the_variational_loss_is_still_minimal_at_the_oracle():
    losses = torch.rand(5, 3, dtype=torch.float64) * 2
    logits = torch.randn(5, 3, dtype=torch.float64)
    beta, unit = 0.3, torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    q = explicit_stop_distribution(torch.sigmoid(logits))
    expected = ((q * losses).sum(0) + beta * unit * (q * q.log()).sum(0)).mean()
    torch.testing.assert_close(variational_loss(losses, logits, beta, unit), expected)
    oracle_logits = logits_that_reproduce(oracle_stop_distribution(losses, beta, unit))
    at_oracle = variational_loss(losses, oracle_logits, beta, unit)
    torch.testing.assert_close(at_oracle, beta * oracle_loss(losses, beta, unit))
    assert variational_loss(losses, logits, beta, unit) > at_oracle


def test_a_unit_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"unit must have one value per sample, shape \(4,\)"):
        oracle_loss(torch.rand(3, 4), 1.0, torch.ones(3))


def explicit_stop_distribution(stop_probs: torch.Tensor) -> torch.Tensor:
    """q(t) = pi_t prod_{tau<t}(1 - pi_tau) for t < T, the remainder at T, by a plain loop."""
    steps = stop_probs.size(0)
    columns = []
    survive = torch.ones_like(stop_probs[0])
    for t in range(steps - 1):
        columns.append(stop_probs[t] * survive)
        survive = survive * (1 - stop_probs[t])
    columns.append(survive)
    return torch.stack(columns)


def test_policy_distribution_matches_the_product_formula_and_sums_to_one():
    logits = torch.randn(7, 5, dtype=torch.float64) * 2
    log_q = stop_log_distribution(logits)
    torch.testing.assert_close(log_q.exp(), explicit_stop_distribution(torch.sigmoid(logits)))
    torch.testing.assert_close(log_q.exp().sum(0), torch.ones(5, dtype=torch.float64))


def test_policy_distribution_ignores_the_last_logit_and_is_stable_for_large_logits():
    logits = torch.tensor([[40.0, -40.0], [-40.0, 40.0], [3.0, -3.0]])
    changed = logits.clone()
    changed[-1] = -changed[-1]
    torch.testing.assert_close(stop_log_distribution(logits), stop_log_distribution(changed))
    assert torch.isfinite(stop_log_distribution(logits)).all()


def logits_that_reproduce(q: torch.Tensor) -> torch.Tensor:
    """pi_t = q(t) / (1 - sum_{tau<t} q(tau)): the policy whose stop distribution is q."""
    remaining = 1 - torch.cumsum(q, dim=0) + q
    return torch.logit(q / remaining)


def test_imitation_loss_is_the_forward_kl():
    oracle = torch.softmax(torch.randn(4, 3, dtype=torch.float64), dim=0)
    logits = torch.randn(4, 3, dtype=torch.float64)
    policy = stop_log_distribution(logits).exp()
    expected = (oracle * (oracle.log() - policy.log())).sum(0).mean()
    torch.testing.assert_close(imitation_loss(oracle, logits), expected)
    matched = logits_that_reproduce(oracle)
    assert imitation_loss(oracle, matched).abs() < 1e-10
    assert imitation_loss(oracle, logits) > 0


def test_imitation_gradient_passes_finite_differences_and_never_reaches_the_oracle():
    oracle = torch.softmax(torch.randn(5, 2, dtype=torch.float64), dim=0).requires_grad_()
    logits = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lg: imitation_loss(oracle, lg), (logits,))
    imitation_loss(oracle, logits).backward()
    assert oracle.grad is None


def test_variational_loss_is_expected_loss_minus_beta_entropy_and_minimal_at_the_oracle():
    losses = torch.rand(5, 3, dtype=torch.float64) * 2
    logits = torch.randn(5, 3, dtype=torch.float64)
    beta = 0.3
    q = explicit_stop_distribution(torch.sigmoid(logits))
    expected = ((q * losses).sum(0) + beta * (q * q.log()).sum(0)).mean()
    torch.testing.assert_close(variational_loss(losses, logits, beta), expected)
    # min over q of E_q[loss] - beta H(q) is -beta log sum exp(-loss / beta), reached at q*
    oracle_logits = logits_that_reproduce(oracle_stop_distribution(losses, beta))
    at_oracle = variational_loss(losses, oracle_logits, beta)
    torch.testing.assert_close(at_oracle, beta * oracle_loss(losses, beta))
    assert variational_loss(losses, logits, beta) > at_oracle


def test_variational_gradient_reaches_losses_and_logits_and_passes_finite_differences():
    losses = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: variational_loss(a, b, 0.5), (losses, logits))


def test_stop_steps_take_the_first_step_over_the_threshold():
    logits = torch.tensor([[-5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, -5.0]])
    assert stop_steps(logits).tolist() == [1, 0, 2]
    assert stop_steps(logits, threshold=1.0).tolist() == [2, 2, 2]
    assert stop_steps(logits, threshold=0.0).tolist() == [0, 0, 0]


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_beta_must_be_positive(beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        oracle_stop_distribution(torch.rand(3, 2), beta)
    with pytest.raises(ValueError, match="beta must be > 0"):
        oracle_loss(torch.rand(3, 2), beta)


def test_single_step_and_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"step_losses must have shape \(T, B\) with T >= 2"):
        oracle_loss(torch.rand(1, 4), 1.0)
    with pytest.raises(ValueError, match=r"stop_logits must have shape \(T, B\)"):
        stop_log_distribution(torch.rand(5))
    with pytest.raises(ValueError, match="same"):
        imitation_loss(torch.rand(3, 2), torch.rand(4, 2))
