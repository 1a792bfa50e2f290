"""`LSTMOptimizer`: the learned optimizer of L2L as a ``torch.optim.Optimizer``.

References:
    M. Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
    NeurIPS 2016: the update ``theta_{t+1} = theta_t + g_t`` with
    ``(g_t, h_{t+1}) = m(grad_t, h_t; phi)`` (section 2) and the coordinatewise LSTM ``m``
    (section 2.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, overload

import torch
from torch.optim.optimizer import Optimizer, ParamsT, StateDict

from lightning_automl.core.validation import check_bool
from lightning_automl.optim.coordinate_lstm import CoordinateLSTM
from lightning_automl.optim.typed_lstm import TypedCoordinateLSTM, build_l2l_network, parameter_type

__all__ = ["LSTMOptimizer"]

NETWORK_KEY = "coordinate_lstm"
"""Key of ``state_dict()`` holding the network's config and weights."""
CHUNK_ROWS = 4096
"""Coordinates per call of the network in `LSTMOptimizer.step`: a call's gates and states
(about 2.6 MB) stay in the CPU's cache. At 1e6 coordinates on one thread of the 2-core machine
(AMD EPYC with AVX-512), the median of 7 steps timed in turn was 0.39 s with 2,048, 0.36 s with
4,096 and 0.35 to 0.36 s with 6,144 and 8,192. The coordinates are independent, so the result
is the same."""
SKIPPED_STEPS_KEY = "skipped_steps"
"""Key of ``state_dict()`` holding `LSTMOptimizer.skipped_steps`."""


def _chunks(sizes: list[int], rows: int) -> Iterator[list[tuple[int, slice]]]:
    """The concatenation of tensors of ``sizes`` coordinates, cut into chunks of ``rows``
    coordinates: for each chunk, the ``(tensor index, its own coordinates)`` pieces it holds."""
    chunk: list[tuple[int, slice]] = []
    room = rows
    for index, size in enumerate(sizes):
        start = 0
        while start < size:
            taken = min(room, size - start)
            chunk.append((index, slice(start, start + taken)))
            start, room = start + taken, room - taken
            if room == 0:
                yield chunk
                chunk, room = [], rows
    if chunk:
        yield chunk


def _joined(pieces: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``(num_layers, hidden, columns)`` states of several pieces side by side, in ``dtype``: the
    piece itself when there is one of that dtype, else a copy."""
    joined = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
    return joined.to(dtype)


def _write_back(pieces: list[torch.Tensor], joined: torch.Tensor) -> None:
    """Copy the columns of ``joined`` back into the ``pieces`` it was `_joined` from (nothing
    to do when it is the one piece itself)."""
    if joined is pieces[0]:
        return
    parts = joined.split([piece.shape[2] for piece in pieces], dim=2)
    for piece, part in zip(pieces, parts, strict=True):
        piece.copy_(part)


class LSTMOptimizer(Optimizer):
    """The coordinatewise LSTM optimizer of L2L: ``theta_{t+1} = theta_t + g_t``.

    ``(g_t, h_{t+1}) = m(grad_t, h_t; phi)`` with ``m`` a `CoordinateLSTM` (section 2), or one
    per parameter type (`TypedCoordinateLSTM`, section 3.3). Each step concatenates the
    gradients of all parameters (of a type) that have one into a single batch and runs ``m`` on
    it, `CHUNK_ROWS` coordinates per call (no loop over parameters); each call updates
    the hidden and cell states of its coordinates in place, where they are kept
    (`CoordinateLSTM.update_`).

    State: ``self.state[p]`` holds ``"hidden"`` and ``"cell"``, each of shape
    ``(num_layers, hidden_size, p.numel())`` in ``p``'s dtype (torch casts optimizer state to the
    parameter's dtype on load). ``state_dict()`` adds the network's config and weights under
    ``"coordinate_lstm"`` and `skipped_steps` under ``"skipped_steps"``, so a checkpoint resumes
    bit for bit.

    Dtype: the gradients are preprocessed in float32 (float64 for float64 parameters), then
    ``m`` computes in its weights' dtype, float32; each update is added in its parameter's dtype.
    The states of a float64 parameter are exact copies of the float32 ones; those of a float16 or
    bfloat16 parameter are rounded at every step.

    Args:
        params: Parameters or param groups, as for any torch optimizer.
        pretrained: A shipped L2L optimizer's name (e.g. ``"l2l-mnist"``) or the path of one
            saved with `CoordinateLSTM.save_pretrained`; the network's config comes from its
            card. ``None``: random weights, to be meta-trained.
        hidden_size: Units per LSTM layer (``None``: the card's, else 20).
        num_layers: Stacked LSTM layers (``None``: the card's, else 2).
        preprocess_p: ``p`` of the gradient preprocessing, appendix A (``None``: the card's,
            else 10).
        output_scale: Constant factor on the network's output (``None``: the card's, else 0.1).
            A value given with ``pretrained`` must equal the card's.
        parameter_types: ``{fnmatch pattern: type}``: one network per type of parameter
            (`TypedCoordinateLSTM`, the paper's section 3.3), each parameter's name matching
            exactly one pattern; ``params`` must then be named (``model.named_parameters()``).
            ``None``: the card's, if it has them, else one network for all coordinates. With a
            typed card, patterns given here replace the card's and must name its types.
        skip_nonfinite: On NaN or inf gradients, skip the step (no update, state unchanged) and
            count it in `skipped_steps` instead of raising ``FloatingPointError``.
        seed: Seed of the random weights (without ``pretrained``); they do not depend on the
            global random state, so every DDP rank applies the same update rule.
    """

    def __init__(
        self,
        params: ParamsT,
        pretrained: str | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        preprocess_p: float | None = None,
        output_scale: float | None = None,
        parameter_types: Mapping[str, str] | None = None,
        skip_nonfinite: bool = False,
        seed: int = 0,
    ) -> None:
        param_list: list[Any] = list(params)
        if not param_list:
            raise ValueError("params must hold at least one tensor or param group, got none")
        check_bool("skip_nonfinite", skip_nonfinite)
        self.network = build_l2l_network(
            pretrained,
            hidden_size,
            num_layers,
            preprocess_p,
            output_scale,
            parameter_types,
            seed=seed,
        )
        super().__init__(param_list, defaults={})
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        """Steps skipped because of NaN or inf gradients (with ``skip_nonfinite``)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; with a typed network, its parameters' names must give their types.

        Raises:
            ValueError: The network is typed and a parameter has no name, or its name matches
                no pattern of the network's ``parameter_types``, or several.
        """
        super().add_param_group(param_group)
        if isinstance(self.network, TypedCoordinateLSTM):
            self._parameter_types(self.param_groups[-1])

    def _parameter_types(self, group: dict[str, Any]) -> list[str | None]:
        """The type of each parameter of ``group`` (``None`` for all with a shared network)."""
        network = self.network
        if not isinstance(network, TypedCoordinateLSTM):
            return [None] * len(group["params"])
        if "param_names" not in group:
            raise ValueError(
                f"this LSTMOptimizer has one network per parameter type ({network.types}, "
                f"by parameter_types {network.parameter_types}): pass named parameters, e.g. "
                "LSTMOptimizer(model.named_parameters(), ...), so that each name gives its type"
            )
        return [parameter_type(name, network.parameter_types) for name in group["param_names"]]

    def _network(self, kind: str | None) -> CoordinateLSTM:
        """The network that updates the parameters of type ``kind``."""
        if isinstance(self.network, TypedCoordinateLSTM):
            assert kind is not None
            return self.network.network(kind)
        return self.network

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every parameter that has a gradient, all coordinates as one batch.

        Args:
            closure: Re-evaluates the model and returns the loss, as for any torch optimizer.

        Raises:
            FloatingPointError: A gradient holds NaN or inf (without ``skip_nonfinite``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        by_type: dict[str | None, list[torch.Tensor]] = {}
        for group in self.param_groups:
            for param, kind in zip(group["params"], self._parameter_types(group), strict=True):
                if param.grad is not None:
                    if param.grad.is_sparse or param.is_complex():
                        raise RuntimeError(
                            "LSTMOptimizer supports dense gradients of real parameters only"
                        )
                    by_type.setdefault(kind, []).append(param)
        if not by_type:
            return loss
        flat_grads = {
            kind: torch.cat([param.grad.reshape(-1) for param in params])  # type: ignore[union-attr]
            for kind, params in by_type.items()
        }  # (N_type,) each
        # A finite sum (one pass) proves every entry finite; otherwise check them one by one.
        if not all(
            flat.sum().isfinite() or torch.isfinite(flat).all() for flat in flat_grads.values()
        ):
            if self.skip_nonfinite:
                self.skipped_steps += 1
                return loss
            raise FloatingPointError(self._nonfinite_message())
        for kind, params in by_type.items():
            self._update(self._network(kind), params, flat_grads[kind])
        return loss

    def _update(
        self, network: CoordinateLSTM, params: list[torch.Tensor], flat_grad: torch.Tensor
    ) -> None:
        """Update ``params`` by ``network`` from their concatenated gradients, as one batch."""
        for param in params:
            state = self.state[param]
            if not state:
                state["hidden"], state["cell"] = network.initial_state(
                    param.numel(), dtype=param.dtype, device=param.device
                )
        if network.head.weight.device != flat_grad.device:
            self.network.to(flat_grad.device)
        sizes = [param.numel() for param in params]
        states = [self.state[param] for param in params]
        dtype = network.dtype
        inputs = network.features(flat_grad)  # (2, N)
        weights = network.layer_weights(candidate_scale=2.0)
        update = torch.empty_like(flat_grad, dtype=dtype)
        start = 0
        for pieces in _chunks(sizes, CHUNK_ROWS):
            hidden = [states[index]["hidden"][:, :, rows] for index, rows in pieces]
            cell = [states[index]["cell"][:, :, rows] for index, rows in pieces]
            chunk = slice(start, start + sum(rows.stop - rows.start for _, rows in pieces))
            start = chunk.stop
            joined_hidden, joined_cell = _joined(hidden, dtype), _joined(cell, dtype)
            update[chunk] = network.update_(inputs[:, chunk], joined_hidden, joined_cell, weights)
            _write_back(hidden, joined_hidden)
            _write_back(cell, joined_cell)
        for param, param_update in zip(params, update.split(sizes), strict=True):
            param.add_(param_update.view_as(param))

    def _nonfinite_message(self) -> str:
        for group_index, group in enumerate(self.param_groups):
            for index, param in enumerate(group["params"]):
                if param.grad is not None and not torch.isfinite(param.grad).all():
                    return (
                        f"the gradient of parameter {index} of param group {group_index} "
                        f"(shape {tuple(param.shape)}) holds NaN or inf; "
                        "LSTMOptimizer(skip_nonfinite=True) skips such steps instead"
                    )
        return "a gradient holds NaN or inf"

    def state_dict(self) -> StateDict:
        """The torch optimizer state plus the network's config and weights and `skipped_steps`."""
        state_dict = super().state_dict()
        state_dict[NETWORK_KEY] = {
            "config": self.network.pretrained_config(),
            "weights": self.network.state_dict(),
        }
        state_dict[SKIPPED_STEPS_KEY] = self.skipped_steps
        return state_dict

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Restore what `state_dict` returned; the network's config must equal this one's."""
        state_dict = dict(state_dict)
        network = state_dict.pop(NETWORK_KEY, None)
        skipped_steps = state_dict.pop(SKIPPED_STEPS_KEY, 0)
        if network is None:
            raise ValueError(
                f"the optimizer state has no {NETWORK_KEY!r} entry: it was not saved by "
                "LSTMOptimizer"
            )
        config = self.network.pretrained_config()
        if network["config"] != config:
            raise ValueError(
                f"the optimizer state holds a network with config {network['config']}, but this "
                f"LSTMOptimizer has {config}"
            )
        super().load_state_dict(state_dict)
        self.network.load_state_dict(network["weights"])
        self.skipped_steps = skipped_steps
