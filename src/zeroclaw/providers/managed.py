"""ManagedProvider: retries, a provider-wide rate limit and pause, and an adaptive concurrency limit
around any :class:`~zeroclaw.providers.base.ChatBackend` (docs/providers.md).

Each attempt of a call goes::

    AdaptiveLimiter (concurrency) → RateLimiter (rate, and every Retry-After pause) → backend
        ↺ retried on 408, 409, 429, >= 500, connection errors and timeouts, up to max_retries

The concurrency permit comes first and the rate token right before the request, as inside the
core's ``AdaptiveLimiter``: a token taken while queueing for a permit would let the queued calls
burst past the rate when permits free up.

Which answers are retried, ``max_retries=2`` and the 0.5 s x 2^n backoff capped at 8 s mirror the
official OpenAI SDK's policy (research: processing.md). The backoff before retry ``n`` (0-based)
is full jitter over ``[0, min(8, 0.5 * 2**n)]`` seconds (tenacity's ``wait_random_exponential``,
research: resilience.md): it spreads the retries of many callers best.

A ``retry-after-ms``/``retry-after`` header on a retryable answer replaces the backoff, cut to
60 s, and is handed to the rate limiter's :meth:`~zeroclaw.concurrency.RateLimiter.pause`: a
provider that says "wait" means every caller, so every call waits, the retrying one included (it
waits in the limiter, like the others), and also when the call that got it has no retry left
(the global pause of PTB's AIORateLimiter and discord.py, research: processing.md). When the
pause ends the bucket is empty and refills at the configured rate (the limiter's rule). With
``requests_per_second = 0`` the limiter still exists, at a rate no provider reaches
(:data:`PAUSE_ONLY_RATE`, burst as large): it limits nothing and is there to be paused.

Scale-out: with ``shared_rate_limit`` (a :class:`SharedRateLimit`, e.g. the Redis-backed
:class:`~zeroclaw.backends.redis.rate_limit.RedisRateLimiter`) each attempt also takes a token of
the limit shared by every process, right before the request and after the local one, and every
``Retry-After`` pause is also given to it: a 429 seen by one process pauses all of them.

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
from typing import Protocol

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
    "SharedRateLimit",
    "backoff_ceiling",
]

_logger = logging.getLogger(__name__)

#: First backoff ceiling, seconds; doubles per retry.
BACKOFF_BASE = 0.5
#: The backoff ceiling never exceeds this, seconds.
BACKOFF_CAP = 8.0
#: The rate of the limiter kept when ``requests_per_second = 0``: there only to be paused.
PAUSE_ONLY_RATE = 1e6
#: The adaptive limiter's first limit in gradient mode (at most ``max_concurrency``): its first
#: window is its first measurement of the provider's no-load latency, so it starts low and grows
#: (doubling per window at most) while the latency stays near that baseline.
GRADIENT_INITIAL_LIMIT = 4
#: The latency target of ``limiter_mode="target"`` when none is given: LLM answers take seconds;
#: above this the limit shrinks.
DEFAULT_TARGET_LATENCY_MS = 10_000.0


def backoff_ceiling(retry: int) -> float:
    """The upper bound of the jittered wait before retry ``retry`` (0-based), a pure function:
    ``min(8, 0.5 * 2**retry)`` seconds."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(retry, 64))


class SharedRateLimit(Protocol):
    """A rate limit shared with other processes (``shared_rate_limit=`` of
    :class:`ManagedProvider`): :class:`~zeroclaw.backends.redis.rate_limit.RedisRateLimiter`
    is one."""

    async def acquire(self, tokens: float = 1) -> None:
        """Wait until ``tokens`` are granted."""
        ...

    async def pause(self, seconds: float) -> None:
        """Grant nothing, in any process, for ``seconds``."""
        ...

    async def paused_for(self) -> float:
        """Seconds left of the shared pause."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """A snapshot of a :class:`ManagedProvider`.

    ``calls`` counts calls started; ``successes`` those that returned a reply; ``failures`` those
    that raised after their last attempt, by class in ``errors_by_class``
    (:class:`~zeroclaw.providers.base.ErrorClass` values); ``cancelled`` those cancelled by their
    caller. ``retries`` counts attempts after the first. ``requests_by_status`` counts attempts by
    outcome: the HTTP status as a string (``"200"`` for every success, any backend), else the error
    code (``timeout``, ``connection_error``). ``concurrency_limit`` is the adaptive limiter's
    current limit; ``in_flight`` counts attempts at the backend now (not those waiting for a
    permit or a token); ``paused_for`` is the seconds left of a ``Retry-After`` pause;
    ``limiter`` the adaptive limiter's own stats. The mappings are plain ``dict`` copies (a
    snapshot, ready for ``json.dumps``).
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
    clock=None, rng=None, limiter_mode="gradient", target_latency_ms=None, name=None,
    limiter_window=20, shared_rate_limit=None)``.

    ``shared_rate_limit``: a :class:`SharedRateLimit` every attempt also takes a token from
    (after the local limiter, right before the request) and every ``Retry-After`` pauses too;
    ``None`` (the default): the limits are this process's alone.

    The adaptive limiter runs in ``limiter_mode``: ``"gradient"`` (the default) starts at
    ``min(4, max_concurrency)`` and steers to 1.5 x the provider's learned no-load latency
    (``target_latency_ms``, if given, is a floor: the limit never shrinks for a latency below
    it); ``"target"`` starts at ``max_concurrency`` and steers to ``target_latency_ms`` (default
    10 s). Either way the limit stays in ``[1, max_concurrency]`` and a drop halves it; it is
    judged on windows of ``limiter_window`` latency samples (the limiter's ``window_size``).

    ``clock`` drives the backoff sleeps, the rate limiter and the adaptive limiter (pass a
    :class:`~zeroclaw.testing.FakeClock` in tests); ``rng`` (a :class:`random.Random`) draws the
    jitter. Implements the core's ``Provider`` protocol (``chat_with_system``, ``chat``) for
    :class:`~zeroclaw.concurrency.channel_integration.ConcurrentMessageProcessor`.

    Raises:
        TypeError, ValueError: for a bad argument (negative ``max_retries``,
            ``max_concurrency < 1``, ``limiter_window < 1``, a negative or NaN rate, a
            ``limiter_mode`` other than
            ``"gradient"`` or ``"target"``).
    """

    __slots__ = (
        "_backend",
        "_by_class",
        "_by_status",
        "_calls",
        "_cancelled",
        "_clock",
        "_failures",
        "_in_flight",
        "_limiter",
        "_rate",
        "_retries",
        "_rng",
        "_shared",
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
        limiter_mode: str = "gradient",
        target_latency_ms: float | None = None,
        name: str | None = None,
        limiter_window: int = 20,
        shared_rate_limit: SharedRateLimit | None = None,
    ) -> None:
        self._backend = backend
        self._shared = shared_rate_limit
        self.max_retries = to_count(max_retries, what="max_retries")
        self.requests_per_second = to_positive_number(
            requests_per_second, what="requests_per_second", allow_zero=True
        )
        self.max_concurrency = to_count(max_concurrency, what="max_concurrency", minimum=1)
        target = (
            None
            if target_latency_ms is None
            else to_positive_number(target_latency_ms, what="target_latency_ms")
        )
        if limiter_mode == "target":
            initial = self.max_concurrency
            if target is None:
                target = DEFAULT_TARGET_LATENCY_MS
        else:
            initial = min(GRADIENT_INITIAL_LIMIT, self.max_concurrency)
        self.name = backend.name if name is None else name
        self._clock = resolve_clock(clock)
        self._rng = random.Random() if rng is None else rng
        rate = self.requests_per_second or PAUSE_ONLY_RATE
        self._rate = RateLimiter(rate, clock=self._clock, name=f"provider {self.name}")
        # Gradient mode (Netflix Gradient2's idea, research: flow_dedup.md): it steers to
        # ``tolerance`` x the provider's learned no-load latency, so an LLM slow at any load (long
        # answers, a big model) keeps its limit, where an absolute target would collapse it to 1.
        self._limiter = AdaptiveLimiter(
            initial,
            1,
            self.max_concurrency,
            None,
            target,
            clock=self._clock,
            name=f"provider {self.name}",
            mode=limiter_mode,
            window_size=limiter_window,
        )
        self._calls = 0
        self._successes = 0
        self._failures = 0
        self._cancelled = 0
        self._retries = 0
        self._in_flight = 0
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
    def shared_rate_limit(self) -> SharedRateLimit | None:
        """The rate limit shared with other processes, if one was given."""
        return self._shared

    @property
    def limiter(self) -> AdaptiveLimiter:
        """The adaptive concurrency limiter in front of the backend."""
        return self._limiter

    async def complete(
        self, messages: Sequence[ChatMessage], *, model: str, temperature: float
    ) -> str:
        """Return the backend's reply to ``messages``, retrying by the rules of docs/providers.md.

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
        # The permit first, then the token, right before the request: a token taken while
        # queueing for a permit would let queued calls burst past the rate once permits free up.
        permit = await self._limiter.acquire()
        try:
            await self._rate.acquire()
            if self._shared is not None:
                await self._shared.acquire(1)
        except BaseException:
            permit.release(ignore=True)
            raise
        self._in_flight += 1
        started = self._clock.now()
        try:
            reply = await self._backend.complete(messages, model=model, temperature=temperature)
        except ProviderError as error:
            self._by_status[
                str(error.status) if error.status is not None else _no_status(error)
            ] += 1
            dropped = _is_drop(error)
            permit.release(dropped=dropped, ignore=not dropped)
            if error.retry_after is not None and error.retryable:
                # The provider said when to come back: every call waits that long (in the
                # limiter), whether or not this one retries.
                pause = min(error.retry_after, MAX_RETRY_AFTER)
                self._rate.pause(pause)
                if self._shared is not None:
                    await self._pause_shared(pause)
            raise
        except BaseException:
            # A cancellation or a foreign exception says nothing about the provider's load.
            permit.release(ignore=True)
            raise
        finally:
            self._in_flight -= 1
        self._by_status["200"] += 1
        permit.release((self._clock.now() - started) * 1000.0)
        return reply

    async def _pause_shared(self, seconds: float) -> None:
        """Pass a ``Retry-After`` on to the shared limit; a failure there is logged, never put
        in place of the provider's error (the local pause holds this process all the same)."""
        assert self._shared is not None
        try:
            await self._shared.pause(seconds)
        except Exception as exc:
            _logger.warning(
                "provider %s: the shared rate limit could not be paused for %gs: %s: %s",
                self.name,
                seconds,
                type(exc).__name__,
                exc,
            )

    async def _wait_before_retry(self, retry: int, error: ProviderError) -> None:
        if error.retry_after is not None:
            return  # the limiter is paused for it: the next attempt's acquire waits
        await self._clock.sleep(backoff_ceiling(retry) * self._rng.random())

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
            errors_by_class=dict(self._by_class),
            retries=self._retries,
            requests_by_status=dict(self._by_status),
            concurrency_limit=limiter.current_limit,
            in_flight=self._in_flight,
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
