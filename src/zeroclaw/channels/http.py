"""HTTP pieces every webhook-based channel uses: the bounded body read and the JSON answers.

The body limit is enforced while reading: a declared ``Content-Length`` over the limit is refused
before a byte of the body is read, and a body without one (chunked) is read in chunks, counting
bytes, and refused as soon as the count passes the limit. aiohttp's own ``client_max_size`` would
only refuse after buffering, which is what a 100 MB body must not cause.

A refused admission answers 429 (queue full, rate, overload) or 503 (breaker open, shutting down)
with ``Retry-After`` in whole seconds, rounded up (docs/gateway.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "zeroclaw's HTTP channels need aiohttp: pip install 'zeroclaw[gateway]'"
    ) from exc

__all__ = [
    "BodyTooLarge",
    "error_response",
    "read_limited_body",
    "refusal_response",
    "refusal_status",
    "retry_after_header",
]

_CHUNK = 65536

# Refusal reasons that mean "this gateway cannot take it now, whatever the rate": 503.
_UNAVAILABLE_REASONS = ("circuit open", "shutting down", "not running")


class BodyTooLarge(Exception):
    """A request body is larger than the limit; the server answers 413 and closes the connection."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


async def read_limited_body(request: web.Request, limit: int) -> bytes:
    """Read the request body, refusing it once it passes ``limit`` bytes. Waits for the body.

    Raises:
        BodyTooLarge: ``Content-Length`` declares more than ``limit``, or the body turns out longer.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(
    status: int, error: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON ``{"error": error}`` answer with ``status``. Does not block."""
    return web.json_response({"error": error}, status=status, headers=headers)


def refusal_status(reason: str | None) -> int:
    """503 for a breaker open or a gateway shutting down, 429 for every other refusal."""
    if reason is not None and any(word in reason for word in _UNAVAILABLE_REASONS):
        return 503
    return 429


def retry_after_header(retry_after: float | None) -> dict[str, str]:
    """``{"Retry-After": whole seconds, rounded up, at least 1}``; 1 when the wait is unknown."""
    seconds = 1
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        seconds = max(1, math.ceil(retry_after))
    return {"Retry-After": str(seconds)}


def refusal_response(reason: str | None, retry_after: float | None, **extra: Any) -> web.Response:
    """The answer to a refused admission: 429/503 ``{"status": "rejected", "reason"}``."""
    body = {**extra, "status": "rejected", "reason": reason or "refused"}
    return web.json_response(
        body, status=refusal_status(reason), headers=retry_after_header(retry_after)
    )
