"""Registry of learned components: list, save and load weights with a card and a checksum.

A component is stored as two files side by side, ``NAME.safetensors`` (the weights) and
``NAME.json`` (its card). Shipped components live in the package folder
``lightning_automl/pretrained/``; any other ``NAME`` stem on disk loads the same way.
Loading never unpickles: weights are read with ``safetensors`` after their sha256 is checked
against the card.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from typing_extensions import Self

from lightning_automl.core.provenance import git_commit

__all__ = [
    "FORMAT_VERSION",
    "SHIPPED_DIR",
    "PretrainedCard",
    "PretrainedError",
    "PretrainedMixin",
    "build_component",
    "list_pretrained",
    "read_card",
    "read_pretrained",
    "write_pretrained",
]

FORMAT_VERSION = 1
"""Version of the card and weights layout that this release writes and the newest it reads."""

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
"""Package folder holding the shipped ``NAME.safetensors`` + ``NAME.json`` pairs."""

CARD_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".safetensors"


class PretrainedError(ValueError):
    """A pretrained component cannot be found, verified or rebuilt."""


@dataclasses.dataclass(frozen=True)
class PretrainedCard:
    """Metadata stored next to a component's weights (``NAME.json``).

    Attributes:
        name: Registry name, e.g. ``"lhopt-adamw"``.
        method: Which method the weights belong to (``"lhopt"``, ``"l2l"``, ...); loading into
            another method's class is refused.
        config: Keyword arguments that rebuild the network: ``cls(**config)``.
        sha256: Hex digest of the weights file; checked on every load.
        format_version: Layout version, at most `FORMAT_VERSION` to be readable.
        feature_spec: What the network reads (feature names, normalisation), if it matters.
        command: The command that trained it, rerunnable from the repository.
        commit: The git commit the command ran at.
        tasks: The tasks (inner problems) it was trained on.
        metrics: Its evaluation metrics.
        description: One line for humans.
    """

    name: str
    method: str
    config: dict[str, Any]
    sha256: str
    format_version: int = FORMAT_VERSION
    feature_spec: dict[str, Any] | None = None
    command: str = ""
    commit: str = ""
    tasks: list[str] = dataclasses.field(default_factory=list)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    description: str = ""

    @classmethod
    def from_json(cls, path: Path) -> PretrainedCard:
        """Read and validate a card file."""
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PretrainedError(f"cannot read pretrained card {path}: {err}") from err
        if not isinstance(data, dict):
            raise PretrainedError(f"pretrained card {path} must hold a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise PretrainedError(
                f"pretrained card {path} has format_version {version!r}; this lightning_automl "
                f"reads format versions up to {FORMAT_VERSION}: upgrade lightning-automl"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if _is_required(f)}
        unknown, missing = sorted(data.keys() - fields), sorted(required - data.keys())
        if unknown or missing:
            raise PretrainedError(
                f"pretrained card {path} is malformed: missing fields {missing}, "
                f"unknown fields {unknown} (allowed: {sorted(fields)})"
            )
        return cls(**data)

    def to_json(self) -> str:
        """The card as the JSON text of ``NAME.json``."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _card_path(stem: Path) -> Path:
    return stem.with_name(stem.name + CARD_SUFFIX)


def _weights_path(stem: Path) -> Path:
    return stem.with_name(stem.name + WEIGHTS_SUFFIX)


def _stem(path: str | os.PathLike[str]) -> Path:
    """``dir/NAME``, ``dir/NAME.json`` and ``dir/NAME.safetensors`` all name ``dir/NAME``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (CARD_SUFFIX, WEIGHTS_SUFFIX) else path


def list_pretrained(pattern: str = "*") -> list[PretrainedCard]:
    """Cards of the shipped components whose name matches ``pattern`` (fnmatch), sorted by name.

    For example ``list_pretrained("lhopt-*")`` lists the shipped LHOPT policies.
    """
    cards = (PretrainedCard.from_json(path) for path in sorted(SHIPPED_DIR.glob("*" + CARD_SUFFIX)))
    return [card for card in cards if fnmatch.fnmatchcase(card.name, pattern)]


def _locate(name_or_path: str | os.PathLike[str]) -> Path:
    """The stem of a shipped name (looked up first) or of a path on disk."""
    text = os.fspath(name_or_path)
    shipped = SHIPPED_DIR / text
    if "/" not in text and os.sep not in text and _card_path(shipped).is_file():
        return shipped
    stem = _stem(text)
    if _card_path(stem).is_file():
        return stem
    known = ", ".join(card.name for card in list_pretrained()) or "none shipped yet"
    raise PretrainedError(
        f"unknown pretrained component {text!r}: it is not a shipped name (known: {known}) "
        f"and there is no card at {_card_path(stem)}"
    )


def read_card(name_or_path: str | os.PathLike[str]) -> PretrainedCard:
    """The card of a shipped name or of a ``NAME`` / ``NAME.json`` / ``NAME.safetensors`` path."""
    return PretrainedCard.from_json(_card_path(_locate(name_or_path)))


def read_pretrained(
    name_or_path: str | os.PathLike[str],
) -> tuple[PretrainedCard, dict[str, torch.Tensor]]:
    """The card and the weights, after checking the weights' sha256 against the card."""
    stem = _locate(name_or_path)
    card = PretrainedCard.from_json(_card_path(stem))
    weights_path = _weights_path(stem)
    try:
        blob = weights_path.read_bytes()
    except OSError as err:
        raise PretrainedError(f"cannot read the weights of {card.name!r}: {err}") from err
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card.sha256:
        raise PretrainedError(
            f"checksum mismatch for {weights_path}: its card records sha256 {card.sha256} but "
            f"the file has {digest}; the weights were changed or corrupted, so they are refused"
        )
    return card, load_safetensors(blob)


def write_pretrained(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    method: str,
    config: Mapping[str, Any],
    name: str | None = None,
    feature_spec: Mapping[str, Any] | None = None,
    command: str = "",
    commit: str | None = None,
    tasks: Sequence[str] = (),
    metrics: Mapping[str, float] | None = None,
    description: str = "",
) -> PretrainedCard:
    """Write ``PATH.safetensors`` and its card ``PATH.json``; return the card.

    ``name`` defaults to the file stem and ``commit`` to the current git commit, if any.
    """
    stem = _stem(path)
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}
    blob = save_safetensors(tensors)
    card = PretrainedCard(
        name=name or stem.name,
        method=method,
        config=dict(config),
        sha256=hashlib.sha256(blob).hexdigest(),
        feature_spec=dict(feature_spec) if feature_spec is not None else None,
        command=command,
        commit=git_commit() if commit is None else commit,
        tasks=list(tasks),
        metrics=dict(metrics or {}),
        description=description,
    )
    try:
        text = card.to_json()
    except TypeError as err:
        raise PretrainedError(
            f"the card of {card.name!r} must be JSON-serialisable (config, feature_spec, "
            f"metrics): {err}"
        ) from err
    stem.parent.mkdir(parents=True, exist_ok=True)
    _weights_path(stem).write_bytes(blob)
    _card_path(stem).write_text(text)
    return card


class PretrainedMixin:
    """Gives an ``nn.Module`` ``save_pretrained`` and ``from_pretrained``.

    A subclass sets ``pretrained_method`` and implements ``pretrained_config()``, the keyword
    arguments that rebuild it.
    """

    pretrained_method: ClassVar[str]

    def pretrained_config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this network with ``type(self)(**config)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement pretrained_config()")

    def save_pretrained(self, path: str | os.PathLike[str], **card_fields: Any) -> PretrainedCard:
        """Save weights and card to ``PATH.safetensors`` / ``PATH.json``.

        ``card_fields`` are the optional arguments of `write_pretrained`.
        """
        return write_pretrained(
            path,
            self.state_dict(),  # type: ignore[attr-defined]
            method=self.pretrained_method,
            config=self.pretrained_config(),
            **card_fields,
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str]) -> Self:
        """Rebuild from a shipped name or a saved path, with verified weights."""
        card, weights = read_pretrained(name_or_path)
        if card.method != cls.pretrained_method:
            raise PretrainedError(
                f"{card.name!r} holds weights of method {card.method!r}; {cls.__name__} loads "
                f"method {cls.pretrained_method!r}"
            )
        module = cls(**card.config)
        module.load_state_dict(weights)  # type: ignore[attr-defined]
        return module


ComponentT = TypeVar("ComponentT", bound=PretrainedMixin)


def build_component(
    cls: type[ComponentT],
    pretrained: str | os.PathLike[str] | None,
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    seed: int,
) -> ComponentT:
    """A fresh ``cls`` seeded with ``seed``, or the pretrained one ``pretrained`` names.

    ``given`` holds the config arguments a user passed (``None``: not passed). Fresh, each one
    left out takes its value from ``defaults``; pretrained, each one passed must equal the
    card's. Fresh weights come from ``seed`` alone (not the global random state), so every DDP
    rank builds the same network.

    Raises:
        PretrainedError: ``pretrained`` is unknown, fails its checksum, holds another method,
            or its card disagrees with a given value.
    """
    config = {key: value for key, value in given.items() if value is not None}
    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(**{**defaults, **config})
    component = cls.from_pretrained(pretrained)
    trained = component.pretrained_config()
    differences = ", ".join(
        f"{key}={trained[key]!r} (given {value!r})"
        for key, value in config.items()
        if trained[key] != value
    )
    if differences:
        raise PretrainedError(
            f"pretrained {cls.__name__} {os.fspath(pretrained)!r} was trained with "
            f"{differences}: leave these arguments out (the card sets them) or pass the card's "
            "values"
        )
    return component
