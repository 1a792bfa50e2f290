"""`ResidualStopPolicy`: a stop policy for inverse problems `y = A x + noise` (LISTA-stop)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_automl.stopping.policy import StopPolicy

__all__ = ["ResidualStopPolicy"]


class ResidualStopPolicy(StopPolicy):
    """A `StopPolicy` that reads the estimate `x_t`, the residual `y - A x_t` and `y`.

    The authors' LISTA-stop policy reads the same three (Chen et al., ICML 2020, section 5.1).
    Here each is divided by the root mean square of `y`, so the policy is scale-free, and one
    more feature is the residual's energy relative to `y`'s on a log10 scale: it falls as the
    estimate improves and flattens at the noise floor, where stopping costs nothing.

    The sensing matrix is the buffer ``A`` (saved with the weights); `for_matrix` builds the
    policy for a given one.

    Args:
        m: Measurements per sample (rows of `A`).
        n: Signal length (columns of `A`).
        hidden_dims: Widths of the hidden layers.
        step_encoding_dim: Width of the sinusoidal encoding of the step index.
    """

    A: Tensor

    def __init__(
        self,
        m: int,
        n: int,
        hidden_dims: tuple[int, ...] = (256, 128, 16),
        step_encoding_dim: int = 16,
    ) -> None:
        super().__init__(n, m, hidden_dims, step_encoding_dim)
        self.register_buffer("A", torch.zeros(m, n))

    @classmethod
    def for_matrix(cls, A: Tensor, **kwargs: Any) -> ResidualStopPolicy:
        """The policy for the sensing matrix ``A`` (``(m, n)``); ``kwargs`` as for the class."""
        policy = cls(*A.shape, **kwargs)
        policy.A.copy_(A)
        return policy

    def pretrained_config(self) -> dict[str, Any]:
        return {
            "m": self.summary_dim,
            "n": self.prediction_dim,
            "hidden_dims": list(self.hidden_dims),
            "step_encoding_dim": self.step_encoding_dim,
        }

    def feature_dim(self) -> int:
        return self.prediction_dim + 2 * self.summary_dim + 1

    def features(self, prediction: Tensor, summary: Tensor | None) -> Tensor:
        """``[x_t, y - A x_t, y] / rms(y)`` and ``log10(||y - A x_t||^2 / ||y||^2)``.

        Args:
            prediction: Estimates `x_t`, ``(N, n)``.
            summary: Measurements `y`, ``(N, m)``.
        """
        if summary is None:
            raise ValueError("ResidualStopPolicy reads the measurements y as the summary")
        energy = summary.square().mean(1, keepdim=True).clamp_min(torch.finfo(summary.dtype).tiny)
        residual = summary - prediction @ self.A.T  # (N, m)
        relative_energy = residual.square().mean(1, keepdim=True) / energy
        log_ratio = relative_energy.clamp_min(torch.finfo(summary.dtype).tiny).log10()
        scaled = torch.cat([prediction, residual, summary], dim=-1) / energy.sqrt()
        return torch.cat([scaled, log_ratio], dim=-1)  # (N, n + 2 m + 1)
