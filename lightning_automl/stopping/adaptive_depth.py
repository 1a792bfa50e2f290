"""`AdaptiveDepthMixin`: per-step predictions, the two stage losses and batched early exit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from lightning_automl.stopping.policy import StopPolicy
from lightning_automl.stopping.stop_time import (
    imitation_loss,
    oracle_loss,
    oracle_stop_distribution,
)

__all__ = ["AdaptiveDepthMixin"]


class AdaptiveDepthMixin:
    """Learning to Stop (Chen et al., ICML 2020) for a module that predicts in ``T`` steps.

    Mix it into a `LightningModule` (``class Net(AdaptiveDepthMixin, LightningModule)``) and
    implement:

    - ``forward_steps(x)``: the prediction after every step, a ``(T, B, ...)`` tensor or a list
      of ``T`` tensors ``(B, ...)``;
    - ``step_loss(prediction, target)``: the loss of each sample, shape ``(B,)``.

    For early exit that saves compute, also implement ``init_state(x)`` and
    ``step(state, t) -> (state, prediction)`` (``state``: tensors, or nested tuples / lists /
    dicts of tensors, batch first) and set ``num_steps``; `predict_adaptive` then drops stopped
    samples from the state, so later steps run on the active samples only. Optionally
    ``stop_summary(x)`` gives the policy a ``(B, S)`` summary of the input.
    """

    num_steps: int

    def forward_steps(self, x: Any) -> Tensor | Sequence[Tensor]:
        """The prediction after every step (implemented by the model)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_steps(x)")

    def step_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Per-sample loss ``(B,)`` of one step's prediction (implemented by the model)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step_loss(...)")

    def stop_summary(self, x: Any) -> Tensor | None:
        """A ``(B, S)`` summary of the input for the stop policy; none by default."""
        return None

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

    def stage_one_loss(self, x: Any, target: Tensor, beta: float) -> Tensor:
        """Stage I (oracle model learning): `oracle_loss` of the per-step losses."""
        return oracle_loss(self.step_losses(self.stacked_steps(x), target), beta)

    def stage_two_loss(self, x: Any, target: Tensor, beta: float, policy: StopPolicy) -> Tensor:
        """Stage II (imitation): ``KL(q* || q_phi)`` with the predictive model frozen.

        The model runs without gradient, so only ``policy`` is trained (a `StopPolicy`, or any
        module with the same ``forward`` and ``step_logits``).
        """
        with torch.no_grad():
            predictions = self.stacked_steps(x)
            oracle = oracle_stop_distribution(self.step_losses(predictions, target), beta)
        stop_logits = policy.step_logits(predictions, self.stop_summary(x))
        return imitation_loss(oracle, stop_logits)

    @torch.no_grad()
    def predict_adaptive(
        self, x: Any, policy: StopPolicy, threshold: float = 0.5
    ) -> tuple[Tensor, Tensor]:
        """Predict with a per-sample number of steps.

        A sample stops at the first step whose stop probability ``pi_t`` exceeds
        ``threshold`` (1.0: never, so every sample runs all ``T`` steps; 0.0: all stop after
        the first step), and at the last step otherwise.

        Returns:
            The predictions ``(B, ...)`` and the 0-based step at which each sample stopped,
            ``(B,)``.
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        stop_above = torch.logit(torch.tensor(threshold, dtype=torch.float64)).item()
        summary = self.stop_summary(x)
        if not hasattr(self, "init_state"):
            predictions = self.stacked_steps(x)  # (T, B, ...): no compute is saved
            logits = policy.step_logits(predictions, summary)  # (T, B)
            last = torch.ones_like(logits[-1:], dtype=torch.bool)  # every sample stops at T
            stops = torch.cat([logits[:-1] > stop_above, last])
            stop_steps = stops.float().argmax(dim=0)  # first step that stops
            batch = torch.arange(predictions.size(1), device=predictions.device)
            return predictions[stop_steps, batch], stop_steps
        return self._predict_shrinking(x, policy, summary, stop_above)

    def _predict_shrinking(
        self, x: Any, policy: StopPolicy, summary: Tensor | None, stop_above: float
    ) -> tuple[Tensor, Tensor]:
        state, prediction = self.step(self.init_state(x), 0)  # type: ignore[attr-defined]
        batch = prediction.size(0)
        outputs = prediction.new_empty(prediction.shape)  # (B, ...)
        stop_steps = torch.full((batch,), self.num_steps - 1, device=prediction.device)
        active = torch.arange(batch, device=prediction.device)  # samples still running
        for t in range(self.num_steps):
            if t > 0:
                state, prediction = self.step(state, t)  # type: ignore[attr-defined]
            if t == self.num_steps - 1:
                outputs[active] = prediction
                break
            step = torch.full_like(active, t)
            logits = policy(prediction, step, None if summary is None else summary[active])
            stop = logits > stop_above  # (active,)
            outputs[active[stop]] = prediction[stop]
            stop_steps[active[stop]] = t
            keep = ~stop
            active = active[keep]
            if active.numel() == 0:
                break
            state = _select_samples(state, keep)
        return outputs, stop_steps


def _select_samples(state: Any, keep: Tensor) -> Any:
    """The rows ``keep`` of every tensor in a (nested) state; other leaves as they are."""
    return tree_map(lambda value: value[keep] if isinstance(value, Tensor) else value, state)
