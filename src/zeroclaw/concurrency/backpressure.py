"""Flow control: a fair concurrency limit, a token-bucket rate limit and an adaptive limit.

* :class:`Backpressure` bounds how many requests run at once. Waiters are served strictly first in,
  first out: a release hands its permits straight to the first waiter, so a newcomer can never
  barge past a queued waiter (CPython gh-90155 and anyio#947 are the bugs this avoids). A waiter
  cancelled at any point, even after it was granted but before it resumed, gives back what it got.
* :class:`RateLimiter` is a token bucket kept as one GCRA timestamp (the "theoretical arrival
  time", as in brandur/redis-cell and throttled/throttled rate.go). Refill is exact
  and fractional, waiters sleep exactly as long as needed behind one timer for all of them (the
  fix of aiolimiter#290, without aiolimiter's smallest-request-first heap), and for every window
  of length ``W`` at most ``burst + rate * W`` tokens are granted.
* :class:`AdaptiveLimiter` moves a concurrency limit towards a latency target (or, in gradient
  mode, towards a tolerance over the provider's learned no-load latency) and enforces it with
  the same FIFO queue as :class:`Backpressure`; it can be combined with a rate limit.

All three wait in one kind of FIFO queue, :class:`~zeroclaw.concurrency._parking_lot.ParkingLot`
(modelled on trio's), which holds the rules for order, cancellation and timeouts; the classes here
only decide what is free. Every argument goes through :mod:`zeroclaw.concurrency._validate`.

Like asyncio's own primitives, an instance belongs to one event loop (one thread). Constructors
and the synchronous methods (``try_acquire``, ``release``, ``stats``…) work without a running loop.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Final

from zeroclaw.concurrency._clock import Cancellable, Clock, call_later, resolve_clock
from zeroclaw.concurrency._limit_rules import (
    DEFAULT_TOLERANCE,
    DROP_BACKOFF,
    USED_FRACTION,
    Baseline,
    LimitMode,
    next_limit,
)
from zeroclaw.concurrency._mypyc import describe_compiled, mypyc_attr
from zeroclaw.concurrency._parking_lot import ParkingLot
from zeroclaw.concurrency._validate import (
    CountArg,
    NumberArg,
    to_count,
    to_measurement,
    to_positive_number,
    to_seconds,
    to_timeout,
)
from zeroclaw.concurrency.errors import Rejected

__all__ = [
    "AdaptiveLimiter",
    "AdaptiveLimiterStats",
    "AdaptivePermit",
    "Backpressure",
    "BackpressureStats",
    "LimitMode",
    "Permit",
    "RateLimiter",
    "RateLimiterStats",
]

# Float slack when comparing times, in seconds: a request is granted when it would have to wait
# at most this long. Without it a timer that fires exactly at its deadline can find the bucket
# short by one rounding error and re-arm itself for 0 seconds.
_EPS: Final = 1e-9


def _as_tokens(tokens: object) -> float:
    """A token count as a float: any ``int`` or ``float`` (range checks come later, where a
    failure is cheap); TypeError for anything else, a ``bool`` included.

    Written with ``isinstance`` because compiled code turns each into a pointer test (converting
    a ``float | int`` parameter directly costs mypyc several times as much).
    """
    if isinstance(tokens, int) and not isinstance(tokens, bool):
        return float(tokens)
    if isinstance(tokens, float):
        return tokens
    return to_positive_number(tokens, what="tokens")


def _check_limit(value: object, what: str) -> int:
    """A permit count: an ``int`` >= 1 (never a ``bool``); TypeError / ValueError otherwise."""
    return to_count(value, what=what, minimum=1)


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


class _Held:
    """What :class:`Permit` and :class:`AdaptivePermit` share: when the hold began and ended,
    and the give-back, with a :class:`ResourceWarning`, of a permit collected unreleased.

    A subclass sets ``_acquired_at`` and ``_released_at`` in its own ``__init__`` (no
    ``super().__init__()`` call on the acquire path) and says how to read its limiter's clock,
    how to give the permit back and how to name the leak.
    """

    __slots__ = ("_acquired_at", "_released_at")

    _acquired_at: float
    _released_at: float | None

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._released_at is not None

    @property
    def held_duration(self) -> float:
        """Seconds the permit has been held (up to the release, once released)."""
        end = self._released_at
        if end is None:
            end = self._clock_now()
        return end - self._acquired_at

    def _clock_now(self) -> float:
        raise NotImplementedError

    def _give_back_collected(self) -> None:
        raise NotImplementedError

    def _leak_warning(self) -> str:
        raise NotImplementedError

    def __del__(self) -> None:
        # mypyc compiles __del__ into the type's tp_finalize (subclasses inherit it), so both
        # builds run this.
        if self._released_at is None:
            try:
                self._give_back_collected()
            finally:
                warnings.warn(
                    self._leak_warning()
                    + " was garbage-collected without release() and was given back then; "
                    "release it (or use `with permit:`) so that it is not held until the "
                    "collector runs",
                    ResourceWarning,
                    source=self,
                    stacklevel=1,
                )


class Permit(_Held):
    """Permits held from a :class:`Backpressure`; give them back with :meth:`release`.

    Usable as ``with permit:`` and ``async with permit:`` (both release on exit). A permit that
    is garbage-collected unreleased is given back then, with a :class:`ResourceWarning` naming
    its limiter (shown with ``python -X dev`` or ``-W default``): a leak is repaired and said,
    never silent.
    """

    __slots__ = ("_owner", "permits")

    def __init__(self, owner: Backpressure, permits: int, acquired_at: float) -> None:
        self._owner = owner
        self.permits = permits
        self._acquired_at = acquired_at
        self._released_at = None

    def release(self) -> None:
        """Give the permits back; wake the first waiter that now fits. Idempotent, non-blocking."""
        if self._released_at is None:
            owner = self._owner
            self._released_at = owner._now()
            owner._give_back(self.permits)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def _clock_now(self) -> float:
        return self._owner._now()

    def _give_back_collected(self) -> None:
        self.release()

    def _leak_warning(self) -> str:
        return f"backpressure {self._owner.name!r}: a Permit of {self.permits}"

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return (
            f"<Permit {self._owner.name!r} permits={self.permits} {state} "
            f"held_duration={self.held_duration:.3f}s>"
        )


@mypyc_attr(allow_interpreted_subclasses=True)
class Backpressure:
    """A fair (FIFO, no barging) counting semaphore with timeouts, stats and a resizable limit.

    ``Backpressure(max_concurrent, *, name="backpressure", clock=None)``. ``clock`` is only read
    for :attr:`Permit.held_duration` and drives ``timeout=``. Waiters wait in a
    :class:`~zeroclaw.concurrency._parking_lot.ParkingLot`, which holds the FIFO, cancellation and
    timeout rules; this class decides only how many permits are free.

    Raises:
        TypeError / ValueError: unless ``max_concurrent`` is an int >= 1 (not a ``bool``).
    """

    __slots__ = (
        "_available",
        "_clock",
        "_limit",
        "_lot",
        "_now",
        "_rejected",
        "_total",
        "name",
    )

    def __init__(
        self, max_concurrent: CountArg, *, name: str = "backpressure", clock: Clock | None = None
    ) -> None:
        self._limit = _check_limit(max_concurrent, "max_concurrent")
        # available = limit - held; negative while a shrunk limit drains.
        self._available = self._limit
        self._clock = resolve_clock(clock)
        self._now: Callable[[], float] = self._clock.now
        self._lot = ParkingLot()
        self._rejected = 0  # failed try_acquire calls; timeouts are counted by the lot
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
        return self._lot.live_count()

    # -- acquiring ----------------------------------------------------------------------------

    def try_acquire(self) -> Permit | None:
        """Take one permit now if one is free and nobody waits; otherwise ``None``. Never blocks."""
        return Permit(self, 1, self._now()) if self._try_take() else None

    def _try_take(self, refusal: bool = True) -> bool:
        """:meth:`try_acquire` without the :class:`Permit`, for package code that gives the
        permit back with :meth:`_give_back` (the message processor, :class:`AdaptiveLimiter`).

        A success counts as an attempt. A failure counts as an attempt and a refusal only with
        ``refusal=True``: pass ``False`` when a failure is followed by :meth:`acquire` (which
        counts the attempt) or the caller keeps counts of its own. Never blocks.
        """
        lot = self._lot
        if self._available >= 1 and (not lot.waiters or lot.empty()):
            self._available -= 1
            self._total += 1
            return True
        if refusal:
            self._total += 1
            self._rejected += 1
        return False

    def _give_back(self, n: int = 1) -> None:
        """Return ``n`` permits (taken by :meth:`_try_take` or held by a Permit); wake the
        waiters that now fit. Never blocks."""
        self._available += n
        if self._lot.waiters:
            self._grant()

    async def acquire(self, *, timeout: float | timedelta | None = None) -> Permit:
        """Wait for one permit (FIFO) and return it.

        Blocks until a permit is free and every earlier waiter has been served.

        Raises:
            TypeError / ValueError: for a ``timeout`` that is not seconds >= 0 (or a timedelta).
            TimeoutError: when ``timeout`` seconds pass first (nothing is held then).
        """
        seconds = None if timeout is None else to_timeout(timeout)
        self._total += 1
        if self._available >= 1 and not self._lot.waiters:
            self._available -= 1
        else:
            await self._lot.park(self, 1, seconds, self._clock)
        return Permit(self, 1, self._now())

    async def acquire_many(
        self, n: CountArg, *, timeout: float | timedelta | None = None
    ) -> Permit:
        """Wait for ``n`` permits at once (FIFO) and return them as one :class:`Permit`.

        A large request at the head of the queue holds back later small ones (no barging), so it
        cannot starve.

        Raises:
            TypeError: if ``n`` is not an ``int`` (a ``bool`` is not), or ``timeout`` is not
                seconds (or a timedelta).
            ValueError: if ``n < 1`` or ``n > max_concurrent`` (also when the limit is later
                shrunk below ``n`` while this call waits), or ``timeout`` is negative or NaN.
            TimeoutError: when ``timeout`` seconds pass first.
        """
        count = _check_limit(n, "n")
        seconds = to_timeout(timeout)
        if count > self._limit:
            raise ValueError(
                f"backpressure {self.name!r}: cannot acquire {count} permits, limit is "
                f"{self._limit}"
            )
        self._total += 1
        if self._available >= count and not self._lot.waiters:
            self._available -= count
        else:
            await self._lot.park(self, count, seconds, self._clock)
        return Permit(self, count, self._now())

    async def __aenter__(self) -> None:
        self._total += 1
        if self._available >= 1 and not self._lot.waiters:
            self._available -= 1
        else:
            await self._lot.park(self, 1, None, self._clock)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._give_back(1)

    def set_limit(self, max_concurrent: CountArg) -> None:
        """Change the limit now. Never blocks.

        Growing wakes waiters that now fit. Shrinking takes nothing away from holders: new
        acquires wait until enough held permits have been released. Waiters that asked for more
        than the new limit fail with ``ValueError``.

        Raises:
            TypeError / ValueError: unless ``max_concurrent`` is an int >= 1 (not a ``bool``).
        """
        new = _check_limit(max_concurrent, "max_concurrent")
        self._available += new - self._limit
        self._limit = new
        self._lot.fail_over(new, self._shrunk_below)
        self._grant()

    # -- the waiter queue: what the ParkingLot asks of its owner ------------------------------

    async def _wait(self, n: int, seconds: float | None) -> None:
        """Take ``n`` permits, waiting in line if they are not free now; ``seconds`` is the
        validated timeout. Returns once they are ours (already counted as held), for package
        code that counts its own attempts (:class:`AdaptiveLimiter`)."""
        if self._available >= n and not self._lot.waiters:
            self._available -= n
        else:
            await self._lot.park(self, n, seconds, self._clock)

    def _grant(self) -> None:
        """Grant queued requests, in order, while the head fits."""
        if self._available > 0:
            self._available -= int(self._lot.unpark_within(self._available))

    def _undo_grant(self, amount: float, granted_at: float) -> None:
        self._available += int(amount)

    def _timeout_error(self, amount: float, seconds: float) -> TimeoutError:
        if seconds <= 0.0:
            return TimeoutError(f"backpressure {self.name!r}: no permit free (timeout 0)")
        return TimeoutError(f"backpressure {self.name!r}: no permit within {seconds:g}s")

    def _shrunk_below(self, amount: float) -> ValueError:
        return ValueError(
            f"backpressure {self.name!r}: limit shrunk to {self._limit}, "
            f"below the {amount:g} permits requested"
        )

    def stats(self) -> BackpressureStats:
        """A snapshot of the counters. Never blocks."""
        active = self.active_count
        return BackpressureStats(
            max_concurrent=self._limit,
            available_permits=self.available_permits,
            active_count=active,
            waiting_count=self.waiting_count,
            rejected_count=self._rejected + self._lot.timed_out,
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
    """The token-bucket rule (GCRA), a pure function. Returns ``(new_tat, wait)``.

    ``tat`` is the theoretical arrival time (the bucket is full when ``tat <= now``), ``interval``
    the seconds per token, ``tolerance`` ``burst * interval``. The request for ``tokens`` may be
    granted now iff ``wait <= 0`` (the caller then stores ``new_tat``); otherwise ``wait`` is the
    number of seconds until it could be, if nothing else is granted in between.
    :class:`RateLimiter` asks nothing else: ``wait`` for a full burst gives the tokens missing
    from the bucket, and a pause is a full burst taken when it ends.
    """
    new_tat = (tat if tat > now else now) + tokens * interval
    return new_tat, (new_tat - now) - tolerance


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A snapshot of a :class:`RateLimiter`.

    ``granted_count``/``granted_tokens`` count successful acquisitions and the tokens they took;
    ``rejected_count`` counts failed ``try_acquire`` calls and acquire timeouts;
    ``cancelled_count`` counts acquires cancelled before they returned; ``total_count`` counts every
    attempt (granted + rejected + cancelled + waiting). ``paused_for`` is the seconds left of a
    :meth:`RateLimiter.pause`.
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


@mypyc_attr(allow_interpreted_subclasses=True)
class RateLimiter:
    """A token bucket: ``rate`` tokens per second, capacity ``burst``, starts full.

    ``RateLimiter(rate, burst=None, *, clock=None, name="rate_limiter")``; ``burst`` defaults to
    ``max(1, ceil(rate))``. Stored as one GCRA timestamp, so refill is exact and fractional; every
    decision is :func:`gcra_decide`. Waiters are served first in, first out from a
    :class:`~zeroclaw.concurrency._parking_lot.ParkingLot` (a large weighted request at the head
    holds back small ones, so it cannot starve) and sleep exactly until their tokens are there,
    behind a single timer. For every window of length ``W``, at most ``burst + rate * W`` tokens
    are granted.

    Raises:
        TypeError: unless ``rate`` and ``burst`` are numbers (a ``bool`` is not).
        ValueError: unless they are finite and > 0, with ``1 / rate`` and ``burst / rate``
            finite (``RateLimiter(1e-309)`` would otherwise never refill, or never limit).
    """

    __slots__ = (
        "_burst",
        "_clock",
        "_extra_tokens",
        "_granted",
        "_interval",
        "_lot",
        "_now",
        "_paused_until",
        "_rate",
        "_rejected",
        "_tat",
        "_timer",
        "_timer_at",
        "_tolerance",
        "name",
    )

    def __init__(
        self,
        rate: NumberArg,
        burst: NumberArg | None = None,
        *,
        clock: Clock | None = None,
        name: str = "rate_limiter",
    ) -> None:
        self._rate = to_positive_number(rate, what="rate")
        self._burst = to_positive_number(
            max(1, math.ceil(self._rate)) if burst is None else burst, what="burst"
        )
        self._interval = 1.0 / self._rate
        self._tolerance = self._burst * self._interval
        if not math.isfinite(self._tolerance):
            raise ValueError(
                f"burst / rate must be finite, got burst={self._burst!r}, rate={self._rate!r}"
            )
        self._tat = -math.inf
        self._paused_until = -math.inf
        self._clock = resolve_clock(clock)
        self._now: Callable[[], float] = self._clock.now
        self._lot = ParkingLot()
        self._timer: Cancellable | None = None
        self._timer_at = math.inf
        self._granted = 0
        # granted_tokens = _granted + _extra_tokens: a grant of one token (the usual) adds no float.
        self._extra_tokens = 0.0
        self._rejected = 0  # failed try_acquire calls; timeouts are counted by the lot
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
        # The wait for a full burst, in tokens, is what the bucket lacks.
        _, wait = gcra_decide(self._tat, self._now(), self._burst, self._interval, self._tolerance)
        if wait <= _EPS:
            return self._burst
        return max(0.0, self._burst - wait * self._rate)

    def _check_tokens(self, tokens: object) -> float:
        """``tokens`` as a float > 0, or TypeError (not a number, or a ``bool``) / ValueError."""
        return to_positive_number(tokens, what="tokens")

    def _too_big(self, tokens: float) -> ValueError:
        return ValueError(
            f"rate limiter {self.name!r}: {tokens:g} tokens exceed the burst of {self._burst:g}"
        )

    def try_acquire(self, tokens: NumberArg = 1) -> bool:
        """Take ``tokens`` now if the bucket has them and nobody waits. Never blocks.

        Returns ``False`` (and takes nothing) otherwise, including for ``tokens > burst``.

        Raises:
            TypeError: for ``tokens`` that is not a number (a ``bool`` is not).
            ValueError: for ``tokens <= 0`` or not finite.
        """
        amount = _as_tokens(tokens)
        lot = self._lot
        if not lot.waiters or lot.empty():
            now = self._now()
            new_tat, wait = gcra_decide(self._tat, now, amount, self._interval, self._tolerance)
            if wait <= _EPS and amount > 0.0:
                self._take(new_tat, amount)
                return True
        self._check_tokens(amount)  # a refusal, unless the request itself is invalid
        self._rejected += 1
        return False

    async def acquire(
        self, tokens: NumberArg = 1, *, timeout: float | timedelta | None = None
    ) -> None:
        """Wait until ``tokens`` can be taken (FIFO), then take them.

        Blocks for exactly as long as the bucket needs to refill (no polling).

        Raises:
            TypeError: for ``tokens`` that is not a number (a ``bool`` is not), or a
                ``timeout`` that is not seconds (or a timedelta).
            ValueError: for ``tokens <= 0`` or ``tokens > burst`` (it could never be granted),
                or a negative or NaN ``timeout``.
            TimeoutError: when ``timeout`` seconds pass first (nothing is taken then).
        """
        amount = _as_tokens(tokens)
        seconds = None if timeout is None else to_timeout(timeout)
        if not 0.0 < amount <= self._burst:
            self._check_tokens(amount)
            raise self._too_big(amount)
        if not self._lot.waiters:
            now = self._now()
            new_tat, wait = gcra_decide(self._tat, now, amount, self._interval, self._tolerance)
            if wait <= _EPS:
                self._take(new_tat, amount)
                return
        await self._lot.park(self, amount, seconds, self._clock)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None

    def retry_after(self, tokens: NumberArg = 1) -> float:
        """Seconds until ``tokens`` could be granted, after the requests already queued.

        0.0 means now. Never blocks.

        Raises:
            TypeError: for ``tokens`` that is not a number (a ``bool`` is not).
            ValueError: for ``tokens <= 0`` or ``tokens > burst``.
        """
        amount = _as_tokens(tokens)
        if amount > self._burst:
            raise self._too_big(amount)
        _, wait = gcra_decide(
            self._tat,
            self._now(),
            self._lot.live_amount() + amount,
            self._interval,
            self._tolerance,
        )
        return max(0.0, wait)

    def pause(self, seconds: float | timedelta) -> None:
        """Grant nothing for ``seconds`` (a provider's ``Retry-After``). Never blocks.

        When the pause ends the bucket is empty and refills from that moment. A pause never
        shortens an earlier, longer one.

        Raises:
            TypeError: unless ``seconds`` is a number of seconds or a timedelta.
            ValueError: for a negative, NaN or infinite ``seconds``.
        """
        delay = to_seconds(seconds, what="pause", allow_infinite=False)
        end = self._now() + delay
        self._paused_until = max(self._paused_until, end)
        # An empty bucket at the end of the pause: the state after a full burst taken then.
        empty_at, _ = gcra_decide(end, end, self._burst, self._interval, self._tolerance)
        if empty_at > self._tat:
            self._tat = empty_at
        if self._lot.waiters:
            self._grant()

    # -- the waiter queue: what the ParkingLot asks of its owner ------------------------------

    def _take(self, new_tat: float, tokens: float) -> None:
        """Record a grant that :func:`gcra_decide` allowed."""
        self._tat = new_tat
        self._granted += 1
        if tokens != 1.0:
            self._extra_tokens += tokens - 1.0

    def _grant(self) -> None:
        """Grant queued requests in order while the bucket has their tokens; arm the timer."""
        lot = self._lot
        now = self._now()
        head = lot.first()
        while head is not None:
            tokens = head[1]
            new_tat, wait = gcra_decide(self._tat, now, tokens, self._interval, self._tolerance)
            if wait > _EPS:
                # Armed half the slack early: when it fires the grant passes despite rounding,
                # and a timer that fires on time never finds the bucket short and re-arms for ~0.
                self._arm(now, wait - _EPS / 2)
                return
            self._take(new_tat, tokens)
            lot.unpark_first(now)
            head = lot.first()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _undo_grant(self, amount: float, granted_at: float) -> None:
        """Take back a grant whose waiter was cancelled before it resumed.

        The credit shrinks by what the bucket refilled since the grant: the bucket may have
        overflowed in that time without the grant, and crediting the full amount could then break
        ``burst + rate * W``.
        """
        now = self._now()
        credit = amount - (now - granted_at) * self._rate
        self._granted -= 1
        self._extra_tokens -= amount - 1.0
        if credit > 0:
            self._tat = max(self._tat - credit * self._interval, now)

    def _timeout_error(self, amount: float, seconds: float) -> TimeoutError:
        if seconds <= 0.0:
            return TimeoutError(f"rate limiter {self.name!r}: {amount:g} tokens not available now")
        return TimeoutError(
            f"rate limiter {self.name!r}: {amount:g} tokens not available within {seconds:g}s"
        )

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._grant()

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
        lot = self._lot
        waiting = lot.live_count()
        rejected = self._rejected + lot.timed_out
        return RateLimiterStats(
            rate=self._rate,
            burst=self._burst,
            available_tokens=self.available_tokens,
            waiting_count=waiting,
            granted_count=self._granted,
            granted_tokens=self._granted + self._extra_tokens,
            rejected_count=rejected,
            cancelled_count=lot.cancelled,
            total_count=self._granted + rejected + lot.cancelled + waiting,
            paused_for=max(0.0, self._paused_until - self._now()),
        )

    def __repr__(self) -> str:
        return (
            f"<RateLimiter {self.name!r} rate={self._rate:g}/s burst={self._burst:g} "
            f"available={self.available_tokens:.2f} waiting={self._lot.live_count()}>"
        )


# --------------------------------------------------------------------------------------------
# AdaptiveLimiter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdaptiveLimiterStats:
    """A snapshot of an :class:`AdaptiveLimiter`.

    ``current_limit`` is the enforced concurrency limit. ``samples`` counts latency samples that
    were used; ``ignored_samples`` those that were not (cancellations, ``ignore=True``, and
    permits granted before the last change of the limit); ``drops`` counts drops that shrank the
    limit. ``last_window_latency_ms`` is the mean of the last complete window (``None`` before
    the first). ``rejected_count`` counts failed ``try_acquire`` calls and acquire timeouts;
    ``total_count`` every attempt. ``rate_limiter`` holds the optional rate limit's stats.
    ``mode`` is the rule in use; ``baseline_latency_ms`` the no-load latency gradient mode has
    learned (``None`` in target mode and before the first window); ``aimed_latency_ms`` the
    latency the last window was steered to (the target, or ``max(tolerance x baseline,
    target)``; ``None`` before the first window).
    """

    current_limit: int
    min_limit: int
    max_limit: int
    target_latency_ms: float | None
    inflight: int
    waiting_count: int
    samples: int
    ignored_samples: int
    drops: int
    increases: int
    decreases: int
    last_window_latency_ms: float | None
    rejected_count: int
    total_count: int
    rate_limiter: RateLimiterStats | None
    mode: LimitMode
    baseline_latency_ms: float | None
    aimed_latency_ms: float | None


class AdaptivePermit(_Held):
    """One request admitted by an :class:`AdaptiveLimiter`; :meth:`release` reports its outcome.

    ``with``/``async with permit:`` release on exit and classify the outcome like
    ``async with limiter:`` does. A permit that is garbage-collected unreleased is given back
    then, without a latency sample, and with a :class:`ResourceWarning` naming its limiter (as
    :class:`Permit` does).
    """

    __slots__ = ("_generation", "_limiter")

    def __init__(self, limiter: AdaptiveLimiter, generation: int, started_at: float) -> None:
        self._limiter = limiter
        self._generation = generation
        self._acquired_at = started_at
        self._released_at = None

    def release(
        self, latency_ms: NumberArg | None = None, *, dropped: bool = False, ignore: bool = False
    ) -> None:
        """Give the permit back and report the outcome. Idempotent; never blocks.

        ``latency_ms=None`` measures the time since the grant on the limiter's clock.
        ``dropped=True`` reports an overload signal (429, 503, a timeout): the limit shrinks at
        once. ``ignore=True`` reports nothing (use it for cancellations and for errors that say
        nothing about load).

        Raises:
            ValueError: for a NaN, infinite or negative ``latency_ms``; the permit is given back
                all the same, without a sample.
            TypeError: for a ``latency_ms`` that is not a number (``bool`` included).
        """
        if latency_ms is not None:
            try:
                latency_ms = _latency_ms(latency_ms)
            except ValueError:
                if self._released_at is None:
                    self._limiter._finish(self, None, False, True)
                raise
        if self._released_at is None:
            self._limiter._finish(self, latency_ms, dropped, ignore)

    def __enter__(self) -> AdaptivePermit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self._limiter._finish_with(self, exc)

    async def __aenter__(self) -> AdaptivePermit:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self._limiter._finish_with(self, exc)

    def _clock_now(self) -> float:
        return self._limiter._now()

    def _give_back_collected(self) -> None:
        # A sample from a leaked permit would be its lifetime until the collector ran.
        self._limiter._finish(self, None, False, True)

    def _leak_warning(self) -> str:
        return f"adaptive limiter {self._limiter.name!r}: an AdaptivePermit"

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return (
            f"<AdaptivePermit {self._limiter.name!r} {state} "
            f"held_duration={self.held_duration:.3f}s generation={self._generation}>"
        )


def _default_is_drop(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | Rejected)


def _limit_mode(mode: object) -> LimitMode:
    if isinstance(mode, LimitMode):
        return mode
    if not isinstance(mode, str):
        raise TypeError(f"mode must be 'target' or 'gradient', not {type(mode).__name__}")
    try:
        return LimitMode(mode)
    except ValueError:
        raise ValueError(f"mode must be 'target' or 'gradient', got {mode!r}") from None


def _target_ms(target_latency_ms: object, mode: LimitMode) -> float | None:
    if target_latency_ms is None:
        if mode is LimitMode.GRADIENT:
            return None
        raise ValueError("target_latency_ms=None needs mode='gradient' (target mode steers to it)")
    return to_positive_number(target_latency_ms, what="target_latency_ms")


def _tolerance(tolerance: object) -> float:
    number = to_positive_number(tolerance, what="tolerance")
    if not number > 1.0:
        raise ValueError(f"tolerance must be > 1, got {tolerance!r}")
    return number


def _latency_ms(latency_ms: object) -> float:
    return to_measurement(latency_ms, what="latency_ms")


@mypyc_attr(allow_interpreted_subclasses=True)
class AdaptiveLimiter:
    """A concurrency limit that follows latency, optionally combined with a rate limit.

    ``AdaptiveLimiter(initial, min_limit, max_limit, rate_per_sec, target_latency_ms, *,
    clock=None, name="adaptive_limiter", window_size=20, burst=None, is_drop=None,
    mode="target", tolerance=1.5)``.

    The limit it computes is the limit it enforces: admission goes through a FIFO
    :class:`Backpressure` whose limit is set to ``current_limit`` after every change (a shrink
    lets held permits drain). With ``rate_per_sec`` it also takes one token per request from a
    :class:`RateLimiter` (``burst`` defaults to ``max(1, ceil(rate))``), after the concurrency
    permit, so a refused request never spends a token.

    The rule (a gradient controller, AIMD-like on drops; the decisions are the pure functions of
    ``zeroclaw.concurrency._limit_rules``):

    * Latency samples are averaged over windows of ``window_size`` samples. Nothing changes
      before a window is complete.
    * ``gradient = aim / window_mean``, clamped to [0.5, 2]. Above the aim the limit shrinks by
      the gradient (multiplicatively, at most halving per window); below it the limit grows by
      the gradient, but only while the limit is actually used (at least 3/4 of it was in flight
      during the window, or a request had to wait).
    * What ``aim`` is depends on ``mode``:

      - ``"target"`` (the default): ``target_latency_ms``, the latency the caller accepts.
      - ``"gradient"``: ``tolerance`` times the provider's no-load latency as learned from the
        windows (Netflix Gradient2's comparison of the short window with a long-term latency,
        and Vegas's no-load minimum; research: flow_dedup.md), and never below
        ``target_latency_ms`` when one is given (``None`` is allowed: no floor). The baseline
        is replaced by a window run with fewer requests in flight than it was measured with,
        averaged with a window at the same load, and only *lowered* by busier windows (when
        three in a row were all faster): latency that rises with our own load is queueing,
        latency that is high at any load (an LLM writing long answers) is the baseline. So a
        provider slow at any load keeps its limit (it grows to ``max_limit`` when used), and
        one that queues beyond C settles near ``tolerance x C``.

    * A drop (``dropped=True``, or a ``TimeoutError``/``Rejected`` from the body of ``async
      with``) halves the limit at once, so a run of drops brings it to ``min_limit`` within a few
      round trips. A drop is never a latency sample (its latency says nothing about the
      provider's: Netflix/concurrency-limits#176).
    * After every change the window restarts, and samples and drops from permits granted before
      the change are ignored (Envoy's rule, envoy#11579): they describe the old limit. It also
      means a burst of simultaneous 503s halves the limit once per round trip, not once per 503.
    * Cancellations are not samples (Netflix/concurrency-limits#146); nor are other exceptions.

    Why two modes: a stated target needs no probing and cannot drift, but collapses the limit to
    ``min_limit`` when the provider's latency at no load is already above it; the gradient mode
    needs no target but must learn its baseline (start with a low ``initial``: the first window
    is the first no-load measurement). By Little's law, for a provider that serves C requests at
    base latency B and queues beyond C, the latency at limit L > C is about ``B * L / C``: the
    fixed point of ``L * aim / latency`` is ``L = C * aim / B`` (``tolerance x C`` in gradient
    mode) and the gradient steers there multiplicatively from either side. Drops use TCP's
    halving because a 429/503 says "too much" without saying by how much. The window and the
    generation filter come from Netflix's WindowedLimit and Envoy's gradient controller.

    Raises:
        ValueError: unless ``1 <= min_limit <= initial <= max_limit``, ``target_latency_ms`` is
            a finite number > 0 (or ``None`` in gradient mode), ``rate_per_sec`` is ``None`` or
            > 0, ``mode`` is ``"target"`` or ``"gradient"`` and ``tolerance > 1``.
        TypeError: for arguments of the wrong type.
    """

    __slots__ = (
        "_aimed",
        "_baseline",
        "_bp",
        "_clock",
        "_decreases",
        "_drops",
        "_entered",
        "_generation",
        "_ignored",
        "_increases",
        "_inflight",
        "_is_drop",
        "_last_window",
        "_limit",
        "_max",
        "_min",
        "_mode",
        "_now",
        "_rate",
        "_rejected",
        "_samples",
        "_target",
        "_tolerance",
        "_total",
        "_window_count",
        "_window_peak",
        "_window_saturated",
        "_window_size",
        "_window_sum",
        "name",
    )

    def __init__(
        self,
        initial: CountArg,
        min_limit: CountArg,
        max_limit: CountArg,
        rate_per_sec: NumberArg | None,
        target_latency_ms: NumberArg | None,
        *,
        clock: Clock | None = None,
        name: str = "adaptive_limiter",
        window_size: CountArg = 20,
        burst: NumberArg | None = None,
        is_drop: Callable[[BaseException], bool] | None = None,
        mode: LimitMode | str = LimitMode.TARGET,
        tolerance: NumberArg = DEFAULT_TOLERANCE,
    ) -> None:
        for value, what in (
            (initial, "initial"),
            (min_limit, "min_limit"),
            (max_limit, "max_limit"),
        ):
            _check_limit(value, what)
        if not min_limit <= initial <= max_limit:
            raise ValueError(
                "need 1 <= min_limit <= initial <= max_limit, got "
                f"min_limit={min_limit}, initial={initial}, max_limit={max_limit}"
            )
        self._mode = _limit_mode(mode)
        self._target = _target_ms(target_latency_ms, self._mode)
        self._tolerance = _tolerance(tolerance)
        _check_limit(window_size, "window_size")
        self.name = name
        self._clock = resolve_clock(clock)
        self._now: Callable[[], float] = self._clock.now
        self._bp = Backpressure(initial, name=name, clock=self._clock)
        self._rate = (
            None
            if rate_per_sec is None
            else RateLimiter(rate_per_sec, burst, clock=self._clock, name=name)
        )
        self._min = min_limit
        self._max = max_limit
        self._window_size = window_size
        self._is_drop = _default_is_drop if is_drop is None else is_drop
        self._limit = float(initial)
        self._generation = 0
        self._inflight = 0
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = 0
        self._window_saturated = False
        self._last_window: float | None = None
        self._baseline: Baseline | None = None
        self._aimed: float | None = None
        self._samples = 0
        self._ignored = 0
        self._drops = 0
        self._increases = 0
        self._decreases = 0
        self._rejected = 0
        self._total = 0
        # Permits taken by ``async with limiter:``, per task (an exit must find its own entry).
        self._entered: dict[object, list[AdaptivePermit]] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def current_limit(self) -> int:
        """The concurrency limit enforced right now."""
        return self._bp.max_concurrent

    @property
    def inflight(self) -> int:
        """Permits granted and not yet released."""
        return self._inflight

    # -- acquiring ----------------------------------------------------------------------------

    def try_acquire(self) -> AdaptivePermit | None:
        """Admit one request now if the limit (and the rate) allow it; otherwise ``None``.

        Never blocks. A refusal by the concurrency limit spends no rate token.
        """
        self._total += 1
        bp = self._bp
        if not bp._try_take(False):
            self._window_saturated = True
            self._rejected += 1
            return None
        if self._rate is not None and not self._rate.try_acquire():
            bp._give_back(1)
            self._rejected += 1
            return None
        return self._grant()

    async def acquire(self, *, timeout: float | timedelta | None = None) -> AdaptivePermit:
        """Wait (FIFO) for a concurrency permit, then for a rate token, and return the permit.

        Raises:
            TypeError / ValueError: for a ``timeout`` that is not seconds >= 0 (or a timedelta).
            TimeoutError: when ``timeout`` seconds pass first (nothing is held then).
        """
        self._total += 1
        if self._rate is None and timeout is None and self._bp._try_take(False):
            return self._grant()  # the common uncontended case
        return await self._acquire_slow(to_timeout(timeout))

    async def _acquire_slow(self, seconds: float | None) -> AdaptivePermit:
        bp = self._bp
        start = self._now()
        if not bp._try_take(False):
            self._window_saturated = True
            try:
                await bp._wait(1, seconds)
            except TimeoutError:
                self._rejected += 1
                raise
        if self._rate is not None:
            try:
                left = None if seconds is None else max(0.0, seconds - (self._now() - start))
                await self._rate.acquire(1, timeout=left)
            except BaseException as exc:
                bp._give_back(1)
                if isinstance(exc, TimeoutError):
                    self._rejected += 1
                raise
        return self._grant()

    async def __aenter__(self) -> AdaptivePermit:
        permit = await self.acquire()
        task = asyncio.current_task()
        stack = self._entered.get(task)
        if stack is None:
            self._entered[task] = [permit]
        else:
            stack.append(permit)
        return permit

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        task = asyncio.current_task()
        stack = self._entered[task]
        permit = stack.pop()
        if not stack:
            del self._entered[task]
        if exc is None:
            if permit._released_at is None:
                self._finish(permit, None, False, False)
        else:
            self._finish_with(permit, exc)

    def report_latency(self, latency_ms: NumberArg) -> None:
        """Feed a latency sample not tied to a permit (counts for the current limit).

        Raises:
            TypeError, ValueError: unless ``latency_ms`` is a finite number >= 0.
        """
        self._sample(_latency_ms(latency_ms))

    def set_target_latency(self, target_latency_ms: NumberArg | None) -> None:
        """Change the latency target (gradient mode: the floor; ``None`` removes it) from the
        next window on.

        Raises:
            TypeError, ValueError: unless a finite number > 0 (or ``None`` in gradient mode).
        """
        self._target = _target_ms(target_latency_ms, self._mode)

    # -- internals ----------------------------------------------------------------------------

    def _grant(self) -> AdaptivePermit:
        """Wrap one concurrency permit (already taken from ``_bp``) and count it in flight."""
        inflight = self._inflight = self._inflight + 1
        if inflight > self._window_peak:
            self._window_peak = inflight
        return AdaptivePermit(self, self._generation, self._now())

    def _finish_with(self, permit: AdaptivePermit, exc: BaseException | None) -> None:
        if permit.released:
            return
        if exc is None:
            self._finish(permit, None, False, False)
        elif isinstance(exc, asyncio.CancelledError):
            self._finish(permit, None, False, True)
        else:
            dropped = self._is_drop(exc)
            self._finish(permit, None, dropped, not dropped)

    def _finish(
        self, permit: AdaptivePermit, latency_ms: float | None, dropped: bool, ignore: bool
    ) -> None:
        now = permit._released_at = self._now()
        if latency_ms is None:
            latency_ms = (now - permit._acquired_at) * 1000.0
        self._inflight -= 1
        if ignore or permit._generation != self._generation:
            self._ignored += 1
        elif dropped:
            self._drops += 1
            self._set(self._limit * DROP_BACKOFF)
        else:
            self._sample(latency_ms)
        # The slot goes back only after the decision: handed to a waiter first, it would run
        # over a limit this release just lowered, stamped with the new generation.
        self._bp._give_back(1)

    def _sample(self, latency_ms: float) -> None:
        self._samples += 1
        self._window_sum += latency_ms
        self._window_count += 1
        if self._window_count < self._window_size:
            return
        mean = self._window_sum / self._window_count
        self._last_window = mean
        enforced = self._bp.max_concurrent
        peak = self._window_peak
        used = self._window_saturated or peak >= USED_FRACTION * enforced
        new, self._baseline, self._aimed = next_limit(
            self._mode,
            self._limit,
            self._baseline,
            mean,
            peak,
            used,
            self._target,
            self._tolerance,
            self._min,
            self._max,
        )
        if new != self._limit:
            self._set(new)
        else:
            self._reset_window()

    def _set(self, new: float) -> None:
        new = min(float(self._max), max(float(self._min), new))
        if new < self._limit:
            self._decreases += 1
        elif new > self._limit:
            self._increases += 1
        self._limit = new
        self._generation += 1
        self._reset_window()
        enforced = int(new + 1e-9)
        if enforced != self._bp.max_concurrent:
            self._bp.set_limit(enforced)

    def _reset_window(self) -> None:
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = self._inflight
        self._window_saturated = False

    def stats(self) -> AdaptiveLimiterStats:
        """A snapshot of the counters. Never blocks."""
        return AdaptiveLimiterStats(
            current_limit=self._bp.max_concurrent,
            min_limit=self._min,
            max_limit=self._max,
            target_latency_ms=self._target,
            inflight=self._inflight,
            waiting_count=self._bp.waiting_count,
            samples=self._samples,
            ignored_samples=self._ignored,
            drops=self._drops,
            increases=self._increases,
            decreases=self._decreases,
            last_window_latency_ms=self._last_window,
            rejected_count=self._rejected,
            total_count=self._total,
            rate_limiter=None if self._rate is None else self._rate.stats(),
            mode=self._mode,
            baseline_latency_ms=None if self._baseline is None else self._baseline.latency_ms,
            aimed_latency_ms=self._aimed,
        )

    def __repr__(self) -> str:
        rate = "" if self._rate is None else f" rate={self._rate.rate:g}/s"
        target = self._target
        if self._mode is LimitMode.TARGET:
            aim = f"target={target:g}ms" if target is not None else "target=?"
        else:
            base = "?" if self._baseline is None else f"{self._baseline.latency_ms:.4g}ms"
            aim = f"gradient baseline={base} tolerance={self._tolerance:g}"
            if target is not None:
                aim += f" floor={target:g}ms"
        return (
            f"<AdaptiveLimiter {self.name!r} limit={self.current_limit} "
            f"[{self._min}..{self._max}] inflight={self._inflight} {aim}{rate}>"
        )


describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
