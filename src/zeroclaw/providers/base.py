"""What every chat backend speaks: :class:`ChatMessage`, :class:`ProviderError`, the protocol.

A backend turns a list of messages into one reply and nothing more: no retries, no rate limit, no
concurrency limit. :class:`zeroclaw.providers.managed.ManagedProvider` adds those around any
backend. The retry rule of docs/providers.md lives here (:func:`is_retryable`), so a backend
marks its errors and the wrapper decides by the same rule.
"""

from __future__ import annotations

import email.utils
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "MAX_RETRY_AFTER",
    "ChatBackend",
    "ChatMessage",
    "ErrorClass",
    "ErrorCode",
    "ProviderError",
    "Role",
    "is_retryable",
    "last_user_text",
    "parse_retry_after",
]

Role = Literal["system", "user", "assistant"]
_ROLES = frozenset(("system", "user", "assistant"))

#: The longest ``Retry-After`` honoured, in seconds; a longer one is cut to this.
MAX_RETRY_AFTER = 60.0

#: HTTP statuses that are retried (with 5xx), unless the body says the quota is exhausted.
_RETRYABLE_STATUSES = frozenset((408, 409, 429))


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation, as the OpenAI chat-completions API has it.

    Raises:
        ValueError: for a ``role`` other than ``system``, ``user`` or ``assistant``.
        TypeError: when ``content`` is not a ``str``.
    """

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"role must be one of system, user, assistant; got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"content must be a str, not {type(self.content).__name__}")


class ErrorCode(enum.StrEnum):
    """Codes a backend gives errors that carry no code of the provider's own."""

    TIMEOUT = "timeout"  #: no complete answer within the request timeout
    CONNECTION = "connection_error"  #: refused, reset, or the body cut short
    INVALID_RESPONSE = "invalid_response"  #: a 2xx that is not a chat completion
    INSUFFICIENT_QUOTA = "insufficient_quota"  #: OpenAI's code for an exhausted quota (429)
    SERVICE_UNAVAILABLE = "service_unavailable"  #: the simulated backend's 503


class ErrorClass(enum.StrEnum):
    """The class a failure is counted under in ``ProviderStats.errors_by_class``."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    RATE_LIMITED = "rate_limited"  #: 429
    QUOTA = "quota"  #: 429 insufficient_quota
    AUTH = "auth"  #: 401, 403
    BAD_REQUEST = "bad_request"  #: any other 4xx
    SERVER = "server"  #: 5xx
    INVALID_RESPONSE = "invalid_response"
    OTHER = "other"  #: a backend raised something other than ProviderError


def is_retryable(status: int | None, code: str | None) -> bool:
    """The retry rule of docs/providers.md, a pure function.

    Retried: 408, 409, 429, every status >= 500, and failures with no status (connection errors,
    timeouts) except an invalid response. Not retried: 429 with ``insufficient_quota`` (waiting
    does not refill a quota), every other status (400, 401, 403, 404...).
    """
    if status is None:
        return code != ErrorCode.INVALID_RESPONSE
    if code == ErrorCode.INSUFFICIENT_QUOTA:
        return False
    return status in _RETRYABLE_STATUSES or status >= 500


class ProviderError(Exception):
    """A chat backend could not produce a reply.

    ``status`` is the HTTP status (``None`` when no response arrived: connection error, timeout);
    ``code`` the provider's error code (OpenAI's ``error.code``, else ``error.type``) or an
    :class:`ErrorCode`; ``message`` a human-readable reason; ``retryable`` whether the same request
    may succeed later (:func:`is_retryable` when not given); ``retry_after`` the seconds the
    provider asked to wait (``Retry-After``), if it said.
    """

    def __init__(
        self,
        status: int | None,
        code: str | None,
        message: str,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = None if code is None else str(code)  # a plain str, also for an ErrorCode
        self.message = message
        self.retryable = is_retryable(status, code) if retryable is None else retryable
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[ProviderError], tuple[object, ...]]:
        # Exception pickles only ``args``; this keeps every field (a result crossing processes).
        return (
            type(self),
            (self.status, self.code, self.message, self.retryable, self.retry_after),
        )

    @property
    def error_class(self) -> ErrorClass:
        """The class this failure is counted under (a pure function of status and code)."""
        status, code = self.status, self.code
        if status is None:
            if code == ErrorCode.TIMEOUT:
                return ErrorClass.TIMEOUT
            if code == ErrorCode.INVALID_RESPONSE:
                return ErrorClass.INVALID_RESPONSE
            return ErrorClass.CONNECTION
        if 200 <= status < 300:
            return ErrorClass.INVALID_RESPONSE
        if status == 429:
            return (
                ErrorClass.QUOTA
                if code == ErrorCode.INSUFFICIENT_QUOTA
                else ErrorClass.RATE_LIMITED
            )
        if status in (401, 403):
            return ErrorClass.AUTH
        if status == 408:
            return ErrorClass.TIMEOUT
        if status >= 500:
            return ErrorClass.SERVER
        return ErrorClass.BAD_REQUEST

    def __str__(self) -> str:
        status = "no response" if self.status is None else f"HTTP {self.status}"
        code = f" ({self.code})" if self.code else ""
        return f"{status}{code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ProviderError(status={self.status!r}, code={self.code!r}, message={self.message!r}, "
            f"retryable={self.retryable!r}, retry_after={self.retry_after!r})"
        )


class ChatBackend(Protocol):
    """A chat-completions backend: messages in, one reply out, no retries of its own."""

    @property
    def name(self) -> str:
        """The backend's name (``openai``, ``echo``, ``simulated``), used in logs and stats."""
        ...

    async def complete(
        self, messages: Sequence[ChatMessage], *, model: str, temperature: float
    ) -> str:
        """Return the assistant's reply to ``messages``.

        Blocks for one request. Raises :class:`ProviderError` for every failure of the backend.
        """
        ...

    async def aclose(self) -> None:
        """Release the backend's resources (connections). Idempotent."""
        ...


def last_user_text(messages: Sequence[ChatMessage]) -> str:
    """The content of the last ``user`` message.

    Raises:
        ValueError: when there is none.
    """
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    raise ValueError("messages contain no user message")


def parse_retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """Seconds to wait from a response's headers, a pure function; ``None`` when they do not say.

    ``retry-after-ms`` (milliseconds, OpenAI's) wins over ``retry-after`` (seconds, or an HTTP
    date compared with ``wall_now``, Unix seconds). Negative, unparsable or non-finite values are
    ignored. The result is not capped; the caller applies :data:`MAX_RETRY_AFTER`.
    ``headers`` must look keys up case-insensitively (aiohttp's headers do).
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = headers.get("retry-after")
    if text is None:
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # RFC 9110 dates are GMT; one without a zone is not one
        return max(0.0, when.timestamp() - wall_now)
    if math.isfinite(value) and value >= 0:
        return value
    return None
