"""AdaptiveLimiter: the enforced limit follows a latency target (or, in gradient mode, the learned
no-load latency); drops, cancellations, rate."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeroclaw.concurrency._limit_rules import (
    FASTER_RUN,
    USED_FRACTION,
    Baseline,
    LimitMode,
    adaptive_next_limit,
    gradient_target,
    learn_baseline,
    next_limit,
)
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
    capacity: int,
    *,
    base: float = 0.1,
    initial: int = 2,
    seconds: float = 60.0,
    seed: int = 7,
    mode: str = "target",
) -> tuple[list[int], list[float], AdaptiveLimiter]:
    """Demand far above capacity; returns limits sampled and latencies seen after a warm-up.

    Target mode aims at 1.5 x base; gradient mode is given no target at all.
    """
    clock = FakeClock()
    target_ms = 1.5 * base * 1000 if mode == "target" else None
    limiter = AdaptiveLimiter(
        initial, 1, 20 * capacity, None, target_ms, clock=clock, name="llm", mode=mode
    )
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


@pytest.mark.parametrize("capacity", [4, 10, 25])
async def test_gradient_mode_settles_near_capacity_without_a_target(capacity: int) -> None:
    """The quality bar in gradient mode: no target is given, so the bound on latency is against
    the no-load latency itself (2 x base), and the baseline it learned is that latency."""
    base = 0.1
    limits, latencies, limiter = await simulate(capacity, base=base, mode="gradient")
    assert min(limits) >= 0.8 * capacity, limits
    assert max(limits) <= 2.2 * capacity, limits
    assert statistics.fmean(latencies) < 2 * base
    assert limiter.inflight == 0
    stats = limiter.stats()
    assert stats.mode == "gradient"
    assert stats.target_latency_ms is None
    assert stats.baseline_latency_ms == pytest.approx(base * 1000, rel=0.1)
    assert stats.baseline_latency_ms is not None
    assert stats.aimed_latency_ms == pytest.approx(1.5 * stats.baseline_latency_ms)
    assert stats.increases > 0
    assert stats.decreases > 0  # it did meet the knee
    assert stats.ignored_samples > 0


@pytest.mark.parametrize("mode", ["target", "gradient"])
async def test_simulation_is_deterministic(mode: str) -> None:
    first = await simulate(5, seconds=20, mode=mode)
    second = await simulate(5, seconds=20, mode=mode)
    assert first[0] == second[0]
    assert first[1] == second[1]


@pytest.mark.parametrize("mode", ["target", "gradient"])
async def test_follows_the_provider_down_when_its_capacity_drops(mode: str) -> None:
    clock = FakeClock()
    base = 0.1
    target = 150 if mode == "target" else None
    limiter = AdaptiveLimiter(2, 1, 400, None, target, clock=clock, window_size=20, mode=mode)
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
    for permit in permits[:3]:
        assert permit is not None
        permit.release(ignore=True)
    assert limiter.inflight == 0


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
    fresh = limiter.try_acquire()
    assert fresh is not None
    assert limiter.try_acquire() is None
    for p in (held[3], fresh):
        assert p is not None
        p.release(ignore=True)
    assert limiter.inflight == 0


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
    last = limiter.try_acquire()
    assert last is not None
    last.release(ignore=True)


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


# --------------------------------------------------------------------------------------------
# Gradient mode: latency that does not depend on load is not queueing
# --------------------------------------------------------------------------------------------


class FlatProvider:
    """Answers in ``latency`` seconds however many requests are in flight (an LLM whose time is
    the length of its answer); counts the most it ever had in flight."""

    def __init__(self, clock: FakeClock, latency: float) -> None:
        self.clock = clock
        self.latency = latency
        self.in_flight = 0
        self.peak = 0

    async def call(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.clock.sleep(self.latency)
        finally:
            self.in_flight -= 1


async def run_calls(limiter: AdaptiveLimiter, clock: FakeClock, calls: int, call: Any) -> float:
    """Run ``calls`` calls through ``limiter``, all submitted at once; simulated seconds taken."""

    async def one() -> None:
        async with limiter:
            await call()

    started = clock.now()
    tasks = [asyncio.create_task(one()) for _ in range(calls)]
    while not all(task.done() for task in tasks):
        await clock.run_for(0.01)
    await asyncio.gather(*tasks)
    return clock.now() - started


async def test_flat_high_latency_collapses_target_mode_but_not_gradient_mode() -> None:
    """The measured defect: 150 ms whatever the load and a 100 ms target bring target mode down to
    its minimum; gradient mode (same target, as a floor) keeps the limit and grows it."""
    clock = FakeClock()
    target = AdaptiveLimiter(10, 2, 50, None, 100, clock=clock, window_size=10)
    slow = await run_calls(target, clock, 200, FlatProvider(clock, 0.150).call)
    assert target.current_limit == 2
    assert slow > 10.0  # about 200 / 2 x 150 ms

    clock = FakeClock()
    gradient = AdaptiveLimiter(10, 2, 50, None, 100, clock=clock, window_size=10, mode="gradient")
    provider = FlatProvider(clock, 0.150)
    fast = await run_calls(gradient, clock, 200, provider.call)
    stats = gradient.stats()
    assert stats.decreases == 0
    assert gradient.current_limit == 50  # grew to max_limit: every window had work waiting
    assert provider.peak == 50
    assert fast < 1.5
    assert stats.baseline_latency_ms == pytest.approx(150)
    assert stats.aimed_latency_ms == pytest.approx(225)  # 1.5 x 150, above the 100 ms floor


async def test_flat_latency_that_is_not_used_keeps_the_limit() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(8, 1, 64, None, None, clock=clock, window_size=5, mode="gradient")
    provider = FlatProvider(clock, 2.0)
    for _ in range(30):  # one request at a time: the limit is never used
        async with limiter:
            task = asyncio.create_task(provider.call())
            await clock.run_for(2.0)
            await task
    stats = limiter.stats()
    assert limiter.current_limit == 8
    assert stats.increases == stats.decreases == 0
    assert stats.baseline_latency_ms == pytest.approx(2000)


class NoisyQueueingProvider(QueueingProvider):
    """:class:`QueueingProvider` whose service times vary like answer lengths (gamma, CV 1)."""

    async def call(self) -> float:
        now = self.clock.now()
        start = max(now, heapq.heappop(self.free_at))
        finish = start + self.base * self.rng.expovariate(1.0)
        heapq.heappush(self.free_at, finish)
        await self.clock.sleep(finish - now)
        return finish - now


async def test_gradient_mode_against_answer_length_noise_and_a_knee() -> None:
    """Service times spread like answer lengths (exponential: as many 3x answers as 0.05x) on top
    of a capacity knee: one lucky window of short answers must not set the baseline, or the limit
    would be ratcheted down to the minimum."""
    clock = FakeClock()
    capacity, base = 10, 1.0
    limiter = AdaptiveLimiter(2, 1, 200, None, None, clock=clock, mode="gradient")
    provider = NoisyQueueingProvider(clock, capacity, base, seed=5)
    limits: list[int] = []
    answered = 0

    async def client() -> None:
        nonlocal answered
        while True:
            async with limiter:
                await provider.call()
            answered += 1

    tasks = [asyncio.create_task(client()) for _ in range(10 * capacity)]
    await clock.run_for(300)
    answered = 0
    for _ in range(3000):
        await clock.run_for(base / 2)
        limits.append(limiter.current_limit)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert min(limits) >= capacity // 2, min(limits)
    assert 0.8 * capacity <= statistics.fmean(limits) <= 2.2 * capacity
    assert answered / 1500 >= 0.95 * capacity / base  # the provider was kept busy
    baseline = limiter.stats().baseline_latency_ms
    assert baseline is not None
    assert baseline >= 0.5 * base * 1000


def test_gradient_drops_shrink_promptly_and_are_not_samples() -> None:
    limiter = AdaptiveLimiter(64, 2, 64, None, None, clock=FakeClock(), mode="gradient")
    for _ in range(5):
        p = limiter.try_acquire()
        assert p is not None
        p.release(0.001, dropped=True)  # a 503 comes back at once: no latency sample
    stats = limiter.stats()
    assert limiter.current_limit == 2
    assert stats.drops == 5
    assert stats.samples == 0
    assert stats.baseline_latency_ms is None


async def test_gradient_cancellations_are_not_samples() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(2, 1, 10, None, None, clock=clock, window_size=1, mode="gradient")

    async def call() -> None:
        async with limiter:
            await clock.sleep(10)

    task = asyncio.create_task(call())
    await clock.run_for(0.001)  # a cancellation right after the start would read as fast
    task.cancel()
    await settle()
    stats = limiter.stats()
    assert (stats.samples, stats.ignored_samples, stats.inflight) == (0, 1, 0)
    assert stats.baseline_latency_ms is None


def test_gradient_ignores_samples_from_permits_granted_before_a_decrease() -> None:
    limiter = AdaptiveLimiter(
        8, 1, 8, None, None, clock=FakeClock(), window_size=2, mode="gradient"
    )
    for p in [limiter.try_acquire() for _ in range(2)]:
        assert p is not None
        p.release(100)  # the baseline: 100 ms with 2 in flight
    assert limiter.stats().baseline_latency_ms == 100
    old = [limiter.try_acquire() for _ in range(8)]
    for _ in range(2):
        limiter.report_latency(400)  # 8 in flight and 4x the baseline: halve
    assert limiter.current_limit == 4
    for p in old:
        assert p is not None
        p.release(1)  # granted before the decrease: neither a sample nor a new baseline
    stats = limiter.stats()
    assert stats.ignored_samples == 8
    assert stats.baseline_latency_ms == 100
    assert limiter.current_limit == 4


def test_gradient_relearns_a_slower_provider_once_its_own_load_is_low() -> None:
    """A provider that got slower at any load looks like queueing while we are busier than the
    baseline's load; once the limit is down there, the new latency becomes the baseline and the
    limit grows again instead of staying at the minimum."""
    limiter = AdaptiveLimiter(
        2, 1, 16, None, None, clock=FakeClock(), window_size=2, mode="gradient"
    )

    def window(held: int, latency_ms: float) -> None:
        permits = [limiter.try_acquire() for _ in range(held)]
        for p in permits:
            assert p is not None
            p.release(latency_ms)

    window(2, 100)  # baseline 100 ms at 2 in flight; grows x1.5
    assert limiter.current_limit == 3
    window(3, 400)  # busier and slower: shrink, the baseline stays
    assert limiter.stats().baseline_latency_ms == 100
    assert limiter.current_limit == 1
    window(1, 400)
    window(1, 400)  # alone and still slow: the provider is slower, not busier
    assert limiter.stats().baseline_latency_ms == 400
    assert limiter.current_limit == 2  # and the limit grows again from there


def test_gradient_rule_is_pure() -> None:
    # the first window, or a less loaded one, replaces the baseline; the same load averages
    assert learn_baseline(None, 120, 4) == Baseline(120, 4)
    assert learn_baseline(Baseline(100, 4), 300, 2) == Baseline(300, 2)
    assert learn_baseline(Baseline(100, 4), 140, 4) == Baseline(120, 4)
    # busier and slower: unchanged; busier and faster: only after FASTER_RUN windows in a row
    assert learn_baseline(Baseline(100, 4), 500, 9) == Baseline(100, 4)
    assert FASTER_RUN == 3
    b: Baseline | None = Baseline(100, 4)
    for mean in [80, 70]:
        b = learn_baseline(b, mean, 9)
        assert b is not None
        assert b.latency_ms == 100
    assert learn_baseline(b, 90, 9) == Baseline(90, 4)  # the slowest of the run
    interrupted = learn_baseline(learn_baseline(Baseline(100, 4), 80, 9), 120, 9)
    assert interrupted == Baseline(100, 4)
    # a window that measured nothing teaches nothing
    assert learn_baseline(None, 0, 1) is None
    assert learn_baseline(Baseline(100, 4), 0, 1) == Baseline(100, 4)
    # the aim: tolerance x baseline, never below the floor
    assert gradient_target(100, 1.5, None) == 150
    assert gradient_target(100, 1.5, 200) == 200
    assert gradient_target(100, 1.5, 120) == 150
    # one window: target mode passes the baseline through
    assert next_limit(LimitMode.TARGET, 20, None, 200, 20, True, 100, 1.5, 1, 100) == (
        10,
        None,
        100,
    )
    # gradient mode: flat latency at the baseline grows a used limit by the tolerance
    assert next_limit(
        LimitMode.GRADIENT, 20, Baseline(150, 2), 150, 20, True, 100, 1.5, 1, 100
    ) == (
        30,
        Baseline(150, 2),
        225,
    )
    # ... and 3x the baseline shrinks it by 1.5/3
    assert next_limit(LimitMode.GRADIENT, 20, Baseline(100, 2), 300, 20, True, None, 1.5, 1, 100)[
        0
    ] == pytest.approx(10)
    with pytest.raises(ValueError, match="target mode"):
        next_limit(LimitMode.TARGET, 20, None, 200, 20, True, None, 1.5, 1, 100)


@given(
    mode=st.sampled_from(list(LimitMode)),
    limit=st.floats(1, 100),
    baseline=st.none() | st.builds(Baseline, st.floats(0.001, 1e6), st.integers(0, 200)),
    mean=st.floats(0, 1e7),
    load=st.integers(0, 200),
    used=st.booleans(),
    target=st.none() | st.floats(0.001, 1e6),
)
def test_next_limit_stays_in_bounds(
    mode: LimitMode,
    limit: float,
    baseline: Baseline | None,
    mean: float,
    load: int,
    used: bool,
    target: float | None,
) -> None:
    if mode is LimitMode.TARGET and target is None:
        target = 100.0
    new, learned, aim = next_limit(mode, limit, baseline, mean, load, used, target, 1.5, 1, 100)
    assert 1 <= new <= 100
    assert aim is None or aim > 0
    if not used:
        assert new <= max(1.0, limit)  # an unused limit never grows
    if mode is LimitMode.TARGET:
        assert learned is baseline
    elif learned is None:
        assert baseline is None
        assert mean == 0
        assert (new, aim) == (max(1.0, limit), None)
    else:
        assert learned.latency_ms > 0


@given(
    latency=st.floats(1, 1e5),
    loads=st.lists(st.integers(1, 64), min_size=1, max_size=40),
)
def test_flat_latency_never_shrinks_the_limit(latency: float, loads: list[int]) -> None:
    """Whatever the load of each window, if the latency does not change, gradient mode never
    lowers the limit (and a used limit grows)."""
    limit, baseline = 4.0, None
    for load in loads:
        used = load >= USED_FRACTION * limit
        new, baseline, _ = next_limit(
            LimitMode.GRADIENT, limit, baseline, latency, load, used, None, 1.5, 1, 64
        )
        assert new >= limit
        if used and limit < 64:
            assert new > limit
        limit = new


# One step of a random workload: grant a permit, release one (with a latency, as a drop, or
# ignored), or report a latency.
_step = st.one_of(
    st.tuples(st.just("acquire"), st.just(0.0)),
    st.tuples(st.sampled_from(["release", "drop", "ignore"]), st.floats(0, 5000)),
    st.tuples(st.just("report"), st.floats(0, 5000)),
)


@settings(max_examples=200)
@given(
    mode=st.sampled_from(["target", "gradient"]),
    bounds=st.tuples(st.integers(1, 8), st.integers(0, 8), st.integers(0, 24)),
    window=st.integers(1, 6),
    steps=st.lists(_step, max_size=120),
)
def test_limit_stays_in_bounds_and_needs_a_window_or_a_drop_to_change(
    mode: str, bounds: tuple[int, int, int], window: int, steps: list[tuple[str, float]]
) -> None:
    low, up, further = bounds
    initial, high = low + up, low + up + further
    target = 150.0 if mode == "target" else None
    limiter = AdaptiveLimiter(
        initial, low, high, None, target, clock=FakeClock(), window_size=window, mode=mode
    )
    held: list[AdaptivePermit] = []
    counted = 0  # samples counted in the current window, as the limiter should count them
    for action, value in steps:
        before = limiter.stats()
        if action == "acquire":
            permit = limiter.try_acquire()
            if permit is not None:
                held.append(permit)
            continue
        if action == "report":
            limiter.report_latency(value)
        elif held:
            permit = held.pop(0)
            permit.release(value, dropped=action == "drop", ignore=action == "ignore")
        after = limiter.stats()
        assert low <= after.current_limit <= high
        assert after.inflight == len(held)
        sampled = after.samples - before.samples
        dropped = after.drops - before.drops
        changed = (after.increases + after.decreases) - (before.increases + before.decreases)
        counted += sampled
        if changed and not dropped:
            assert counted >= window  # a change needs a full window (or a drop)
        if dropped or counted >= window:
            counted = 0  # either restarts the window
        if after.current_limit != before.current_limit:
            assert dropped or sampled
    for permit in held:
        permit.release(ignore=True)
    assert limiter.inflight == 0


def test_gradient_mode_validation() -> None:
    with pytest.raises(ValueError, match="mode='gradient'"):
        AdaptiveLimiter(2, 1, 5, None, None)
    with pytest.raises(ValueError, match="mode must be"):
        AdaptiveLimiter(2, 1, 5, None, 100, mode="vegas")
    with pytest.raises(TypeError):  # the compiled build's own check words it differently
        AdaptiveLimiter(2, 1, 5, None, 100, mode=1)  # type: ignore[arg-type]
    for bad in [1.0, 0.5, math.nan, math.inf]:
        with pytest.raises(ValueError, match="tolerance"):
            AdaptiveLimiter(2, 1, 5, None, None, mode="gradient", tolerance=bad)
    with pytest.raises(TypeError):  # the compiled build's own check words it differently
        AdaptiveLimiter(2, 1, 5, None, None, mode="gradient", tolerance="2")  # type: ignore[arg-type]
    for bad_target in [math.nan, math.inf, -1.0]:
        with pytest.raises(ValueError, match="target_latency_ms"):
            AdaptiveLimiter(2, 1, 5, None, bad_target, mode="gradient")
    limiter = AdaptiveLimiter(2, 1, 5, None, None, mode=LimitMode.GRADIENT, clock=FakeClock())
    assert limiter.stats().mode is LimitMode.GRADIENT
    assert "gradient baseline=?" in repr(limiter)
    limiter.set_target_latency(300)
    assert limiter.stats().target_latency_ms == 300
    assert "floor=300ms" in repr(limiter)
    limiter.set_target_latency(None)
    assert limiter.stats().target_latency_ms is None
    target = AdaptiveLimiter(2, 1, 5, None, 100, clock=FakeClock())
    assert target.stats().mode is LimitMode.TARGET
    assert "target=100ms" in repr(target)
    with pytest.raises(ValueError, match="mode='gradient'"):
        target.set_target_latency(None)
    assert target.stats().target_latency_ms == 100


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_a_bad_latency_is_refused_and_the_permit_still_given_back(bad: float) -> None:
    limiter = AdaptiveLimiter(2, 1, 5, None, None, clock=FakeClock(), mode="gradient")
    permit = limiter.try_acquire()
    assert permit is not None
    with pytest.raises(ValueError, match="latency_ms"):
        permit.release(bad)
    assert permit.released
    assert limiter.inflight == 0
    with pytest.raises(ValueError, match="latency_ms"):
        limiter.report_latency(bad)
    stats = limiter.stats()
    assert (stats.samples, stats.ignored_samples) == (0, 1)


def test_a_latency_that_is_not_a_number_is_a_type_error() -> None:
    limiter = AdaptiveLimiter(2, 1, 5, None, None, clock=FakeClock(), mode="gradient")
    permit = limiter.try_acquire()
    assert permit is not None
    # (A bool is not tested: the compiled build converts it to a float before any check.)
    with pytest.raises(TypeError):  # the compiled build's own check words it differently
        limiter.report_latency("5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        permit.release("5")  # type: ignore[arg-type]
    permit.release(5)
    assert limiter.stats().samples == 1


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((True, 1, 4, None, 100.0), {}),
        ((2, 1, True, None, 100.0), {}),
        ((2, 1, 4, True, 100.0), {}),
        ((2, 1, 4, None, True), {}),
        ((2, 1, 4, None, 100.0), {"tolerance": True}),
        ((2, 1, 4, None, 100.0), {"window_size": True}),
    ],
)
def test_bool_arguments_are_refused_on_both_builds(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    # Compiled code turns True into 1 at a parameter declared int or float; these are declared
    # CountArg/NumberArg so the shared check sees the bool.
    with pytest.raises(TypeError):
        AdaptiveLimiter(*args, **kwargs)  # type: ignore[arg-type]


def test_bool_latency_is_refused_on_both_builds() -> None:
    limiter = AdaptiveLimiter(2, 1, 4, None, 100.0)
    with pytest.raises(TypeError):
        limiter.report_latency(True)
    permit = limiter.try_acquire()
    assert permit is not None
    with pytest.raises(TypeError):
        permit.release(True)
    assert limiter.stats().current_limit == 2
    assert not permit.released  # refused, not taken: a correct release() still works
    permit.release()
    assert limiter.inflight == 0


# ---------------------------------------- an AdaptivePermit that is dropped
# (the rules both limiters share: tests/test_backpressure.py)


def test_a_dropped_adaptive_permit_warns_and_is_given_back_without_a_sample() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(1, 1, 4, None, 100, clock=clock, name="llm", window_size=1)
    permit = limiter.try_acquire()
    assert permit is not None
    clock.advance(60)  # a leaked permit's lifetime says nothing about the provider
    with pytest.warns(
        ResourceWarning, match=r"adaptive limiter 'llm': an AdaptivePermit .*release\(\)"
    ):
        del permit  # the last reference: collected at once
    assert limiter.inflight == 0
    stats = limiter.stats()
    assert (stats.samples, stats.ignored_samples, stats.current_limit) == (0, 1, 1)
    again = limiter.try_acquire()
    assert again is not None
    again.release(ignore=True)
