"""RateLimiter: GCRA token bucket, exact sleeping, one timer, FIFO, pause, the window invariant."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeroclaw.concurrency._clock import Cancellable
from zeroclaw.concurrency.backpressure import RateLimiter, RateLimiterStats, gcra_decide
from zeroclaw.testing import FakeClock, settle


class CountingClock(FakeClock):
    """A FakeClock that counts the timers armed on it (to prove there is no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:  # type: ignore[override]
        self.armed += 1
        return super().call_later(delay, callback)


def test_constructor_defaults_and_validation() -> None:
    limiter = RateLimiter(2.5)
    assert limiter.burst == 3  # max(1, ceil(rate))
    assert RateLimiter(0.1).burst == 1
    assert limiter.available_tokens == 3  # starts full
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            RateLimiter(bad)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1, 0)


def test_gcra_decide_is_pure() -> None:
    # full bucket (tat in the past), burst 2 at 1 token/s: two now, the third in 1 s
    tat, wait = gcra_decide(-1.0, 10.0, 1, 1.0, 2.0)
    assert (tat, wait) == (11.0, -1.0)
    tat, wait = gcra_decide(tat, 10.0, 1, 1.0, 2.0)
    assert (tat, wait) == (12.0, 0.0)
    _, wait = gcra_decide(tat, 10.0, 1, 1.0, 2.0)
    assert wait == 1.0


def test_fractional_refill_is_kept() -> None:
    # The original threw away partial refill: 0 tokens in 1 s at 10/s when polled every 50 ms.
    clock = FakeClock()
    limiter = RateLimiter(10, 1, clock=clock)
    assert limiter.try_acquire()
    granted = 0
    for _ in range(20):
        clock.advance(0.05)
        granted += limiter.try_acquire()
    assert granted == 10
    clock.advance(0.025)
    assert limiter.available_tokens == pytest.approx(0.25)


def test_try_acquire_weighted_and_too_big() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 10, clock=clock)
    assert not limiter.try_acquire(11)  # more than burst: never, and nothing taken
    assert limiter.try_acquire(10)
    assert not limiter.try_acquire()
    assert limiter.available_tokens == 0
    with pytest.raises(ValueError, match="> 0"):
        limiter.try_acquire(0)
    stats = limiter.stats()
    assert stats.granted_count == 1
    assert stats.granted_tokens == 10
    assert stats.rejected_count == 2
    assert stats.total_count == 3


async def test_acquire_sleeps_exactly_as_long_as_needed() -> None:
    clock = CountingClock()
    limiter = RateLimiter(2, 1, clock=clock)
    await limiter.acquire()
    task = asyncio.create_task(limiter.acquire())
    await clock.run_for(0.4999)
    assert not task.done()
    await clock.run_for(0.0001)
    assert task.done()
    assert clock.armed == 1  # one timer, no polling


async def test_acquire_validates_tokens() -> None:
    limiter = RateLimiter(5, 3, name="tpm")
    with pytest.raises(ValueError, match=r"'tpm'.*exceed the burst of 3"):
        await limiter.acquire(4)
    with pytest.raises(ValueError, match="> 0"):
        await limiter.acquire(-1)
    with pytest.raises(ValueError, match="burst"):
        limiter.retry_after(4)


async def test_one_timer_for_all_waiters_and_fifo() -> None:
    clock = CountingClock()
    limiter = RateLimiter(10, 1, clock=clock)
    assert limiter.try_acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(50)]
    await settle()
    assert clock.pending_timers == 1
    assert limiter.stats().waiting_count == 50
    assert not limiter.try_acquire()  # no barging past the queue
    await clock.run_for(2.5)
    assert order == list(range(25))
    await clock.run_for(2.5)
    assert order == list(range(50))
    await asyncio.gather(*tasks)
    assert clock.armed == 50  # one timer per wake-up, none wasted
    assert clock.pending_timers == 0


async def test_big_weighted_request_is_not_starved_by_small_ones() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 10, clock=clock)
    assert limiter.try_acquire(10)
    big = asyncio.create_task(limiter.acquire(8))
    await settle()
    small = asyncio.create_task(limiter.acquire(1))
    await settle()
    await clock.run_for(0.5)  # 5 tokens: enough for `small`, but `big` is first
    assert not big.done()
    assert not small.done()
    await clock.run_for(0.3)
    assert big.done()
    assert not small.done()
    await clock.run_for(0.1)
    assert small.done()


async def test_retry_after_counts_queued_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4, 2, clock=clock)
    assert limiter.retry_after() == 0.0
    assert limiter.try_acquire(2)
    assert limiter.retry_after() == pytest.approx(0.25)
    assert limiter.retry_after(2) == pytest.approx(0.5)
    task = asyncio.create_task(limiter.acquire(2))
    await settle()
    assert limiter.retry_after() == pytest.approx(0.75)
    await clock.run_for(0.5)
    assert task.done()


async def test_pause_blocks_everything_then_refills_from_empty() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 5, clock=clock, name="openai")
    limiter.pause(3)
    assert limiter.available_tokens == 0
    assert not limiter.try_acquire()
    assert limiter.retry_after() == pytest.approx(3.1)
    assert limiter.stats().paused_for == 3
    task = asyncio.create_task(limiter.acquire())
    await clock.run_for(3.0999)
    assert not task.done()
    await clock.run_for(0.0001)
    assert task.done()
    await clock.run_for(1)
    assert limiter.available_tokens == pytest.approx(5)
    limiter.pause(1)
    limiter.pause(0.5)  # a shorter pause does not cut the longer one short
    clock.advance(0.9)
    assert not limiter.try_acquire()


async def test_timeout_raises_and_takes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1, clock=clock, name="slack")
    assert limiter.try_acquire()
    task = asyncio.create_task(limiter.acquire(timeout=0.5))
    await clock.run_for(0.5)
    with pytest.raises(TimeoutError, match="'slack'"):
        await task
    with pytest.raises(TimeoutError):
        await limiter.acquire(timeout=0)
    assert limiter.stats().rejected_count == 2
    assert limiter.stats().waiting_count == 0
    await clock.run_for(0.5)
    assert limiter.try_acquire()  # the timed-out waiters took nothing


async def test_timed_out_head_lets_the_next_waiter_through() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 5, clock=clock)
    assert limiter.try_acquire(5)
    big = asyncio.create_task(limiter.acquire(5, timeout=1))
    await settle()
    small = asyncio.create_task(limiter.acquire(1))
    await clock.run_for(1)
    assert small.done()
    with pytest.raises(TimeoutError):
        await big


async def test_cancelled_waiter_frees_its_place() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1, clock=clock)
    assert limiter.try_acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await settle()
    first.cancel()
    await clock.run_for(1)
    assert second.done()
    assert limiter.stats().cancelled_count == 1


async def test_cancel_after_grant_gives_the_tokens_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1, clock=clock)
    assert limiter.try_acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await settle()
    clock.advance(1)  # grants `first`; it has not resumed yet
    first.cancel()
    await settle()
    assert first.cancelled()
    assert second.done()  # got the token `first` handed back, at the same instant
    stats = limiter.stats()
    assert stats.granted_count == 2  # the try_acquire and `second`
    assert stats.cancelled_count == 1


async def test_async_with_and_repr() -> None:
    limiter = RateLimiter(100, name="rpm")
    async with limiter:
        pass
    assert limiter.stats().granted_count == 1
    assert "rpm" in repr(limiter)
    assert isinstance(limiter.stats(), RateLimiterStats)


def check_windows(grants: list[tuple[float, float]], rate: float, burst: float) -> None:
    """Every window [t_i, t_j] between two grants holds at most burst + rate * (t_j - t_i)."""
    grants.sort()
    for i, (start, _) in enumerate(grants):
        total = 0.0
        for end, tokens in grants[i:]:
            total += tokens
            assert total <= burst + rate * (end - start) + 1e-6, (start, end, total)


@settings(max_examples=80, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 33.3]),
    burst=st.sampled_from([1, 2, 5]),
    arrivals=st.lists(
        st.tuples(
            st.floats(0, 3),  # gap before the arrival
            st.sampled_from(["try", "acquire", "acquire_timeout", "cancel_soon", "pause"]),
            st.integers(1, 5),  # tokens (clipped to burst)
        ),
        max_size=40,
    ),
)
def test_no_window_grants_more_than_burst_plus_rate_times_w(
    rate: float, burst: int, arrivals: list[tuple[float, str, int]]
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        limiter = RateLimiter(rate, burst, clock=clock)
        grants: list[tuple[float, float]] = []
        tasks: list[asyncio.Task[None]] = []

        async def acquire(tokens: float, wait: float | None) -> None:
            await limiter.acquire(tokens, timeout=wait)
            grants.append((clock.now(), tokens))

        for gap, kind, tokens in arrivals:
            await clock.run_for(gap)
            tokens = min(tokens, burst)
            if kind == "try":
                if limiter.try_acquire(tokens):
                    grants.append((clock.now(), tokens))
            elif kind == "pause":
                limiter.pause(gap / 2)
            else:
                timeout = 1.0 if kind == "acquire_timeout" else None
                task = asyncio.create_task(acquire(tokens, timeout))
                tasks.append(task)
                if kind == "cancel_soon":
                    clock.call_later(gap / 3, task.cancel)
        await clock.run_for(1000)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(
            r is None or isinstance(r, TimeoutError | asyncio.CancelledError) for r in results
        )
        check_windows(grants, rate, burst)
        assert limiter.stats().granted_tokens == pytest.approx(sum(t for _, t in grants))

    asyncio.run(scenario())


# ---------------------------------------------------------------- argument checks


def test_rates_whose_inverse_overflows_are_refused() -> None:
    # 1 / 1e-309 is inf: the bucket never refilled (or, as a tolerance, never limited).
    with pytest.raises(ValueError, match="too small"):
        RateLimiter(1e-309)
    with pytest.raises(ValueError, match="burst / rate must be finite"):
        RateLimiter(1e-300, 1e300)
    with pytest.raises(TypeError, match="rate must be a number, not bool"):
        RateLimiter(True)
    with pytest.raises(TypeError):  # compiled code words it itself, where it enters
        RateLimiter(1, "2")  # type: ignore[arg-type]


async def test_tokens_and_timeouts_are_checked_on_every_path() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 10, clock=clock)
    # The uncontended fast path used to skip the timeout check, and True passed for 1 token.
    with pytest.raises(TypeError, match="timeout must be seconds"):
        await limiter.acquire(timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        await limiter.acquire(timeout=float("nan"))
    for call in (limiter.try_acquire, limiter.retry_after):
        with pytest.raises(TypeError, match="tokens must be a number, not bool"):
            call(True)
    with pytest.raises(TypeError, match="tokens must be a number, not bool"):
        await limiter.acquire(True)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tokens must be a finite number > 0"):
            limiter.try_acquire(bad)
    assert limiter.available_tokens == 10  # nothing was taken
    assert limiter.stats().total_count == 0
    with pytest.raises(ValueError, match="pause must be finite"):
        limiter.pause(float("inf"))
    with pytest.raises(TypeError, match="pause must be seconds"):
        limiter.pause("1")  # type: ignore[arg-type]


# ---------------------------------------------------------------- one rule


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([0.5, 3.0, 10.0]),
    burst=st.sampled_from([1, 2.5, 5]),
    steps=st.lists(
        st.tuples(st.floats(0, 2), st.sampled_from([0.25, 0.5, 1, 2, 5]), st.booleans()),
        max_size=30,
    ),
)
def test_available_tokens_retry_after_and_try_acquire_agree(
    rate: float, burst: float, steps: list[tuple[float, float, bool]]
) -> None:
    """They read the one GCRA rule: ``try_acquire(t)`` succeeds iff ``t <= available_tokens``
    (up to float slack), and ``retry_after(t)`` is 0 exactly then; after a failed try, waiting
    ``retry_after(t)`` is enough."""
    clock = FakeClock()
    limiter = RateLimiter(rate, burst, clock=clock)
    for gap, tokens, pause in steps:
        clock.advance(gap)
        if pause:
            limiter.pause(gap)
        if tokens > burst:
            continue
        available = limiter.available_tokens
        wait = limiter.retry_after(tokens)
        ok = limiter.try_acquire(tokens)
        if abs(available - tokens) > 1e-6:
            assert ok == (tokens < available)
        assert (wait <= 1e-6) == ok or abs(available - tokens) <= 1e-6
        if not ok:
            clock.advance(wait)
            assert limiter.try_acquire(tokens)


@settings(max_examples=60, deadline=None)
@given(
    burst=st.sampled_from([1, 3]),
    arrivals=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["acquire", "timed", "cancel", "cancel_after_grant"]),
            st.integers(1, 3),
        ),
        max_size=30,
    ),
)
def test_waiters_are_granted_in_arrival_order_and_cancellation_leaks_nothing(
    burst: int, arrivals: list[tuple[float, str, int]]
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        limiter = RateLimiter(2.0, burst, clock=clock)
        granted: list[int] = []
        tasks: list[asyncio.Task[None]] = []

        async def acquire(i: int, tokens: float, timeout: float | None) -> None:
            await limiter.acquire(tokens, timeout=timeout)
            granted.append(i)

        for i, (gap, kind, tokens) in enumerate(arrivals):
            await clock.run_for(gap)
            tokens = min(tokens, burst)
            task = asyncio.create_task(acquire(i, tokens, 0.7 if kind == "timed" else None))
            tasks.append(task)
            await settle()
            if kind == "cancel":
                task.cancel()
            elif kind == "cancel_after_grant":
                # granted by a timer, cancelled before it resumes: the tokens must come back
                clock.call_later(gap, task.cancel)
        await clock.run_for(1000)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert granted == sorted(granted)  # FIFO
        stats = limiter.stats()
        assert stats.waiting_count == 0
        assert stats.granted_count == len(granted)
        assert stats.total_count == len(tasks)
        assert stats.granted_count + stats.rejected_count + stats.cancelled_count == len(tasks)
        assert clock.pending_timers == 0

    asyncio.run(scenario())
