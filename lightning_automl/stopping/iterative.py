"""ISTA and FISTA for the LASSO, batched, with the estimate after every iteration.

Both minimise `F(x) = 0.5 ||y - A x||^2 + lam ||x||_1` by proximal gradient steps. They are the
classical baselines of the LISTA-stop experiment (Chen et al., ICML 2020, section 5.1), and
`LISTA` unrolls the same `residual_step` with learned weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_automl.core.validation import check_number, check_positive_int

__all__ = [
    "fista",
    "ista",
    "ista_parameters",
    "ista_step",
    "lasso_objective",
    "lipschitz_constant",
    "residual_step",
    "soft_threshold",
]


def soft_threshold(x: Tensor, theta: Tensor | float) -> Tensor:
    """Elementwise shrinkage `sign(x) * max(|x| - theta, 0)`, the proximal map of `theta ||x||_1`.

    Args:
        x: Any tensor.
        theta: Threshold, a number or a tensor broadcastable to ``x``.
    """
    return x.sign() * (x.abs() - theta).clamp_min(0)


def residual_step(x: Tensor, y: Tensor, A: Tensor, W: Tensor) -> Tensor:
    """`x + W (y - A x)` on a batch: the linear part of a (L)ISTA step, before the shrinkage.

    Args:
        x: Current estimates, ``(B, n)``.
        y: Measurements, ``(B, m)``.
        A: Sensing matrix, ``(m, n)``.
        W: Step matrix, ``(n, m)``.
    """
    residual = y - x @ A.T  # (B, m)
    return x + residual @ W.T  # (B, n)


def ista_step(x: Tensor, y: Tensor, A: Tensor, W: Tensor, theta: Tensor | float) -> Tensor:
    """One step `x <- soft_threshold(x + W (y - A x), theta)` on a batch.

    ISTA uses `W = step A^T` and `theta = step lam` (`ista_parameters`); a `LISTA` layer learns
    them.

    Args:
        x: Current estimates, ``(B, n)``.
        y: Measurements, ``(B, m)``.
        A: Sensing matrix, ``(m, n)``.
        W: Step matrix, ``(n, m)``.
        theta: Threshold, a number or a tensor broadcastable to ``(B, n)``.
    """
    return soft_threshold(residual_step(x, y, A, W), theta)


def lipschitz_constant(A: Tensor) -> float:
    """`L = ||A||_2^2`, the largest eigenvalue of `A^T A`.

    It is the Lipschitz constant of the gradient `A^T (A x - y)` of the data term, so ISTA
    converges for steps up to `1 / L`.

    Raises:
        ValueError: ``A`` is not a finite, nonzero, 2-D floating-point tensor.
    """
    if not isinstance(A, Tensor) or A.ndim != 2 or not A.is_floating_point():
        raise ValueError(f"A must be a 2-D floating-point tensor, got {_describe(A)}")
    L = torch.linalg.matrix_norm(A, ord=2).item() ** 2
    if not (math.isfinite(L) and L > 0):
        raise ValueError(f"A must be finite and nonzero, got squared spectral norm {L}")
    return L


def ista_parameters(A: Tensor, lam: float, step: float | None = None) -> tuple[Tensor, float]:
    """ISTA's step matrix and threshold, `W = step A^T` and `theta = step lam`.

    Args:
        A: Sensing matrix, ``(m, n)``.
        lam: Weight of the l1 penalty (>= 0).
        step: Step size (> 0); defaults to `1 / L` (`lipschitz_constant`).

    Returns:
        ``W`` of shape ``(n, m)`` and ``theta``.

    Raises:
        ValueError: An argument is invalid (the message names it).
    """
    L = lipschitz_constant(A)
    check_number("lam", lam, "a finite non-negative number", lambda v: 0 <= v < math.inf)
    if step is None:
        step = 1 / L
    check_number("step", step, "a finite positive number", lambda v: 0 < v < math.inf)
    return step * A.T, step * lam


def lasso_objective(y: Tensor, A: Tensor, x: Tensor, lam: float) -> Tensor:
    """The LASSO objective `0.5 ||y - A x||^2 + lam ||x||_1` per sample.

    Args:
        y: Measurements, ``(..., m)``.
        A: Sensing matrix, ``(m, n)``.
        x: Estimates, ``(..., n)``, e.g. the ``(T, B, n)`` output of `ista`.
        lam: Weight of the l1 penalty.

    Returns:
        The objective, of shape ``x.shape[:-1]``.
    """
    residual = y - x @ A.T  # (..., m)
    return 0.5 * residual.square().sum(-1) + lam * x.abs().sum(-1)


def ista(y: Tensor, A: Tensor, lam: float, num_iters: int, step: float | None = None) -> Tensor:
    """ISTA (Daubechies et al. 2004), from `x_0 = 0`.

    `x_{k+1} = soft_threshold(x_k - step A^T (A x_k - y), step lam)`.

    Args:
        y: Measurements, ``(B, m)``.
        A: Sensing matrix, ``(m, n)``.
        lam: Weight of the l1 penalty (>= 0).
        num_iters: Iterations (>= 1).
        step: Step size (> 0); defaults to `1 / L` (`lipschitz_constant`).

    Returns:
        The estimate after every iteration, ``(num_iters, B, n)`` (`x_0` is not included).
    """
    W, theta = _prepare(y, A, lam, num_iters, step)
    x = y.new_zeros(y.shape[0], A.shape[1])  # (B, n)
    estimates = []
    for _ in range(num_iters):
        x = ista_step(x, y, A, W, theta)
        estimates.append(x)
    return torch.stack(estimates)  # (num_iters, B, n)


def fista(y: Tensor, A: Tensor, lam: float, num_iters: int, step: float | None = None) -> Tensor:
    """FISTA (Beck & Teboulle 2009): ISTA's step taken from an extrapolated point.

    `x_k = soft_threshold(z_k - step A^T (A z_k - y), step lam)`,
    `t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2`,
    `z_{k+1} = x_k + (t_k - 1) / t_{k+1} (x_k - x_{k-1})`, from `z_1 = x_0 = 0` and `t_1 = 1`.
    Arguments and result as for `ista`.
    """
    W, theta = _prepare(y, A, lam, num_iters, step)
    x = z = y.new_zeros(y.shape[0], A.shape[1])  # (B, n)
    t = 1.0
    estimates = []
    for _ in range(num_iters):
        x_next = ista_step(z, y, A, W, theta)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_next + (t - 1) / t_next * (x_next - x)
        x, t = x_next, t_next
        estimates.append(x)
    return torch.stack(estimates)  # (num_iters, B, n)


def _prepare(
    y: Tensor, A: Tensor, lam: float, num_iters: int, step: float | None
) -> tuple[Tensor, float]:
    """Validate the arguments of `ista` / `fista` and return their `ista_parameters`."""
    W, theta = ista_parameters(A, lam, step)
    if not isinstance(y, Tensor) or y.ndim != 2 or y.shape[1] != A.shape[0] or y.dtype != A.dtype:
        raise ValueError(
            f"y must be a {A.dtype} tensor of shape (B, {A.shape[0]}), got {_describe(y)}"
        )
    check_positive_int("num_iters", num_iters)
    return W, theta


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(value)
