"""Cancellation at every await: each blocking call of the core, cut at each suspension point.

Every test hands a *case* to :func:`tests.cancellation.cancel_at_every_await`, which runs it once
per suspension point of the call and way of cutting it there (while the awaited future is
pending; right after it was resolved but before the call resumed; once the loop has settled; and
racing the wake-up that resolves it), plus once to completion, each time in a fresh event loop on
a fake clock. The case builds the contention that makes the call suspend,
queues a *bystander* behind the caller where the primitive has a queue, and checks after each
attempt what the contract promises of a cancelled blocking call: nothing leaks — no permit, token
or pool slot (the bystander gets it when the caller would have), no dedup claim (a redelivery is
not a duplicate), no breaker probe slot (a half-open breaker admits its next probe), no task
(pool stats and ``asyncio.all_tasks()``). The harness itself checks that a cut call raised
``CancelledError`` and that nothing was left on the loop.

The numbers of suspension points asserted here are the ones measured (docs/reliability.md lists
them); a change that adds an await makes a test say so rather than go uncovered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from tests.cancellation import Attempt, Coverage, cancel_at_every_await
from tests.helpers import msg
from zeroclaw.concurrency import (
    AdaptiveLimiter,
    AdaptivePermit,
    Backpressure,
    CircuitBreaker,
    CircuitConfig,
    CircuitState,
    Permit,
    PoolClosed,
    RateLimiter,
    Task,
    TaskStatus,
    WorkerPool,
)
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
    ProcessedMessage,
)
from zeroclaw.testing import FakeClock, settle


def at(clock: FakeClock, seconds: float, action: Callable[[], object]) -> asyncio.Task[None]:
    """A task that runs ``action()`` once the fake clock reaches ``seconds``."""

    async def later() -> None:
        await clock.sleep(seconds - clock.now())
        action()

    return asyncio.get_running_loop().create_task(later())


def arrive(
    clock: FakeClock, seconds: float, call: Callable[[], Awaitable[object]]
) -> asyncio.Task[float]:
    """A bystander: at ``seconds`` it makes ``call()`` (which gives back what it got); its result is
    the time the call returned."""

    async def bystander() -> float:
        await clock.sleep(seconds - clock.now())
        await call()
        return clock.now()

    return asyncio.get_running_loop().create_task(bystander())


def assert_every_point_cut_four_ways(coverage: Coverage, points: int) -> None:
    """The call had ``points`` suspension points, and each was cut in every way: pending, just
    after its wait was resolved (a real resolution, no fallback), once the loop had settled, and
    racing the wake-up (none skipped). Never blocks."""
    assert coverage.points == points
    assert coverage.resolved_cuts == points
    assert (coverage.fallbacks, coverage.skipped) == (0, 0)
    assert coverage.attempts == 4 * points + 1  # and one run to completion


# ------------------------------------------------------------------------------- Backpressure

BackpressureCall = Callable[[Backpressure, FakeClock], Coroutine[Any, Any, Permit | None]]


async def _hold_in_async_with(bp: Backpressure, clock: FakeClock) -> None:
    async with bp:
        await clock.sleep(5.0)


# Each form: the call, its suspension points, and when the bystander gets its permit given the
# time of the cut (None: not cut; the caller then releases what it got at t=3).
BACKPRESSURE_CALLS: dict[str, tuple[BackpressureCall, int, Callable[[float | None], float]]] = {
    "acquire": (
        lambda bp, clock: bp.acquire(),
        1,
        lambda cut: 2.0 if cut is None else 1.0,
    ),
    "acquire(timeout=10)": (
        lambda bp, clock: bp.acquire(timeout=10.0),
        1,
        lambda cut: 2.0 if cut is None else 1.0,
    ),
    # Both permits at once (granted at t=2): the bystander, behind it, gets t=1's only if the
    # caller was gone by then (no barging past a queued request).
    "acquire_many(2)": (
        lambda bp, clock: bp.acquire_many(2),
        1,
        lambda cut: 3.0 if cut is None else 1.0 if cut < 1.0 else 2.0,
    ),
    # The permit is held by the block (t=1 to t=6); cut in the block before t=2, its exit gives
    # the t=1 permit on to the bystander.
    "async with": (
        _hold_in_async_with,
        2,
        lambda cut: 1.0 if cut is not None and cut < 2.0 else 2.0,
    ),
}


@pytest.mark.parametrize("form", list(BACKPRESSURE_CALLS))
def test_backpressure_acquire_cancelled_at_every_await(form: str) -> None:
    """Both permits are held (released at t=1 and t=2); the caller waits from t=0, a bystander
    from t=0.5. A cut caller leaves the bystander the permit it would have had (the one freed at
    t=1, when the cut came before it was used); at the end all are free, nobody waits."""
    call, points, bystander_gets_it_at = BACKPRESSURE_CALLS[form]

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        bp = Backpressure(2, clock=clock, name="bp")
        first, second = bp.try_acquire(), bp.try_acquire()
        assert first is not None
        assert second is not None
        releases = [at(clock, 1.0, first.release), at(clock, 2.0, second.release)]

        async def take_and_release() -> None:
            (await bp.acquire()).release()

        bystander = arrive(clock, 0.5, take_and_release)
        cut_at: list[float] = []
        attempt.on_cut = lambda: cut_at.append(clock.now())

        outcome = await attempt.run(call(bp, clock))

        # Right after the call ended: what is held is what the live holders hold.
        assert bp.available_permits + bp.active_count == bp.max_concurrent
        if outcome.value is not None:
            releases.append(at(clock, 3.0, outcome.value.release))
        await attempt.drain()
        assert bystander.result() == bystander_gets_it_at(cut_at[0] if cut_at else None)
        stats = bp.stats()
        assert (stats.available_permits, stats.active_count, stats.waiting_count) == (2, 0, 0)
        await asyncio.gather(*releases)

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, points)


# ------------------------------------------------------------------------------- RateLimiter

RateCall = Callable[[RateLimiter], Coroutine[Any, Any, None]]
RATE_CALLS: dict[str, RateCall] = {
    "acquire": lambda limiter: limiter.acquire(),
    "acquire(timeout=10)": lambda limiter: limiter.acquire(timeout=10.0),
}


@pytest.mark.parametrize("form", list(RATE_CALLS))
def test_rate_limiter_acquire_cancelled_at_every_await(form: str) -> None:
    """One token a second, burst 1, emptied at t=0: the caller's token comes at t=1, the
    bystander's (waiting from t=0.5) at t=2. A cut caller's token goes to the bystander at t=1,
    also when it was granted just before the cut (the grant is credited back)."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        limiter = RateLimiter(1.0, 1, clock=clock, name="rate")
        assert limiter.try_acquire()
        bystander = arrive(clock, 0.5, lambda: limiter.acquire())

        await attempt.run(RATE_CALLS[form](limiter))

        await attempt.drain()
        # (The bucket's timer fires a hair early by design: compare in microseconds.)
        assert bystander.result() == pytest.approx(1.0 if attempt.cut else 2.0, abs=1e-6)
        stats = limiter.stats()
        assert stats.waiting_count == 0
        assert stats.granted_count == (2 if attempt.cut else 3)
        assert stats.cancelled_count == (1 if attempt.cut else 0)
        assert stats.total_count == (
            stats.granted_count + stats.rejected_count + stats.cancelled_count
        )
        assert limiter.available_tokens == pytest.approx(0.0, abs=1e-6)  # the bystander's, just

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, 1)


# ------------------------------------------------------------------------------- AdaptiveLimiter


async def _enter_adaptive(limiter: AdaptiveLimiter) -> None:
    async with limiter:
        pass  # released at once, as the other forms' caller does


AdaptiveCall = Callable[[AdaptiveLimiter], Coroutine[Any, Any, AdaptivePermit | None]]
ADAPTIVE_CALLS: dict[str, AdaptiveCall] = {
    "acquire": lambda limiter: limiter.acquire(),
    "acquire(timeout=10)": lambda limiter: limiter.acquire(timeout=10.0),
    "async with": _enter_adaptive,
}


@pytest.mark.parametrize("form", list(ADAPTIVE_CALLS))
def test_adaptive_limiter_acquire_cancelled_at_every_await(form: str) -> None:
    """Limit 1 with one token a second (burst 1): a holder has the slot and the token until
    t=0.5. The caller waits for the slot (point 1), then for the token (point 2, until t=1); a
    bystander queued at t=0.25 gets both at t=1 if the caller was cut, at t=2 (after the caller
    released at t=1) otherwise. At the end nothing is in flight and nothing waits, and a cut is
    never a latency sample or a drop."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        limiter = AdaptiveLimiter(1, 1, 2, 1.0, 100.0, clock=clock, burst=1, name="adaptive")
        holder = limiter.try_acquire()
        assert holder is not None
        release = at(clock, 0.5, holder.release)

        async def take_and_release() -> None:
            (await limiter.acquire()).release()

        bystander = arrive(clock, 0.25, take_and_release)

        outcome = await attempt.run(ADAPTIVE_CALLS[form](limiter))

        if not attempt.cut:
            assert clock.now() == pytest.approx(1.0, abs=1e-6)
        if outcome.value is not None:
            outcome.value.release()
        await attempt.drain()
        assert bystander.result() == pytest.approx(1.0 if attempt.cut else 2.0, abs=1e-6)
        stats = limiter.stats()
        assert (stats.inflight, stats.waiting_count, stats.current_limit) == (0, 0, 1)
        assert stats.rate_limiter is not None
        assert stats.rate_limiter.waiting_count == 0
        assert (stats.samples, stats.drops) == (2 if attempt.cut else 3, 0)
        await release

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, 2)  # the concurrency slot, then the rate token


# ------------------------------------------------------------------------------- WorkerPool


class Work:
    """A pool task's body that records whether it started, when it is due to end (``seconds``
    after it started), and whether it finished."""

    def __init__(self, clock: FakeClock, seconds: float = 1.0) -> None:
        self.clock = clock
        self.seconds = seconds
        self.started = False
        self.ends_at = float("inf")
        self.finished = False

    def due_by(self, when: float) -> bool:
        """Whether it had started and its wait was over at ``when`` (it cannot be stopped then:
        its worker is already woken to finish it)."""
        return self.started and self.ends_at <= when

    async def __call__(self) -> str:
        self.started = True
        self.ends_at = self.clock.now() + self.seconds
        await self.clock.sleep(self.seconds)
        self.finished = True
        return "done"


async def busy_pool(clock: FakeClock) -> WorkerPool:
    """A pool of one worker and a one-task queue, taken by one-second tasks until t=1 and t=2."""
    pool = WorkerPool(1, 1, clock=clock, name="pool")
    pool.spawn_nowait(Task(Work(clock)))
    await asyncio.sleep(0)  # the worker starts the first task: the queue is free again
    pool.spawn_nowait(Task(Work(clock)))
    assert pool.free_slots == 0
    return pool


def test_worker_pool_spawn_cancelled_at_every_await() -> None:
    """The caller waits for room from t=0, a bystander from t=0.5. Room comes at t=1: the
    caller's (or, when it was cut, the bystander's, even if the slot had just been handed to the
    caller). A cut caller's task never runs; the pool ends with nothing running or queued."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        pool = await busy_pool(clock)
        work = Work(clock)
        bystander = arrive(clock, 0.5, lambda: pool.spawn(Task(Work(clock))))

        outcome = await attempt.run(pool.spawn(Task(work)))

        await attempt.drain()
        assert bystander.result() == (1.0 if attempt.cut else 2.0)
        assert work.started is not attempt.cut
        if outcome.value is not None:
            assert (await outcome.value).status is TaskStatus.COMPLETED
        stats = pool.stats()
        assert (stats.active_workers, stats.queued_tasks) == (0, 0)
        assert stats.completed_tasks == (3 if attempt.cut else 4)
        await pool.shutdown()

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, 1)


def test_worker_pool_submit_cancelled_at_every_await() -> None:
    """As for spawn, then the caller waits for its task (queued at t=1, run from t=2 to t=3).
    Cut while it waits for the result before t=2, the task is taken out of the queue and the room
    goes to the bystander at t=1; cut later, the worker has taken the task (and handed the room
    to the bystander at t=2) and the task is cancelled as it runs. A cut task never finishes
    unless it was due to finish when the cut came (its result set, or its worker woken to end
    it in the same instant: the cancellation cannot undo that)."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        pool = await busy_pool(clock)
        work = Work(clock)
        cut_at: list[float] = []
        attempt.on_cut = lambda: cut_at.append(clock.now())
        bystander = arrive(clock, 0.5, lambda: pool.spawn(Task(Work(clock))))

        outcome = await attempt.run(pool.submit(Task(work)))

        await attempt.drain()
        if attempt.cut:
            assert work.finished is work.due_by(cut_at[0])
            assert bystander.result() == (1.0 if cut_at[0] < 2.0 else 2.0)
        else:
            assert outcome.value is not None
            assert outcome.value.status is TaskStatus.COMPLETED
            assert bystander.result() == 2.0
        stats = pool.stats()
        assert (stats.active_workers, stats.queued_tasks) == (0, 0)
        assert stats.completed_tasks == 3 + work.finished
        await pool.shutdown()

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, 2)  # room in the queue, then the result


def test_worker_pool_submit_to_an_idle_pool_cancelled_at_every_await() -> None:
    """A free worker: the caller's only wait is for its result, and the worker (readied before
    the cancelled caller resumes) has started the task by the time the caller sees its
    cancellation. The running task is cancelled: it resolves CANCELLED, never finishes, and the
    worker survives to run the next task. (Cut once its end was due, there is nothing left to
    cancel.)"""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        pool = WorkerPool(1, 1, clock=clock, name="pool")
        work = Work(clock)
        cut_at: list[float] = []
        attempt.on_cut = lambda: cut_at.append(clock.now())

        outcome = await attempt.run(pool.submit(Task(work)))

        await attempt.drain()
        # The worker, readied first, starts the task before the caller sees its cancellation.
        assert work.started
        # Cut once its end was due (its result set, its worker woken), nothing is left to cancel.
        assert work.finished is (not attempt.cut or work.due_by(cut_at[0]))
        stats = pool.stats()
        assert (stats.active_workers, stats.queued_tasks) == (0, 0)
        assert (stats.completed_tasks, stats.cancelled_tasks) == (
            (1, 0) if work.finished else (0, 1)
        )
        if not attempt.cut:
            assert outcome.value is not None
            assert outcome.value.status is TaskStatus.COMPLETED
        after = await attempt.wait_for(pool.submit(Task(Work(clock))))
        assert after.status is TaskStatus.COMPLETED
        await attempt.wait_for(pool.shutdown())

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, 1)


def test_worker_pool_spawn_cancelled_as_the_shutdown_refuses_it() -> None:
    """The caller waits for room in a full pool; at t=0.5 a shutdown begins and refuses it with
    ``PoolClosed``. Cut just after that refusal (before it resumed), the caller must still end
    cancelled, not with a bookkeeping error; cut in the same instant, just before the shutdown
    runs, the shutdown must not fail on the cancelled waiter. The shutdown finishes either way."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        pool = await busy_pool(clock)
        stopping: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        # A timer, not a sleeping task: the shutdown's first step is then queued the moment the
        # clock reaches t=0.5, ahead of a cancellation that races it.
        clock.call_later(0.5, lambda: stopping.append(loop.create_task(pool.shutdown())))

        outcome = await attempt.run(pool.spawn(Task(Work(clock))))

        if not attempt.cut:
            assert isinstance(outcome.error, PoolClosed)
        await attempt.drain()
        await stopping[0]
        stats = pool.stats()
        assert (stats.active_workers, stats.queued_tasks, stats.completed_tasks) == (0, 0, 2)

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, 1)


# ------------------------------------------------------------------------------- CircuitBreaker

GuardedForm = Callable[
    [CircuitBreaker, Callable[[], Coroutine[Any, Any, str]]], Coroutine[Any, Any, str]
]


async def _through_call(breaker: CircuitBreaker, body: Callable[[], Awaitable[str]]) -> str:
    return await breaker.call(body)


async def _through_async_with(breaker: CircuitBreaker, body: Callable[[], Awaitable[str]]) -> str:
    async with breaker:
        return await body()


async def _through_decorator(
    breaker: CircuitBreaker, body: Callable[[], Coroutine[Any, Any, str]]
) -> str:
    return await breaker(body)()


GUARDED_FORMS: dict[str, GuardedForm] = {
    "call": _through_call,
    "async with": _through_async_with,
    "decorator": _through_decorator,
}


@pytest.mark.parametrize("state", [CircuitState.HALF_OPEN, CircuitState.CLOSED])
@pytest.mark.parametrize("form", list(GUARDED_FORMS))
def test_circuit_breaker_guarded_call_cancelled_at_every_await(
    form: str, state: CircuitState
) -> None:
    """The guarded body awaits the fake clock three times. Cut anywhere, the call is ignored
    (never a failure, even with ``failure_threshold=1``), nothing stays in flight, and a
    half-open breaker (one probe at a time) admits its next probe; run to the end, the probe's
    success closes it."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        config = CircuitConfig(
            failure_threshold=1, success_threshold=1, half_open_max_calls=1, timeout_duration=10.0
        )
        breaker = CircuitBreaker(config, name="provider", clock=clock)
        if state is CircuitState.HALF_OPEN:
            breaker.force_open()
            clock.advance(10.0)
            assert breaker.state is CircuitState.HALF_OPEN

        async def body() -> str:
            for _ in range(3):
                await clock.sleep(0.1)
            return "reply"

        outcome = await attempt.run(GUARDED_FORMS[form](breaker, body))

        stats = breaker.stats()
        assert (stats.failed_calls, stats.in_flight) == (0, 0)
        if attempt.cut:
            assert stats.state is state
            assert stats.ignored_calls == 1
            ticket = breaker.allow_request()  # the slot a cut probe held is free again
            assert ticket is not None
            breaker.record_success(ticket)
        else:
            assert outcome.value == "reply"
        assert breaker.state is CircuitState.CLOSED
        await attempt.drain()

    coverage = cancel_at_every_await(case)
    # The body's three awaits: admission itself never suspends.
    assert_every_point_cut_four_ways(coverage, 3)


# ------------------------------------------------------------------------------- MessageProcessor


@pytest.mark.parametrize("unread", [1, 2])
@pytest.mark.parametrize("state", [CircuitState.HALF_OPEN, CircuitState.CLOSED])
def test_process_message_cancelled_at_every_await(state: CircuitState, unread: int) -> None:
    """One permit, at most one unread result; messages h1, h2... take one second each, in turn.
    At t=T (T = ``unread``, 1 or 2) T results are unread and the next h holds the permit until
    t=T+1. The caller (message c) waits for room among the results until a reader has taken
    them all (one at T+0.5, the next at T+0.75: woken by the first, it finds the room still
    full and waits again, at the head), then for the permit. A bystander (message b) arrives at
    t=T+0.25, behind it.

    Cut anywhere, the caller leaves no dedup claim (its redelivery is ACCEPTED, not DUPLICATE)
    and no permit or room (the bystander is admitted at t=2 as it would be anyway). With a
    half-open breaker (one probe at a time) the caller is the probe and must leave no probe slot:
    the bystander is refused "circuit open" while the caller holds the slot and admitted as the
    probe once a cut freed it, and a redelivery after the cut is admitted as the probe. At the
    end nothing is in flight, queued or waiting, and no task is left."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        config = MessageProcessorConfig(
            worker_pool_size=1,
            max_concurrent_requests=1,
            max_undelivered_results=1,
            processing_timeout=None,
            circuit_config=CircuitConfig(
                failure_threshold=1,
                success_threshold=1,
                half_open_max_calls=1,
                timeout_duration=10.0,
            ),
        )
        processor = MessageProcessor(config, clock=clock, name="proc")
        breaker = processor.breaker
        assert breaker is not None
        results = processor.responses

        async def slow(message: ChannelMessage) -> str:
            await clock.sleep(1.0)
            return "slow"

        async def quick(message: ChannelMessage) -> str:
            return "quick"

        holders = [f"h{n}" for n in range(1, unread + 2)]
        first = await processor.process_message("chat", msg("h1", sender="h1"), slow)
        assert first.kind is AdmissionKind.ACCEPTED
        rest = [
            asyncio.get_running_loop().create_task(
                processor.process_message("chat", msg(name, sender=name), slow)
            )
            for name in holders[1:]
        ]
        t = float(unread)
        await clock.run_for(t)  # T results unread, the last holder admitted with the permit
        assert all(task.result().kind is AdmissionKind.ACCEPTED for task in rest)
        if state is CircuitState.HALF_OPEN:
            breaker.force_open(duration=0.0)  # the next admission is the probe
        read: list[ProcessedMessage] = []

        async def reader() -> None:
            for n in range(unread):
                await clock.sleep(0.5 if n == 0 else 0.25)
                read.append(await anext(results))

        reading = asyncio.get_running_loop().create_task(reader())
        admitted: list[AdmissionKind] = []

        async def bystander_message() -> None:
            bystander = msg("b", sender="b")
            admitted.append((await processor.process_message("chat", bystander, quick)).kind)

        bystander = arrive(clock, t + 0.25, bystander_message)
        cut_at: list[float] = []
        attempt.on_cut = lambda: cut_at.append(clock.now())
        message = msg("c", sender="c")

        outcome = await attempt.run(processor.process_message("chat", message, quick))

        if attempt.cut:
            after_cut = processor.stats()
            assert after_cut.backpressure is not None
            assert after_cut.circuit_breaker is not None
            # Only the bystander may be left waiting or probing.
            waiting_bystander = int(not bystander.done() and clock.now() >= t + 0.25)
            assert after_cut.backpressure.waiting_count <= waiting_bystander
            # In flight through the breaker: none but the bystander's and, while CLOSED, the
            # accepted messages' (a half-open breaker counts probes only; the bystander cannot
            # be probing yet: it comes later, or was refused).
            assert after_cut.circuit_breaker.in_flight == (
                0 if state is CircuitState.HALF_OPEN else after_cut.in_flight + waiting_bystander
            )
        else:
            assert outcome.value is not None
            assert outcome.value.kind is AdmissionKind.ACCEPTED
        await attempt.drain()
        await reading
        assert bystander.done(), "the bystander was never given the room or the permit"
        # The probe slot is free for the bystander only if the caller was cut before it came.
        refused = state is CircuitState.HALF_OPEN and not (attempt.cut and cut_at[0] < t + 0.25)
        if refused:
            assert admitted == [AdmissionKind.REJECTED]
        else:
            assert admitted == [AdmissionKind.ACCEPTED]
            assert bystander.result() == t + 1  # the last holder's permit, or after c's turn
        while processor.stats().undelivered_results:
            read.append(await anext(results))

        again = await attempt.wait_for(processor.process_message("chat", message, quick))
        if attempt.cut:
            assert again.kind is AdmissionKind.ACCEPTED, again  # no claim, no probe slot left
        else:
            assert again.kind is AdmissionKind.DUPLICATE  # it was processed: the claim is kept
        await attempt.drain()
        while processor.stats().undelivered_results:
            read.append(await anext(results))
        expected = sorted(["c", *holders] if refused else ["b", "c", *holders])
        assert sorted(item.message.id for item in read) == expected
        assert all(item.result.kind is MessageResultKind.SUCCESS for item in read)
        assert breaker.state is CircuitState.CLOSED  # a probe's success closed it
        stats = processor.stats()
        assert stats.backpressure is not None
        assert (stats.backpressure.available_permits, stats.backpressure.waiting_count) == (1, 0)
        assert (stats.in_flight, stats.conversations, stats.accepted) == (0, 0, len(expected))
        assert (stats.worker_pool.active_workers, stats.worker_pool.queued_tasks) == (0, 0)
        await attempt.wait_for(processor.shutdown())
        assert [item async for item in results] == []

    coverage = cancel_at_every_await(case)
    # Room among the unread results (once per read), then the permit.
    assert_every_point_cut_four_ways(coverage, unread + 1)


@pytest.mark.parametrize("wait", ["permit", "room among unread results"])
def test_process_message_cancelled_at_every_await_while_the_processor_shuts_down(
    wait: str,
) -> None:
    """The caller waits (for the permit h1 holds until t=1, or for room among the unread
    results), and a shutdown begins at t=1.25 (t=0.5 for the permit) while it waits: run to
    the end, it is refused "shutting down"; cut anywhere, even after the shutdown's refusal or
    the permit was handed to it, it raises CancelledError. Either way it keeps no dedup claim,
    no breaker slot and no permit, the shutdown finishes, and ``responses`` ends after the
    accepted messages' results."""

    async def case(attempt: Attempt) -> None:
        clock = attempt.clock
        room = wait != "permit"
        config = MessageProcessorConfig(
            worker_pool_size=1,
            max_concurrent_requests=1,
            max_undelivered_results=1 if room else None,
            processing_timeout=None,
        )
        processor = MessageProcessor(config, clock=clock, name="proc")

        async def slow(message: ChannelMessage) -> str:
            await clock.sleep(1.0)
            return "slow"

        accepted = ["h1"]
        first = await processor.process_message("chat", msg("h1", sender="h1"), slow)
        assert first.kind is AdmissionKind.ACCEPTED
        if room:  # h1's result unread at t=1, h2 then running until t=2
            accepted.append("h2")
            second = asyncio.get_running_loop().create_task(
                processor.process_message("chat", msg("h2", sender="h2"), slow)
            )
            await clock.run_for(1.0)
            assert second.result().kind is AdmissionKind.ACCEPTED
        stopped_at: list[float] = []

        async def stop() -> None:
            await processor.shutdown(timeout=5.0)
            stopped_at.append(clock.now())

        stopping: list[asyncio.Task[None]] = []
        closing = at(
            clock,
            clock.now() + (0.25 if room else 0.5),
            lambda: stopping.append(asyncio.get_running_loop().create_task(stop())),
        )

        outcome = await attempt.run(processor.process_message("chat", msg("c"), slow))

        if not attempt.cut:
            assert outcome.value is not None
            assert outcome.value.kind is AdmissionKind.REJECTED
            assert outcome.value.reason == "shutting down"
        await attempt.drain()
        await closing
        assert stopping[0].done(), "the shutdown never finished"
        await stopping[0]
        # Once the last accepted message ends (an abandoned admission must not hold it up until
        # the shutdown's timeout).
        assert stopped_at == [2.0 if room else 1.0]
        ended = [item async for item in processor.responses]
        assert sorted(item.message.id for item in ended) == accepted
        assert all(item.result.kind is MessageResultKind.SUCCESS for item in ended)
        stats = processor.stats()
        assert stats.deduplicator is not None
        assert stats.deduplicator.current_entries == len(accepted)  # no claim of c left
        assert stats.backpressure is not None
        assert (stats.backpressure.available_permits, stats.backpressure.waiting_count) == (1, 0)
        assert stats.circuit_breaker is not None
        assert stats.circuit_breaker.in_flight == 0
        assert (stats.in_flight, stats.accepted, stats.undelivered_results) == (
            0,
            len(accepted),
            0,
        )

    coverage = cancel_at_every_await(case)
    assert_every_point_cut_four_ways(coverage, 1)


# ------------------------------------------------------------------------------- regressions
# The races the harness found, each on its own: a cancellation in the same instant as the event
# that resolves the wait.


async def test_a_spawn_cancelled_as_its_room_is_freed_keeps_the_worker_and_its_next_task() -> None:
    """The worker frees a slot (the running task ends) in the same instant the spawn waiting for
    it is cancelled. The worker handed the slot to the cancelled waiter and died of
    InvalidStateError, losing the task it had just taken (its handle never resolved)."""
    clock = FakeClock()
    pool = WorkerPool(1, 1, clock=clock)
    running = pool.spawn_nowait(Task(Work(clock)))
    await asyncio.sleep(0)
    queued = pool.spawn_nowait(Task(Work(clock)))
    work = Work(clock)
    waiting = asyncio.get_running_loop().create_task(pool.spawn(Task(work)))
    behind = asyncio.get_running_loop().create_task(pool.spawn(Task(Work(clock))))
    await settle()
    clock.advance_to(1.0)  # the running task's wait ends: its worker is woken...
    waiting.cancel()  # ...and the first spawn is cancelled before the worker runs
    await clock.run_for(5.0)
    assert waiting.cancelled()
    assert (await running).status is TaskStatus.COMPLETED
    assert queued.done(), "the task the worker took when it freed the slot was lost"
    assert (await queued).status is TaskStatus.COMPLETED
    assert (await (await behind)).status is TaskStatus.COMPLETED  # the slot went to it
    assert not work.started
    stats = pool.stats()
    assert (stats.completed_tasks, stats.active_workers, stats.queued_tasks) == (3, 0, 0)
    await pool.shutdown()


async def test_a_shutdown_in_the_instant_a_waiting_spawn_is_cancelled_refuses_the_others() -> None:
    """A spawn waiting for room is cancelled and, before it resumes, a shutdown begins: the
    shutdown failed with InvalidStateError refusing the cancelled waiter, leaving the waiters
    behind it unrefused. The cancelled spawn ends cancelled, the other is refused."""
    clock = FakeClock()
    pool = WorkerPool(1, 1, clock=clock)
    pool.spawn_nowait(Task(Work(clock)))
    await asyncio.sleep(0)
    pool.spawn_nowait(Task(Work(clock)))
    cancelled = asyncio.get_running_loop().create_task(pool.spawn(Task(Work(clock))))
    refused = asyncio.get_running_loop().create_task(pool.spawn(Task(Work(clock))))
    await settle()
    stopping = asyncio.get_running_loop().create_task(pool.shutdown())  # runs first...
    cancelled.cancel()  # ...then the cancelled spawn resumes
    await clock.run_for(5.0)
    assert stopping.done()
    await stopping
    assert cancelled.cancelled()
    with pytest.raises(PoolClosed):
        await refused
    assert pool.stats().completed_tasks == 2


# ------------------------------------------------------------------------------- the harness
# It must fail where a primitive leaks; toys defined here show it does.


class LeakyLock:
    """A one-holder lock whose acquire ignores cancellation: a grant handed to a waiter that is
    cancelled before it resumes is lost (the bug the harness's woken cut exists to find)."""

    def __init__(self) -> None:
        self.held = True
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if not self.held:
            self.held = True
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        await waiter

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # handed over: still held
                return
        self.held = False


async def leaky_lock_case(attempt: Attempt) -> None:
    """The lock is held until t=1; the caller waits from t=0, a bystander from t=0.5."""
    clock = attempt.clock
    lock = LeakyLock()
    release = at(clock, 1.0, lock.release)
    bystander = arrive(clock, 0.5, lock.acquire)
    await attempt.run(lock.acquire())
    if not attempt.cut:
        lock.release()
    await attempt.drain()
    await release
    assert bystander.done(), "the bystander never got the lock"


def test_the_harness_finds_a_grant_lost_to_a_cancellation() -> None:
    with pytest.raises(AssertionError, match="the bystander never got the lock"):
        cancel_at_every_await(leaky_lock_case)


def test_the_harness_finds_a_call_that_swallows_its_cancellation() -> None:
    async def case(attempt: Attempt) -> None:
        async def stubborn() -> str:
            try:
                await attempt.clock.sleep(1.0)
            except asyncio.CancelledError:
                return "carried on"
            return "done"

        await attempt.run(stubborn())

    with pytest.raises(AssertionError, match=r"cut at point 1 \(pending\), the call returned"):
        cancel_at_every_await(case)


def test_the_harness_finds_a_task_left_behind() -> None:
    async def case(attempt: Attempt) -> None:
        async def forever() -> None:
            await asyncio.Event().wait()

        async def call() -> None:
            asyncio.get_running_loop().create_task(forever())
            await attempt.clock.sleep(1.0)

        await attempt.run(call())

    with pytest.raises(AssertionError, match="tasks left behind at point 1"):
        cancel_at_every_await(case)


def test_the_harness_counts_each_suspension_of_the_call_only() -> None:
    """Three bare yields of the call (each cut pending; there is no wait to resolve, settle or
    race), while another task yields many times: three points."""

    async def case(attempt: Attempt) -> None:
        async def busy() -> None:
            for _ in range(10):
                await asyncio.sleep(0)

        other = asyncio.get_running_loop().create_task(busy())

        async def three() -> str:
            for _ in range(3):
                await asyncio.sleep(0)
            return "done"

        outcome = await attempt.run(three())
        assert outcome.cancelled is attempt.cut
        await other

    coverage = cancel_at_every_await(case)
    assert coverage.points == 3
    assert coverage.resolved_cuts == 0


async def test_a_spawn_just_after_a_task_cancelled_its_own_worker_is_queued_and_runs() -> None:
    """A task cancels its own worker and returns: the worker goes idle with its cancellation
    pending, so its idle future is cancelled before it resumes. A spawn in that same loop turn
    woke that future and raised InvalidStateError (its task queued all the same, its handle never
    returned). Now it wakes another worker or lets the ending one be replaced: the task runs."""
    pool = WorkerPool(1, 4)

    async def cancels_its_worker() -> str:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        return "returned"

    async def after() -> str:
        return "ran"

    rogue = pool.spawn_nowait(Task(cancels_its_worker))
    await asyncio.sleep(0)  # the worker runs it and parks, cancelled; this resumes first
    assert rogue.done()
    handle = pool.spawn_nowait(Task(after))
    result = await handle
    assert (result.status, result.value) == (TaskStatus.COMPLETED, "ran")
    assert (await rogue).status is TaskStatus.COMPLETED
    stats = pool.stats()
    assert (stats.completed_tasks, stats.active_workers, stats.queued_tasks) == (2, 0, 0)
    await pool.shutdown()
