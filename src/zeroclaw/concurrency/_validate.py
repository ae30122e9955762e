"""Argument checks every primitive shares: one rule per kind of value, one wording per error.

Each check returns the value converted to the type the primitive keeps (``float`` seconds, ``int``
counts) or raises at once: ``TypeError`` for a value of the wrong type (``bool`` is never a number
here, although Python lets it pass for one), ``ValueError`` for a value of the right type outside
its range (NaN, infinities where they mean nothing, negatives, rates so small their inverse
overflows). This module is plain Python in both builds, so the compiled and the interpreted
package refuse the same arguments with the same messages.
"""

from __future__ import annotations

import math
import operator
from datetime import timedelta
from typing import TypeAlias

__all__ = [
    "CountArg",
    "NumberArg",
    "to_count",
    "to_fraction",
    "to_measurement",
    "to_positive_number",
    "to_seconds",
    "to_timeout",
]

# Parameter annotations for compiled modules. To a type checker ``CountArg`` is exactly ``int``
# and ``NumberArg`` exactly ``float`` (``bool`` is an ``int``, an ``int`` passes for a ``float``).
# To mypyc a union is an object: a parameter declared plain ``int`` or ``float`` is converted to
# a C number on entry, which turns ``True`` into ``1`` before a check here could refuse it.
CountArg: TypeAlias = "int | bool"
NumberArg: TypeAlias = "float | int"


def _real(value: object, what: str, expected: str) -> float:
    """``value`` as a float if it is an ``int`` or ``float`` (never a ``bool``), else TypeError."""
    if value.__class__ is float or value.__class__ is int:
        return float(value)  # type: ignore[arg-type, unused-ignore]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be {expected}, not {type(value).__name__}")


def to_seconds(
    value: float | timedelta, *, what: str = "duration", allow_infinite: bool = True
) -> float:
    """Convert seconds (``int``/``float``) or a :class:`~datetime.timedelta` to ``float`` seconds.

    Raises:
        TypeError: for any other type (``bool`` and ``str`` included).
        ValueError: for a negative or NaN duration, or an infinite one when ``allow_infinite`` is
            false (pass it where infinity means nothing: a TTL, a latency target).
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        seconds = _real(value, what, "seconds (float) or a timedelta")
    if not seconds >= 0.0:  # also catches NaN
        raise ValueError(f"{what} must be >= 0 seconds, got {value!r}")
    if seconds == math.inf and not allow_infinite:
        raise ValueError(f"{what} must be finite, got {value!r}")
    return seconds


def to_timeout(value: float | timedelta | None, *, what: str = "timeout") -> float | None:
    """A blocking call's ``timeout=``: ``None`` (wait as long as it takes) or seconds >= 0.

    ``math.inf`` is accepted and means ``None``.

    Raises:
        TypeError, ValueError: as :func:`to_seconds`.
    """
    if value is None:
        return None
    seconds = to_seconds(value, what=what)
    return None if seconds == math.inf else seconds


def to_count(value: object, *, what: str, minimum: int = 0) -> int:
    """An integer (an ``int``, or anything with ``__index__`` such as a numpy integer; never a
    ``bool``) of at least ``minimum``, as an ``int``.

    Compiled code converts ``True`` to ``1`` at a parameter annotated ``int`` before any check can
    see it, so compiled modules annotate such parameters ``SupportsIndex`` (which mypyc passes as
    the object itself) and call this.

    Raises:
        TypeError: not an integer, or a ``bool``.
        ValueError: below ``minimum``.
    """
    if value.__class__ is int:
        number: int = value
    elif isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    else:
        number = operator.index(value)  # type: ignore[arg-type]
    if number < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return number


def to_positive_number(value: object, *, what: str, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with ``allow_zero``) whose inverse is finite too.

    The inverse matters for rates: ``1 / 1e-309`` overflows to infinity, which a token bucket
    would read as "never refill" or "no limit" depending on where it is used.

    Raises:
        TypeError: not an ``int``/``float``, or a ``bool``.
        ValueError: NaN, infinite, out of range, or too small to invert.
    """
    number = _real(value, what, "a number")
    if not math.isfinite(number) or number < 0.0 or (number == 0.0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {bound}, got {value!r}")
    if number != 0.0 and not math.isfinite(1.0 / number):
        raise ValueError(f"{what} is too small to use (1/{value!r} overflows), got {value!r}")
    return number


def to_fraction(
    value: object, *, what: str, low: float = 0.0, high: float = 1.0, low_open: bool = False
) -> float:
    """A real number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    Raises:
        TypeError: not an ``int``/``float``, or a ``bool``.
        ValueError: NaN or out of range.
    """
    number = _real(value, what, "a number")
    inside = (low < number if low_open else low <= number) and number <= high
    if not inside:  # also catches NaN
        bracket = "(" if low_open else "["
        raise ValueError(f"{what} must be in {bracket}{low}, {high}], got {value!r}")
    return number


def to_measurement(value: object, *, what: str) -> float:
    """A measured quantity (a latency, a duration in ms): a finite real number >= 0.

    Unlike :func:`to_positive_number`, zero and the tiniest values are fine: nothing divides by
    a measurement.

    Raises:
        TypeError: not an ``int``/``float``, or a ``bool``.
        ValueError: NaN, infinite or negative.
    """
    number = _real(value, what, "a number")
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return number
