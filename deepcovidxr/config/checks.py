"""The value checks a config field may declare (``option(..., check=...)``): each returns a
complaint, or None when the value is fine; a missing input raises its own error type.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from deepcovidxr.errors import MissingInputError


def exists(path: Path) -> str | None:
    if not Path(path).exists():
        # A missing input is its own error type; the message still names the flag.
        raise MissingInputError(f"{path} does not exist")
    return None


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def at_least(low: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if value >= low else f"must be at least {low}, got {value}"

    return check


def unit_interval(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"must lie in [0, 1], got {value}"


def open_unit_interval(value: float) -> str | None:
    return None if 0.0 < value < 1.0 else f"must lie strictly between 0 and 1, got {value}"
