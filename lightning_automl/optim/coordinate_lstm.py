"""The optimizer network ``m`` of L2L: a small LSTM applied to every coordinate independently.

References:
    M. Andrychowicz, M. Denil, S. Gómez, M. W. Hoffman, D. Pfau, T. Schaul, B. Shillingford,
    N. de Freitas. Learning to learn by gradient descent by gradient descent. NeurIPS 2016:
    the update ``(g_t, h_{t+1}) = m(grad_t, h_t; phi)`` (section 2), the coordinatewise LSTM
    (section 2.1) and the gradient preprocessing (appendix A).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_automl.core.pretrained import PretrainedMixin, build_component
from lightning_automl.core.validation import (
    check_non_negative_int,
    check_number,
    check_positive_int,
)

__all__ = [
    "PAPER_CONFIG",
    "CoordinateLSTM",
    "build_coordinate_lstm",
    "check_coordinate_lstm_config",
    "preprocess_gradient",
]

PAPER_CONFIG: dict[str, Any] = {
    "hidden_size": 20,
    "num_layers": 2,
    "preprocess_p": 10.0,
    "output_scale": 0.1,
}
"""The network of the paper's MNIST experiments, used where neither an argument nor a card says."""


def check_coordinate_lstm_config(
    hidden_size: object, num_layers: object, preprocess_p: object, output_scale: object
) -> None:
    """Raise ``ValueError`` naming the first argument of `CoordinateLSTM` that is out of range."""
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("num_layers", num_layers)
    check_number("preprocess_p", preprocess_p, "a finite number > 0", lambda p: 0 < p < math.inf)
    check_number("output_scale", output_scale, "a finite number > 0", lambda s: 0 < s < math.inf)


def preprocess_gradient(grad: Tensor, p: float) -> Tensor:
    """The paper's preprocessing of ``(N,)`` gradients into ``(N, 2)`` LSTM inputs (appendix A).

    ``g -> (log|g| / p, sign(g))`` if ``|g| >= exp(-p)``, else ``(-1, exp(p) g)``: both inputs
    stay of order one over the many orders of magnitude that gradients span.
    """
    threshold = math.exp(-p)
    magnitude = grad.abs()
    large = magnitude >= threshold
    # The clamp keeps log finite (and its gradient defined) where the small branch is taken.
    log_magnitude = torch.where(large, magnitude.clamp_min(threshold).log() / p, -1.0)
    sign_or_scaled = torch.where(large, grad.sign(), grad * math.exp(p))
    return torch.stack([log_magnitude, sign_or_scaled], dim=-1)  # (N, 2)


class CoordinateLSTM(PretrainedMixin, nn.Module):
    """``m(grad_t, h_t; phi)``: a stacked LSTM and a linear output, shared by all coordinates.

    Every coordinate of every optimizee tensor is one row of the batch and keeps its own hidden
    and cell states, so the network has a few thousand parameters whatever the optimizee's size
    (section 2.1). The update is ``g_t = output_scale * linear(h_top)``. The preprocessing runs in
    the wider of the gradient's and the network's dtype, the LSTM and the output in the
    network's dtype (float32 unless converted), which ``hidden`` and ``cell`` must have.

    Args:
        hidden_size: Units per LSTM layer (20 in the paper).
        num_layers: Stacked LSTM layers (2 in the paper).
        preprocess_p: ``p`` of the gradient preprocessing (10 in the paper).
        output_scale: Constant factor on the linear output (0.1 for MNIST in the paper).
    """

    pretrained_method = "l2l"

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess_p: float = 10.0,
        output_scale: float = 0.1,
    ) -> None:
        check_coordinate_lstm_config(hidden_size, num_layers, preprocess_p, output_scale)
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.preprocess_p = float(preprocess_p)
        self.output_scale = float(output_scale)
        self.lstm = nn.LSTM(2, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, 1)

    def pretrained_config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "preprocess_p": self.preprocess_p,
            "output_scale": self.output_scale,
        }

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the LSTM computes in: that of the network's weights."""
        return self.head.weight.dtype

    def initial_state(
        self,
        num_coordinates: int,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Zero hidden and cell states, each ``(num_layers, num_coordinates, hidden_size)``."""
        shape = (self.num_layers, num_coordinates, self.hidden_size)
        hidden = torch.zeros(shape, dtype=dtype or self.dtype, device=device)
        return hidden, torch.zeros_like(hidden)

    def forward(self, grad: Tensor, hidden: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One optimizer step for ``N`` coordinates.

        Args:
            grad: ``(N,)`` gradients, one per coordinate.
            hidden: ``(num_layers, N, hidden_size)`` hidden states ``h_t``.
            cell: ``(num_layers, N, hidden_size)`` cell states.

        Returns:
            The ``(N,)`` updates ``g_t`` and the next hidden and cell states.
        """
        grad = grad.to(torch.promote_types(grad.dtype, self.dtype))
        features = preprocess_gradient(grad, self.preprocess_p).to(self.dtype)  # (N, 2)
        output, (hidden, cell) = self.lstm(features.unsqueeze(0), (hidden, cell))  # (1, N, H)
        update = self.head(output.squeeze(0)).squeeze(-1) * self.output_scale  # (N,)
        return update, hidden, cell


def build_coordinate_lstm(
    pretrained: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    preprocess_p: float | None = None,
    output_scale: float | None = None,
    seed: int = 0,
) -> CoordinateLSTM:
    """A `CoordinateLSTM`: random, or the pretrained one ``pretrained`` names.

    Each config argument left ``None`` takes the card's value (pretrained) or `PAPER_CONFIG`'s;
    a value given with ``pretrained`` must equal the card's. Random weights are drawn from
    ``seed`` alone (not the global random state), so every DDP rank builds the same network.

    Raises:
        ValueError: A config value is out of range.
        PretrainedError: ``pretrained`` is unknown, fails its checksum, or its card disagrees
            with a given value.
    """
    given = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "preprocess_p": preprocess_p,
        "output_scale": output_scale,
    }
    config = {key: value for key, value in given.items() if value is not None}
    check_coordinate_lstm_config(**{**PAPER_CONFIG, **config})
    check_non_negative_int("seed", seed)
    return build_component(CoordinateLSTM, pretrained, given, PAPER_CONFIG, seed)
