"""ManagedProvider: retries, a provider-wide rate limit and pause, and an adaptive concurrency limit
around any :class:`~zeroclaw.providers.base.ChatBackend` (DESIGN §4.6).

One call goes::

    RateLimiter (rate, and every Retry-After pause) → AdaptiveLimiter (concurrency) → backend
        ↺ retried on 408, 409, 429, >= 500, connection errors and timeouts, up to max_retries

The backoff before retry ``n`` (0-based) is full jitter over ``[0, min(8, 0.5 * 2**n)]`` seconds
("Exponential Backoff And Jitter", AWS architecture blog: full jitter spreads retries of many
clients best). A ``retry-after-ms``/``retry-after`` header replaces the backoff, up to 60 s, and is
handed to the rate limiter's :meth:`~zeroclaw.concurrency.RateLimiter.pause`: a provider that
says "wait" means every caller, so every call waits, the retrying one included (it waits in the
limiter, like the others). With ``requests_per_second = 0`` the limiter still exists, at a rate no
provider reaches (:data:`PAUSE_ONLY_RATE`), so that it has something to pause.

The adaptive limiter sees each attempt: its latency as the signal, a 429 (not quota), a 503 or a
timeout as a drop (the limit halves); other failures and cancellations tell nothing about load and
are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from zeroclaw.concurrency import AdaptiveLimiter, AdaptiveLimiterStats, RateLimiter
from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._validate import to_count, to_positive_number
from zeroclaw.providers.base import (
    MAX_RETRY_AFTER,
    ChatBackend,
    ChatMessage,
    ErrorClass,
    ErrorCode,
    ProviderError,
)

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "PAUSE_ONLY_RATE",
    "ManagedProvider",
    "ProviderStats",
    "backoff_ceiling",
]

_logger = logging.getLogger(__name__)

#: First backoff ceiling, seconds; doubles per retry.
BACKOFF_BASE = 0.5
#: The backoff ceiling never exceeds this, seconds.
BACKOFF_CAP = 8.0
#: The rate of the limiter kept when ``requests_per_second = 0``: there only to be paused.
PAUSE_ONLY_RATE = 1e6
#: The latency target of the adaptive limiter's default (target-gradient) mode: LLM answers take
#: seconds; above this the limit shrinks.
DEFAULT_TARGET_LATENCY_MS = 10_000.0


def backoff_ceiling(retry: int) -> float:
    """The upper bound of the jittered wait before retry ``retry`` (0-based), a pure function:
    ``min(8, 0.5 * 2**retry)`` seconds."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(retry, 64))


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """A snapshot of a :class:`ManagedProvider`.

    ``calls`` counts calls started; ``successes`` those that returned a reply; ``failures`` those
    that raised after their last attempt, by class in ``errors_by_class``
    (:class:`~zeroclaw.providers.base.ErrorClass` values); ``cancelled`` those cancelled by their
    caller. ``retries`` counts attempts after the first. ``requests_by_status`` counts attempts by
    outcome: the HTTP status as a string (``"200"`` for every success, any backend), else the error
    code (``timeout``, ``connection_error``). ``concurrency_limit`` and ``in_flight`` are the
    adaptive limiter's; ``paused_for`` the seconds left of a ``Retry-After`` pause.
    """

    calls: int
    successes: int
    errors_by_class: Mapping[str, int]
    retries: int
    requests_by_status: Mapping[str, int]
    concurrency_limit: int
    in_flight: int
    failures: int = 0
    cancelled: int = 0
    paused_for: float = 0.0
    limiter: AdaptiveLimiterStats | None = field(default=None, compare=False)


class ManagedProvider:
    """Retries, rate limit, pause and adaptive concurrency around a chat backend.

    ``ManagedProvider(backend, *, max_retries=2, requests_per_second=0.0, max_concurrency=16,
    clock=None, rng=None, target_latency_ms=10000.0, name=None)``. ``clock`` drives the backoff
    sleeps, the rate limiter and the adaptive limiter (pass a
    :class:`~zeroclaw.testing.FakeClock` in tests); ``rng`` (a :class:`random.Random`) draws the
    jitter. Implements the core's ``Provider`` protocol (``chat_with_system``, ``chat``) for
    :class:`~zeroclaw.concurrency.channel_integration.ConcurrentMessageProcessor`.

    Raises:
        TypeError, ValueError: for a bad argument (negative ``max_retries``,
            ``max_concurrency < 1``, a negative or NaN rate).
    """

    __slots__ = (
        "_backend",
        "_by_class",
        "_by_status",
        "_calls",
        "_cancelled",
        "_clock",
        "_failures",
        "_limiter",
        "_rate",
        "_retries",
        "_rng",
        "_successes",
        "max_concurrency",
        "max_retries",
        "name",
        "requests_per_second",
    )

    def __init__(
        self,
        backend: ChatBackend,
        *,
        max_retries: int = 2,
        requests_per_second: float = 0.0,
        max_concurrency: int = 16,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        target_latency_ms: float = DEFAULT_TARGET_LATENCY_MS,
        name: str | None = None,
    ) -> None:
        self._backend = backend
        self.max_retries = to_count(max_retries, what="max_retries")
        self.requests_per_second = to_positive_number(
            requests_per_second, what="requests_per_second", allow_zero=True
        )
        self.max_concurrency = to_count(max_concurrency, what="max_concurrency", minimum=1)
        target = to_positive_number(target_latency_ms, what="target_latency_ms")
        self.name = backend.name if name is None else name
        self._clock = resolve_clock(clock)
        self._rng = random.Random() if rng is None else rng
        rate = self.requests_per_second or PAUSE_ONLY_RATE
        self._rate = RateLimiter(rate, clock=self._clock, name=f"provider {self.name}")
        # TODO(gradient): when AdaptiveLimiter(mode="gradient") lands (branch ``adaptive``), pass
        # mode="gradient" here: it follows the provider's no-load latency instead of a fixed
        # target, which suits LLM latencies that vary with the model and the prompt.
        self._limiter = AdaptiveLimiter(
            self.max_concurrency,
            1,
            self.max_concurrency,
            None,
            target,
            clock=self._clock,
            name=f"provider {self.name}",
        )
        self._calls = 0
        self._successes = 0
        self._failures = 0
        self._cancelled = 0
        self._retries = 0
        self._by_class: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()

    @property
    def backend(self) -> ChatBackend:
        """The wrapped backend."""
        return self._backend

    @property
    def rate_limiter(self) -> RateLimiter:
        """The provider-wide rate limiter (paused by every ``Retry-After``)."""
        return self._rate

    @property
    def limiter(self) -> AdaptiveLimiter:
        """The adaptive concurrency limiter in front of the backend."""
        return self._limiter

    async def complete(
        self, messages: Sequence[ChatMessage], *, model: str, temperature: float
    ) -> str:
        """Return the backend's reply to ``messages``, retrying by the rules of DESIGN §4.6.

        Blocks for the rate limit, a concurrency permit, each attempt and the waits between them.

        Raises:
            ProviderError: the last attempt's error, when it is not retryable or the retries are
                spent (logged as a warning with its status and code).
            Exception: whatever else the backend raises, at once (not retried; counted as
                ``other``).
        """
        self._calls += 1
        retry = 0
        try:
            while True:
                try:
                    reply = await self._attempt(messages, model, temperature)
                except ProviderError as error:
                    if not error.retryable or retry >= self.max_retries:
                        self._fail(error.error_class)
                        _logger.warning(
                            "provider %s: failed after %d attempt(s): status=%s code=%s: %s",
                            self.name,
                            retry + 1,
                            error.status,
                            error.code,
                            error.message,
                        )
                        raise
                    await self._wait_before_retry(retry, error)
                    retry += 1
                    self._retries += 1
                    continue
                except Exception as exc:
                    self._fail(ErrorClass.OTHER)
                    _logger.warning(
                        "provider %s: backend raised %s: %s", self.name, type(exc).__name__, exc
                    )
                    raise
                self._successes += 1
                return reply
        except asyncio.CancelledError:
            self._cancelled += 1
            raise

    async def _attempt(
        self, messages: Sequence[ChatMessage], model: str, temperature: float
    ) -> str:
        await self._rate.acquire()
        permit = await self._limiter.acquire()
        started = self._clock.now()
        try:
            reply = await self._backend.complete(messages, model=model, temperature=temperature)
        except ProviderError as error:
            self._by_status[
                str(error.status) if error.status is not None else _no_status(error)
            ] += 1
            permit.release(dropped=_is_drop(error), ignore=not _is_drop(error))
            raise
        except BaseException:
            # A cancellation or a foreign exception says nothing about the provider's load.
            permit.release(ignore=True)
            raise
        self._by_status["200"] += 1
        permit.release((self._clock.now() - started) * 1000.0)
        return reply

    async def _wait_before_retry(self, retry: int, error: ProviderError) -> None:
        if error.retry_after is not None:
            wait = min(error.retry_after, MAX_RETRY_AFTER)
            # Everyone waits, this call too: it waits in the limiter's acquire on its next attempt.
            self._rate.pause(wait)
            return
        wait = backoff_ceiling(retry) * self._rng.random()
        await self._clock.sleep(wait)

    def _fail(self, error_class: str) -> None:
        self._failures += 1
        self._by_class[error_class] += 1

    async def chat_with_system(
        self, system_prompt: str | None, message: str, model: str, temperature: float
    ) -> str:
        """The core's ``Provider`` call: ``[system?, user]`` through :meth:`complete`."""
        messages = [ChatMessage("user", message)]
        if system_prompt:
            messages.insert(0, ChatMessage("system", system_prompt))
        return await self.complete(messages, model=model, temperature=temperature)

    async def chat(self, message: str, model: str, temperature: float) -> str:
        """The core's ``Provider`` call without a system prompt."""
        return await self.complete(
            [ChatMessage("user", message)], model=model, temperature=temperature
        )

    def stats(self) -> ProviderStats:
        """A snapshot of the counters. Never blocks."""
        limiter = self._limiter.stats()
        return ProviderStats(
            calls=self._calls,
            successes=self._successes,
            errors_by_class=MappingProxyType(dict(self._by_class)),
            retries=self._retries,
            requests_by_status=MappingProxyType(dict(self._by_status)),
            concurrency_limit=limiter.current_limit,
            in_flight=limiter.inflight,
            failures=self._failures,
            cancelled=self._cancelled,
            paused_for=self._rate.stats().paused_for,
            limiter=limiter,
        )

    async def aclose(self) -> None:
        """Close the backend. Idempotent (as the backend's ``aclose`` is)."""
        await self._backend.aclose()

    def __repr__(self) -> str:
        return (
            f"<ManagedProvider {self.name!r} max_retries={self.max_retries} "
            f"limit={self._limiter.current_limit}/{self.max_concurrency} "
            f"rps={self.requests_per_second:g}>"
        )


def _no_status(error: ProviderError) -> str:
    return error.code or ErrorCode.CONNECTION


def _is_drop(error: ProviderError) -> bool:
    """A load signal for the adaptive limiter: 429 (not an exhausted quota), 503, a timeout."""
    return error.error_class in (ErrorClass.RATE_LIMITED, ErrorClass.TIMEOUT) or error.status == 503
