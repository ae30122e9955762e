"""Backpressure: FIFO without barging, timeouts, acquire_many, set_limit, cancellation safety."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeroclaw.concurrency.backpressure import Backpressure, BackpressureStats, Permit
from zeroclaw.testing import FakeClock, settle


def held(bp: Backpressure) -> int:
    return bp.active_count


def assert_conserved(bp: Backpressure, outstanding: list[Permit]) -> None:
    """available + held == limit, and held is exactly what the live permits hold."""
    live = sum(p.permits for p in outstanding if not p.released)
    assert bp.active_count == live
    assert bp.available_permits + bp.active_count == bp.max_concurrent


def test_constructor_validates_and_needs_no_loop() -> None:
    bp = Backpressure(3, name="api")
    assert bp.max_concurrent == 3
    assert bp.available_permits == 3
    assert "api" in repr(bp)
    with pytest.raises(ValueError, match=">= 1"):
        Backpressure(0)
    with pytest.raises(TypeError):
        Backpressure(2.5)  # type: ignore[arg-type]


def test_try_acquire_outside_a_loop_and_stats() -> None:
    clock = FakeClock()
    bp = Backpressure(3, clock=clock)
    p1 = bp.try_acquire()
    p2 = bp.try_acquire()
    p3 = bp.try_acquire()
    assert p1 is not None
    assert p2 is not None
    assert p3 is not None
    assert bp.try_acquire() is None
    s = bp.stats()
    assert s == BackpressureStats(
        max_concurrent=3,
        available_permits=0,
        active_count=3,
        waiting_count=0,
        rejected_count=1,
        total_count=4,
        load_percentage=100.0,
    )
    p1.release()
    p1.release()  # idempotent
    s = bp.stats()
    assert s.available_permits == 1
    assert s.active_count == 2
    assert s.load_percentage == pytest.approx(200 / 3)
    with pytest.raises(AttributeError):
        s.active_count = 0  # type: ignore[misc]


def test_held_duration_reads_the_clock_and_freezes_on_release() -> None:
    clock = FakeClock(start=10.0)
    bp = Backpressure(1, clock=clock)
    permit = bp.try_acquire()
    assert permit is not None
    clock.advance(2.5)
    assert permit.held_duration == 2.5
    with permit:
        pass
    assert permit.released
    clock.advance(100)
    assert permit.held_duration == 2.5
    assert "released" in repr(permit)


async def test_fifo_and_no_barging() -> None:
    bp = Backpressure(1)
    first = await bp.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with await bp.acquire():
            order.append(i)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await settle()
    assert bp.waiting_count == 5
    first.release()
    # The permit went straight to waiter 0: a newcomer cannot take it.
    assert bp.try_acquire() is None
    assert bp.available_permits == 0
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert bp.available_permits == 1


async def test_async_with_backpressure_itself() -> None:
    bp = Backpressure(2)
    async with bp:
        assert bp.active_count == 1
        async with bp:
            assert bp.available_permits == 0
    assert bp.available_permits == 2
    assert bp.stats().total_count == 2


async def test_acquire_timeout_raises_timeout_error_and_counts_rejection() -> None:
    clock = FakeClock()
    bp = Backpressure(1, clock=clock, name="llm")
    held_permit = await bp.acquire()
    task = asyncio.create_task(bp.acquire(timeout=timedelta(seconds=2)))
    await clock.run_for(1.9)
    assert not task.done()
    await clock.run_for(0.2)
    with pytest.raises(TimeoutError, match="'llm'"):
        await task
    assert bp.stats().rejected_count == 1
    assert bp.waiting_count == 0
    held_permit.release()
    assert bp.available_permits == 1
    assert clock.pending_timers == 0


async def test_timeout_zero_fails_at_once_when_busy() -> None:
    bp = Backpressure(1, clock=FakeClock())
    permit = await bp.acquire(timeout=0)
    with pytest.raises(TimeoutError):
        await bp.acquire(timeout=0)
    permit.release()
    assert bp.stats().rejected_count == 1


async def test_timeout_before_a_release_at_the_same_instant_wins() -> None:
    clock = FakeClock()
    bp = Backpressure(1, clock=clock)
    p = await bp.acquire()
    task = asyncio.create_task(bp.acquire(timeout=1))
    await settle()
    clock.call_later(1, p.release)  # scheduled after the timeout timer, same deadline
    await clock.run_for(1)
    with pytest.raises(TimeoutError):
        await task
    assert bp.available_permits == 1


async def test_acquire_many_validates_and_blocks_smaller_later_waiters() -> None:
    bp = Backpressure(4)
    with pytest.raises(ValueError, match="limit is 4"):
        await bp.acquire_many(5)
    with pytest.raises(ValueError, match=">= 1"):
        await bp.acquire_many(0)
    a = await bp.acquire_many(3)
    assert a.permits == 3
    assert bp.available_permits == 1
    b = await bp.acquire()
    big = asyncio.create_task(bp.acquire_many(3))
    await settle()
    small = asyncio.create_task(bp.acquire())
    await settle()
    a.release()  # 3 free: the big one at the head takes them; the small one stays behind it
    await settle()
    assert big.done()
    assert not small.done()
    b.release()
    await settle()
    assert small.done()
    (await big).release()
    (await small).release()
    assert bp.available_permits == 4


async def test_cancelled_big_head_unblocks_small_waiters() -> None:
    bp = Backpressure(3)
    a = await bp.acquire_many(2)
    big = asyncio.create_task(bp.acquire_many(3))
    await settle()
    small = asyncio.create_task(bp.acquire())
    await settle()
    assert not small.done()  # 1 is free, but the big head waits first
    big.cancel()
    await settle()
    assert small.done()
    (await small).release()
    a.release()
    assert bp.available_permits == 3


async def test_set_limit_grow_wakes_and_shrink_drains() -> None:
    bp = Backpressure(2)
    p1, p2 = await bp.acquire(), await bp.acquire()
    waiters = [asyncio.create_task(bp.acquire()) for _ in range(3)]
    await settle()
    bp.set_limit(4)
    await settle()
    assert [w.done() for w in waiters] == [True, True, False]
    bp.set_limit(1)  # 4 held, limit 1: nothing is taken away
    assert bp.active_count == 4
    assert bp.available_permits == 0
    assert bp.stats().load_percentage == 100.0
    p1.release()
    p2.release()
    (await waiters[0]).release()
    await settle()
    assert not waiters[2].done()  # still 1 held, limit 1
    (await waiters[1]).release()
    await settle()
    assert waiters[2].done()
    (await waiters[2]).release()
    assert bp.available_permits == 1
    assert bp.active_count == 0


async def test_shrinking_below_a_waiting_request_fails_it() -> None:
    bp = Backpressure(4)
    p = await bp.acquire()
    task = asyncio.create_task(bp.acquire_many(4))
    await settle()
    bp.set_limit(2)
    with pytest.raises(ValueError, match="shrunk"):
        await task
    p.release()
    assert bp.available_permits == 2


async def test_cancel_after_grant_before_resume_hands_permit_on() -> None:
    bp = Backpressure(1)
    p = await bp.acquire()
    first = asyncio.create_task(bp.acquire())
    second = asyncio.create_task(bp.acquire())
    await settle()
    p.release()  # granted to `first`, which has not resumed yet
    first.cancel()
    await settle()
    assert first.cancelled()
    assert second.done()
    (await second).release()
    assert bp.available_permits == 1
    assert bp.active_count == 0


async def test_cancel_while_waiting_is_not_counted_as_rejection() -> None:
    bp = Backpressure(1)
    p = await bp.acquire()
    task = asyncio.create_task(bp.acquire())
    await settle()
    task.cancel()
    await settle()
    assert bp.waiting_count == 0
    assert bp.stats().rejected_count == 0
    p.release()
    assert bp.available_permits == 1


async def test_permit_async_with_and_wait_for_timeout() -> None:
    bp = Backpressure(1)
    async with await bp.acquire() as permit:
        assert permit.permits == 1
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await bp.acquire()
    assert bp.available_permits == 1


async def test_cancellation_storm_leaks_nothing() -> None:
    clock = FakeClock()
    rng = random.Random(1234)
    bp = Backpressure(5, clock=clock)
    outstanding: list[Permit] = []

    async def worker() -> None:
        n = rng.choice([1, 1, 1, 2, 3])
        timeout = rng.choice([None, None, 0.5, 2.0])
        permit = await bp.acquire_many(n, timeout=timeout)
        outstanding.append(permit)
        try:
            await clock.sleep(rng.random())
        finally:
            permit.release()

    tasks = [asyncio.create_task(worker()) for _ in range(300)]
    for step in range(60):
        for task in rng.sample(tasks, 8):
            task.cancel()
        if step % 3 == 0:
            await settle()  # cancel some right after they were granted, before they resume
        await clock.run_for(0.1)
        assert bp.available_permits + bp.active_count == bp.max_concurrent
    await clock.run_for(10)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.done() for t in tasks)
    assert bp.active_count == 0
    assert bp.available_permits == 5
    assert bp.waiting_count == 0
    assert_conserved(bp, outstanding)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 4),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["acq", "many", "release", "cancel", "settle", "limit"]),
            st.integers(0, 50),
        ),
        max_size=60,
    ),
)
def test_random_interleavings_conserve_permits(limit: int, ops: list[tuple[str, int]]) -> None:
    async def scenario() -> None:
        bp = Backpressure(limit)
        tasks: list[asyncio.Task[Permit]] = []
        permits: list[Permit] = []
        for op, arg in ops:
            if op == "acq":
                tasks.append(asyncio.create_task(bp.acquire()))
            elif op == "many":
                n = 1 + arg % bp.max_concurrent
                tasks.append(asyncio.create_task(bp.acquire_many(n)))
            elif op == "release":
                done = [t for t in tasks if t.done() and not t.cancelled() and not t.exception()]
                if done:
                    permit = done[arg % len(done)].result()
                    permits.append(permit)
                    permit.release()
            elif op == "cancel" and tasks:
                tasks[arg % len(tasks)].cancel()
            elif op == "limit":
                bp.set_limit(1 + arg % 5)
            else:
                await settle()
            assert bp.available_permits + bp.active_count >= bp.max_concurrent
        await settle()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is None:
                t.result().release()
            elif not t.done():
                t.cancel()
        await settle()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is None:
                t.result().release()
        assert bp.active_count == 0
        assert bp.available_permits == bp.max_concurrent
        assert bp.waiting_count == 0

    asyncio.run(scenario())
