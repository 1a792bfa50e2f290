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
    "LayerWeights",
    "build_coordinate_lstm",
    "check_coordinate_lstm_config",
    "checked_config",
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
    """The paper's preprocessing of ``(N,)`` gradients into ``(2, N)`` LSTM inputs (appendix A).

    ``g -> (log|g| / p, sign(g))`` if ``|g| >= exp(-p)``, else ``(-1, exp(p) g)``: both inputs
    stay of order one over the many orders of magnitude that gradients span.
    """
    # Clamps give both branches (values and derivatives) without masks: where |g| < exp(-p),
    # log(exp(-p)) / p = -1, and |exp(p) g| >= 1 where |g| >= exp(-p), up to rounding at the
    # threshold itself.
    log_magnitude = grad.abs().clamp_min(math.exp(-p)).log() / p
    sign_or_scaled = (grad * math.exp(p)).clamp(-1.0, 1.0)
    return torch.stack([log_magnitude, sign_or_scaled])  # (2, N)


LayerWeights = tuple[Tensor, Tensor, Tensor]
"""One LSTM layer's ``(W_ih, W_hh, b)``, gate rows in the order input, forget, output, cell."""


class CoordinateLSTM(PretrainedMixin, nn.Module):
    """``m(grad_t, h_t; phi)``: a stacked LSTM and a linear output, shared by all coordinates.

    Every coordinate of every optimizee tensor is one column of the batch and keeps its own
    hidden and cell states, so the network has a few thousand parameters whatever the
    optimizee's size (section 2.1). The update is ``g_t = output_scale * linear(h_top)``.

    The states are unit-major, ``(num_layers, hidden_size, N)``: each gate is then a contiguous
    block of the ``(4 hidden_size, N)`` gate matrix, which the activations read at full vector
    width (the ``(N, 4 hidden_size)`` layout of ``nn.LSTM`` makes them strided, about four times
    slower on CPU). The weights are kept in an ``nn.LSTM`` (its initialisation and parameter
    names), whose gate equations `forward` and `update_` compute in that layout.

    The preprocessing runs in the wider of the gradient's and the network's dtype, the LSTM and
    the output in the network's dtype (float32 unless converted), which ``hidden`` and ``cell``
    must have.

    Args:
        hidden_size: Units per LSTM layer (20 in the paper).
        num_layers: Stacked LSTM layers (2 in the paper).
        preprocess_p: ``p`` of the gradient preprocessing (10 in the paper's text; 5 in the
            authors' code for MNIST; 4 in ``l2l-mnist``).
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
        """Zero hidden and cell states, each ``(num_layers, hidden_size, num_coordinates)``."""
        shape = (self.num_layers, self.hidden_size, num_coordinates)
        hidden = torch.zeros(shape, dtype=dtype or self.dtype, device=device)
        return hidden, torch.zeros_like(hidden)

    def features(self, grad: Tensor) -> Tensor:
        """The ``(2, N)`` LSTM inputs of the ``(N,)`` gradients, in the network's dtype."""
        grad = grad.to(torch.promote_types(grad.dtype, self.dtype))
        return preprocess_gradient(grad, self.preprocess_p).to(self.dtype)

    def layer_weights(self, candidate_scale: float = 1.0) -> list[LayerWeights]:
        """Each layer's weights, the three sigmoid gates' rows first (``nn.LSTM`` has input,
        forget, cell, output), so that one call activates them; the cell candidate's rows (last)
        multiplied by ``candidate_scale`` (`update_` takes them doubled)."""
        h, device = self.hidden_size, self.head.weight.device
        order = torch.arange(4 * h, device=device).view(4, h)[[0, 1, 3, 2]].flatten()
        scale = None  # the differentiable forward (candidate_scale 1) takes the weights as they are
        if candidate_scale != 1.0:
            scale = torch.ones(4 * h, 1, dtype=self.dtype, device=device)
            scale[3 * h :] = candidate_scale
        weights = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = (
                getattr(self.lstm, f"{name}_l{layer}")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            w_ih, w_hh, bias = w_ih[order], w_hh[order], (b_ih + b_hh)[order, None]
            if scale is not None:
                w_ih, w_hh, bias = w_ih * scale, w_hh * scale, bias * scale
            weights.append((w_ih, w_hh, bias))
        return weights

    def forward(self, grad: Tensor, hidden: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One optimizer step for ``N`` coordinates, differentiable (for meta-training).

        Args:
            grad: ``(N,)`` gradients, one per coordinate.
            hidden: ``(num_layers, hidden_size, N)`` hidden states ``h_t``.
            cell: ``(num_layers, hidden_size, N)`` cell states.

        Returns:
            The ``(N,)`` updates ``g_t`` and the next hidden and cell states.
        """
        inputs = self.features(grad)
        next_hidden, next_cell = [], []
        for layer, weights in enumerate(self.layer_weights()):
            gates = _gates(weights, inputs, hidden[layer])
            input_gate, forget_gate, output_gate = gates[: 3 * self.hidden_size].sigmoid().chunk(3)
            candidate = gates[3 * self.hidden_size :].tanh()
            next_cell.append(torch.addcmul(forget_gate * cell[layer], input_gate, candidate))
            inputs = output_gate * next_cell[-1].tanh()
            next_hidden.append(inputs)
        return self._update(inputs), torch.stack(next_hidden), torch.stack(next_cell)

    @torch.no_grad()
    def update_(
        self, inputs: Tensor, hidden: Tensor, cell: Tensor, weights: list[LayerWeights]
    ) -> Tensor:
        """`forward` without autograd, writing the next states into ``hidden`` and ``cell``.

        ``inputs`` are the `features` of the gradients, ``weights`` ``layer_weights(2)``'s
        (computed once for many calls). Both tanh are taken as ``tanh(x) = 2 sigmoid(2x) - 1``,
        equal up to float rounding: on CPU, PyTorch's tanh costs about six times its sigmoid
        per element, and the doubled candidate rows let one sigmoid call activate all four
        gates. The activations are taken in place, so a call allocates little beyond its gate
        matrix. Returns the ``(N,)`` updates.
        """
        for layer, layer_weights in enumerate(weights):
            gates = _gates(layer_weights, inputs, hidden[layer]).sigmoid_()
            input_gate, forget_gate, output_gate, candidate = gates.chunk(4)
            candidate.mul_(2).sub_(1)
            next_cell = cell[layer].mul_(forget_gate).addcmul_(input_gate, candidate)
            inputs = torch.mul(next_cell, 2, out=hidden[layer]).sigmoid_()
            inputs.mul_(2).sub_(1).mul_(output_gate)
        return self._update(inputs)

    def _update(self, top_hidden: Tensor) -> Tensor:
        """``g_t = output_scale * linear(h_top)`` for ``(hidden_size, N)`` top hidden states."""
        scale = self.output_scale
        bias, weight = self.head.bias[:, None], self.head.weight
        return torch.addmm(bias, weight, top_hidden, beta=scale, alpha=scale).squeeze(0)


def _gates(weights: LayerWeights, inputs: Tensor, hidden: Tensor) -> Tensor:
    """The ``(4 hidden_size, N)`` gate pre-activations ``W_ih x + W_hh h + b``."""
    w_ih, w_hh, bias = weights
    return torch.addmm(bias, w_ih, inputs).addmm_(w_hh, hidden)


def checked_config(
    hidden_size: int | None,
    num_layers: int | None,
    preprocess_p: float | None,
    output_scale: float | None,
) -> dict[str, Any]:
    """The config arguments as given (``None``: not given), for `build_component`.

    Raises:
        ValueError: A given value is out of range.
    """
    given = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "preprocess_p": preprocess_p,
        "output_scale": output_scale,
    }
    config = {key: value for key, value in given.items() if value is not None}
    check_coordinate_lstm_config(**{**PAPER_CONFIG, **config})
    return given


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
    given = checked_config(hidden_size, num_layers, preprocess_p, output_scale)
    check_non_negative_int("seed", seed)
    return build_component(CoordinateLSTM, pretrained, given, PAPER_CONFIG, seed)
