"""HTTP pieces the channels share: the bounded body read, the JSON answers and the sender.

The body limit is enforced while reading: a declared ``Content-Length`` over the limit is refused
before a byte of the body is read, and a body without one (chunked) is read in chunks, counting
bytes, and refused as soon as the count passes the limit. aiohttp's own ``client_max_size`` would
only refuse after buffering, which is what a 100 MB body must not cause.

A refused admission answers 429 (queue full, rate, overload) or 503 (breaker open, shutting down)
with ``Retry-After`` in whole seconds, rounded up (docs/gateway.md).

Outbound, :class:`HttpSender` is what Slack's Web API calls, Telegram's Bot API calls and the
webhook's callbacks go through: one client session per channel, opened on first use and closed
by :meth:`HttpSender.aclose` (after which a call fails instead of opening a session nobody would
close), and one retry loop: a failed attempt is retried after the wait the server asked for
(``Retry-After``; one over ``max_retry_wait`` is not waited: the send fails) or else after a
capped, fully jittered exponential backoff, at most ``retries`` times.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from zeroclaw import wire_json
from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._validate import to_seconds

try:
    import aiohttp
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "zeroclaw's HTTP channels need aiohttp: pip install 'zeroclaw[gateway]'"
    ) from exc

__all__ = [
    "AttemptFailed",
    "BodyTooLarge",
    "BodyTooSlow",
    "CLIENT_TIMEOUT_KEY",
    "GaveUp",
    "HttpAnswer",
    "HttpSender",
    "SenderClosed",
    "backoff_delay",
    "backoff_seconds",
    "channel_path",
    "error_response",
    "read_limited_body",
    "refusal_response",
    "refusal_status",
    "retry_after_header",
]

_T = TypeVar("_T")

_CHUNK = 65536

# Refusal reasons that mean "this gateway cannot take it now, whatever the rate": 503.
_UNAVAILABLE_REASONS = ("circuit open", "shutting down", "not running", "redis unavailable")


class BodyTooLarge(Exception):
    """A request body is larger than the limit; the server answers 413 and closes the connection."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class BodyTooSlow(Exception):
    """The client did not send the whole request body in time (answered 408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")


#: The app key under which the server puts its ``client_timeout``: how long a request body may
#: take to arrive (:func:`read_limited_body` reads it; without it, no limit).
CLIENT_TIMEOUT_KEY = web.AppKey("zeroclaw_client_timeout", float)


async def read_limited_body(request: web.Request, limit: int) -> bytes:
    """Read the request body, refusing it once it passes ``limit`` bytes, or once it has taken
    longer than the server's ``client_timeout`` to arrive (a client sending a byte a second).
    Waits for the body.

    Raises:
        BodyTooLarge: ``Content-Length`` declares more than ``limit``, or the body turns out longer.
        BodyTooSlow: the body did not arrive within the server's ``client_timeout``.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    timeout = request.config_dict.get(CLIENT_TIMEOUT_KEY)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except TimeoutError:
        assert timeout is not None
        raise BodyTooSlow(timeout) from None
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


# ---------------------------------------------------------------------------- options


def channel_path(name: str, path: str | None) -> str:
    """The URL path an HTTP channel is served at: ``path``, else ``/channels/<name>``.

    Raises:
        ValueError: ``name`` is empty, or ``path`` does not start with ``/``.
    """
    if not name:
        raise ValueError("a channel needs a name")
    if path is not None and not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    return path or f"/channels/{name}"


def backoff_seconds(backoff: tuple[float, float], *, what: str) -> tuple[float, float]:
    """A ``(first, longest)`` backoff option as seconds; ``what`` names it in errors.

    Raises:
        TypeError, ValueError: either is not a number of seconds >= 0.
    """
    first, longest = backoff
    return to_seconds(first, what=what), to_seconds(longest, what=what)


# ---------------------------------------------------------------------------- sending


def backoff_delay(attempt: int, first: float, longest: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(longest, first * 2**attempt)]``."""
    return rng.uniform(0.0, min(longest, first * 2.0 ** min(attempt, 32)))


class SenderClosed(aiohttp.ClientConnectionError):
    """A call on an :class:`HttpSender` after its :meth:`~HttpSender.aclose` (a connection error,
    so code that handles those handles this too)."""


class AttemptFailed(Exception):
    """One attempt of a send failed.

    ``problem`` says how (logged with each retry, kept by :class:`GaveUp`); ``retryable``
    whether another attempt may help; ``retry_after`` the seconds the server asked to wait
    (``None``: back off); ``error`` the channel's own exception for it, if it has one.
    """

    def __init__(
        self,
        problem: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        error: Exception | None = None,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retryable = retryable
        self.retry_after = retry_after
        self.error = error


class GaveUp(Exception):
    """A send failed for good after ``attempts`` attempts; ``last`` is the last failure.

    ``too_long`` is true when the server asked for a wait over ``max_retry_wait``.
    """

    def __init__(self, what: str, attempts: int, last: AttemptFailed, *, too_long: bool) -> None:
        super().__init__(f"{what}: gave up after {attempts} attempt(s), last: {last.problem}")
        self.attempts = attempts
        self.last = last
        self.too_long = too_long

    @property
    def problem(self) -> str:
        """How the last attempt failed."""
        return self.last.problem


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP answer, read whole: ``status``, ``body`` and ``headers``."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body as JSON; ``None`` when it is not JSON. Does not block."""
        try:
            return wire_json.loads(self.body)
        except ValueError:
            return None


class HttpSender:
    """The outbound HTTP of one channel: its client session and its retry loop.

    Args:
        label: who sends, for logs and errors (``"slack 'team'"``).
        timeout: the longest one attempt may take, seconds (a call may pass its own).
        retries: retries after the first attempt.
        backoff: first and longest wait between retries (full jitter), seconds.
        max_retry_wait: the longest ``retry_after`` waited; a longer one gives up at once.
        headers: sent with every request.
        rng: randomness of the jitter. clock: what the waits sleep on.
        logger, level: where each retry is logged.

    The numbers are the channel's validated options (the channel names them in its errors).
    """

    def __init__(
        self,
        label: str,
        *,
        timeout: float,
        retries: int,
        backoff: tuple[float, float],
        max_retry_wait: float = math.inf,
        headers: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        logger: logging.Logger | None = None,
        level: int = logging.WARNING,
    ) -> None:
        self.label = label
        self.timeout = timeout
        self.retries = retries
        self.backoff_first, self.backoff_max = backoff
        self.max_retry_wait = max_retry_wait
        self._headers = dict(headers or {})
        self._rng = rng if rng is not None else random.Random()
        self._clock = resolve_clock(clock)
        self._logger = logger if logger is not None else logging.getLogger(__name__)
        self._level = level
        self._session: aiohttp.ClientSession | None = None
        self.closed = False
        self.retried = 0

    def client(self) -> aiohttp.ClientSession:
        """The session, opened on first use. Does not block.

        Raises:
            SenderClosed: after :meth:`aclose`: a call still in flight then must not open a
                session nobody will close (its ResourceWarning would surface anywhere later).
        """
        if self.closed:
            raise SenderClosed(f"{self.label} is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    async def post(
        self,
        url: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        """One POST, its answer read whole (any status), with ``headers`` besides the session's.
        Waits at most ``timeout`` (default: the sender's).

        Raises:
            AttemptFailed: no answer in time or a connection error (retryable), or the sender
                is closed (not retryable).
        """
        limit = self.timeout if timeout is None else timeout
        try:
            async with self.client().post(
                url,
                json=json,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as response:
                body = await response.read()
                return HttpAnswer(response.status, body, response.headers)
        except SenderClosed as exc:
            raise AttemptFailed(str(exc), retryable=False) from None
        except TimeoutError:
            raise AttemptFailed(f"no answer within {limit:g}s") from None
        except aiohttp.ClientError as exc:
            raise AttemptFailed(f"{type(exc).__name__}: {exc}") from None

    async def send(
        self, attempt: Callable[[], Awaitable[_T]], *, what: str, retries: int | None = None
    ) -> _T:
        """Run ``attempt`` until it returns, retrying each :class:`AttemptFailed` that is
        retryable: after its ``retry_after``, else after :func:`backoff_delay`; at most
        ``retries`` times (default: the sender's). ``what`` names the send in logs and errors.

        Waits for the attempts and the waits between them. Other exceptions of ``attempt``
        propagate at once.

        Raises:
            GaveUp: a failure that is not retryable, a ``retry_after`` over
                ``max_retry_wait``, the last retry failed, or the sender was closed meanwhile.
        """
        limit = self.retries if retries is None else retries
        done = 0
        while True:
            try:
                return await attempt()
            except AttemptFailed as failure:
                wait = failure.retry_after
                too_long = wait is not None and wait > self.max_retry_wait
                if not failure.retryable or too_long or done >= limit or self.closed:
                    raise GaveUp(what, done + 1, failure, too_long=too_long) from None
                problem = failure.problem
            if wait is None:
                wait = backoff_delay(done, self.backoff_first, self.backoff_max, self._rng)
            self._logger.log(self._level, "%s: %s; retrying in %.2fs", what, problem, wait)
            done += 1
            self.retried += 1
            if wait > 0:
                await self._clock.sleep(wait)

    async def aclose(self) -> None:
        """Close the session; later calls fail with :class:`SenderClosed`. Idempotent."""
        self.closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        return f"<HttpSender {self.label} retries={self.retries} closed={self.closed}>"
