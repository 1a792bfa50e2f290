"""The default stop policy network ``pi_phi``: the probability of stopping at step ``t``."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn

from lightning_automl.core.pretrained import PretrainedMixin

__all__ = ["StopPolicy", "step_encoding"]


def step_encoding(steps: Tensor, dim: int) -> Tensor:
    """Sinusoidal encoding of step indices (as for Transformer positions), shape ``(N, dim)``."""
    frequencies = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=steps.device) * (-math.log(1e4) / dim)
    )
    angles = steps.float().unsqueeze(-1) * frequencies  # (N, ceil(dim / 2))
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


class StopPolicy(PretrainedMixin, nn.Module):
    """An MLP that reads a step's prediction, a summary of the input and the step index.

    It outputs the logit of ``pi_t``, the probability of stopping at step ``t`` given that no
    earlier step stopped (Chen et al., ICML 2020). The authors' LISTA policy is an MLP
    256-128-16-1 on the input, the residual, the estimate ``x_t`` and an encoding of ``t``;
    here the prediction and the input summary are whatever the model passes (for LISTA, e.g.
    ``x_t`` and the residual ``y - A x_t``).

    Args:
        prediction_dim: Features of a step's (flattened) prediction.
        summary_dim: Features of the input summary (0: none).
        hidden_dims: Widths of the hidden layers.
        step_encoding_dim: Width of the sinusoidal encoding of the step index.
        standardize: Standardise the features (not the step encoding) by their batch statistics
            in training and by running ones in evaluation (``BatchNorm1d`` without affine
            parameters), for features of very different scales. `StopPolicyCallback` keeps the
            policy in training mode only for its training batches.
    """

    pretrained_method = "stopping"

    def __init__(
        self,
        prediction_dim: int,
        summary_dim: int = 0,
        hidden_dims: tuple[int, ...] = (256, 128, 16),
        step_encoding_dim: int = 16,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if prediction_dim < 1 or summary_dim < 0 or step_encoding_dim < 0:
            raise ValueError(
                "prediction_dim must be >= 1 and summary_dim, step_encoding_dim >= 0, got "
                f"{prediction_dim}, {summary_dim} and {step_encoding_dim}"
            )
        if any(width < 1 for width in hidden_dims):
            raise ValueError(f"hidden_dims must hold positive widths, got {hidden_dims}")
        self.prediction_dim = prediction_dim
        self.summary_dim = summary_dim
        self.hidden_dims = tuple(hidden_dims)
        self.step_encoding_dim = step_encoding_dim
        self.standardize = standardize
        self.feature_norm = (
            nn.BatchNorm1d(self.feature_dim(), affine=False) if standardize else None
        )
        widths = [self.feature_dim() + step_encoding_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for width_in, width_out in pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def pretrained_config(self) -> dict[str, Any]:
        return {
            "prediction_dim": self.prediction_dim,
            "summary_dim": self.summary_dim,
            "hidden_dims": list(self.hidden_dims),
            "step_encoding_dim": self.step_encoding_dim,
            "standardize": self.standardize,
        }

    def feature_dim(self) -> int:
        """Width of `features`' output, the MLP's input before the step encoding."""
        return self.prediction_dim + self.summary_dim

    def features(self, prediction: Tensor, summary: Tensor | None) -> Tensor:
        """What the MLP reads of a (sample, step): ``(N, feature_dim())``.

        Here the flattened prediction and summary side by side; a subclass may derive other
        features from them (see `ResidualStopPolicy`).
        """
        if not self.summary_dim:
            return prediction.flatten(1)
        if summary is None:
            raise ValueError(f"this StopPolicy reads a summary of {self.summary_dim} features")
        return torch.cat([prediction.flatten(1), summary.flatten(1)], dim=-1)

    def forward(self, prediction: Tensor, step: Tensor, summary: Tensor | None = None) -> Tensor:
        """Stop logits for ``N`` (sample, step) pairs.

        Args:
            prediction: ``(N, ...)`` predictions, flattened to ``prediction_dim`` features.
            step: ``(N,)`` 0-based step indices.
            summary: ``(N, summary_dim)`` input summaries, or ``None`` when ``summary_dim`` is 0.

        Returns:
            ``(N,)`` logits of ``pi_t``.
        """
        inputs = self.features(prediction, summary)
        if inputs.size(-1) != self.feature_dim():
            raise ValueError(
                f"{type(self).__name__} expects {self.prediction_dim} prediction and "
                f"{self.summary_dim} summary features, got {inputs.size(-1)} features in all"
            )
        if self.feature_norm is not None:
            inputs = self.feature_norm(inputs)
        if self.step_encoding_dim:
            inputs = torch.cat([inputs, step_encoding(step, self.step_encoding_dim)], dim=-1)
        return self.mlp(inputs).squeeze(-1)

    def step_logits(self, predictions: Tensor, summary: Tensor | None = None) -> Tensor:
        """Stop logits for every step of a batch: ``(T, B, ...)`` predictions -> ``(T, B)``.

        ``summary`` is ``(B, summary_dim)`` (the same input at every step) or ``(T, B, ...)``.
        """
        steps, batch = predictions.shape[:2]
        step = torch.arange(steps, device=predictions.device).repeat_interleave(batch)
        if summary is not None and summary.dim() == 2:
            summary = summary.expand(steps, *summary.shape)
        flat_summary = None if summary is None else summary.reshape(steps * batch, -1)
        logits = self(predictions.reshape(steps * batch, -1), step, flat_summary)
        return logits.view(steps, batch)
