"""The clock plumbing: FakeClock, timers on any clock, seconds conversion."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from zeroclaw.concurrency._clock import MonotonicClock, call_later, resolve_clock, to_seconds
from zeroclaw.testing import FakeClock, settle


def test_to_seconds_accepts_numbers_and_timedelta() -> None:
    assert to_seconds(3) == 3.0
    assert to_seconds(0.25) == 0.25
    assert to_seconds(timedelta(milliseconds=1500)) == 1.5


@pytest.mark.parametrize("bad", [-1, float("nan"), timedelta(seconds=-2)])
def test_to_seconds_rejects_negative_and_nan(bad: float | timedelta) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        to_seconds(bad, what="timeout")


@pytest.mark.parametrize("bad", ["1", None, True])
def test_to_seconds_rejects_other_types(bad: object) -> None:
    with pytest.raises(TypeError, match="seconds"):
        to_seconds(bad)  # type: ignore[arg-type]


def test_default_clock_is_shared_and_monotonic() -> None:
    clock = resolve_clock(None)
    assert isinstance(clock, MonotonicClock)
    assert resolve_clock(None) is clock
    first = clock.now()
    assert clock.now() >= first


async def test_fake_sleep_returns_only_when_time_reaches_deadline() -> None:
    clock = FakeClock(start=100.0)
    sleeper = asyncio.ensure_future(clock.sleep(5))
    await settle()
    clock.advance(4.999)
    await settle()
    assert not sleeper.done()
    clock.advance(0.001)
    await settle()
    assert sleeper.done()
    assert clock.now() == 105.0


async def test_fake_timers_fire_in_deadline_order_reading_their_deadline() -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []
    call_later(clock, 3, lambda: fired.append(("b", clock.now())))
    call_later(clock, 1, lambda: fired.append(("a", clock.now())))
    cancelled = call_later(clock, 2, lambda: fired.append(("never", clock.now())))
    cancelled.cancel()
    clock.advance(10)
    assert fired == [("a", 1.0), ("b", 3.0)]
    assert clock.now() == 10.0
    assert clock.pending_timers == 0


async def test_run_for_fires_timers_scheduled_by_woken_tasks() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            await clock.sleep(1)
            ticks.append(clock.now())

    task = asyncio.ensure_future(ticker())
    await clock.run_for(3.5)
    assert ticks == [1.0, 2.0, 3.0]
    await clock.run_for(10)
    assert ticks == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert task.done()


async def test_cancelled_fake_sleep_leaves_no_timer() -> None:
    clock = FakeClock()
    sleeper = asyncio.ensure_future(clock.sleep(5))
    await settle()
    assert clock.pending_timers == 1
    sleeper.cancel()
    await settle()
    assert clock.pending_timers == 0


def test_fake_clock_never_goes_back() -> None:
    clock = FakeClock(start=5)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance_to(4)


class _SleepOnlyClock:
    """A duck-typed clock with only the two required methods."""

    def __init__(self) -> None:
        self.inner = FakeClock()

    def now(self) -> float:
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def test_call_later_works_on_a_clock_without_call_later() -> None:
    clock = _SleepOnlyClock()
    fired: list[float] = []
    call_later(clock, 2, lambda: fired.append(clock.now()))
    cancelled = call_later(clock, 1, lambda: fired.append(-1.0))
    await settle()
    cancelled.cancel()
    await clock.inner.run_for(5)
    assert fired == [2.0]


async def test_monotonic_clock_call_later_uses_the_running_loop() -> None:
    clock = MonotonicClock()
    fired = asyncio.Event()
    handle = call_later(clock, 0, fired.set)
    await asyncio.wait_for(fired.wait(), timeout=5)
    handle.cancel()
    await clock.sleep(0)
