"""AdaptiveLimiter: the enforced limit follows a latency target; drops, cancellations, rate."""

from __future__ import annotations

import asyncio
import heapq
import random
import statistics

import pytest

from zeroclaw.concurrency._limit_rules import adaptive_next_limit
from zeroclaw.concurrency.backpressure import (
    AdaptiveLimiter,
    AdaptiveLimiterStats,
    AdaptivePermit,
)
from zeroclaw.concurrency.errors import Overloaded
from zeroclaw.testing import FakeClock, settle


class QueueingProvider:
    """Serves ``capacity`` requests at once at ``base`` seconds (±jitter); the rest queue FIFO."""

    def __init__(self, clock: FakeClock, capacity: int, base: float, seed: int) -> None:
        self.clock = clock
        self.base = base
        self.free_at = [0.0] * capacity  # when each server is next free (a min-heap)
        self.rng = random.Random(seed)

    async def call(self) -> float:
        now = self.clock.now()
        start = max(now, heapq.heappop(self.free_at))
        finish = start + self.base * self.rng.uniform(0.9, 1.1)
        heapq.heappush(self.free_at, finish)
        await self.clock.sleep(finish - now)
        return finish - now

    def resize(self, capacity: int) -> None:
        """Keep the ``capacity`` servers that free up first (requests in flight still finish)."""
        self.free_at = heapq.nsmallest(capacity, self.free_at)
        heapq.heapify(self.free_at)


async def simulate(
    capacity: int, *, base: float = 0.1, initial: int = 2, seconds: float = 60.0, seed: int = 7
) -> tuple[list[int], list[float], AdaptiveLimiter]:
    """Demand far above capacity; returns limits sampled and latencies seen after a warm-up."""
    clock = FakeClock()
    target_ms = 1.5 * base * 1000
    limiter = AdaptiveLimiter(initial, 1, 20 * capacity, None, target_ms, clock=clock, name="llm")
    provider = QueueingProvider(clock, capacity, base, seed)
    warm_up = seconds / 3
    limits: list[int] = []
    latencies: list[float] = []

    async def client() -> None:
        while True:
            async with limiter:
                latency = await provider.call()
            if clock.now() >= warm_up:
                latencies.append(latency)

    async def watcher() -> None:
        while True:
            await clock.sleep(base)
            if clock.now() >= warm_up:
                limits.append(limiter.current_limit)

    tasks = [asyncio.create_task(client()) for _ in range(10 * capacity)]
    tasks.append(asyncio.create_task(watcher()))
    await clock.run_for(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return limits, latencies, limiter


@pytest.mark.parametrize("capacity", [4, 10, 25])
async def test_simulation_settles_near_capacity_and_keeps_latency_near_target(
    capacity: int,
) -> None:
    base = 0.1
    limits, latencies, limiter = await simulate(capacity, base=base)
    assert min(limits) >= 0.8 * capacity, limits
    assert max(limits) <= 2.2 * capacity, limits
    assert statistics.fmean(latencies) < 2 * 1.5 * base
    assert limiter.inflight == 0  # the cancelled clients gave everything back
    stats = limiter.stats()
    assert stats.increases > 0
    assert stats.ignored_samples > 0  # samples from permits granted before a change


async def test_simulation_is_deterministic() -> None:
    first = await simulate(5, seconds=20)
    second = await simulate(5, seconds=20)
    assert first[0] == second[0]
    assert first[1] == second[1]


async def test_follows_the_provider_down_when_its_capacity_drops() -> None:
    clock = FakeClock()
    base = 0.1
    limiter = AdaptiveLimiter(2, 1, 400, None, 150, clock=clock, window_size=20)
    provider = QueueingProvider(clock, 20, base, seed=11)
    limits: list[int] = []

    async def client() -> None:
        while True:
            async with limiter:
                await provider.call()

    tasks = [asyncio.create_task(client()) for _ in range(200)]
    await clock.run_for(30)
    assert 16 <= limiter.current_limit <= 44
    provider.resize(5)
    await clock.run_for(15)  # a few seconds to adapt
    for _ in range(100):
        await clock.run_for(base)
        limits.append(limiter.current_limit)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert min(limits) >= 0.8 * 5
    assert max(limits) <= 2.2 * 5


def test_rule_is_a_pure_function() -> None:
    # above target: shrink by the gradient, at most halving
    assert adaptive_next_limit(20, 200, 100, True, 1, 100) == 10
    assert adaptive_next_limit(20, 1000, 100, True, 1, 100) == 10
    assert adaptive_next_limit(20, 125, 100, False, 1, 100) == 16
    # below target: grow only when used, at most doubling
    assert adaptive_next_limit(20, 80, 100, True, 1, 100) == 25
    assert adaptive_next_limit(20, 1, 100, True, 1, 100) == 40
    assert adaptive_next_limit(20, 80, 100, False, 1, 100) == 20
    # bounds
    assert adaptive_next_limit(3, 1000, 100, True, 2, 100) == 2
    assert adaptive_next_limit(90, 10, 100, True, 1, 100) == 100


def test_validation_and_no_loop_needed() -> None:
    for args in [(0, 1, 5), (1, 2, 5), (6, 1, 5), (3, 4, 2)]:
        with pytest.raises(ValueError, match=r"min_limit <= initial <= max_limit|>= 1"):
            AdaptiveLimiter(*args, None, 100)
    with pytest.raises(ValueError, match="target_latency_ms"):
        AdaptiveLimiter(2, 1, 5, None, 0)
    with pytest.raises(ValueError, match="rate"):
        AdaptiveLimiter(2, 1, 5, 0, 100)
    limiter = AdaptiveLimiter(10, 2, 50, 100, 100)  # the seed's example
    assert limiter.current_limit == 10
    assert "adaptive_limiter" in repr(limiter)


def test_limit_is_enforced() -> None:
    limiter = AdaptiveLimiter(3, 1, 10, None, 100, clock=FakeClock())
    permits = [limiter.try_acquire() for _ in range(4)]
    assert permits[3] is None
    assert limiter.inflight == 3
    stats = limiter.stats()
    assert stats.rejected_count == 1
    assert stats.total_count == 4


def test_no_change_until_a_window_is_complete_then_shrinks_on_high_latency() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(8, 1, 20, None, 100, clock=clock, window_size=5)
    for _ in range(4):
        p = limiter.try_acquire()
        assert p is not None
        p.release(400)
    assert limiter.current_limit == 8
    p = limiter.try_acquire()
    assert p is not None
    p.release(400)
    assert limiter.current_limit == 4  # x max(0.5, 100/400)
    assert limiter.stats().decreases == 1
    assert limiter.stats().last_window_latency_ms == 400


def test_shrink_is_really_enforced_and_lets_held_permits_drain() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(4, 1, 8, None, 100, clock=clock, window_size=1)
    held = [limiter.try_acquire() for _ in range(4)]
    assert all(held)
    limiter.report_latency(1000)
    assert limiter.current_limit == 2
    assert limiter.try_acquire() is None
    for p in held[:3]:
        assert p is not None
        p.release()  # granted before the decrease: ignored
    assert limiter.current_limit == 2
    assert limiter.stats().ignored_samples == 3
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is None


def test_grows_only_while_the_limit_is_used() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(4, 1, 64, None, 100, clock=clock, window_size=4)
    # one request at a time: fast, but the limit of 4 is not used
    for _ in range(40):
        p = limiter.try_acquire()
        assert p is not None
        p.release(10)
    assert limiter.current_limit == 4
    # four at a time: the limit is used, so it grows (x2 at most per window)
    for _ in range(3):
        permits = [limiter.try_acquire() for _ in range(limiter.current_limit)]
        for p in permits:
            assert p is not None
            p.release(10)
    assert limiter.current_limit == 32
    assert limiter.stats().increases == 3


def test_a_run_of_drops_brings_the_limit_down_promptly() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(64, 2, 64, None, 100, clock=clock)
    for _ in range(5):
        p = limiter.try_acquire()
        assert p is not None
        p.release(dropped=True)
    assert limiter.current_limit == 2
    assert limiter.stats().drops == 5
    p = limiter.try_acquire()
    assert p is not None
    p.release(dropped=True)
    assert limiter.current_limit == 2  # never below min_limit


def test_simultaneous_drops_of_one_generation_halve_once() -> None:
    limiter = AdaptiveLimiter(40, 1, 64, None, 100, clock=FakeClock())
    permits = [limiter.try_acquire() for _ in range(30)]
    for p in permits:
        assert p is not None
        p.release(dropped=True)
    assert limiter.current_limit == 20
    assert limiter.stats().drops == 1


async def test_async_with_measures_latency_on_the_clock() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(2, 1, 10, None, 100, clock=clock, window_size=1)

    async def call(seconds: float) -> None:
        async with limiter as permit:
            assert isinstance(permit, AdaptivePermit)
            await clock.sleep(seconds)

    task = asyncio.create_task(call(0.4))
    await clock.run_for(0.4)
    await task
    assert limiter.stats().last_window_latency_ms == pytest.approx(400)
    assert limiter.current_limit == 1


async def test_cancellation_is_not_a_sample_and_returns_the_permit() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(2, 1, 10, None, 100, clock=clock, window_size=1)

    async def call() -> None:
        async with limiter:
            await clock.sleep(10)

    task = asyncio.create_task(call())
    await clock.run_for(5)
    task.cancel()
    await settle()
    stats = limiter.stats()
    assert stats.samples == 0
    assert stats.ignored_samples == 1
    assert stats.inflight == 0
    assert limiter.current_limit == 2


async def test_timeouts_and_rejections_in_the_body_are_drops_other_errors_are_ignored() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(8, 1, 10, None, 100, clock=clock)
    with pytest.raises(Overloaded):
        async with limiter:
            raise Overloaded("provider said 429", retry_after=1.0)
    assert limiter.current_limit == 4
    with pytest.raises(KeyError):
        async with limiter:
            raise KeyError("bug")
    assert limiter.current_limit == 4
    assert limiter.stats().ignored_samples == 1
    with pytest.raises(TimeoutError):
        async with await limiter.acquire():
            raise TimeoutError
    assert limiter.current_limit == 2


async def test_custom_drop_classifier() -> None:
    limiter = AdaptiveLimiter(
        8, 1, 10, None, 100, clock=FakeClock(), is_drop=lambda e: isinstance(e, KeyError)
    )
    with pytest.raises(KeyError):
        async with limiter:
            raise KeyError("429")
    assert limiter.current_limit == 4


async def test_acquire_waits_fifo_and_times_out() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(1, 1, 4, None, 100, clock=clock)
    first = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    late = asyncio.create_task(limiter.acquire(timeout=1))
    await clock.run_for(1)
    with pytest.raises(TimeoutError):
        await late
    first.release(50)
    await settle()
    second = await waiter
    second.release(50)
    second.release(50)  # idempotent
    stats = limiter.stats()
    assert stats.rejected_count == 1
    assert stats.inflight == 0
    assert isinstance(stats, AdaptiveLimiterStats)


async def test_rate_limit_combines_and_a_refusal_spends_no_token() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(1, 1, 4, 2, 100, clock=clock, burst=2)
    p = limiter.try_acquire()
    assert p is not None
    assert limiter.try_acquire() is None  # refused by concurrency: no token spent
    rate_stats = limiter.stats().rate_limiter
    assert rate_stats is not None
    assert rate_stats.available_tokens == 1
    p.release(ignore=True)
    q = limiter.try_acquire()
    assert q is not None
    q.release(ignore=True)
    assert limiter.try_acquire() is None  # refused by the rate: the concurrency permit is back
    assert limiter.inflight == 0
    waiter = asyncio.create_task(limiter.acquire())
    await clock.run_for(0.4999)
    assert not waiter.done()
    await clock.run_for(0.0001)
    (await waiter).release(ignore=True)
    late = asyncio.create_task(limiter.acquire(timeout=0.1))
    await clock.run_for(0.1)
    with pytest.raises(TimeoutError):
        await late
    assert limiter.inflight == 0
    assert limiter.try_acquire() is None
    await clock.run_for(0.4)
    assert limiter.try_acquire() is not None


async def test_never_deadlocks_at_the_minimum_under_a_storm() -> None:
    clock = FakeClock()
    rng = random.Random(3)
    limiter = AdaptiveLimiter(5, 1, 10, None, 100, clock=clock, window_size=3)
    done = 0

    async def worker() -> None:
        nonlocal done
        async with limiter as permit:
            await clock.sleep(rng.uniform(0.05, 0.5))
            if rng.random() < 0.3:
                permit.release(dropped=True)
        done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(200)]
    for _ in range(50):
        for task in rng.sample(tasks, 2):
            task.cancel()
        await clock.run_for(0.2)
    await clock.run_for(200)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.done() for t in tasks)
    assert done + sum(t.cancelled() for t in tasks) == 200
    assert limiter.inflight == 0
    assert limiter.stats().waiting_count == 0
    assert limiter.stats().drops > 0
