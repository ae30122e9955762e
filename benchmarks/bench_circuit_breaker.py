"""Circuit breaker closed path (admit + record success) vs aiobreaker, purgatory, pybreaker.

Every contender guards the same trivial protected call (``await noop()``, or ``noop()`` on the sync
rows), on a closed breaker, in the same run, rounds interleaved (``benchmarks.harness``).

- ours ``async with breaker: await noop()`` vs aiobreaker ``await breaker.call_async(noop)`` and
  purgatory ``async with breaker: await noop()`` (both the way purgatory's decorator does it,
  ``get_breaker`` per call, and with the breaker object fetched once, which is faster for it).
- a floor: an empty ``async with`` whose ``__aenter__``/``__aexit__`` return done futures (the
  cheapest async context manager we know of in CPython), to show what any ``async with`` costs.
- pybreaker's async path (``call_async``) needs Tornado, which is not installed; so its sync
  ``call(noop)`` is measured against our sync manual protocol (``allow_request`` + ``noop()`` +
  ``record_success``, without and with the ticket ``allow_request`` returns), and, for
  information, against our ``async with`` too.

Target (issue 5): ours at least 2x faster than the fastest peer (ratio <= 0.5).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import aiobreaker
import purgatory
import pybreaker

from benchmarks.harness import Report, interleave, run_group
from zeroclaw.concurrency.circuit_breaker import CircuitBreaker, CircuitBreakerGroup, CircuitConfig

GROUP = "circuit_breaker"
TARGET = 0.5


async def noop() -> None:
    return None


def noop_sync() -> None:
    return None


class EmptyAsyncWith:
    """The floor: an async context manager that does nothing, as cheaply as possible."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._entered: asyncio.Future[None] = loop.create_future()
        self._entered.set_result(None)

    def __aenter__(self) -> Awaitable[None]:
        return self._entered

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        return self._entered


def timed(body: Callable[[int], Awaitable[None]], ops: int) -> Callable[[], Awaitable[float]]:
    async def round_fn() -> float:
        start = time.perf_counter()
        await body(ops)
        return (time.perf_counter() - start) / ops

    return round_fn


async def run(report: Report, quick: bool) -> None:
    ops = 5_000 if quick else 50_000
    rounds = 7 if quick else 31

    ours = CircuitBreaker(CircuitConfig(), name="bench")
    aio = aiobreaker.CircuitBreaker(fail_max=5)
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    hoisted = await factory.get_breaker("bench")
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    empty = EmptyAsyncWith()

    async def floor_async_with(n: int) -> None:
        manager = empty
        for _ in range(n):
            async with manager:
                await noop()

    async def ours_async_with(n: int) -> None:
        breaker = ours
        for _ in range(n):
            async with breaker:
                await noop()

    async def ours_call(n: int) -> None:
        call = ours.call
        for _ in range(n):
            await call(noop)

    async def ours_manual_sync(n: int) -> None:
        breaker = ours
        for _ in range(n):
            if breaker.allow_request():
                noop_sync()
                breaker.record_success()

    async def ours_manual_ticket_sync(n: int) -> None:
        breaker = ours
        for _ in range(n):
            if ticket := breaker.allow_request():
                noop_sync()
                breaker.record_success(ticket)

    async def aiobreaker_call_async(n: int) -> None:
        call_async = aio.call_async
        for _ in range(n):
            await call_async(noop)

    async def purgatory_per_call(n: int) -> None:
        get_breaker = factory.get_breaker
        for _ in range(n):
            async with await get_breaker("bench"):
                await noop()

    async def purgatory_hoisted(n: int) -> None:
        breaker = hoisted
        for _ in range(n):
            async with breaker:
                await noop()

    async def pybreaker_sync_call(n: int) -> None:
        call = pyb.call
        for _ in range(n):
            call(noop_sync)

    timings = await interleave(
        {
            "ours async with": timed(ours_async_with, ops),
            "ours call": timed(ours_call, ops),
            "ours manual (sync)": timed(ours_manual_sync, ops),
            "ours manual with ticket (sync)": timed(ours_manual_ticket_sync, ops),
            "aiobreaker call_async": timed(aiobreaker_call_async, ops),
            "purgatory async with (get_breaker per call)": timed(purgatory_per_call, ops // 5),
            "purgatory async with (hoisted)": timed(purgatory_hoisted, ops),
            "pybreaker call (sync)": timed(pybreaker_sync_call, ops),
            "floor: empty async with": timed(floor_async_with, ops),
        },
        rounds,
    )
    ours_with = timings["ours async with"]
    async_peers = [
        "aiobreaker call_async",
        "purgatory async with (hoisted)",
        "purgatory async with (get_breaker per call)",
    ]
    notes = {
        "aiobreaker call_async": "",
        "purgatory async with (hoisted)": "breaker fetched once; not purgatory's documented form",
        "purgatory async with (get_breaker per call)": "purgatory's documented form and decorator",
    }
    for peer in async_peers:
        report.ratio(GROUP, ours_with, timings[peer], target=TARGET, note=notes[peer])
    report.ratio(
        GROUP,
        timings["floor: empty async with"],
        timings["purgatory async with (hoisted)"],
        note="what a do-nothing async with would score: the 0.5 target's feasibility",
    )
    fastest_async = min(async_peers, key=lambda name: timings[name].median)
    report.ratio(
        GROUP,
        timings["ours call"],
        timings[fastest_async],
        target=TARGET,
        note="our call() form vs the fastest async peer",
    )
    report.ratio(
        GROUP,
        timings["ours manual (sync)"],
        timings["pybreaker call (sync)"],
        target=TARGET,
        note="sync vs sync: pybreaker's call_async needs Tornado (not installed)",
    )
    report.ratio(
        GROUP,
        timings["ours manual with ticket (sync)"],
        timings["pybreaker call (sync)"],
        target=TARGET,
        note="the manual protocol as documented: record_*(ticket)",
    )
    report.ratio(
        GROUP,
        ours_with,
        timings["pybreaker call (sync)"],
        target=TARGET,
        note="async form vs pybreaker's sync call (ours pays for a coroutine per call)",
    )
    for timing in timings.values():
        report.figure(GROUP, timing.name, timing.median * 1e9, "ns/op")

    # The per-key group's lookup cost (a hit), for the gateway's per-provider use.
    group = CircuitBreakerGroup(max_breakers=10_000)
    names = [f"provider-{i}" for i in range(1000)]
    for name in names:
        group.get_or_create(name)

    async def group_hit(n: int) -> None:
        get = group.get_or_create
        count = len(names)
        for i in range(n):
            get(names[i % count])

    group_timing = await interleave({"group get_or_create (hit)": timed(group_hit, ops)}, rounds)
    report.figure(
        GROUP,
        "group get_or_create (hit)",
        group_timing["group get_or_create (hit)"].median * 1e9,
        "ns/op",
    )


if __name__ == "__main__":
    run_group(run)
