"""AdaptiveLimiter (both modes) vs fixed concurrency limits, against two simulated providers.

Both providers are simulated on a fake clock, so a minute of traffic takes a second and every run
is the same. Demand is far above capacity (``10 C`` clients). An answer that took longer than
``deadline`` from the provider call is useless (the caller timed out); goodput counts answers that
arrived in time; latency is the provider call's. Both adaptive limiters start at 2 and report 503s
as drops.

* **Knee**: the provider serves ``C`` requests at once in ``base`` seconds; more requests queue,
  and past the knee it thrashes: each request's service time grows with the requests in flight
  beyond ``C``, and beyond ``3C`` in flight it answers 503 at once. Fixed limits: too low (C/2),
  right (C), too high (4C, 10C); the target mode aims at 1.5 × base, the gradient mode is given
  no target.
* **Flat** (an LLM whose latency is the length of its answer): 150 ms however many requests are
  in flight, and a 503 at once beyond its concurrency quota of ``6C``. Both modes are given a
  100 ms target (in gradient mode only a floor), the case where an absolute target collapses.

``--chart PATH`` also writes an SVG chart of goodput and p99 latency of the knee scenario.
"""

from __future__ import annotations

import asyncio
import heapq
import pathlib
import random
import statistics
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from benchmarks.harness import Report, run_group
from zeroclaw.concurrency.backpressure import AdaptiveLimiter, Backpressure
from zeroclaw.testing import FakeClock

GROUP = "adaptive"
CAPACITY = 10
BASE = 0.1
DEADLINE = 0.5
FLAT_LATENCY = 0.15
FLAT_QUOTA = 6 * CAPACITY
FLAT_TARGET_MS = 100.0


class Overloaded503(Exception):
    pass


class KneeProvider:
    """``capacity`` servers and a FIFO queue; slower past the knee; 503 beyond ``3 × capacity``."""

    def __init__(self, clock: FakeClock, capacity: int, base: float, seed: int) -> None:
        self.clock = clock
        self.capacity = capacity
        self.base = base
        self.free_at = [0.0] * capacity
        self.rng = random.Random(seed)
        self.in_flight = 0

    async def call(self) -> None:
        now = self.clock.now()
        if self.in_flight >= 3 * self.capacity:
            await self.clock.sleep(0.001)
            raise Overloaded503
        self.in_flight += 1
        try:
            overload = max(0, self.in_flight - self.capacity) / self.capacity
            service = self.base * self.rng.uniform(0.9, 1.1) * (1 + overload)
            start = max(now, heapq.heappop(self.free_at))
            heapq.heappush(self.free_at, start + service)
            await self.clock.sleep(start + service - now)
        finally:
            self.in_flight -= 1


class FlatProvider:
    """``latency`` seconds whatever the load (±10 %); 503 at once beyond ``quota`` in flight."""

    def __init__(self, clock: FakeClock, latency: float, quota: int, seed: int) -> None:
        self.clock = clock
        self.latency = latency
        self.quota = quota
        self.rng = random.Random(seed)
        self.in_flight = 0

    async def call(self) -> None:
        if self.in_flight >= self.quota:
            await self.clock.sleep(0.001)
            raise Overloaded503
        self.in_flight += 1
        try:
            await self.clock.sleep(self.latency * self.rng.uniform(0.9, 1.1))
        finally:
            self.in_flight -= 1


Provider = KneeProvider | FlatProvider


@dataclass
class Outcome:
    name: str
    goodput: float  # answers in time per second
    p50_ms: float  # of every answer, late ones included
    p99_ms: float
    errors: int
    late: int
    mean_limit: float


Gate = Callable[[], AbstractAsyncContextManager[object]]


def knee(clock: FakeClock, seed: int) -> Provider:
    return KneeProvider(clock, CAPACITY, BASE, seed)


def flat(clock: FakeClock, seed: int) -> Provider:
    return FlatProvider(clock, FLAT_LATENCY, FLAT_QUOTA, seed)


async def simulate(
    name: str,
    make_gate: Callable[[FakeClock], tuple[Gate, Callable[[], int]]],
    *,
    seconds: float,
    seed: int = 11,
    make_provider: Callable[[FakeClock, int], Provider] = knee,
) -> Outcome:
    clock = FakeClock()
    provider = make_provider(clock, seed)
    gate, current_limit = make_gate(clock)
    warm_up = seconds / 4
    latencies: list[float] = []
    limits: list[int] = []
    errors = late = 0

    async def client() -> None:
        nonlocal errors, late
        while True:
            try:
                async with gate():
                    started = clock.now()
                    await provider.call()
            except Overloaded503:
                if clock.now() >= warm_up:
                    errors += 1
                await clock.sleep(0.01)
                continue
            latency = clock.now() - started
            if clock.now() >= warm_up:
                latencies.append(latency)
                late += latency > DEADLINE

    async def watcher() -> None:
        while True:
            await clock.sleep(BASE)
            if clock.now() >= warm_up:
                limits.append(current_limit())

    tasks = [asyncio.ensure_future(client()) for _ in range(10 * CAPACITY)]
    tasks.append(asyncio.ensure_future(watcher()))
    await clock.run_for(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    measured = seconds - warm_up
    ordered = sorted(latencies) or [float("nan")]
    return Outcome(
        name,
        (len(latencies) - late) / measured,
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        errors,
        late,
        statistics.fmean(limits),
    )


def fixed(limit: int) -> Callable[[FakeClock], tuple[Gate, Callable[[], int]]]:
    def make(clock: FakeClock) -> tuple[Gate, Callable[[], int]]:
        bp = Backpressure(limit, clock=clock)
        return (lambda: bp), (lambda: limit)

    return make


def adaptive(
    mode: str, target_ms: float | None
) -> Callable[[FakeClock], tuple[Gate, Callable[[], int]]]:
    def make(clock: FakeClock) -> tuple[Gate, Callable[[], int]]:
        limiter = AdaptiveLimiter(2, 1, 20 * CAPACITY, None, target_ms, clock=clock, mode=mode)
        return limited(clock, limiter), lambda: limiter.current_limit

    return make


def limited(clock: FakeClock, limiter: AdaptiveLimiter) -> Gate:
    """``async with gate():`` through ``limiter``: 503s are drops, other exceptions not samples."""

    @asynccontextmanager
    async def gate() -> AsyncIterator[object]:
        permit = await limiter.acquire()
        started = clock.now()
        try:
            yield permit
        except Overloaded503:
            permit.release(dropped=True)
            raise
        except BaseException:
            permit.release(ignore=True)
            raise
        permit.release((clock.now() - started) * 1000)

    return gate


def svg_chart(outcomes: list[Outcome]) -> str:
    """Two bar charts side by side: goodput (answers/s) and p99 latency (ms)."""
    width, height, pad = 900, 300, 40
    panel = (width - 3 * pad) // 2
    bar = panel // (len(outcomes) * 2)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 50}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height + 50}" fill="white"/>',
        f'<text x="{pad}" y="{height + 40}" fill="#555">provider capacity {CAPACITY}, '
        f"{BASE * 1000:.0f} ms per request, deadline {DEADLINE * 1000:.0f} ms; adaptive target "
        f"{1.5 * BASE * 1000:.0f} ms, adaptive gradient: no target</text>",
    ]
    for index, (title, value, color) in enumerate(
        [
            ("goodput (answers in time / s)", "goodput", "#2a7"),
            ("p99 latency (ms)", "p99_ms", "#c53"),
        ]
    ):
        left = pad + index * (panel + pad)
        values = [getattr(o, value) for o in outcomes]
        top = max(v for v in values if v == v) * 1.15 or 1.0
        parts.append(f'<text x="{left}" y="20" font-size="13">{title}</text>')
        parts.append(
            f'<line x1="{left}" y1="{height}" x2="{left + panel}" y2="{height}" stroke="#333"/>'
        )
        for i, (outcome, v) in enumerate(zip(outcomes, values, strict=True)):
            x = left + bar // 2 + i * 2 * bar
            h = 0 if v != v else int((height - 40) * v / top)
            parts.append(
                f'<rect x="{x}" y="{height - h}" width="{bar}" height="{h}" fill="{color}"/>'
            )
            parts.append(f'<text x="{x}" y="{height - h - 4}">{v:.0f}</text>')
            first, _, second = outcome.name.split(" (")[0].partition(" ")
            parts.append(
                f'<text x="{x + bar / 2}" y="{height + 14}" text-anchor="middle">{first}'
                f'<tspan x="{x + bar / 2}" dy="12">{second}</tspan></text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def markdown(outcomes: list[Outcome]) -> str:
    lines = [
        "| limit | goodput (answers in time/s) | p50 ms | p99 ms | 503s | late | mean limit |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {o.name} | {o.goodput:.1f} | {o.p50_ms:.0f} | {o.p99_ms:.0f} | {o.errors} | "
        f"{o.late} | {o.mean_limit:.1f} |"
        for o in outcomes
    ]
    return "\n".join(lines)


async def run(report: Report, quick: bool) -> None:
    seconds = 40.0 if quick else 120.0
    target_ms = 1.5 * BASE * 1000
    contenders = [
        (f"fixed {CAPACITY // 2} (too low)", fixed(CAPACITY // 2)),
        (f"fixed {CAPACITY} (right)", fixed(CAPACITY)),
        (f"fixed {4 * CAPACITY} (too high)", fixed(4 * CAPACITY)),
        (f"fixed {10 * CAPACITY} (far too high)", fixed(10 * CAPACITY)),
        (f"adaptive target ({target_ms:.0f} ms)", adaptive("target", target_ms)),
        ("adaptive gradient (no target)", adaptive("gradient", None)),
    ]
    outcomes = [await simulate(name, make, seconds=seconds) for name, make in contenders]
    print(
        f"\nknee: capacity {CAPACITY}, {BASE * 1000:.0f} ms per request, 503 beyond "
        f"{3 * CAPACITY} in flight; deadline {DEADLINE * 1000:.0f} ms; {10 * CAPACITY} clients; "
        f"{seconds:.0f} simulated s\n"
    )
    print(markdown(outcomes))
    for outcome in outcomes:
        note = f"p50 {outcome.p50_ms:.0f} ms, p99 {outcome.p99_ms:.0f} ms"
        report.figure(GROUP, f"goodput, {outcome.name}", outcome.goodput, "answers/s", note)
    LAST_OUTCOMES[:] = outcomes

    flat_contenders = [
        (f"fixed {CAPACITY}", fixed(CAPACITY)),
        (f"fixed {FLAT_QUOTA} (the quota)", fixed(FLAT_QUOTA)),
        (f"adaptive target ({FLAT_TARGET_MS:.0f} ms)", adaptive("target", FLAT_TARGET_MS)),
        (
            f"adaptive gradient (floor {FLAT_TARGET_MS:.0f} ms)",
            adaptive("gradient", FLAT_TARGET_MS),
        ),
    ]
    flat_outcomes = [
        await simulate(name, make, seconds=seconds, make_provider=flat)
        for name, make in flat_contenders
    ]
    print(
        f"\nflat: {FLAT_LATENCY * 1000:.0f} ms per request whatever the load, 503 beyond "
        f"{FLAT_QUOTA} in flight; deadline {DEADLINE * 1000:.0f} ms; {10 * CAPACITY} clients; "
        f"{seconds:.0f} simulated s\n"
    )
    print(markdown(flat_outcomes))
    for outcome in flat_outcomes:
        note = f"p50 {outcome.p50_ms:.0f} ms, p99 {outcome.p99_ms:.0f} ms, {outcome.errors} 503s"
        report.figure(GROUP, f"flat goodput, {outcome.name}", outcome.goodput, "answers/s", note)


LAST_OUTCOMES: list[Outcome] = []

if __name__ == "__main__":
    argv = sys.argv[1:]
    chart = None
    if "--chart" in argv:
        at = argv.index("--chart")
        chart = argv[at + 1]
        argv = argv[:at] + argv[at + 2 :]
    run_group(run, argv)
    if chart:
        pathlib.Path(chart).write_text(svg_chart(LAST_OUTCOMES))
        print(f"chart written to {chart}")
