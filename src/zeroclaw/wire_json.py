"""JSON that arrives over the wire, from anyone: parsed with the standard library, refused cleanly.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) on deeply nested input — a body of
100 000 ``[`` is a few hundred kilobytes — and reads ``1e999999`` as infinity, which no JSON
writer can send back. :func:`loads` turns both into ``ValueError`` with a reason, so every
endpoint answers them 400 like any other malformed body, instead of 500 with a traceback in the
log.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["loads"]


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """Parse ``data`` (UTF-8 when bytes). Does not block.

    Raises:
        ValueError: malformed JSON (``json.JSONDecodeError``), invalid UTF-8, nesting deeper
            than the interpreter's recursion allows, a number out of range (``1e999``) or too
            long (over Python's 4 300-digit limit), ``NaN``/``Infinity``.
    """
    try:
        return json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(str(exc)) from None
