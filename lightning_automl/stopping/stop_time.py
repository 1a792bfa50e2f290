"""Stop-time distributions and the two stage losses of Learning to Stop (Chen et al., ICML 2020).

All functions take per-step tensors laid out ``(T, B)``: step ``t`` of ``T`` for each of ``B``
samples. Step indices are 0-based in code (the paper's ``t = 1..T``).

References:
    X. Chen, H. Dai, Y. Li, X. Gao, L. Song. Learning to Stop While Learning to Predict.
    ICML 2020: the variational objective, its optimal (oracle) stop-time distribution, and
    the oracle-learning (Stage I) and imitation (Stage II) steps of its training procedure,
    and the joint fine-tuning (Stage III) of both on the variational objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "imitation_loss",
    "oracle_loss",
    "oracle_stop_distribution",
    "stop_log_distribution",
    "stop_steps",
    "threshold_logit",
    "variational_loss",
]


def _check_steps(name: str, values: Tensor) -> None:
    if values.dim() != 2 or values.size(0) < 2:
        raise ValueError(
            f"{name} must have shape (T, B) with T >= 2 steps, got {tuple(values.shape)}"
        )


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")


def _temperature(step_losses: Tensor, beta: float, unit: Tensor | None) -> Tensor | float:
    """``beta``, or ``beta * unit`` per sample, ``(B,)``: the temperature of each sample."""
    _check_beta(beta)
    if unit is None:
        return beta
    if unit.shape != step_losses.shape[1:]:
        raise ValueError(
            f"unit must have one value per sample, shape ({step_losses.size(1)},), got "
            f"{tuple(unit.shape)}"
        )
    return beta * unit


def oracle_stop_distribution(
    step_losses: Tensor, beta: float, unit: Tensor | None = None
) -> Tensor:
    """The optimal stop-time distribution for a fixed model: a softmin of the per-step losses.

    ``q*(t | x, y) = softmax_t(-loss_t / beta)``, i.e. ``q* ∝ p_theta(y | t, x)^(1 / beta)``
    when the loss is a negative log-likelihood. It needs the label, so it exists at
    training time only.

    Args:
        step_losses: Per-sample loss after every step, shape ``(T, B)``.
        beta: Temperature (> 0): small ``beta`` puts all mass on the best step.
        unit: Optional ``(B,)`` positive unit of each sample's losses: its temperature is
            ``beta * unit``.

    Returns:
        ``(T, B)`` probabilities; each column sums to 1.
    """
    _check_steps("step_losses", step_losses)
    return torch.softmax(-step_losses / _temperature(step_losses, beta, unit), dim=0)


def oracle_loss(step_losses: Tensor, beta: float, unit: Tensor | None = None) -> Tensor:
    """Stage I loss: ``-log sum_t exp(-loss_t / beta)``, averaged over the batch.

    Minimising it over the model's parameters is the joint objective with the stop
    distribution at its optimum ``q*``; its gradient weights each step's loss by ``q*``.
    With a per-sample ``unit``, sample ``b`` contributes
    ``-unit_b log sum_t exp(-loss_t / (beta unit_b))``: its own temperature, and still the
    gradient ``sum_t q*(t) d loss_t / beta``, so samples keep their weights of the plain loss.
    """
    _check_steps("step_losses", step_losses)
    temperature = _temperature(step_losses, beta, unit)
    softmin = torch.logsumexp(-step_losses / temperature, dim=0)  # (B,)
    return -(softmin if unit is None else unit * softmin).mean()


def stop_log_distribution(stop_logits: Tensor) -> Tensor:
    """``log q_phi(t)`` of the stop time induced by a sequential stop policy.

    With ``pi_t = sigmoid(stop_logits[t])`` the probability of stopping at step ``t`` given
    that no earlier step stopped, ``q_phi(t) = pi_t * prod_{tau < t} (1 - pi_tau)`` for
    ``t < T`` and the remainder ``prod_{tau < T} (1 - pi_tau)`` at the last step, whose own
    logit is therefore unused. Computed in log space for stability.

    Args:
        stop_logits: ``(T, B)`` logits of ``pi_t``.

    Returns:
        ``(T, B)`` log-probabilities; ``exp`` of each column sums to 1.
    """
    _check_steps("stop_logits", stop_logits)
    log_stop = F.logsigmoid(stop_logits[:-1])  # (T-1, B): log pi_t
    log_survive = torch.cumsum(F.logsigmoid(-stop_logits[:-1]), dim=0)  # log prod_{tau<=t}
    survived_before = torch.cat([torch.zeros_like(log_survive[:1]), log_survive[:-1]])
    return torch.cat([log_stop + survived_before, log_survive[-1:]])  # (T, B)


def imitation_loss(oracle: Tensor, stop_logits: Tensor) -> Tensor:
    """Stage II loss: the forward KL ``KL(q* || q_phi)``, averaged over the batch.

    ``q*`` is a fixed target (detached): Stage II trains the policy alone.

    Args:
        oracle: ``(T, B)`` oracle distribution from `oracle_stop_distribution`.
        stop_logits: ``(T, B)`` logits of the policy's ``pi_t``.
    """
    if oracle.shape != stop_logits.shape:
        raise ValueError(
            f"oracle and stop_logits must have the same (T, B) shape, got "
            f"{tuple(oracle.shape)} and {tuple(stop_logits.shape)}"
        )
    target = oracle.detach()
    divergence = torch.xlogy(target, target) - target * stop_log_distribution(stop_logits)
    return divergence.sum(dim=0).mean()


def variational_loss(
    step_losses: Tensor, stop_logits: Tensor, beta: float, unit: Tensor | None = None
) -> Tensor:
    """Stage III loss: ``E_{t ~ q_phi}[loss_t] - beta * H(q_phi)``, averaged over the batch.

    The paper's joint objective over the model and the policy (its minimum over all stop-time
    distributions is ``beta`` times `oracle_loss`, reached at ``q*``). Gradients reach both the
    per-step losses and the policy's logits.

    Args:
        step_losses: ``(T, B)`` per-sample loss after every step.
        stop_logits: ``(T, B)`` logits of the policy's ``pi_t``.
        beta: Weight of the entropy (> 0).
        unit: Optional ``(B,)`` positive unit of each sample's losses: its entropy weight is
            ``beta * unit``.
    """
    if step_losses.shape != stop_logits.shape:
        raise ValueError(
            f"step_losses and stop_logits must have the same (T, B) shape, got "
            f"{tuple(step_losses.shape)} and {tuple(stop_logits.shape)}"
        )
    temperature = _temperature(step_losses, beta, unit)
    log_q = stop_log_distribution(stop_logits)
    return (log_q.exp() * (step_losses + temperature * log_q)).sum(dim=0).mean()


def threshold_logit(threshold: float) -> float:
    """``logit(threshold)``: ``pi_t > threshold`` exactly when the stop logit exceeds it."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return torch.logit(torch.tensor(threshold, dtype=torch.float64)).item()


def stop_steps(stop_logits: Tensor, threshold: float = 0.5) -> Tensor:
    """The step each sample stops at when it stops at the first ``pi_t > threshold``.

    Every sample stops at the last step ``T - 1`` at the latest (threshold 1.0: all do).

    Args:
        stop_logits: ``(T, B)`` logits of ``pi_t``.
        threshold: Stop probability to exceed, in ``[0, 1]``.

    Returns:
        ``(B,)`` 0-based stop steps.
    """
    stops = stop_logits[:-1] > threshold_logit(threshold)
    last = torch.ones_like(stops[:1])  # every sample stops at the last step
    return torch.cat([stops, last]).float().argmax(dim=0)  # the first step that stops
