"""Small argument checks shared by the library: each raises :class:`~volcam.errors.ArgumentError`
(or the error type given) with a message that says what was expected and what was given."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any, TypeVar

from volcam.errors import ArgumentError, VolcamError

__all__ = ["did_you_mean", "positive_int", "non_negative_int", "one_of", "in_range", "boolean", "fraction"]

T = TypeVar("T")


def did_you_mean(name: Any, options: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the closest option, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, name: str, *, error: type[VolcamError] = ArgumentError, allow_none: bool = False) -> Any:
    """``value`` if it is an int >= 1 (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        extra = " or None" if allow_none else ""
        raise _error(error, f"`{name}` must be a positive int{extra}, not {value!r}", name)
    return value


def non_negative_int(value: Any, name: str, *, error: type[VolcamError] = ArgumentError) -> int:
    """``value`` if it is an int >= 0."""
    if not _is_int(value) or value < 0:
        raise _error(error, f"`{name}` must be an int >= 0, not {value!r}", name)
    return value


def one_of(value: T, choices: Iterable[T], name: str, *, error: type[VolcamError] = ArgumentError) -> T:
    """``value`` if it is one of ``choices`` (with a did-you-mean otherwise)."""
    choices = list(choices)
    if value not in choices:
        raise _error(error, f"`{name}` must be one of {choices}, not {value!r}{did_you_mean(value, choices)}", name)
    return value


def in_range(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    error: type[VolcamError] = ArgumentError,
) -> float:
    """``value`` as a float if it is a finite number in the interval (open ends as asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _error(error, f"`{name}` must be a number in {interval}, not {value!r}", name)
    return float(value)


def fraction(value: Any, name: str, *, error: type[VolcamError] = ArgumentError) -> float:
    """``value`` as a float in [0, 1]."""
    return in_range(value, name, 0.0, 1.0, error=error)


def boolean(value: Any, name: str, *, error: type[VolcamError] = ArgumentError) -> bool:
    """``value`` if it is True or False."""
    if not isinstance(value, bool):
        raise _error(error, f"`{name}` must be true or false, not {value!r}", name)
    return value


def _error(error: type[VolcamError], message: str, name: str) -> VolcamError:
    if error is ArgumentError:
        return ArgumentError(message, name=name)
    try:
        return error(message, key=name)  # type: ignore[call-arg]
    except TypeError:
        return error(message)
