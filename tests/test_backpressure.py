"""Backpressure: FIFO without barging, timeouts, acquire_many, set_limit, cancellation safety."""

from __future__ import annotations

import asyncio
import gc
import random
import warnings
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import msg
from zeroclaw.concurrency.backpressure import (
    AdaptiveLimiter,
    AdaptivePermit,
    Backpressure,
    BackpressureStats,
    Permit,
)
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
)
from zeroclaw.testing import FakeClock, settle


def held(limiter: Backpressure | AdaptiveLimiter) -> int:
    """Permits held now."""
    return limiter.active_count if isinstance(limiter, Backpressure) else limiter.inflight


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
    p2.release()
    p3.release()


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


# ---------------------------------------------------------------- argument checks


async def test_sizes_refuse_bools_and_non_ints_on_every_path() -> None:
    # The compiled build used to take True as 1 (a C int parameter); both builds refuse it now.
    for bad in (True, False):
        with pytest.raises(TypeError, match="max_concurrent must be an int, not bool"):
            Backpressure(bad)
    bp = Backpressure(2, name="api")
    with pytest.raises(TypeError, match="n must be an int, not bool"):
        await bp.acquire_many(True)
    with pytest.raises(TypeError, match="max_concurrent must be an int, not bool"):
        bp.set_limit(True)
    # Another wrong type is a TypeError too; compiled code words it itself, where it enters.
    with pytest.raises(TypeError):
        await bp.acquire_many(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        bp.set_limit(0)
    assert bp.max_concurrent == 2  # a refused call changes nothing
    assert bp.available_permits == 2
    assert bp.stats().total_count == 0


async def test_every_blocking_call_validates_its_timeout_even_when_it_would_not_wait() -> None:
    # The uncontended fast path used to skip the check: acquire(timeout="soon") succeeded.
    bp = Backpressure(2)
    for bad, error in (("soon", TypeError), (float("nan"), ValueError), (-1, ValueError)):
        with pytest.raises(error, match="timeout must be"):
            await bp.acquire(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="timeout must be"):
            await bp.acquire_many(2, timeout=bad)  # type: ignore[arg-type]
    assert bp.available_permits == 2
    assert bp.stats().total_count == 0
    permit = await bp.acquire(timeout=float("inf"))  # infinity means no limit
    permit.release()


# ---------------------------------------------------------------- rejected_count


async def test_rejected_count_counts_refusals_not_admissions_that_waited() -> None:
    clock = FakeClock()
    bp = Backpressure(1, clock=clock)
    first = await bp.acquire()
    waited = asyncio.create_task(bp.acquire())
    timed_out = asyncio.create_task(bp.acquire(timeout=1))
    await settle()
    assert bp.try_acquire() is None  # refusal 1
    await clock.run_for(1)  # refusal 2: the timeout
    first.release()
    (await waited).release()
    with pytest.raises(TimeoutError):
        await timed_out
    stats = bp.stats()
    assert stats.rejected_count == 2
    assert stats.total_count == 4


def one_permit_processor(clock: FakeClock, **options: Any) -> MessageProcessor:
    """A processor whose only gate is a Backpressure of 1, on ``clock``."""
    config = MessageProcessorConfig(
        max_concurrent_requests=1,
        worker_pool_size=1,
        enable_dedup=False,
        enable_circuit_breaker=False,
        **options,
    )
    return MessageProcessor(config, clock=clock)


def one_second_handler(
    clock: FakeClock,
) -> Callable[[ChannelMessage], Coroutine[Any, Any, str]]:
    async def handler(message: ChannelMessage) -> str:
        await clock.sleep(1)
        return message.content

    return handler


async def test_processor_admissions_that_wait_for_a_permit_are_not_rejections() -> None:
    # The processor probes with a try first and then waits: the failed probe was counted as a
    # refusal (and the admission as two attempts).
    clock = FakeClock()
    processor = one_permit_processor(clock)
    handler = one_second_handler(clock)
    admissions = [
        asyncio.create_task(processor.process_message("test", msg(str(i), sender=f"u{i}"), handler))
        for i in range(3)
    ]
    await clock.run_for(5)
    assert [(await a).kind for a in admissions] == [AdmissionKind.ACCEPTED] * 3
    await processor.shutdown(timeout=1)
    stats = processor.stats().backpressure
    assert stats is not None
    assert (stats.rejected_count, stats.total_count) == (0, 3)


async def test_processor_refusals_at_capacity_are_counted() -> None:
    clock = FakeClock()
    processor = one_permit_processor(clock, admission="reject")
    handler = one_second_handler(clock)
    kinds = [
        (await processor.process_message("t", msg(str(i), sender=f"u{i}"), handler)).kind
        for i in range(3)
    ]
    assert kinds == [AdmissionKind.ACCEPTED, AdmissionKind.REJECTED, AdmissionKind.REJECTED]
    await clock.run_for(2)
    await processor.shutdown(timeout=1)
    stats = processor.stats().backpressure
    assert stats is not None
    assert (stats.rejected_count, stats.total_count) == (2, 3)


# ------------------------------------------------- a Permit (or an AdaptivePermit) that is dropped

# Both limiters give a collected, unreleased permit back with a ResourceWarning naming them.
LEAKS: dict[str, tuple[Callable[[str], Backpressure | AdaptiveLimiter], str]] = {
    "backpressure": (lambda name: Backpressure(1, name=name), r"backpressure '{}': a Permit of 1"),
    "adaptive": (
        lambda name: AdaptiveLimiter(1, 1, 4, None, 100, name=name, clock=FakeClock()),
        r"adaptive limiter '{}': an AdaptivePermit",
    ),
}


@pytest.mark.parametrize("kind", LEAKS)
def test_a_permit_dropped_without_release_warns_and_is_given_back(kind: str) -> None:
    make, warning = LEAKS[kind]
    limiter = make("api")
    permit = limiter.try_acquire()
    assert permit is not None
    assert held(limiter) == 1
    with pytest.warns(ResourceWarning, match=warning.format("api") + r" .*release\(\)"):
        del permit  # the last reference: collected at once
    assert held(limiter) == 0
    again = limiter.try_acquire()
    assert again is not None
    again.release()


@pytest.mark.parametrize("kind", LEAKS)
def test_a_released_permit_says_nothing_when_collected(kind: str) -> None:
    limiter = LEAKS[kind][0]("api")
    permit = limiter.try_acquire()
    assert permit is not None
    permit.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del permit
        gc.collect()
    assert held(limiter) == 0


@pytest.mark.parametrize("kind", LEAKS)
async def test_a_dropped_permit_held_in_a_cycle_wakes_the_next_waiter(kind: str) -> None:
    make, warning = LEAKS[kind]
    limiter = make("llm")
    holder: list[object] = []
    holder.append(holder)  # a reference cycle: only the cyclic collector frees it
    holder.append(await limiter.acquire())
    waiter = asyncio.create_task(limiter.acquire())
    await settle()
    assert not waiter.done()
    del holder
    assert not waiter.done()  # a cycle waits for the collector
    with pytest.warns(ResourceWarning, match=warning.format("llm")):
        gc.collect()
    await settle()
    assert waiter.done()
    granted = await waiter
    assert isinstance(granted, Permit | AdaptivePermit)
    granted.release()
    assert held(limiter) == 0


async def test_a_dropped_permit_of_many_is_given_back_whole() -> None:
    bp = Backpressure(2, name="llm")
    holder: list[object] = [await bp.acquire_many(2)]
    with pytest.warns(ResourceWarning, match="'llm': a Permit of 2"):
        holder.clear()
    assert bp.available_permits == 2


# ---------------------------------------------------------------- the waiter queue, as a model


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 4),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["acq", "many", "timed", "try", "release", "cancel", "tick"]),
            st.integers(0, 50),
        ),
        max_size=60,
    ),
)
def test_grants_are_fifo_without_barging_and_nothing_leaks(
    limit: int, ops: list[tuple[str, int]]
) -> None:
    """The queue's rules against a random schedule: waiters are granted in arrival order (an
    earlier waiter that is still queued is never overtaken), a try_acquire succeeds only when
    nobody waits, and cancellations and timeouts at any point leave every permit accounted for."""

    async def scenario() -> None:
        clock = FakeClock()
        bp = Backpressure(limit, clock=clock)
        arrivals: list[int] = []  # waiter ids, in arrival order
        granted: list[int] = []  # waiter ids, in the order they got their permits
        tasks: dict[int, asyncio.Task[None]] = {}
        held: list[Permit] = []

        cancel_requested: set[int] = set()

        async def waiter(i: int, n: int, timeout: float | None) -> None:
            permit = await bp.acquire_many(n, timeout=timeout)
            # Waiters resume in grant order, and a waiter that timed out resumes before the
            # grant its expiry made: an earlier waiter still pending now was overtaken.
            overtaken = [
                e for e in arrivals[:i] if not tasks[e].done() and e not in cancel_requested
            ]
            assert not overtaken, (i, overtaken)
            granted.append(i)
            held.append(permit)

        for op, arg in ops:
            if op in ("acq", "many", "timed"):
                i = len(arrivals)
                n = 1 if op == "acq" else 1 + arg % limit
                timeout = 0.5 + arg % 3 if op == "timed" else None
                arrivals.append(i)
                tasks[i] = asyncio.create_task(waiter(i, n, timeout))
                # It takes its place now: waiters then resume in the order they were granted.
                await settle()
            elif op == "try":
                nobody_waits = bp.waiting_count == 0
                permit = bp.try_acquire()
                if permit is not None:
                    assert nobody_waits
                    held.append(permit)
            elif op == "release" and held:
                held.pop(arg % len(held)).release()
            elif op == "cancel" and tasks:
                cancel_requested.add(arg % len(tasks))
                tasks[arg % len(tasks)].cancel()
            else:
                await clock.run_for(0.5)
            # Granted permits count as held before their waiter resumes.
            assert bp.active_count >= sum(p.permits for p in held if not p.released)
            assert bp.available_permits + bp.active_count >= bp.max_concurrent
        await settle()
        # Everyone granted has resumed: each held permit belongs to exactly one Permit.
        assert bp.active_count == sum(p.permits for p in held if not p.released)
        # FIFO: the granted waiters, in grant order, appear in arrival order.
        assert granted == sorted(granted)
        for permit in held:
            permit.release()
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for permit in held:
            permit.release()
        assert bp.active_count == 0
        assert bp.available_permits == limit
        assert bp.waiting_count == 0
        assert clock.pending_timers == 0

    asyncio.run(scenario())
