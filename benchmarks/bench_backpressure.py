"""Flow control benchmarks: Backpressure vs asyncio.Semaphore, RateLimiter vs aiolimiter / limits.

Run: ``PYTHONPATH=src:. python -m benchmarks.bench_backpressure [--quick] [--uvloop]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter
from limits import parse, storage, strategies

from benchmarks.harness import Report, RoundFn, interleave, run_group, sync_round
from zeroclaw.concurrency.backpressure import AdaptiveLimiter, Backpressure, RateLimiter

GROUP_BP = "backpressure"
GROUP_RL = "rate_limiter"
GROUP_AL = "adaptive_limiter"


async def bench_backpressure(report: Report, quick: bool) -> None:
    n = 20_000 if quick else 100_000
    rounds = 5 if quick else 15
    bp = Backpressure(10)
    sem = asyncio.Semaphore(10)

    async def bp_with() -> float:
        t = time.perf_counter()
        for _ in range(n):
            async with bp:
                pass
        return (time.perf_counter() - t) / n

    async def sem_with() -> float:
        t = time.perf_counter()
        for _ in range(n):
            async with sem:
                pass
        return (time.perf_counter() - t) / n

    res = await interleave(
        {"Backpressure async with": bp_with, "Semaphore async with": sem_with}, rounds
    )
    report.ratio(
        GROUP_BP,
        res["Backpressure async with"],
        res["Semaphore async with"],
        target=1.3,
        note="uncontended",
    )

    async def bp_permit() -> float:
        t = time.perf_counter()
        for _ in range(n):
            permit = await bp.acquire()
            permit.release()
        return (time.perf_counter() - t) / n

    async def sem_acquire() -> float:
        t = time.perf_counter()
        for _ in range(n):
            await sem.acquire()
            sem.release()
        return (time.perf_counter() - t) / n

    res = await interleave(
        {
            "Backpressure acquire()+release()": bp_permit,
            "Semaphore acquire()+release()": sem_acquire,
        },
        rounds,
    )
    report.ratio(
        GROUP_BP,
        res["Backpressure acquire()+release()"],
        res["Semaphore acquire()+release()"],
        target=1.3,
        note="uncontended, with a Permit object",
    )

    # Contended: 50 tasks share 5 permits and yield while holding one, so most acquisitions wait
    # in the queue and are handed over by a release.
    tasks, per_task = 50, (200 if quick else 1000)

    def contended(make: Callable[[int], Backpressure | asyncio.Semaphore]) -> RoundFn:
        async def round_fn() -> float:
            lock = make(5)

            async def worker() -> None:
                for _ in range(per_task):
                    async with lock:
                        await asyncio.sleep(0)

            t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(tasks)))
            return (time.perf_counter() - t) / (tasks * per_task)

        return round_fn

    res = await interleave(
        {
            "Backpressure contended": contended(Backpressure),
            "Semaphore contended": contended(asyncio.Semaphore),
        },
        rounds,
    )
    report.ratio(
        GROUP_BP,
        res["Backpressure contended"],
        res["Semaphore contended"],
        target=1.3,
        note="50 tasks, 5 permits, sleep(0) while held",
    )


async def bench_rate_limiter(report: Report, quick: bool) -> None:
    n = 20_000 if quick else 100_000
    rounds = 5 if quick else 15
    huge = 1e12  # never runs dry: measures the decision itself
    ours = RateLimiter(huge, huge)
    theirs = AsyncLimiter(huge, 1)
    memory = storage.MemoryStorage()
    moving = strategies.MovingWindowRateLimiter(memory)
    fixed = strategies.FixedWindowRateLimiter(memory)
    item = parse("1000000000/second")

    def ours_try() -> float:
        try_acquire = ours.try_acquire
        t = time.perf_counter()
        for _ in range(n):
            try_acquire()
        return (time.perf_counter() - t) / n

    def aiolimiter_has_capacity() -> float:
        has_capacity = theirs.has_capacity
        t = time.perf_counter()
        for _ in range(n):
            has_capacity()
        return (time.perf_counter() - t) / n

    def limits_moving() -> float:
        t = time.perf_counter()
        for _ in range(n // 10):
            moving.hit(item, "k")
        return (time.perf_counter() - t) / (n // 10)

    def limits_fixed() -> float:
        t = time.perf_counter()
        for _ in range(n // 10):
            fixed.hit(item, "k")
        return (time.perf_counter() - t) / (n // 10)

    res = await interleave(
        {
            "RateLimiter.try_acquire": sync_round(ours_try),
            "AsyncLimiter.has_capacity": sync_round(aiolimiter_has_capacity),
            "limits moving-window hit": sync_round(limits_moving),
            "limits fixed-window hit": sync_round(limits_fixed),
        },
        rounds,
    )
    report.ratio(
        GROUP_RL,
        res["RateLimiter.try_acquire"],
        res["AsyncLimiter.has_capacity"],
        target=1.0,
        note="aiolimiter has no try_acquire; has_capacity does not consume",
    )
    report.ratio(
        GROUP_RL,
        res["RateLimiter.try_acquire"],
        res["limits moving-window hit"],
        note="secondary peer, in-memory",
    )
    report.ratio(
        GROUP_RL,
        res["RateLimiter.try_acquire"],
        res["limits fixed-window hit"],
        note="secondary peer, in-memory",
    )

    async def ours_acquire() -> float:
        acquire = ours.acquire
        t = time.perf_counter()
        for _ in range(n):
            await acquire()
        return (time.perf_counter() - t) / n

    async def aiolimiter_acquire() -> float:
        acquire = theirs.acquire
        t = time.perf_counter()
        for _ in range(n):
            await acquire()
        return (time.perf_counter() - t) / n

    res = await interleave(
        {"RateLimiter.acquire": ours_acquire, "AsyncLimiter.acquire": aiolimiter_acquire}, rounds
    )
    report.ratio(
        GROUP_RL,
        res["RateLimiter.acquire"],
        res["AsyncLimiter.acquire"],
        target=1.0,
        note="uncontended",
    )


async def bench_rate_accuracy(report: Report, quick: bool) -> None:
    """Saturate a limiter on the real clock for T seconds and count the grants."""
    rate, burst = 500.0, 50
    duration = 2.0 if quick else 10.0
    limiter = RateLimiter(rate, burst)
    granted = 0
    start = time.monotonic()
    deadline = start + duration

    async def consumer() -> None:
        nonlocal granted
        while True:
            await limiter.acquire()
            if time.monotonic() > deadline:
                return
            granted += 1

    await asyncio.gather(*(consumer() for _ in range(20)))
    expected = rate * duration + burst
    error = (granted - expected) / expected * 100
    report.figure(
        GROUP_RL,
        f"granted in {duration:g}s saturated (rate {rate:g}, burst {burst})",
        granted,
        "tokens",
        f"expected {expected:g}; error {error:+.2f}% (target ±1%)",
    )


async def bench_adaptive(report: Report, quick: bool) -> None:
    """What the adaptive bookkeeping costs on top of the plain FIFO limit (no peer, no target)."""
    n = 20_000 if quick else 100_000
    rounds = 5 if quick else 15
    adaptive = AdaptiveLimiter(10, 1, 100, None, 100.0)
    plain = Backpressure(10)

    async def adaptive_with() -> float:
        t = time.perf_counter()
        for _ in range(n):
            async with adaptive:
                pass
        return (time.perf_counter() - t) / n

    async def plain_with() -> float:
        t = time.perf_counter()
        for _ in range(n):
            async with plain:
                pass
        return (time.perf_counter() - t) / n

    res = await interleave(
        {"AdaptiveLimiter async with": adaptive_with, "Backpressure async with": plain_with},
        rounds,
    )
    report.ratio(
        GROUP_AL,
        res["AdaptiveLimiter async with"],
        res["Backpressure async with"],
        note="latency measured and sampled per call; overhead only",
    )


async def run(report: Report, quick: bool) -> None:
    await bench_backpressure(report, quick)
    await bench_adaptive(report, quick)
    await bench_rate_limiter(report, quick)
    await bench_rate_accuracy(report, quick)


if __name__ == "__main__":
    run_group(run)
