"""`AdaptiveDepthMixin`: per-step predictions, the two stage losses and batched early exit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from lightning_automl.core.modes import evaluation_mode
from lightning_automl.stopping.policy import StopPolicy
from lightning_automl.stopping.stop_time import (
    imitation_loss,
    oracle_loss,
    oracle_stop_distribution,
    stop_steps,
    threshold_logit,
    variational_loss,
)

__all__ = ["AdaptiveDepthMixin", "StopSchedule"]


class StageTerms(NamedTuple):
    """A batch's stage loss, with what the callback logs: ``q*`` and the policy's logits."""

    loss: Tensor
    oracle: Tensor  # (T, B), detached
    stop_logits: Tensor | None  # (T, B), detached; None in Stage I


@dataclass
class StopSchedule:
    """What `StopPolicyCallback` attaches to the module: the stage, its settings and the policy.

    Not an ``nn.Module``, so the policy does not become a submodule of the user's model.
    ``beta`` is the temperature of Stages I and III, ``imitation_beta`` that of the oracle that
    Stage II imitates, and ``step_cost`` the cost per step of the stop-time prior.
    """

    stage: int
    beta: float
    policy: StopPolicy
    imitation_beta: float
    step_cost: float = 0.0
    last_batch: StageTerms | None = None


class AdaptiveDepthMixin:
    """Learning to Stop (Chen et al., ICML 2020) for a module that predicts in ``T`` steps.

    Mix it into a `LightningModule` (``class Net(AdaptiveDepthMixin, LightningModule)``) and
    implement:

    - ``forward_steps(x)``: the prediction after every step, a ``(T, B, ...)`` tensor or a list
      of ``T`` tensors ``(B, ...)`` (not needed with ``init_state`` / ``step`` below);
    - ``step_loss(prediction, target)``: the loss of each sample, shape ``(B,)``.

    For early exit that saves compute, also implement ``init_state(x)`` and
    ``step(state, t) -> (state, prediction)`` (``state``: tensors, or nested tuples / lists /
    dicts of tensors, batch first) and set ``num_steps``; `predict_adaptive` then drops stopped
    samples from the state, so later steps run on the active samples only. Optionally
    ``stop_summary(x)`` gives the policy a ``(B, S)`` summary of the input, and `loss_unit` /
    `step_cost_unit` give each sample its own unit of ``beta`` and of ``step_cost``.

    With `StopPolicyCallback`, ``training_step`` returns ``self.adaptive_depth_loss(x, y)``
    and the callback schedules the three stages.
    """

    num_steps: int
    stop_schedule: StopSchedule | None = None

    def forward_steps(self, x: Any) -> Tensor | Sequence[Tensor]:
        """The prediction after every step (implemented by the model).

        By default, when the model has ``init_state`` / ``step``, it runs them ``num_steps``
        times on the whole batch.
        """
        if not hasattr(self, "init_state"):
            raise NotImplementedError(
                f"{type(self).__name__} must implement forward_steps(x), or init_state(x) "
                "and step(state, t) with num_steps"
            )
        state, predictions = self.init_state(x), []
        for t in range(self.num_steps):
            state, prediction = self.step(state, t)  # type: ignore[attr-defined]
            predictions.append(prediction)
        return predictions

    def step_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Per-sample loss ``(B,)`` of one step's prediction (implemented by the model)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step_loss(...)")

    def stop_summary(self, x: Any) -> Tensor | None:
        """A ``(B, S)`` summary of the input for the stop policy; none by default."""
        return None

    def loss_unit(self, x: Any, target: Tensor) -> Tensor | None:
        """The unit ``(B,)`` of each sample's step losses in which ``beta`` (and ``step_cost``,
        unless `step_cost_unit` says otherwise) is given; ``None`` (the default): one unit for
        all samples.

        A per-sample unit (e.g. the noise energy of a measurement) gives every sample the same
        oracle whatever its scale, so one ``beta`` serves data of mixed difficulty.
        """
        return None

    def step_cost_unit(self, x: Any, target: Tensor) -> Tensor | None:
        """The unit ``(B,)`` of each sample's ``step_cost``; by default `loss_unit`'s.

        E.g. each sample's signal energy: a step is then worth its cost while it lowers the
        sample's loss by more than ``step_cost`` of that energy, whatever its noise level.
        """
        return self.loss_unit(x, target)

    def stacked_steps(self, x: Any) -> Tensor:
        """`forward_steps` as one ``(T, B, ...)`` tensor, checked for T >= 2 and equal shapes."""
        steps = self.forward_steps(x)
        if isinstance(steps, Tensor):
            steps = list(steps.unbind(0))
        shapes = {tuple(step.shape) for step in steps}
        if len(steps) < 2:
            raise ValueError(
                f"forward_steps must return at least 2 per-step predictions, got {len(steps)}"
            )
        if len(shapes) != 1:
            raise ValueError(f"forward_steps returned predictions of different shapes: {shapes}")
        return torch.stack(list(steps))

    def step_losses(self, predictions: Tensor, target: Tensor) -> Tensor:
        """The per-sample loss of every step, ``(T, B)``, checked to be per-sample."""
        losses = torch.stack([self.step_loss(prediction, target) for prediction in predictions])
        if losses.shape != predictions.shape[:2]:
            raise ValueError(
                "step_loss must return one loss per sample, shape (B,) = "
                f"({predictions.size(1)},), got {tuple(losses.shape[1:])}"
            )
        return losses

    def build_stop_policy(self) -> StopPolicy:
        """The policy `StopPolicyCallback` trains when it is given none (implemented by the model).

        Typically ``StopPolicy(prediction_dim=..., summary_dim=...)`` sized for this model.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement build_stop_policy(): pass "
            "StopPolicyCallback(policy=StopPolicy(prediction_dim=..., summary_dim=...)) or "
            "implement build_stop_policy() on the model"
        )

    def stage_one_loss(self, x: Any, target: Tensor, beta: float, step_cost: float = 0.0) -> Tensor:
        """Stage I (oracle model learning): `oracle_loss` of the per-step losses.

        ``step_cost`` (>= 0) adds ``step_cost * t`` to the loss of step ``t`` (0-based): the
        joint objective with a prior ``p(t) ∝ exp(-step_cost * t / beta)`` on the stop time
        in place of the paper's uniform one, which favours stopping early.
        """
        return self._stage_loss(1, x, target, beta, None, step_cost).loss

    def stage_two_loss(
        self, x: Any, target: Tensor, beta: float, policy: StopPolicy, step_cost: float = 0.0
    ) -> Tensor:
        """Stage II (imitation): ``KL(q* || q_phi)`` with the predictive model frozen.

        The model runs without gradient, so only ``policy`` is trained (a `StopPolicy`, or any
        module with the same ``forward`` and ``step_logits``). ``step_cost`` as in
        `stage_one_loss`.
        """
        return self._stage_loss(2, x, target, beta, policy, step_cost).loss

    def stage_three_loss(
        self, x: Any, target: Tensor, beta: float, policy: StopPolicy, step_cost: float = 0.0
    ) -> Tensor:
        """Stage III (joint fine-tuning): `variational_loss`; model and policy both learn."""
        return self._stage_loss(3, x, target, beta, policy, step_cost).loss

    def adaptive_depth_loss(self, x: Any, target: Tensor) -> Tensor:
        """The loss of the stage `StopPolicyCallback` is in; return it from ``training_step``.

        Stage I: `stage_one_loss`; II: `stage_two_loss`; III: `stage_three_loss`, with the
        callback's settings and policy. The callback logs the stop steps of this batch.
        """
        schedule = self.stop_schedule
        if schedule is None:
            raise RuntimeError(
                "adaptive_depth_loss needs a StopPolicyCallback in Trainer(callbacks=[...]); "
                "without one, call stage_one_loss / stage_two_loss / stage_three_loss directly"
            )
        stage = schedule.stage
        beta = schedule.imitation_beta if stage == 2 else schedule.beta
        terms = self._stage_loss(stage, x, target, beta, schedule.policy, schedule.step_cost)
        schedule.last_batch = terms
        return terms.loss

    def _stage_loss(
        self,
        stage: int,
        x: Any,
        target: Tensor,
        beta: float,
        policy: StopPolicy | None,
        step_cost: float,
    ) -> StageTerms:
        if not step_cost >= 0:
            raise ValueError(f"step_cost must be >= 0, got {step_cost!r}")
        with torch.set_grad_enabled(stage != 2 and torch.is_grad_enabled()):
            predictions = self.stacked_steps(x)
            step_losses = self.step_losses(predictions, target).float()  # (T, B)
        batch = step_losses.size(1)
        unit = _checked_unit("loss_unit", self.loss_unit(x, target), batch)
        if step_cost:
            cost_unit = _checked_unit("step_cost_unit", self.step_cost_unit(x, target), batch)
            steps = torch.arange(len(step_losses), device=step_losses.device)
            cost = step_cost * steps[:, None]  # (T, 1)
            step_losses = step_losses + (cost if cost_unit is None else cost * cost_unit)
        oracle = oracle_stop_distribution(step_losses.detach(), beta, unit)
        if stage == 1 or policy is None:
            return StageTerms(oracle_loss(step_losses, beta, unit), oracle, None)
        stop_logits = policy.step_logits(predictions, self.stop_summary(x)).float()
        if stage == 2:
            loss = imitation_loss(oracle, stop_logits)
        else:
            loss = variational_loss(step_losses, stop_logits, beta, unit)
        return StageTerms(loss, oracle, stop_logits.detach())

    @torch.no_grad()
    def predict_adaptive(
        self, x: Any, policy: StopPolicy | None = None, threshold: float = 0.5
    ) -> tuple[Tensor, Tensor]:
        """Predict with a per-sample number of steps.

        ``policy`` defaults to the one `StopPolicyCallback` trained for this module.

        The policy runs in evaluation mode. A sample stops at the first step whose stop
        probability ``pi_t`` exceeds ``threshold`` (1.0: never, so every sample runs all ``T``
        steps; 0.0: all stop after the first step), and at the last step otherwise.

        Returns:
            The predictions ``(B, ...)`` and the 0-based step at which each sample stopped,
            ``(B,)``.
        """
        stop_above = threshold_logit(threshold)
        if policy is None:
            if self.stop_schedule is None:
                raise ValueError("predict_adaptive needs a policy: none is attached to the module")
            policy = self.stop_schedule.policy
        summary = self.stop_summary(x)
        with evaluation_mode(policy):  # running statistics, whatever the batch holds
            if not hasattr(self, "init_state"):
                predictions = self.stacked_steps(x)  # (T, B, ...): no compute is saved
                steps = stop_steps(policy.step_logits(predictions, summary), threshold)
                batch = torch.arange(predictions.size(1), device=predictions.device)
                return predictions[steps, batch], steps
            return self._predict_shrinking(x, policy, summary, stop_above)

    def _predict_shrinking(
        self, x: Any, policy: StopPolicy, summary: Tensor | None, stop_above: float
    ) -> tuple[Tensor, Tensor]:
        state, prediction = self.step(self.init_state(x), 0)  # type: ignore[attr-defined]
        batch, last = prediction.size(0), self.num_steps - 1
        outputs = prediction.new_empty(prediction.shape)  # (B, ...)
        stopped_at = torch.full((batch,), last, device=prediction.device)
        active = torch.arange(batch, device=prediction.device)  # samples still running
        for t in range(self.num_steps):
            if t > 0:
                state, prediction = self.step(state, t)  # type: ignore[attr-defined]
            if t == last:
                outputs.index_copy_(0, active, prediction)
                break
            logits = policy(prediction, torch.full_like(active, t), summary)
            stop = logits > stop_above  # (active,)
            stop_rows = stop.nonzero().squeeze(1)
            if stop_rows.numel() == 0:
                continue
            stopped = active.index_select(0, stop_rows)
            outputs.index_copy_(0, stopped, prediction.index_select(0, stop_rows))
            stopped_at.index_fill_(0, stopped, t)
            keep = (~stop).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active = active.index_select(0, keep)
            state, summary = _select_samples((state, summary), keep)
        return outputs, stopped_at


def _select_samples(state: Any, rows: Tensor) -> Any:
    """The ``rows`` of every tensor in a (nested) state; other leaves as they are."""
    return tree_map(lambda v: v.index_select(0, rows) if isinstance(v, Tensor) else v, state)


def _checked_unit(hook: str, unit: Tensor | None, batch: int) -> Tensor | None:
    """``unit`` as float, detached, after checking that ``hook`` gave one positive, finite value
    per sample (or ``None``)."""
    if unit is None:
        return None
    if unit.shape != (batch,):
        raise ValueError(
            f"{hook} must return one unit per sample, shape ({batch},), got {tuple(unit.shape)}"
        )
    unit = unit.detach().float()
    invalid = ~((unit > 0) & unit.isfinite())
    if invalid.any():
        raise ValueError(
            f"{hook} must return positive, finite units, got {unit[invalid][:3].tolist()}"
        )
    return unit
