"""SimulatedBackend on a fake clock: seeded determinism, the latency distribution, the capacity
knee, the error rate, scripted outages and the slow recovery after them (and a ManagedProvider
riding one out)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics

import pytest

from zeroclaw.providers import ChatMessage, ManagedProvider, ProviderError, SimulatedBackend
from zeroclaw.providers.simulated import RECOVERY_SLOWDOWN
from zeroclaw.testing import FakeClock, settle

USER = [ChatMessage("user", "hi")]


async def timed_calls(backend: SimulatedBackend, clock: FakeClock, count: int) -> list[float]:
    """Run ``count`` calls one after another; return how long each took on the clock."""
    took: list[float] = []
    for _ in range(count):
        start = clock.now()
        call = asyncio.ensure_future(backend.complete(USER, model="m", temperature=0.0))
        while not call.done():
            await settle()
            deadline = clock.next_deadline
            if deadline is not None:
                clock.advance_to(deadline)
        with contextlib.suppress(ProviderError):
            call.result()
        took.append(clock.now() - start)
    return took


async def test_a_seed_fixes_the_run() -> None:
    async def run(seed: int) -> list[float]:
        clock = FakeClock()
        backend = SimulatedBackend(seed=seed, error_rate=0.2, clock=clock)
        return await timed_calls(backend, clock, 30)

    first, again, other = await run(1), await run(1), await run(2)
    assert first == again
    assert first != other


async def test_the_reply_names_the_message() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(clock=clock, latency_sigma=0.0, base_latency=0.2)
    call = asyncio.ensure_future(
        backend.complete(
            [ChatMessage("user", "first"), ChatMessage("assistant", "x"), ChatMessage("user", "q")],
            model="m",
            temperature=0.0,
        )
    )
    await clock.run_for(0.19)
    assert not call.done()
    await clock.run_for(0.01)
    assert call.result() == "simulated reply to: q"
    assert backend.calls == 1


async def test_latency_is_lognormal_around_the_base() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(seed=3, base_latency=0.5, latency_sigma=0.4, clock=clock)
    took = await timed_calls(backend, clock, 400)
    assert statistics.median(took) == pytest.approx(0.5, rel=0.1)
    logs = [math.log(t) for t in took]
    assert statistics.stdev(logs) == pytest.approx(0.4, rel=0.15)
    assert max(took) > 2 * min(took)  # really spread, right-skewed
    assert statistics.mean(took) > statistics.median(took)


def test_latency_for_is_the_knee() -> None:
    backend = SimulatedBackend(base_latency=0.2, latency_sigma=0.5, capacity=4)
    assert backend.latency_for(0.0, 1) == 0.2
    assert backend.latency_for(0.0, 4) == 0.2
    assert backend.latency_for(0.0, 8) == pytest.approx(0.4)
    assert backend.latency_for(1.0, 2) == pytest.approx(0.2 * math.exp(0.5))


async def test_past_capacity_calls_slow_down() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(base_latency=1.0, latency_sigma=0.0, capacity=4, clock=clock)
    finished: list[float] = []

    async def call() -> None:
        await backend.complete(USER, model="m", temperature=0.0)
        finished.append(clock.now())

    calls = asyncio.gather(*(call() for _ in range(8)))
    await settle()
    assert backend.in_flight == 8
    await clock.run_for(5.0)
    await calls
    # The k-th call started with k in flight: 1 s up to the knee, then k/4 s.
    assert finished == [1.0, 1.0, 1.0, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert backend.peak_in_flight == 8
    assert backend.in_flight == 0


async def test_the_error_rate() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(seed=5, base_latency=0.1, error_rate=0.25, clock=clock)
    await timed_calls(backend, clock, 400)
    assert backend.errors == pytest.approx(100, abs=25)
    always = SimulatedBackend(error_rate=1.0, clock=clock)
    call = asyncio.ensure_future(always.complete(USER, model="m", temperature=0.0))
    await clock.run_for(5.0)
    error = call.exception()
    assert isinstance(error, ProviderError)
    assert (error.status, error.code, error.retryable) == (503, "service_unavailable", True)


async def test_an_outage_fails_every_call_quickly_then_recovers() -> None:
    clock = FakeClock(start=100.0)
    backend = SimulatedBackend(
        base_latency=0.2, latency_sigma=0.0, outages=[(10.0, 5.0)], clock=clock
    )
    outcomes: list[str] = []
    for at in (0.0, 9.7, 10.0, 12.0, 14.7, 15.0, 20.0):
        clock.advance_to(100.0 + at)
        call = asyncio.ensure_future(backend.complete(USER, model="m", temperature=0.0))
        await clock.run_for(0.25)
        error = call.exception()
        assert error is None or (isinstance(error, ProviderError) and error.status == 503)
        outcomes.append("ok" if error is None else "503")
    # Measured from the first call (at 100.0): down from 10 s for 5 s.
    assert outcomes == ["ok", "ok", "503", "503", "503", "ok", "ok"]
    assert backend.outage_failures == 3
    assert not backend.in_outage(100.0 + 15.0)
    assert backend.in_outage(100.0 + 10.0)


def test_recovery_after_an_outage_fades_linearly() -> None:
    backend = SimulatedBackend(error_rate=0.1, outages=[(10.0, 5.0)], recovery=4.0)
    # Ends at 15 s: fully unwell there, half-way at 17 s, well again from 19 s.
    assert backend.recovering(14.0) == 0.0
    assert backend.recovering(15.0) == 1.0
    assert backend.recovering(17.0) == pytest.approx(0.5)
    assert backend.recovering(19.0) == 0.0
    assert backend.error_rate_at(15.0) == 1.0
    assert backend.error_rate_at(17.0) == pytest.approx(0.55)
    assert backend.error_rate_at(30.0) == pytest.approx(0.1)
    slowest = backend.latency_for(0.0, 1, 15.0)
    assert slowest == pytest.approx(backend.base_latency * RECOVERY_SLOWDOWN)
    assert backend.latency_for(0.0, 1, 17.0) == pytest.approx(
        backend.base_latency * (1 + RECOVERY_SLOWDOWN) / 2
    )
    assert backend.latency_for(0.0, 1, 19.0) == backend.base_latency
    assert SimulatedBackend(outages=[(10.0, 5.0)]).recovering(15.0) == 0.0


async def test_calls_fail_less_and_less_while_recovering() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(
        seed=3,
        base_latency=0.01,
        latency_sigma=0.0,
        outages=[(0.0, 1.0)],
        recovery=100.0,
        clock=clock,
    )
    await timed_calls(backend, clock, 1)  # the first call starts the schedule, in the outage
    clock.advance_to(1.0)
    early = await _failures(backend, clock, 200)
    clock.advance_to(81.0)  # 80 % recovered
    late = await _failures(backend, clock, 200)
    # Failure probability about 0.99 then about 0.2 (the calls take 2 s in each batch).
    assert early >= 190
    assert 20 <= late <= 70


async def _failures(backend: SimulatedBackend, clock: FakeClock, count: int) -> int:
    before = backend.errors
    await timed_calls(backend, clock, count)
    return backend.errors - before


async def test_outage_failures_come_after_the_short_outage_latency() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(base_latency=1.0, outages=[(0.0, 60.0)], clock=clock)
    assert not backend.in_outage()  # nothing has started yet
    call = asyncio.ensure_future(backend.complete(USER, model="m", temperature=0.0))
    await clock.run_for(0.049)
    assert not call.done()
    await clock.run_for(0.001)
    error = call.exception()
    assert isinstance(error, ProviderError)
    assert error.message == "simulated outage"


async def test_a_managed_provider_rides_out_a_short_outage() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(
        base_latency=0.1, latency_sigma=0.0, outages=[(0.0, 0.5)], clock=clock
    )
    provider = ManagedProvider(backend, max_retries=5, clock=clock)
    call = asyncio.ensure_future(provider.complete(USER, model="m", temperature=0.0))
    await clock.run_for(30.0)
    assert call.result() == "simulated reply to: hi"
    stats = provider.stats()
    assert stats.retries == backend.outage_failures >= 1
    assert stats.requests_by_status["503"] == backend.outage_failures
    assert stats.limiter is not None
    assert stats.limiter.drops == backend.outage_failures


async def test_closed_backend_refuses() -> None:
    backend = SimulatedBackend()
    await backend.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await backend.complete(USER, model="m", temperature=0.0)


async def test_no_user_message() -> None:
    with pytest.raises(ValueError, match="no user message"):
        await SimulatedBackend().complete([ChatMessage("system", "s")], model="m", temperature=0.0)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"capacity": 0}, ValueError, "capacity"),
        ({"capacity": 2.5}, TypeError, "capacity"),
        ({"error_rate": 1.5}, ValueError, "error_rate"),
        ({"error_rate": True}, TypeError, "error_rate"),
        ({"base_latency": -1}, ValueError, "base_latency"),
        ({"latency_sigma": float("nan")}, ValueError, "latency_sigma"),
        ({"seed": "x"}, TypeError, "seed"),
        ({"outages": [(1.0,)]}, TypeError, r"outages\[0\]"),
        ({"outages": ["ab"]}, TypeError, r"outages\[0\]"),
        ({"outages": [(1.0, -2.0)]}, ValueError, r"outages\[0\] duration"),
        ({"outages": [(float("inf"), 1.0)]}, ValueError, r"outages\[0\] start"),
        ({"recovery": -1.0}, ValueError, "recovery"),
    ],
)
def test_validation(options: dict[str, object], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        SimulatedBackend(**options)  # type: ignore[arg-type]


def test_outages_accept_lists_from_toml_and_are_sorted() -> None:
    backend = SimulatedBackend(outages=[[30, 5], [10, float("inf")]])  # type: ignore[list-item]
    assert backend.outages == ((10.0, math.inf), (30.0, 5.0))
    assert "outages" in repr(backend)
