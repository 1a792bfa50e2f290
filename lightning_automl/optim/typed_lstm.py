"""`TypedCoordinateLSTM`: one coordinatewise LSTM per type of parameter.

In the paper's CIFAR-10 experiment (section 3.3) the optimizer has two LSTMs, one for the
convolutional layers and one for the fully connected ones: each is still coordinatewise, with a
state per coordinate, but its weights are shared only by the parameters of its type. Here a
parameter's type is named by the pattern its name matches, e.g. ``{"hidden*": "hidden",
"output*": "output"}`` gives an MLP's hidden layers one network and its output layer another.

References:
    M. Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
    NeurIPS 2016, section 3.3.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_automl.core.pretrained import (
    PretrainedError,
    PretrainedMixin,
    build_component,
    read_card,
)
from lightning_automl.core.validation import check_non_negative_int
from lightning_automl.optim.coordinate_lstm import (
    PAPER_CONFIG,
    CoordinateLSTM,
    build_coordinate_lstm,
    checked_config,
)

__all__ = [
    "L2LNetwork",
    "TypedCoordinateLSTM",
    "build_l2l_network",
    "check_output_factors",
    "check_parameter_types",
    "parameter_type",
    "type_segments",
]


def check_parameter_types(parameter_types: object) -> None:
    """Raise ``ValueError`` unless ``parameter_types`` is a non-empty ``{pattern: type}`` dict
    of strings."""
    if (
        not isinstance(parameter_types, Mapping)
        or not parameter_types
        or not all(
            isinstance(key, str) and isinstance(value, str) and key and value
            for key, value in parameter_types.items()
        )
    ):
        raise ValueError(
            "parameter_types must be a non-empty dict from fnmatch patterns of parameter names "
            f"to type names (non-empty strings), e.g. {{'hidden*': 'hidden', 'output*': "
            f"'output'}}, got {parameter_types!r}"
        )


def check_output_factors(output_factors: object, types: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``output_factors`` maps each of ``types`` to a finite number
    > 0."""
    if (
        not isinstance(output_factors, Mapping)
        or sorted(output_factors) != sorted(types)
        or not all(
            isinstance(factor, int | float) and 0 < factor < math.inf
            for factor in output_factors.values()
        )
    ):
        raise ValueError(
            f"output_factors must map each type of {list(types)} to a finite number > 0, got "
            f"{output_factors!r}"
        )


def parameter_type(name: str, parameter_types: Mapping[str, str]) -> str:
    """The type of the parameter ``name``: the value of the one pattern it matches.

    Raises:
        ValueError: ``name`` matches no pattern, or several.
    """
    matched = [pattern for pattern in parameter_types if fnmatch.fnmatchcase(name, pattern)]
    if len(matched) != 1:
        what = "none" if not matched else f"several ({matched})"
        raise ValueError(
            f"parameter {name!r} must match exactly one pattern of parameter_types "
            f"{dict(parameter_types)}, but it matches {what}"
        )
    return parameter_types[matched[0]]


def type_segments(
    named_sizes: Sequence[tuple[str, int]], parameter_types: Mapping[str, str]
) -> list[tuple[str, slice]]:
    """The concatenation of parameters (``(name, numel)`` in order) cut into runs of one type:
    ``(type, coordinates)`` for each run, adjacent parameters of one type joined."""
    segments: list[tuple[str, slice]] = []
    start = 0
    for name, size in named_sizes:
        kind = parameter_type(name, parameter_types)
        if segments and segments[-1][0] == kind:
            segments[-1] = (kind, slice(segments[-1][1].start, start + size))
        else:
            segments.append((kind, slice(start, start + size)))
        start += size
    return segments


class TypedCoordinateLSTM(PretrainedMixin, nn.Module):
    """One `CoordinateLSTM` per parameter type, each shared by the coordinates of its type.

    ``networks[type]`` is a `CoordinateLSTM` of the same config for each type named in
    ``parameter_types``, in the order of their first appearance. A coordinate's states have the
    same shape whatever its type.

    Args:
        parameter_types: ``{fnmatch pattern: type}``; every parameter's name must match
            exactly one pattern (checked where names are seen).
        hidden_size: Units per LSTM layer of every network.
        num_layers: Stacked LSTM layers of every network.
        preprocess_p: ``p`` of the gradient preprocessing.
        output_scale: Constant factor on every network's output.
    """

    pretrained_method = "l2l"

    def __init__(
        self,
        parameter_types: Mapping[str, str],
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess_p: float = 10.0,
        output_scale: float = 0.1,
    ) -> None:
        check_parameter_types(parameter_types)
        super().__init__()
        self.parameter_types = dict(parameter_types)
        self.networks = nn.ModuleDict(
            {
                kind: CoordinateLSTM(hidden_size, num_layers, preprocess_p, output_scale)
                for kind in dict.fromkeys(self.parameter_types.values())
            }
        )

    @classmethod
    def from_shared(
        cls,
        network: CoordinateLSTM,
        parameter_types: Mapping[str, str],
        output_factors: Mapping[str, float] | None = None,
    ) -> TypedCoordinateLSTM:
        """Every type starts as a copy of ``network``: the same update rule, before training,
        or, with ``output_factors`` (``{type: factor}``), that type's copy's updates multiplied
        by its factor (its linear output's weight and bias are)."""
        typed = cls(parameter_types, **network.pretrained_config())
        if output_factors is not None:
            check_output_factors(output_factors, typed.types)
        for kind in typed.types:
            copy = typed.network(kind)
            copy.load_state_dict(network.state_dict())
            if output_factors is not None:
                with torch.no_grad():
                    copy.head.weight.mul_(output_factors[kind])
                    copy.head.bias.mul_(output_factors[kind])
        return typed.to(network.dtype)

    def pretrained_config(self) -> dict[str, Any]:
        return {**self.first.pretrained_config(), "parameter_types": dict(self.parameter_types)}

    @property
    def types(self) -> list[str]:
        """The type names, one network each."""
        return list(self.networks)

    @property
    def first(self) -> CoordinateLSTM:
        """The first type's network (all share its config)."""
        return next(iter(self.networks.values()))  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.first.dtype

    def network(self, kind: str) -> CoordinateLSTM:
        """The network of type ``kind``."""
        return self.networks[kind]  # type: ignore[return-value]

    def initial_state(
        self,
        num_coordinates: int,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Zero hidden and cell states, each ``(num_layers, hidden_size, num_coordinates)``."""
        return self.first.initial_state(num_coordinates, dtype, device)

    def forward(
        self,
        grad: Tensor,
        hidden: Tensor,
        cell: Tensor,
        named_sizes: Sequence[tuple[str, int]],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`CoordinateLSTM.forward` with each run of coordinates through its type's network.

        ``named_sizes`` lists the ``(name, numel)`` of the parameters whose coordinates
        ``grad`` concatenates, in order.
        """
        steps = [
            self.network(kind)(grad[rows], hidden[:, :, rows], cell[:, :, rows])
            for kind, rows in type_segments(named_sizes, self.parameter_types)
        ]
        update, next_hidden, next_cell = zip(*steps, strict=True)
        return torch.cat(update), torch.cat(next_hidden, dim=2), torch.cat(next_cell, dim=2)


L2LNetwork = CoordinateLSTM | TypedCoordinateLSTM
"""The network ``m`` of an L2L optimizer: shared by all coordinates, or one per type."""


def build_l2l_network(
    pretrained: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    preprocess_p: float | None = None,
    output_scale: float | None = None,
    parameter_types: Mapping[str, str] | None = None,
    output_factors: Mapping[str, float] | None = None,
    seed: int = 0,
) -> L2LNetwork:
    """The network of an L2L optimizer: random, or the pretrained one ``pretrained`` names.

    Shared by all coordinates (a `CoordinateLSTM`, see `build_coordinate_lstm`) unless
    ``parameter_types`` is given or the card has them: then a `TypedCoordinateLSTM`. A shared
    pretrained network with ``parameter_types`` gives each type a copy of it, to fine-tune,
    its output multiplied by the type's ``output_factors`` if given (`from_shared`; only then
    may they be given). ``parameter_types`` given with a typed card replace its patterns, and
    must name the card's types.

    Raises:
        ValueError: A config value is out of range.
        PretrainedError: ``pretrained`` is unknown, fails its checksum, its card disagrees with
            a given value, or names other types.
    """
    check_non_negative_int("seed", seed)
    if parameter_types is not None:
        check_parameter_types(parameter_types)
    card_types = None if pretrained is None else read_card(pretrained).config.get("parameter_types")
    from_shared = card_types is None and pretrained is not None and parameter_types is not None
    if output_factors is not None and not from_shared:
        raise ValueError(
            "output_factors scale the copies of a shared pretrained network that "
            "parameter_types turn into one network per type: give them with such a pretrained "
            f"and parameter_types, or leave them out (got pretrained={pretrained!r}, "
            f"parameter_types={parameter_types!r})"
        )
    if card_types is None and parameter_types is None:
        return build_coordinate_lstm(
            pretrained, hidden_size, num_layers, preprocess_p, output_scale, seed
        )
    if from_shared:
        shared = build_coordinate_lstm(
            pretrained, hidden_size, num_layers, preprocess_p, output_scale, seed
        )
        assert parameter_types is not None
        return TypedCoordinateLSTM.from_shared(shared, parameter_types, output_factors)
    given = checked_config(hidden_size, num_layers, preprocess_p, output_scale)
    if pretrained is None:
        given["parameter_types"] = parameter_types
    typed = build_component(TypedCoordinateLSTM, pretrained, given, PAPER_CONFIG, seed)
    if pretrained is not None and parameter_types is not None:
        if set(parameter_types.values()) != set(typed.types):
            raise PretrainedError(
                f"pretrained {pretrained!r} has one network per type of {typed.types}; "
                f"parameter_types must map patterns to these types, got {dict(parameter_types)}"
            )
        typed.parameter_types = dict(parameter_types)
    return typed
