"""Argument checks: each error names the argument, its value and what is allowed.

Components call these in ``__init__`` so that a bad configuration fails before any data is read
or any training starts. Plain Python: usable from torch-only code and from the adapters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from numbers import Integral

__all__ = [
    "check_bool",
    "check_less_than",
    "check_non_negative_int",
    "check_number",
    "check_path",
    "check_positive_int",
]


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_non_negative_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def check_less_than(name: str, value: int, limit: int, what: str) -> None:
    """Raise ``ValueError`` unless ``value < limit``; ``what`` says what the limit is."""
    if value >= limit:
        raise ValueError(f"{name} must be less than {limit} ({what}), got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_path(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a non-empty ``str`` or ``os.PathLike`` path."""
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ValueError(f"{name} must be a non-empty path, got {value!r}")


def check_number(name: str, value: object, allowed: str, accept: Callable[[float], bool]) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number (not a bool) that ``accept`` takes.

    ``allowed`` says in words what ``accept`` takes, e.g. ``"a number in (0, 1]"``; NaN fails
    every comparison, so it is refused by any range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not accept(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
