"""Flow control: a fair concurrency limit, a token-bucket rate limit and an adaptive limit.

* :class:`Backpressure` bounds how many requests run at once. Waiters are served strictly first in,
  first out: a release hands its permits straight to the first waiter, so a newcomer can never
  barge past a queued waiter (CPython gh-90155 and anyio#947 are the bugs this avoids). A waiter
  cancelled at any point, even after it was granted but before it resumed, gives back what it got.
* :class:`RateLimiter` is a token bucket kept as one GCRA timestamp (the "theoretical arrival
  time", as in redis-cell and throttled; see ``research/flow_dedup.md`` A.5.1). Refill is exact
  and fractional, waiters sleep exactly as long as needed behind one timer for all of them (the
  fix of aiolimiter#290, without aiolimiter's smallest-request-first heap), and for every window
  of length ``W`` at most ``burst + rate * W`` tokens are granted.
* :class:`AdaptiveLimiter` moves a concurrency limit towards a latency target and enforces it
  with the same FIFO queue as :class:`Backpressure`; it can be combined with a rate limit.

Like asyncio's own primitives, an instance belongs to one event loop (one thread). Constructors
and the synchronous methods (``try_acquire``, ``release``, ``stats``…) work without a running loop.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType

from zeroclaw.concurrency._clock import Cancellable, Clock, call_later, resolve_clock, to_seconds

__all__ = [
    "AdaptiveLimiter",
    "AdaptiveLimiterStats",
    "AdaptivePermit",
    "Backpressure",
    "BackpressureStats",
    "Permit",
    "RateLimiter",
    "RateLimiterStats",
]

# A waiter in a FIFO queue: its future (result: the grant time) and what it asked for.
_Waiter = tuple["asyncio.Future[float]", float]

# Float slack when comparing times, in seconds. Without it a timer that fires exactly at its
# deadline can find the bucket short by one rounding error and re-arm itself for 0 seconds.
_EPS = 1e-9


def _check_limit(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def _timeout_seconds(timeout: float | timedelta | None) -> float | None:
    return None if timeout is None else to_seconds(timeout, what="timeout")


# --------------------------------------------------------------------------------------------
# Backpressure
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackpressureStats:
    """A snapshot of a :class:`Backpressure`.

    ``active_count`` counts held permits (not requests). ``rejected_count`` counts failed
    ``try_acquire`` calls and acquire timeouts; ``total_count`` counts every attempt.
    ``load_percentage`` is ``active_count / max_concurrent * 100``, capped at 100.
    """

    max_concurrent: int
    available_permits: int
    active_count: int
    waiting_count: int
    rejected_count: int
    total_count: int
    load_percentage: float


class Permit:
    """Permits held from a :class:`Backpressure`; give them back with :meth:`release`.

    Usable as ``with permit:`` and ``async with permit:`` (both release on exit).
    """

    __slots__ = ("_acquired_at", "_owner", "_released_at", "permits")

    def __init__(self, owner: Backpressure, permits: int, acquired_at: float) -> None:
        self._owner = owner
        self.permits = permits
        self._acquired_at = acquired_at
        self._released_at: float | None = None

    def release(self) -> None:
        """Give the permits back; wake the first waiter that now fits. Idempotent, non-blocking."""
        if self._released_at is not None:
            return
        owner = self._owner
        self._released_at = owner._now()
        owner._available += self.permits
        if owner._waiters:
            owner._wake()

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._released_at is not None

    @property
    def held_duration(self) -> float:
        """Seconds the permits have been held (up to the release, once released)."""
        end = self._released_at
        if end is None:
            end = self._owner._now()
        return end - self._acquired_at

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return (
            f"<Permit {self._owner.name!r} permits={self.permits} {state} "
            f"held_duration={self.held_duration:.3f}s>"
        )


class Backpressure:
    """A fair (FIFO, no barging) counting semaphore with timeouts, stats and a resizable limit.

    ``Backpressure(max_concurrent, *, name="backpressure", clock=None)``. ``clock`` is only read
    for :attr:`Permit.held_duration` and drives ``timeout=``.

    Raises:
        TypeError / ValueError: unless ``max_concurrent`` is an int >= 1.
    """

    __slots__ = (
        "_available",
        "_clock",
        "_limit",
        "_now",
        "_rejected",
        "_total",
        "_waiters",
        "name",
    )

    def __init__(
        self, max_concurrent: int, *, name: str = "backpressure", clock: Clock | None = None
    ) -> None:
        self._limit = _check_limit(max_concurrent, "max_concurrent")
        # available = limit - held; negative while a shrunk limit drains.
        self._available = self._limit
        self._clock = resolve_clock(clock)
        self._now: Callable[[], float] = self._clock.now
        self._waiters: deque[_Waiter] = deque()
        self._rejected = 0
        self._total = 0
        self.name = name

    # -- properties ---------------------------------------------------------------------------

    @property
    def max_concurrent(self) -> int:
        """The current limit (see :meth:`set_limit`)."""
        return self._limit

    @property
    def available_permits(self) -> int:
        """Permits free right now (0 while a shrunk limit drains)."""
        return max(0, self._available)

    @property
    def active_count(self) -> int:
        """Permits held right now."""
        return self._limit - self._available

    @property
    def waiting_count(self) -> int:
        """Waiters queued (not counting cancelled or timed-out ones)."""
        return sum(1 for fut, _ in self._waiters if not fut.done())

    # -- acquiring ----------------------------------------------------------------------------

    def try_acquire(self) -> Permit | None:
        """Take one permit now if one is free and nobody waits; otherwise ``None``. Never blocks."""
        self._total += 1
        if self._available >= 1 and (not self._waiters or self._no_live_waiters()):
            self._available -= 1
            return Permit(self, 1, self._now())
        self._rejected += 1
        return None

    async def acquire(self, *, timeout: float | timedelta | None = None) -> Permit:  # noqa: ASYNC109
        """Wait for one permit (FIFO) and return it.

        Blocks until a permit is free and every earlier waiter has been served.

        Raises:
            TimeoutError: when ``timeout`` seconds pass first (nothing is held then).
        """
        self._total += 1
        if self._available >= 1 and not self._waiters:
            self._available -= 1
            return Permit(self, 1, self._now())
        await self._wait(1, timeout)
        return Permit(self, 1, self._now())

    async def acquire_many(self, n: int, *, timeout: float | timedelta | None = None) -> Permit:  # noqa: ASYNC109
        """Wait for ``n`` permits at once (FIFO) and return them as one :class:`Permit`.

        A large request at the head of the queue holds back later small ones (no barging), so it
        cannot starve.

        Raises:
            ValueError: if ``n < 1`` or ``n > max_concurrent`` (also when the limit is later
                shrunk below ``n`` while this call waits).
            TimeoutError: when ``timeout`` seconds pass first.
        """
        _check_limit(n, "n")
        if n > self._limit:
            raise ValueError(
                f"backpressure {self.name!r}: cannot acquire {n} permits, limit is {self._limit}"
            )
        self._total += 1
        if self._available >= n and not self._waiters:
            self._available -= n
            return Permit(self, n, self._now())
        await self._wait(n, timeout)
        return Permit(self, n, self._now())

    async def __aenter__(self) -> None:
        self._total += 1
        if self._available >= 1 and not self._waiters:
            self._available -= 1
            return
        await self._wait(1, None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._available += 1
        if self._waiters:
            self._wake()

    def set_limit(self, max_concurrent: int) -> None:
        """Change the limit now. Never blocks.

        Growing wakes waiters that now fit. Shrinking takes nothing away from holders: new
        acquires wait until enough held permits have been released. Waiters that asked for more
        than the new limit fail with ``ValueError``.
        """
        new = _check_limit(max_concurrent, "max_concurrent")
        self._available += new - self._limit
        self._limit = new
        for fut, n in self._waiters:
            if n > new and not fut.done():
                fut.set_exception(
                    ValueError(
                        f"backpressure {self.name!r}: limit shrunk to {new}, "
                        f"below the {n:g} permits requested"
                    )
                )
        self._wake()

    # -- internals ----------------------------------------------------------------------------

    def _no_live_waiters(self) -> bool:
        waiters = self._waiters
        while waiters and waiters[0][0].done():
            waiters.popleft()
        return not waiters

    def _wake(self) -> None:
        """Grant queued requests, in order, while the head fits."""
        waiters = self._waiters
        while waiters:
            fut, n = waiters[0]
            if fut.done():  # cancelled or timed out; its accounting is done already
                waiters.popleft()
                continue
            if n > self._available:
                return
            waiters.popleft()
            self._available -= int(n)
            fut.set_result(0.0)

    async def _wait(self, n: int, timeout: float | timedelta | None) -> None:  # noqa: ASYNC109
        """Queue for ``n`` permits; return once they are ours (already counted as held)."""
        seconds = _timeout_seconds(timeout)
        if self._no_live_waiters() and self._available >= n:
            self._available -= n
            return
        if seconds is not None and seconds <= 0:
            self._rejected += 1
            raise TimeoutError(f"backpressure {self.name!r}: no permit free (timeout 0)")
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, n))
        timer: Cancellable | None = None
        if seconds is not None:
            timer = call_later(self._clock, seconds, lambda: self._expire(fut, seconds))
        try:
            await fut
        except BaseException:
            if fut.cancelled():
                # Cancelled while queued: we may have been the head holding others back.
                self._wake()
            elif fut.exception() is None:
                # Granted, then cancelled before we resumed: hand the permits on.
                self._available += n
                self._wake()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, fut: asyncio.Future[float], seconds: float) -> None:
        if fut.done():
            return
        self._rejected += 1
        fut.set_exception(
            TimeoutError(f"backpressure {self.name!r}: no permit within {seconds:g}s")
        )
        self._wake()

    def stats(self) -> BackpressureStats:
        """A snapshot of the counters. Never blocks."""
        active = self.active_count
        return BackpressureStats(
            max_concurrent=self._limit,
            available_permits=self.available_permits,
            active_count=active,
            waiting_count=self.waiting_count,
            rejected_count=self._rejected,
            total_count=self._total,
            load_percentage=min(100.0, active * 100.0 / self._limit),
        )

    def __repr__(self) -> str:
        return (
            f"<Backpressure {self.name!r} active={self.active_count}/{self._limit} "
            f"waiting={self.waiting_count}>"
        )


# --------------------------------------------------------------------------------------------
# RateLimiter
# --------------------------------------------------------------------------------------------


def gcra_decide(
    tat: float, now: float, tokens: float, interval: float, tolerance: float
) -> tuple[float, float]:
    """One GCRA decision, a pure function. Returns ``(new_tat, wait)``.

    ``tat`` is the theoretical arrival time (the bucket is full when ``tat <= now``), ``interval``
    the seconds per token, ``tolerance`` ``burst * interval``. The request for ``tokens`` may be
    granted now iff ``wait <= 0`` (the caller then stores ``new_tat``); otherwise ``wait`` is the
    number of seconds until it could be, if nothing else is granted in between.
    """
    new_tat = (tat if tat > now else now) + tokens * interval
    return new_tat, new_tat - tolerance - now


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A snapshot of a :class:`RateLimiter`.

    ``granted_count``/``granted_tokens`` count successful acquisitions and the tokens they took;
    ``rejected_count`` counts failed ``try_acquire`` calls and acquire timeouts;
    ``cancelled_count`` counts acquires cancelled before they returned; ``total_count`` counts every
    attempt (granted + rejected + cancelled + waiting). ``paused_for`` is the seconds left of a :meth:`RateLimiter.pause`.
    """

    rate: float
    burst: float
    available_tokens: float
    waiting_count: int
    granted_count: int
    granted_tokens: float
    rejected_count: int
    cancelled_count: int
    total_count: int
    paused_for: float


class RateLimiter:
    """A token bucket: ``rate`` tokens per second, capacity ``burst``, starts full.

    ``RateLimiter(rate, burst=None, *, clock=None, name="rate_limiter")``; ``burst`` defaults to
    ``max(1, ceil(rate))``. Stored as one GCRA timestamp, so refill is exact and fractional.
    Waiters are served first in, first out (a large weighted request at the head holds back small
    ones, so it cannot starve) and sleep exactly until their tokens are there, behind a single
    timer. For every window of length ``W``, at most ``burst + rate * W`` tokens are granted.

    Raises:
        ValueError: unless ``rate`` and ``burst`` are finite and > 0.
    """

    __slots__ = (
        "_burst",
        "_clock",
        "_granted",
        "_granted_tokens",
        "_interval",
        "_now",
        "_paused_until",
        "_rate",
        "_rejected",
        "_tat",
        "_timer",
        "_timer_at",
        "_tolerance",
        "_cancelled",
        "_waiters",
        "name",
    )

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Clock | None = None,
        name: str = "rate_limiter",
    ) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        if burst is None:
            burst = max(1, math.ceil(rate))
        if not (isinstance(burst, int | float) and math.isfinite(burst) and burst > 0):
            raise ValueError(f"burst must be a finite number > 0, got {burst!r}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._interval = 1.0 / self._rate
        # Slack folded into the tolerance so the hot path makes one comparison.
        self._tolerance = self._burst * self._interval + _EPS
        self._tat = -math.inf
        self._paused_until = -math.inf
        self._clock = resolve_clock(clock)
        self._now: Callable[[], float] = self._clock.now
        self._waiters: deque[_Waiter] = deque()
        self._timer: Cancellable | None = None
        self._timer_at = math.inf
        self._granted = 0
        self._granted_tokens = 0.0
        self._rejected = 0
        # total_count = granted + rejected + cancelled + waiting, so the hot paths count once.
        self._cancelled = 0
        self.name = name

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """Bucket capacity: the most tokens granted at once."""
        return self._burst

    @property
    def available_tokens(self) -> float:
        """Tokens in the bucket now (fractional; 0 during a pause). Never blocks."""
        owed = self._tat - self._now()
        if owed <= 0:
            return self._burst
        return max(0.0, self._burst - owed * self._rate)

    def _check_tokens(self, tokens: float) -> None:
        if not (isinstance(tokens, int | float) and tokens > 0 and math.isfinite(tokens)):
            raise ValueError(f"tokens must be a finite number > 0, got {tokens!r}")

    def _too_big(self, tokens: float) -> ValueError:
        return ValueError(
            f"rate limiter {self.name!r}: {tokens:g} tokens exceed the burst of {self._burst:g}"
        )

    def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` now if the bucket has them and nobody waits. Never blocks.

        Returns ``False`` (and takes nothing) otherwise, including for ``tokens > burst``.

        Raises:
            ValueError: for ``tokens <= 0``.
        """
        # Hot path: no validation up front; ``tokens > burst`` fails the tolerance test anyway.
        if not self._waiters or self._no_live_waiters():
            now = self._now()
            tat = self._tat
            new_tat = (tat if tat > now else now) + tokens * self._interval
            if new_tat - now <= self._tolerance and tokens > 0:
                self._tat = new_tat
                self._granted += 1
                self._granted_tokens += tokens
                return True
        self._check_tokens(tokens)
        self._rejected += 1
        return False

    async def acquire(self, tokens: float = 1, *, timeout: float | timedelta | None = None) -> None:  # noqa: ASYNC109
        """Wait until ``tokens`` can be taken (FIFO), then take them.

        Blocks for exactly as long as the bucket needs to refill (no polling).

        Raises:
            ValueError: for ``tokens <= 0`` or ``tokens > burst`` (it could never be granted).
            TimeoutError: when ``timeout`` seconds pass first (nothing is taken then).
        """
        if not 0 < tokens <= self._burst:
            self._check_tokens(tokens)
            raise self._too_big(tokens)
        if not self._waiters:
            now = self._now()
            tat = self._tat
            new_tat = (tat if tat > now else now) + tokens * self._interval
            if new_tat - now <= self._tolerance:
                self._tat = new_tat
                self._granted += 1
                self._granted_tokens += tokens
                return
        await self._wait(tokens, timeout)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None

    def retry_after(self, tokens: float = 1) -> float:
        """Seconds until ``tokens`` could be granted, after the requests already queued.

        0.0 means now. Never blocks.

        Raises:
            ValueError: for ``tokens <= 0`` or ``tokens > burst``.
        """
        self._check_tokens(tokens)
        if tokens > self._burst:
            raise self._too_big(tokens)
        queued = sum(n for fut, n in self._waiters if not fut.done())
        _, wait = gcra_decide(
            self._tat, self._now(), queued + tokens, self._interval, self._tolerance - _EPS
        )
        return max(0.0, wait)

    def pause(self, seconds: float | timedelta) -> None:
        """Grant nothing for ``seconds`` (a provider's ``Retry-After``). Never blocks.

        When the pause ends the bucket is empty and refills from that moment. A pause never
        shortens an earlier, longer one.
        """
        delay = to_seconds(seconds, what="pause")
        now = self._now()
        self._paused_until = max(self._paused_until, now + delay)
        empty_at = now + delay + self._tolerance - _EPS
        if empty_at > self._tat:
            self._tat = empty_at
        if self._waiters:
            self._drain()

    # -- internals ----------------------------------------------------------------------------

    def _no_live_waiters(self) -> bool:
        waiters = self._waiters
        while waiters and waiters[0][0].done():
            waiters.popleft()
        return not waiters

    async def _wait(self, tokens: float, timeout: float | timedelta | None) -> None:  # noqa: ASYNC109
        seconds = _timeout_seconds(timeout)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, tokens))
        self._drain()
        if fut.done():  # granted at once (the queue ahead was empty or all dead)
            return
        if seconds is not None and seconds <= 0:
            fut.cancel()  # not counted as a cancellation: it is a rejection
            self._rejected += 1
            self._drain()
            raise TimeoutError(f"rate limiter {self.name!r}: {tokens:g} tokens not available now")
        timer: Cancellable | None = None
        if seconds is not None:
            timer = call_later(self._clock, seconds, lambda: self._expire(fut, tokens, seconds))
        try:
            await fut
        except BaseException:
            if fut.cancelled():
                self._cancelled += 1
            elif fut.exception() is None:
                self._give_back(tokens, fut.result())
            self._drain()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _give_back(self, tokens: float, granted_at: float) -> None:
        """Undo a grant whose waiter was cancelled before it resumed.

        The credit shrinks by what the bucket refilled since the grant: the bucket may have
        overflowed in that time without the grant, and crediting the full amount could then break
        ``burst + rate * W``.
        """
        now = self._now()
        credit = tokens - (now - granted_at) * self._rate
        self._granted -= 1
        self._granted_tokens -= tokens
        self._cancelled += 1
        if credit > 0:
            self._tat = max(self._tat - credit * self._interval, now)

    def _expire(self, fut: asyncio.Future[float], tokens: float, seconds: float) -> None:
        if fut.done():
            return
        self._rejected += 1
        fut.set_exception(
            TimeoutError(
                f"rate limiter {self.name!r}: {tokens:g} tokens not available within {seconds:g}s"
            )
        )
        self._drain()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._drain()

    def _drain(self) -> None:
        """Grant queued requests in order while the bucket has their tokens; arm the timer."""
        waiters = self._waiters
        now = self._now()
        while waiters:
            fut, tokens = waiters[0]
            if fut.done():
                waiters.popleft()
                continue
            new_tat, wait = gcra_decide(self._tat, now, tokens, self._interval, self._tolerance)
            if wait > 0:
                self._arm(now, wait)
                return
            waiters.popleft()
            self._tat = new_tat
            self._granted += 1
            self._granted_tokens += tokens
            fut.set_result(now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _arm(self, now: float, wait: float) -> None:
        deadline = now + wait
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first and re-arms for whatever is left
            self._timer.cancel()
        self._timer = call_later(self._clock, wait, self._on_timer)
        self._timer_at = deadline

    def stats(self) -> RateLimiterStats:
        """A snapshot of the counters. Never blocks."""
        waiting = sum(1 for fut, _ in self._waiters if not fut.done())
        return RateLimiterStats(
            rate=self._rate,
            burst=self._burst,
            available_tokens=self.available_tokens,
            waiting_count=waiting,
            granted_count=self._granted,
            granted_tokens=self._granted_tokens,
            rejected_count=self._rejected,
            cancelled_count=self._cancelled,
            total_count=self._granted + self._rejected + self._cancelled + waiting,
            paused_for=max(0.0, self._paused_until - self._now()),
        )

    def __repr__(self) -> str:
        return (
            f"<RateLimiter {self.name!r} rate={self._rate:g}/s burst={self._burst:g} "
            f"available={self.available_tokens:.2f} "
            f"waiting={sum(1 for fut, _ in self._waiters if not fut.done())}>"
        )
