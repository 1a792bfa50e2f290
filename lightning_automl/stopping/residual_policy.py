"""`ResidualStopPolicy`: a stop policy for inverse problems `y = A x + noise` (LISTA-stop)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_automl.stopping.policy import StopPolicy

__all__ = ["ResidualStopPolicy"]


class ResidualStopPolicy(StopPolicy):
    """A `StopPolicy` for `y = A x + noise` that reads four scale-free numbers of each step.

    The authors' LISTA-stop policy reads the estimate `x_t`, the residual `y - A x_t` and `y`
    as vectors (Chen et al., ICML 2020, section 5.1). On data of mixed SNR, an MLP on those
    vectors learned only the marginal stop-time distribution: it stopped at the same steps
    whatever the noise level. This policy reads, on a log10 scale, the energy of the residual
    `r_t = y - A x_t` relative to `y`'s (it flattens at the noise floor, where stopping costs
    nothing), that of the gradient `A^T r_t` relative to `A^T y`'s (zero at a least-squares
    fit), that of `x_t` relative to `y`'s, and the fraction of nonzero entries of `x_t`; with
    the encoding of `t`, it tells a converged estimate from one still improving, at every noise
    level.

    The sensing matrix is the buffer ``A`` (saved with the weights); `for_matrix` builds the
    policy for a given one.

    Args:
        m: Measurements per sample (rows of `A`).
        n: Signal length (columns of `A`).
        hidden_dims: Widths of the hidden layers.
        step_encoding_dim: Width of the sinusoidal encoding of the step index.
        standardize: Standardise the four numbers (see `StopPolicy`); they live on very
            different scales (the log energies span several units, the fraction of nonzeros a few
            tenths).
    """

    A: Tensor

    def __init__(
        self,
        m: int,
        n: int,
        hidden_dims: tuple[int, ...] = (256, 128, 16),
        step_encoding_dim: int = 16,
        standardize: bool = True,
    ) -> None:
        super().__init__(n, m, hidden_dims, step_encoding_dim, standardize)
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
            "standardize": self.standardize,
        }

    def feature_dim(self) -> int:
        return 4

    def features(self, prediction: Tensor, summary: Tensor | None) -> Tensor:
        """``log10`` of ``||r_t||^2 / ||y||^2``, ``||A^T r_t||^2 / ||A^T y||^2`` and
        ``||x_t||^2 / ||y||^2``, and the fraction of nonzeros of ``x_t``: ``(N, 4)``.

        Args:
            prediction: Estimates `x_t`, ``(N, n)``.
            summary: Measurements `y`, ``(N, m)``.
        """
        if summary is None:
            raise ValueError("ResidualStopPolicy reads the measurements y as the summary")
        residual = summary - prediction @ self.A.T  # (N, m)
        energy = summary.square().sum(1)
        ratios = torch.stack(
            [
                residual.square().sum(1) / energy,
                (residual @ self.A).square().sum(1) / (summary @ self.A).square().sum(1),
                prediction.square().sum(1) / energy,
            ],
            dim=1,
        )  # (N, 3)
        tiny = torch.finfo(ratios.dtype).tiny
        nonzero = (prediction != 0).to(ratios.dtype).mean(1, keepdim=True)
        return torch.cat([ratios.nan_to_num(nan=1.0).clamp_min(tiny).log10(), nonzero], dim=1)
