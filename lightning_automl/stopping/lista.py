"""LISTA: ISTA unrolled into a network with learned step matrices and thresholds.

The predictive model of the LISTA-stop experiment (Chen et al., ICML 2020, section 5.1): it emits
an estimate after every layer, and a stop policy picks the layer per sample. Two options make it
the stronger LISTA-CPSS / ALISTA variant: support selection (Chen et al., NeurIPS 2018, eq. 13)
and the analytic initialisation of ALISTA (Liu et al., ICLR 2019, eq. 15).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_automl.core.validation import check_bool, check_number, check_positive_int
from lightning_automl.stopping.iterative import ista_parameters, residual_step, soft_threshold

__all__ = ["LISTA", "analytic_weight", "support_selected_soft_threshold"]


def analytic_weight(A: Tensor) -> Tensor:
    """ALISTA's analytic step matrix `W~^T`, ``(n, m)`` (Liu et al. 2019, eq. 15, Frobenius form).

    `W~ = argmin ||W^T A||_F` subject to `diag(W^T A) = 1`: column `i` is
    `(A A^T)^-1 a_i / (a_i^T (A A^T)^-1 a_i)`. A step `x + W~^T (y - A x)` moves every
    coordinate by its own unit-gain correction, so a threshold `theta` is the l1 weight itself.
    """
    G = torch.linalg.solve(A @ A.T, A)  # (m, n): (A A^T)^-1 a_i
    return (G / (G * A).sum(0, keepdim=True)).T


def support_selected_soft_threshold(v: Tensor, theta: Tensor, num_kept: int) -> Tensor:
    """LISTA-CPSS's shrinkage (Chen et al. 2018, eq. 13): in each sample the ``num_kept``
    entries of largest `|v_i|` are trusted as support and pass unchanged; the others are
    soft-thresholded by ``theta``.

    Args:
        v: Pre-activations, ``(B, n)``.
        theta: Threshold (a scalar tensor).
        num_kept: Entries kept per sample, ``0 <= num_kept <= n``.
    """
    shrunk = soft_threshold(v, theta)
    if num_kept == 0:
        return shrunk
    kept = v.abs().topk(num_kept, dim=1).indices  # (B, num_kept)
    return shrunk.scatter(1, kept, v.gather(1, kept))


class LISTA(nn.Module):
    """Learned ISTA (Gregor & LeCun 2010) with `T` layers, from `x_0 = 0`.

    Layer `t` computes `x_{t+1} = eta_t(x_t + W_t (y - A x_t), theta_t)` with a learned step
    matrix `W_t` (``(n, m)``) and scalar threshold `theta_t`; `eta_t` is the soft threshold, or
    with support selection `support_selected_soft_threshold` keeping the top
    `min(support_per_layer * (t + 1), support_max)` fraction of entries. The sensing matrix `A`
    is a fixed buffer.

    Initialisation (``init``):

    - ``"ista"``: `W_t = A^T / L`, `theta_t = lam / L` (`L = ||A||_2^2`): an untrained LISTA
      computes `T` iterations of `ista`;
    - ``"analytic"``: `W_t = analytic_weight(A)`, `theta_t = lam` (ALISTA's unit step).

    With either, `theta_t` is further multiplied by ``threshold_decay ** t``, shrinking as the
    estimate improves (ALISTA's schedule).

    Args:
        A: Sensing matrix, ``(m, n)``.
        num_layers: Number of layers `T`.
        lam: l1 weight of the initial thresholds (>= 0).
        tied: Share one `W` and one `theta` across the layers (untied: one per layer).
        init: ``"ista"`` or ``"analytic"``.
        threshold_decay: Per-layer factor of the initial thresholds, in (0, 1]; 1 if ``tied``.
        support_per_layer: Fraction of entries kept by support selection, per layer, in [0, 1].
        support_max: Largest fraction kept by support selection, in [0, 1].
    """

    A: Tensor

    def __init__(
        self,
        A: Tensor,
        num_layers: int = 20,
        lam: float = 0.1,
        tied: bool = False,
        init: Literal["ista", "analytic"] = "ista",
        threshold_decay: float = 1.0,
        support_per_layer: float = 0.0,
        support_max: float = 0.0,
    ) -> None:
        super().__init__()
        W, theta = ista_parameters(A, lam)  # (n, m), threshold; validates A and lam
        check_positive_int("num_layers", num_layers)
        check_bool("tied", tied)
        if init not in ("ista", "analytic"):
            raise ValueError(f"init must be 'ista' or 'analytic', got {init!r}")
        check_number("threshold_decay", threshold_decay, "in (0, 1]", lambda v: 0 < v <= 1)
        if tied and threshold_decay != 1:
            raise ValueError(
                "a tied LISTA has one threshold: threshold_decay must be 1, "
                f"got {threshold_decay!r}"
            )
        for name, value in (("support_per_layer", support_per_layer), ("support_max", support_max)):
            check_number(name, value, "in [0, 1]", lambda v: 0 <= v <= 1)
        if init == "analytic":
            W, theta = analytic_weight(A), lam
        self.num_layers, self.lam, self.tied = num_layers, lam, tied
        n = A.shape[1]
        self.num_kept = [
            math.floor(min(support_per_layer * (t + 1), support_max) * n) for t in range(num_layers)
        ]
        copies = 1 if tied else num_layers
        self.register_buffer("A", A.detach().clone())
        self.W = nn.Parameter(W.detach().expand(copies, -1, -1).clone())  # (1 or T, n, m)
        decay = threshold_decay ** torch.arange(copies, dtype=A.dtype, device=A.device)
        self.theta = nn.Parameter(theta * decay)  # (1 or T,)

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
        for W_t, theta_t, num_kept in zip(W, theta, self.num_kept, strict=True):
            v = residual_step(x, y, self.A, W_t)  # (B, n)
            x = support_selected_soft_threshold(v, theta_t, num_kept)
            estimates.append(x)
        return torch.stack(estimates)  # (T, B, n)

    def forward(self, y: Tensor) -> Tensor:
        """The last layer's estimate, ``(B, n)``."""
        return self.forward_steps(y)[-1]
