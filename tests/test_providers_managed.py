"""ManagedProvider: the retry rules, waits and pause (docs/providers.md), the adaptive limiter,
stats and logging; over real loopback sockets against the fake OpenAI server where HTTP matters.

The backoff sleeps and the rate limiter run on a fake clock, so the waits are exact and instant;
only the request timeout (real I/O) takes real time, 0.3 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.openai_server import (
    FakeOpenAI,
    Respond,
    bad_request,
    completion,
    error,
    hang,
    insufficient_quota,
    rate_limited,
    truncated,
    unavailable,
)
from zeroclaw.backends.redis import Keys, connect
from zeroclaw.backends.redis.rate_limit import RedisRateLimiter
from zeroclaw.concurrency._clock import Cancellable
from zeroclaw.concurrency.channel_integration import Provider
from zeroclaw.providers import (
    ChatMessage,
    EchoBackend,
    ManagedProvider,
    ProviderError,
    SimulatedBackend,
)
from zeroclaw.providers.managed import PAUSE_ONLY_RATE, backoff_ceiling
from zeroclaw.providers.openai import OpenAIBackend
from zeroclaw.testing import FakeClock, settle

USER = [ChatMessage("user", "hello")]
# A grant after a pause waits one token's refill of the pause-only limiter on top of the pause.
AFTER_PAUSE = 1 / PAUSE_ONLY_RATE


class SteppingClock(FakeClock):
    """A fake clock that jumps to each deadline as soon as it is armed, and records the jumps.

    Right for a test with one call in flight: while the call waits on this clock nothing else
    can happen, so the time may as well pass at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:  # type: ignore[override]
        timer = super().call_later(delay, callback)
        asyncio.get_running_loop().call_soon(self._step)
        return timer

    def _step(self) -> None:
        deadline = self.next_deadline
        if deadline is not None:
            self.waits.append(deadline - self.now())
            self.advance_to(deadline)


class SignallingClock(FakeClock):
    """A fake clock that sets :attr:`armed` when something starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = asyncio.Event()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:  # type: ignore[override]
        self.armed.set()
        return super().call_later(delay, callback)


class FixedRandom(random.Random):
    """Full jitter with a fixed draw: the wait is ``fraction`` of the ceiling."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


class Scripted:
    """A backend that fails with the given errors, in order, then echoes."""

    def __init__(self, clock: FakeClock, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.clock = clock
        self.called_at: list[float] = []

    @property
    def name(self) -> str:
        return "scripted"

    async def complete(
        self, messages: Sequence[ChatMessage], *, model: str, temperature: float
    ) -> str:
        self.called_at.append(self.clock.now())
        if self.errors:
            raise self.errors.pop(0)
        return messages[-1].content

    async def aclose(self) -> None:
        return None


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(now=clock.now) as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOpenAI, clock: FakeClock) -> AsyncIterator[ManagedProvider]:
    managed = ManagedProvider(
        OpenAIBackend(fake.base_url, "sk-test", request_timeout=10.0),
        max_retries=2,
        clock=clock,
        rng=FixedRandom(0.5),
    )
    yield managed
    await managed.aclose()


def arrivals(fake: FakeOpenAI) -> list[float]:
    return [request.received_at for request in fake.requests]


def near(*times: float) -> object:
    """The times, up to the rate limiter's float slack (it grants up to 1e-9 s early)."""
    return pytest.approx(list(times), abs=1e-6)


async def ask(provider: ManagedProvider) -> str:
    return await provider.complete(USER, model="m", temperature=0.0)


# -- retried ------------------------------------------------------------------------------------


async def test_429_with_retry_after_waits_exactly_that_then_succeeds(
    fake: FakeOpenAI, provider: ManagedProvider, clock: SteppingClock
) -> None:
    fake.script(rate_limited(retry_after="2"), completion("ok"))
    assert await ask(provider) == "ok"
    assert arrivals(fake) == near(0.0, 2.0 + AFTER_PAUSE)
    stats = provider.stats()
    assert (stats.calls, stats.successes, stats.failures, stats.retries) == (1, 1, 0, 1)
    assert dict(stats.requests_by_status) == {"429": 1, "200": 1}
    assert dict(stats.errors_by_class) == {}
    assert json.loads(json.dumps(stats.requests_by_status)) == {"429": 1, "200": 1}  # for /status
    # The wait was a pause of the provider-wide limiter, not a private sleep.
    assert provider.rate_limiter.stats().granted_count == 2


@pytest.mark.parametrize(
    ("respond", "wait"),
    [
        (rate_limited(retry_after_ms="1500"), 1.5),
        (rate_limited(retry_after="7", retry_after_ms="250"), 0.25),
        (rate_limited(retry_after="120"), 60.0),  # honoured up to 60 s
        (rate_limited(retry_after="0"), 0.0),
        (unavailable(headers={"retry-after": "3"}), 3.0),  # any retryable status
    ],
)
async def test_retry_after_variants(
    fake: FakeOpenAI, provider: ManagedProvider, respond: Respond, wait: float
) -> None:
    fake.script(respond, completion("ok"))
    assert await ask(provider) == "ok"
    assert arrivals(fake) == near(0.0, wait + AFTER_PAUSE)


async def test_503_backs_off_exponentially_then_gives_up(
    fake: FakeOpenAI, provider: ManagedProvider, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(unavailable(), unavailable(), unavailable(), completion("never sent"))
    with (
        caplog.at_level(logging.WARNING, "zeroclaw.providers"),
        pytest.raises(ProviderError) as caught,
    ):
        await ask(provider)
    assert caught.value.status == 503
    # max_retries=2: three attempts; the draws are half of 0.5 s, then half of 1 s.
    assert arrivals(fake) == [0.0, 0.25, 0.75]
    assert fake.pending == 1
    stats = provider.stats()
    assert (stats.calls, stats.successes, stats.failures, stats.retries) == (1, 0, 1, 2)
    assert dict(stats.requests_by_status) == {"503": 3}
    assert dict(stats.errors_by_class) == {"server": 1}
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "3 attempt(s)" in record.getMessage()
    assert "status=503 code=server_error" in record.getMessage()


@pytest.mark.parametrize("status", [408, 409, 500, 502, 504])
async def test_retried_statuses(fake: FakeOpenAI, provider: ManagedProvider, status: int) -> None:
    fake.script(error(status, "try again"), completion("ok"))
    assert await ask(provider) == "ok"
    assert arrivals(fake) == [0.0, 0.25]


async def test_a_hang_times_out_and_is_retried(fake: FakeOpenAI, clock: SteppingClock) -> None:
    # The one real wait of this file: a request timeout is real I/O. 0.5 s is long enough for the
    # retry's answer on a busy machine, and short enough to keep the test quick.
    provider = ManagedProvider(
        OpenAIBackend(fake.base_url, request_timeout=0.5), clock=clock, rng=FixedRandom(0.5)
    )
    fake.script(hang(), completion("ok"))
    try:
        assert await ask(provider) == "ok"
    finally:
        await provider.aclose()
    assert len(fake.requests) == 2
    assert dict(provider.stats().requests_by_status) == {"timeout": 1, "200": 1}
    assert provider.stats().retries == 1


async def test_hangs_until_the_retries_are_spent(fake: FakeOpenAI, clock: SteppingClock) -> None:
    provider = ManagedProvider(
        OpenAIBackend(fake.base_url, request_timeout=0.3), max_retries=1, clock=clock
    )
    fake.script(hang(), hang())
    try:
        with pytest.raises(ProviderError) as caught:
            await ask(provider)
    finally:
        await provider.aclose()
    assert caught.value.code == "timeout"
    assert len(fake.requests) == 2
    stats = provider.stats()
    assert dict(stats.errors_by_class) == {"timeout": 1}
    assert dict(stats.requests_by_status) == {"timeout": 2}
    assert stats.limiter is not None
    assert stats.limiter.drops == 2  # timeouts are drops: 4 -> 2 -> 1
    assert stats.concurrency_limit == 1


async def test_a_body_cut_short_is_retried(fake: FakeOpenAI, provider: ManagedProvider) -> None:
    fake.script(truncated(), completion("ok"))
    assert await ask(provider) == "ok"
    assert dict(provider.stats().requests_by_status) == {"connection_error": 1, "200": 1}


async def test_a_refused_connection_is_retried_then_fails(clock: SteppingClock) -> None:
    async with FakeOpenAI() as gone:
        base_url = gone.base_url
    provider = ManagedProvider(OpenAIBackend(base_url), clock=clock, rng=FixedRandom(1.0))
    try:
        with pytest.raises(ProviderError) as caught:
            await ask(provider)
    finally:
        await provider.aclose()
    assert caught.value.code == "connection_error"
    assert clock.waits == [0.5, 1.0]
    assert dict(provider.stats().errors_by_class) == {"connection": 1}


# -- not retried --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("respond", "error_class"),
    [
        (bad_request(), "bad_request"),
        (insufficient_quota(), "quota"),
        (error(401, "Incorrect API key provided", code="invalid_api_key"), "auth"),
        (error(403, "forbidden"), "auth"),
        (error(404, "The model does not exist", code="model_not_found"), "bad_request"),
    ],
)
async def test_not_retried(
    fake: FakeOpenAI,
    provider: ManagedProvider,
    clock: SteppingClock,
    respond: Respond,
    error_class: str,
) -> None:
    fake.script(respond, completion("never sent"))
    with pytest.raises(ProviderError) as caught:
        await ask(provider)
    assert caught.value.retryable is False
    assert len(fake.requests) == 1
    assert clock.now() == 0.0  # no wait at all
    stats = provider.stats()
    assert (stats.retries, stats.failures) == (0, 1)
    assert dict(stats.errors_by_class) == {error_class: 1}


async def test_max_retries_zero_means_one_attempt(fake: FakeOpenAI, clock: SteppingClock) -> None:
    provider = ManagedProvider(OpenAIBackend(fake.base_url), max_retries=0, clock=clock)
    fake.script(unavailable(), completion("never sent"))
    try:
        with pytest.raises(ProviderError):
            await ask(provider)
    finally:
        await provider.aclose()
    assert len(fake.requests) == 1


async def test_a_foreign_exception_is_raised_at_once_and_counted_as_other(
    clock: SteppingClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Scripted(clock, KeyError("bug"))
    provider = ManagedProvider(backend, clock=clock)
    with caplog.at_level(logging.WARNING, "zeroclaw.providers"), pytest.raises(KeyError):
        await ask(provider)
    assert backend.called_at == [0.0]
    assert dict(provider.stats().errors_by_class) == {"other": 1}
    assert "KeyError" in caplog.text
    assert provider.stats().limiter is not None
    assert provider.stats().concurrency_limit == 4  # as it started: says nothing about load


# -- the backoff ----------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_from_half_a_second_up_to_eight() -> None:
    assert [backoff_ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_ceiling(10_000) == 8.0


async def test_the_backoff_is_capped_at_eight_seconds(clock: SteppingClock) -> None:
    backend = Scripted(clock, *(ProviderError(503, None, "busy") for _ in range(6)))
    provider = ManagedProvider(backend, max_retries=6, clock=clock, rng=FixedRandom(1.0))
    assert await ask(provider) == "hello"
    assert clock.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backend.called_at == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 23.5]


async def test_full_jitter_draws_from_the_whole_range_and_is_seeded() -> None:
    async def run() -> list[float]:
        clock = SteppingClock()
        backend = Scripted(clock, *(ProviderError(500, None, "oops") for _ in range(5)))
        provider = ManagedProvider(backend, max_retries=5, clock=clock, rng=random.Random(7))
        await ask(provider)
        return clock.waits

    first, second = await run(), await run()
    assert first == second  # the same seed, the same waits
    assert all(0.0 <= wait <= backoff_ceiling(n) for n, wait in enumerate(first))
    assert len(set(first)) == len(first)  # really drawn, not fixed


# -- the provider-wide pause ----------------------------------------------------------------------


async def test_a_retry_after_pauses_every_call_not_only_the_one_that_got_it() -> None:
    clock = SignallingClock()
    async with FakeOpenAI(now=clock.now) as fake:
        provider = ManagedProvider(OpenAIBackend(fake.base_url), clock=clock)
        fake.script(rate_limited(retry_after="2"), completion("a"), completion("b"))
        calls = [asyncio.create_task(ask(provider))]
        try:
            # Real I/O: wait (bounded) until the 429 came back and its retry waits in the limiter.
            await asyncio.wait_for(clock.armed.wait(), 5)
            assert provider.rate_limiter.stats().waiting_count == 1
            assert provider.stats().paused_for == 2.0
            calls.append(asyncio.create_task(ask(provider)))
            await settle()
            assert provider.rate_limiter.stats().waiting_count == 2  # the newcomer waits too
            assert len(fake.requests) == 1
            clock.advance(2.001)
            assert sorted(await asyncio.gather(*calls)) == ["a", "b"]
        finally:
            for call in calls:
                call.cancel()
            await provider.aclose()
    assert len(fake.requests) == 3
    assert all(at >= 2.0 for at in arrivals(fake)[1:])
    assert dict(provider.stats().requests_by_status) == {"429": 1, "200": 2}


async def test_the_pause_also_holds_a_configured_rate_limit() -> None:
    clock = SteppingClock()
    backend = Scripted(clock, ProviderError(429, "rate_limit_exceeded", "slow", retry_after=3.0))
    provider = ManagedProvider(backend, requests_per_second=10, clock=clock)
    assert provider.rate_limiter.rate == 10
    assert await ask(provider) == "hello"
    # After the pause the bucket is empty and refills at 10/s: one token is 0.1 s.
    assert backend.called_at == near(0.0, 3.1)


async def test_a_pause_holds_later_calls_even_when_its_call_gives_up() -> None:
    clock = SteppingClock()
    backend = Scripted(clock, ProviderError(429, "rate_limit_exceeded", "slow", retry_after=5.0))
    provider = ManagedProvider(backend, max_retries=0, clock=clock)
    with pytest.raises(ProviderError):
        await ask(provider)
    assert await ask(provider) == "hello"
    assert backend.called_at == near(0.0, 5.0 + AFTER_PAUSE)


async def test_the_rate_token_is_taken_right_before_the_request() -> None:
    """Calls queued for a permit take no token while they queue: when three permits come back
    at once, the queued calls still go one per second, not in a burst."""
    clock = FakeClock()
    sent: list[float] = []

    class SlowFirst(Scripted):
        async def complete(
            self, messages: Sequence[ChatMessage], *, model: str, temperature: float
        ) -> str:
            sent.append(clock.now())
            if len(sent) <= 3:
                await clock.sleep(10.0 - clock.now())  # the first three all end at t=10
            return "ok"

    provider = ManagedProvider(
        SlowFirst(clock), requests_per_second=1, max_concurrency=3, clock=clock
    )
    assert provider.rate_limiter.burst == 1
    calls = asyncio.gather(*(ask(provider) for _ in range(6)))
    await clock.run_for(20.0)
    assert await calls == ["ok"] * 6
    assert sent == near(0.0, 1.0, 2.0, 10.0, 11.0, 12.0)


async def test_requests_per_second_spaces_the_calls(clock: SteppingClock) -> None:
    backend = Scripted(clock)
    provider = ManagedProvider(backend, requests_per_second=2, clock=clock)
    replies = await asyncio.gather(*(ask(provider) for _ in range(4)))
    assert replies == ["hello"] * 4
    assert backend.called_at == near(0.0, 0.0, 0.5, 1.0)  # burst 2, then one every 0.5 s


async def test_without_a_rate_the_limiter_is_pause_only(clock: SteppingClock) -> None:
    backend = Scripted(clock)
    provider = ManagedProvider(backend, clock=clock)
    await asyncio.gather(*(ask(provider) for _ in range(50)))
    assert backend.called_at == [0.0] * 50
    assert provider.rate_limiter.rate == PAUSE_ONLY_RATE


# -- a rate limit shared with other processes -----------------------------------------------------


class FakeShared:
    """A shared rate limit that records what it is asked, and when (on the provider's clock).

    ``gate``, when set, holds every ``acquire`` until it is opened; ``broken`` makes ``pause``
    raise as an unreachable server would.
    """

    def __init__(self, provider_clock: FakeClock) -> None:
        self.clock = provider_clock
        self.events: list[tuple[str, float]] = []
        self.local_grants_seen: list[int] = []
        self.provider: ManagedProvider | None = None
        self.gate: asyncio.Event | None = None
        self.broken = False

    async def acquire(self, tokens: float = 1) -> None:
        assert self.provider is not None
        self.local_grants_seen.append(self.provider.rate_limiter.stats().granted_count)
        if self.gate is not None:
            await self.gate.wait()
        self.events.append(("acquire", self.clock.now()))

    async def pause(self, seconds: float) -> None:
        if self.broken:
            raise ConnectionError("redis is gone")
        self.events.append(("pause", seconds))

    async def paused_for(self) -> float:
        return 0.0


def with_shared(backend: Scripted, clock: FakeClock, **kwargs: object) -> ManagedProvider:
    shared = FakeShared(clock)
    provider = ManagedProvider(backend, clock=clock, shared_rate_limit=shared, **kwargs)  # type: ignore[arg-type]
    shared.provider = provider
    return provider


def shared_of(provider: ManagedProvider) -> FakeShared:
    shared = provider.shared_rate_limit
    assert isinstance(shared, FakeShared)
    return shared


async def test_each_attempt_takes_a_shared_token_after_the_local_one(clock: SteppingClock) -> None:
    backend = Scripted(clock, ProviderError(503, None, "busy"), ProviderError(503, None, "busy"))
    provider = with_shared(backend, clock, rng=FixedRandom(0.5))
    assert await ask(provider) == "hello"
    shared = shared_of(provider)
    # One shared token per attempt, each right after that attempt's local token.
    assert shared.local_grants_seen == [1, 2, 3]
    assert [at for kind, at in shared.events if kind == "acquire"] == backend.called_at


async def test_a_retry_after_pauses_the_shared_limit_too(clock: SteppingClock) -> None:
    backend = Scripted(
        clock,
        ProviderError(429, "rate_limit_exceeded", "slow", retry_after=3.0),
        ProviderError(429, "rate_limit_exceeded", "slow", retry_after=500.0),
    )
    provider = with_shared(backend, clock)
    assert await ask(provider) == "hello"
    pauses = [value for kind, value in shared_of(provider).events if kind == "pause"]
    assert pauses == [3.0, 60.0]  # cut to the longest pause, as the local one
    assert backend.called_at == near(0.0, 3.0 + AFTER_PAUSE, 63.0 + 2 * AFTER_PAUSE)


async def test_a_backoff_without_retry_after_does_not_pause_the_shared_limit(
    clock: SteppingClock,
) -> None:
    provider = with_shared(Scripted(clock, ProviderError(503, None, "busy")), clock)
    assert await ask(provider) == "hello"
    assert [kind for kind, _ in shared_of(provider).events] == ["acquire", "acquire"]


async def test_a_shared_pause_that_fails_is_logged_and_the_provider_error_stands(
    clock: SteppingClock, caplog: pytest.LogCaptureFixture
) -> None:
    error = ProviderError(429, "rate_limit_exceeded", "slow", retry_after=2.0)
    provider = with_shared(Scripted(clock, error), clock, max_retries=0)
    shared_of(provider).broken = True
    with (
        caplog.at_level(logging.WARNING, logger="zeroclaw.providers.managed"),
        pytest.raises(ProviderError) as raised,
    ):
        await ask(provider)
    assert raised.value is error
    assert provider.stats().paused_for == 2.0  # the local pause holds this process
    assert any("shared rate limit could not be paused" in r.getMessage() for r in caplog.records)


async def test_a_call_cancelled_waiting_for_a_shared_token_gives_its_permit_back() -> None:
    clock = FakeClock()
    backend = Scripted(clock)
    provider = with_shared(backend, clock)
    shared_of(provider).gate = asyncio.Event()
    call = asyncio.create_task(ask(provider))
    await settle()
    assert provider.limiter.inflight == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert provider.limiter.inflight == 0
    assert backend.called_at == []
    assert provider.stats().cancelled == 1


async def test_without_a_shared_limit_nothing_changes(clock: SteppingClock) -> None:
    provider = ManagedProvider(Scripted(clock), clock=clock)
    assert provider.shared_rate_limit is None
    assert await ask(provider) == "hello"


async def test_a_429_in_one_process_pauses_the_other_through_redis() -> None:
    """Two providers with limiters of their own on two connections (two processes, as far as
    the limit can tell): the Retry-After one of them gets holds the other's next call."""
    namespace = f"test-managed-{uuid.uuid4().hex}"
    clients = [connect("redis://127.0.0.1:6379/0") for _ in range(2)]
    limits = [
        RedisRateLimiter(client, Keys(namespace), "openai", rate=100, burst=10)
        for client in clients
    ]
    error = ProviderError(429, "rate_limit_exceeded", "slow", retry_after=0.5)
    first = ManagedProvider(
        Scripted(FakeClock(), error), max_retries=0, shared_rate_limit=limits[0]
    )
    second = ManagedProvider(EchoBackend(), shared_rate_limit=limits[1])
    try:
        with pytest.raises(ProviderError):
            await ask(first)
        assert 0.3 < await limits[1].paused_for() <= 0.5
        started = time.monotonic()
        assert await ask(second) == "hello"
        assert time.monotonic() - started >= 0.3
        assert limits[1].stats().shared
    finally:
        async for key in clients[0].scan_iter(match=f"*{namespace}*"):
            await clients[0].delete(key)
        for client in clients:
            await client.aclose()


# -- the adaptive limiter ----------------------------------------------------------------------


async def test_503s_and_429s_are_drops_for_the_adaptive_limiter(
    fake: FakeOpenAI, clock: SteppingClock
) -> None:
    # Target mode starts at max_concurrency, so each halving shows.
    provider = ManagedProvider(OpenAIBackend(fake.base_url), clock=clock, limiter_mode="target")
    fake.script(unavailable(), unavailable(), unavailable())
    try:
        with pytest.raises(ProviderError):
            await ask(provider)
        stats = provider.stats()
        assert stats.limiter is not None
        assert stats.limiter.drops == 3
        assert stats.concurrency_limit == 2  # 16 -> 8 -> 4 -> 2
        fake.script(rate_limited(retry_after="0"))
        assert await ask(provider) == "echo: hello"
        assert provider.stats().concurrency_limit == 1
    finally:
        await provider.aclose()


async def test_the_default_gradient_mode_starts_low_and_halves_on_a_drop(
    fake: FakeOpenAI, provider: ManagedProvider
) -> None:
    stats = provider.limiter.stats()
    assert (str(stats.mode), stats.current_limit, stats.max_limit) == ("gradient", 4, 16)
    assert stats.target_latency_ms is None
    fake.script(unavailable())
    assert await ask(provider) == "echo: hello"
    assert provider.stats().concurrency_limit == 2


def test_limiter_modes() -> None:
    target = ManagedProvider(EchoBackend(), limiter_mode="target", max_concurrency=8)
    stats = target.limiter.stats()
    assert (str(stats.mode), stats.current_limit, stats.target_latency_ms) == ("target", 8, 10_000)
    floor = ManagedProvider(EchoBackend(), target_latency_ms=2_000, max_concurrency=2)
    stats = floor.limiter.stats()
    assert (str(stats.mode), stats.current_limit, stats.target_latency_ms) == ("gradient", 2, 2_000)
    with pytest.raises(ValueError, match="mode"):
        ManagedProvider(EchoBackend(), limiter_mode="vegas")


async def test_gradient_mode_finds_the_knee_of_the_simulated_provider() -> None:
    """64 callers against a provider that serves 8 at once: the limit settles near the knee
    (1.5 x capacity), not at the 64 allowed, so latency stays near the no-load latency instead of
    growing 8-fold; throughput is the provider's either way (8 / 0.5 s)."""
    clock = FakeClock()
    backend = SimulatedBackend(seed=1, base_latency=0.5, latency_sigma=0.3, capacity=8, clock=clock)
    provider = ManagedProvider(backend, max_concurrency=64, clock=clock)
    done = 0

    async def caller() -> None:
        nonlocal done
        while True:
            await ask(provider)
            done += 1

    callers = [asyncio.ensure_future(caller()) for _ in range(64)]
    limits = []
    for _ in range(40):
        await clock.run_for(5.0)
        limits.append(provider.stats().concurrency_limit)
    for task in callers:
        task.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    settled = limits[10:]
    assert all(8 <= limit <= 24 for limit in settled), limits
    assert backend.peak_in_flight <= 32
    assert done / 200.0 == pytest.approx(16.0, rel=0.1)


@pytest.mark.parametrize("respond", [bad_request(), insufficient_quota(), error(500, "bug")])
async def test_errors_that_say_nothing_about_load_are_not_drops(
    fake: FakeOpenAI, respond: Respond, clock: SteppingClock
) -> None:
    provider = ManagedProvider(OpenAIBackend(fake.base_url), max_retries=0, clock=clock)
    fake.script(respond)
    try:
        with pytest.raises(ProviderError):
            await ask(provider)
    finally:
        await provider.aclose()
    limiter = provider.limiter.stats()
    assert (limiter.drops, limiter.current_limit, limiter.ignored_samples) == (0, 4, 1)


async def test_successes_feed_the_limiter_their_latency(clock: SteppingClock) -> None:
    backend = SimulatedBackend(base_latency=0.2, latency_sigma=0.0, clock=clock)
    provider = ManagedProvider(backend, clock=clock)
    for _ in range(3):
        await ask(provider)
    limiter = provider.limiter.stats()
    assert limiter.samples == 3
    assert limiter.drops == 0


async def test_concurrency_towards_the_backend_is_bounded() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(base_latency=1.0, latency_sigma=0.0, capacity=100, clock=clock)
    provider = ManagedProvider(backend, max_concurrency=3, clock=clock)
    calls = asyncio.gather(*(ask(provider) for _ in range(7)))
    await settle()
    stats = provider.stats()
    assert (stats.in_flight, stats.concurrency_limit) == (3, 3)
    assert stats.limiter is not None
    assert stats.limiter.waiting_count == 4
    await clock.run_for(3.0)
    assert await calls == ["simulated reply to: hello"] * 7
    assert backend.peak_in_flight == 3
    assert provider.stats().in_flight == 0


# -- cancellation, protocol, lifecycle ----------------------------------------------------------


async def test_a_cancelled_call_releases_its_permit_and_is_not_a_failure(
    fake: FakeOpenAI, clock: SteppingClock
) -> None:
    provider = ManagedProvider(OpenAIBackend(fake.base_url, request_timeout=30.0), clock=clock)
    fake.script(hang())
    call = asyncio.create_task(ask(provider))
    await fake.wait_for_requests(1)
    assert provider.stats().in_flight == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    stats = provider.stats()
    assert (stats.calls, stats.cancelled, stats.failures, stats.in_flight) == (1, 1, 0, 0)
    assert stats.limiter is not None
    assert (stats.limiter.ignored_samples, stats.limiter.drops) == (1, 0)
    assert await ask(provider) == "echo: hello"  # the permit came back
    await provider.aclose()


async def test_a_call_cancelled_during_the_backoff_is_not_retried() -> None:
    plain = FakeClock()
    backend = Scripted(plain, ProviderError(503, None, "busy"))
    provider = ManagedProvider(backend, clock=plain, rng=FixedRandom(1.0))
    call = asyncio.create_task(ask(provider))
    await settle()
    assert plain.pending_timers == 1  # sleeping the 0.5 s backoff
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await plain.run_for(10)
    assert backend.called_at == [0.0]
    assert provider.stats().cancelled == 1


async def test_the_core_provider_protocol(fake: FakeOpenAI, clock: SteppingClock) -> None:
    provider = ManagedProvider(OpenAIBackend(fake.base_url), clock=clock)
    assert isinstance(provider, Provider)
    assert provider.name == "openai"
    assert await provider.chat_with_system("be brief", "hi", "gpt-x", 0.2) == "echo: hi"
    assert await provider.chat_with_system(None, "hey", "gpt-x", 0.2) == "echo: hey"
    assert await provider.chat("yo", "gpt-y", 1.0) == "echo: yo"
    await provider.aclose()
    assert [r.json["messages"] for r in fake.requests] == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "hey"}],
        [{"role": "user", "content": "yo"}],
    ]
    assert [(r.json["model"], r.json["temperature"]) for r in fake.requests] == [
        ("gpt-x", 0.2),
        ("gpt-x", 0.2),
        ("gpt-y", 1.0),
    ]
    backend = provider.backend
    assert isinstance(backend, OpenAIBackend)
    with pytest.raises(RuntimeError, match="closed"):
        await provider.chat("again", "m", 0.0)


async def test_the_echo_backend_behind_the_provider() -> None:
    provider = ManagedProvider(EchoBackend(), name="demo")
    assert provider.name == "demo"
    assert await provider.chat_with_system("sys", "ping", "m", 0.0) == "ping"
    assert "demo" in repr(provider)


def test_constructor_validation() -> None:
    backend = EchoBackend()
    with pytest.raises(ValueError, match="max_retries"):
        ManagedProvider(backend, max_retries=-1)
    with pytest.raises(TypeError, match="max_retries"):
        ManagedProvider(backend, max_retries=True)
    with pytest.raises(ValueError, match="max_concurrency"):
        ManagedProvider(backend, max_concurrency=0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="requests_per_second"):
            ManagedProvider(backend, requests_per_second=bad)
    with pytest.raises(ValueError, match="target_latency_ms"):
        ManagedProvider(backend, target_latency_ms=0)


# -- the rule as a property ---------------------------------------------------------------------

# One scripted attempt: an HTTP status, "quota" (429 insufficient_quota), "conn" (no answer),
# or "ok".
OUTCOMES = ["ok", "conn", "quota", 400, 401, 403, 404, 408, 409, 429, 500, 503]


def scripted_error(outcome: int | str, retry_after: float | None) -> ProviderError:
    if outcome == "conn":
        return ProviderError(None, "connection_error", "reset")
    if outcome == "quota":
        return ProviderError(429, "insufficient_quota", "quota", retry_after=retry_after)
    assert isinstance(outcome, int)
    return ProviderError(outcome, None, "err", retry_after=retry_after if outcome >= 429 else None)


@settings(max_examples=150, deadline=None)
@given(
    script=st.lists(st.sampled_from(OUTCOMES), max_size=8),
    max_retries=st.integers(0, 5),
    retry_after=st.one_of(st.none(), st.floats(0, 120, allow_nan=False)),
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_attempts_and_waits_follow_the_rule(
    script: list[int | str], max_retries: int, retry_after: float | None, fraction: float
) -> None:
    # The model: walk the script as docs/providers.md says.
    retryable = {"conn", 408, 409, 429, 500, 503}
    expected_at = [0.0]
    expect_success = True
    for retry, outcome in enumerate([*script, "ok"]):
        if outcome == "ok":
            break
        error = scripted_error(outcome, retry_after)
        if outcome not in retryable or retry == max_retries:
            expect_success = False
            break
        if error.retry_after is not None:
            wait = min(error.retry_after, 60.0) + AFTER_PAUSE
        else:
            wait = backoff_ceiling(retry) * fraction
        expected_at.append(expected_at[-1] + wait)

    async def run() -> tuple[list[float], bool]:
        clock = SteppingClock()
        errors = [scripted_error(o, retry_after) for o in script if o != "ok"]
        # "ok" in the middle of the script ends it: keep only the errors before the first one.
        if "ok" in script:
            errors = errors[: script.index("ok")]
        backend = Scripted(clock, *errors)
        provider = ManagedProvider(
            backend, max_retries=max_retries, clock=clock, rng=FixedRandom(fraction)
        )
        try:
            await ask(provider)
        except ProviderError:
            return backend.called_at, False
        return backend.called_at, True

    called_at, succeeded = asyncio.run(run())
    assert succeeded is expect_success
    assert called_at == pytest.approx(expected_at, abs=1e-5)
