"""LISTA: ISTA unrolled into a network with learned step matrices and thresholds.

The predictive model of the LISTA-stop experiment (Chen et al., ICML 2020, section 5.1): it emits
an estimate after every layer, and a stop policy picks the layer per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_automl.core.validation import check_bool, check_positive_int
from lightning_automl.stopping.iterative import ista_parameters, ista_step

__all__ = ["LISTA"]


class LISTA(nn.Module):
    """Learned ISTA (Gregor & LeCun 2010) with `T` layers, from `x_0 = 0`.

    Layer `t` computes `x_{t+1} = soft_threshold(x_t + W_t (y - A x_t), theta_t)` with a learned
    step matrix `W_t` (``(n, m)``) and scalar threshold `theta_t`. They start at ISTA's values,
    `W_t = A^T / L` and `theta_t = lam / L` (`L = ||A||_2^2`), so an untrained LISTA computes `T`
    iterations of `ista`. The sensing matrix `A` is a fixed buffer.

    Args:
        A: Sensing matrix, ``(m, n)``.
        num_layers: Number of layers `T`.
        lam: l1 weight of the ISTA the layers are initialised from (>= 0).
        tied: Share one `W` and one `theta` across the layers (untied: one per layer).
    """

    A: Tensor

    def __init__(
        self, A: Tensor, num_layers: int = 20, lam: float = 0.1, tied: bool = False
    ) -> None:
        super().__init__()
        W, theta = ista_parameters(A, lam)  # (n, m), threshold
        check_positive_int("num_layers", num_layers)
        check_bool("tied", tied)
        self.num_layers, self.lam, self.tied = num_layers, lam, tied
        copies = 1 if tied else num_layers
        self.register_buffer("A", A.detach().clone())
        self.W = nn.Parameter(W.detach().expand(copies, -1, -1).clone())  # (1 or T, n, m)
        self.theta = nn.Parameter(A.new_full((copies,), theta))  # (1 or T,)

    def forward_steps(self, y: Tensor) -> Tensor:
        """The estimate after every layer (what a stop policy chooses from).

        Args:
            y: Measurements, ``(B, m)``.

        Returns:
            `x_1, ..., x_T` stacked, ``(T, B, n)`` (`x_0 = 0` is not included).
        """
        # unbind once: indexing W[t] would allocate a full (T, n, m) gradient per layer
        W = self.W.expand(self.num_layers, -1, -1).unbind(0)  # T x (n, m)
        theta = self.theta.expand(self.num_layers).unbind(0)  # T x ()
        x = y.new_zeros(y.shape[0], self.A.shape[1])  # (B, n)
        estimates = []
        for W_t, theta_t in zip(W, theta, strict=True):
            x = ista_step(x, y, self.A, W_t, theta_t)
            estimates.append(x)
        return torch.stack(estimates)  # (T, B, n)

    def forward(self, y: Tensor) -> Tensor:
        """The last layer's estimate, ``(B, n)``."""
        return self.forward_steps(y)[-1]
