"""WorkerPool: docs/worker_pool.md, bullet by bullet."""

from __future__ import annotations

import asyncio
import functools
import gc
import warnings
from datetime import timedelta
from typing import Any

import pytest

from zeroclaw.concurrency.errors import PoolClosed, QueueFull, TaskCancelled
from zeroclaw.concurrency.worker_pool import (
    Task,
    TaskHandle,
    TaskPriority,
    TaskResult,
    TaskStatus,
    WorkerPool,
    WorkerPoolStats,
)
from zeroclaw.testing import FakeClock, settle


class Gate:
    """A task body that blocks until opened, recording that it started."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.started.set()
        await self.release.wait()
        return "opened"


def recorder(log: list[str], label: str) -> Task[str]:
    async def run() -> str:
        log.append(label)
        return label

    return Task(run, name=label)


# ---------------------------------------------------------------- construction and basics


def test_priority_order_matches_the_seed() -> None:
    assert (
        TaskPriority.CRITICAL
        > TaskPriority.HIGH
        > TaskPriority.NORMAL
        > TaskPriority.LOW
        > TaskPriority.BACKGROUND
    )
    assert [int(p) for p in TaskPriority] == [0, 1, 2, 3, 4]
    assert Task(lambda: asyncio.sleep(0)).priority is TaskPriority.NORMAL


@pytest.mark.parametrize(("workers", "queue_size"), [(0, 10), (4, 0), (-1, 1)])
def test_invalid_sizes_raise_value_error(workers: int, queue_size: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        WorkerPool(workers, queue_size)


def test_construction_outside_an_event_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    pool = WorkerPool(4, 100, default_timeout=timedelta(seconds=5))
    assert pool.worker_count == 4
    assert pool.stats() == WorkerPoolStats(4, 0, 0, 0, 0, 0, 0, 0, 0.0)
    assert "worker_pool" in repr(pool)


def test_spawn_nowait_outside_a_loop_then_run_inside_one() -> None:
    pool = WorkerPool(2, 10)

    async def value() -> int:
        return 7

    handle = pool.spawn_nowait(Task(value))
    assert pool.stats().queued_tasks == 1

    async def main() -> TaskResult[int]:
        result = await handle
        await pool.shutdown()
        return result

    assert asyncio.run(main()).unwrap() == 7


def test_task_builders_and_ids() -> None:
    first = Task(lambda: asyncio.sleep(0))
    second = first.with_priority(TaskPriority.HIGH).with_timeout(timedelta(seconds=2))
    assert second is first
    assert first.priority is TaskPriority.HIGH
    assert first.timeout == 2.0
    assert Task(lambda: asyncio.sleep(0)).id != first.id
    with pytest.raises(TypeError, match="callable or a coroutine"):
        Task(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        Task(lambda: asyncio.sleep(0), timeout=-1)


async def test_accepts_async_def_lambda_partial_and_coroutine_object() -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    async def seven() -> int:
        return 7

    async with WorkerPool(2, 10) as pool:
        results = [
            await pool.submit(Task(seven)),
            await pool.submit(Task(lambda: add(1, 2))),
            await pool.submit(Task(functools.partial(add, 2, 3))),
            await pool.submit(Task(add(4, 5))),
        ]
    assert [r.unwrap() for r in results] == [7, 3, 5, 9]
    assert all(r.ok and r.status is TaskStatus.COMPLETED for r in results)


# ---------------------------------------------------------------- ordering


async def test_one_task_per_priority_submitted_in_reverse_run_most_urgent_first() -> None:
    pool = WorkerPool(1, 10)
    log: list[str] = []
    gate = Gate()
    blocker = await pool.spawn(Task(gate))
    await gate.started.wait()
    handles = [
        await pool.spawn(recorder(log, p.name).with_priority(p))
        for p in sorted(TaskPriority)  # BACKGROUND first: the reverse of the run order
    ]
    gate.release.set()
    for handle in [blocker, *handles]:
        assert (await handle).ok
    assert log == ["CRITICAL", "HIGH", "NORMAL", "LOW", "BACKGROUND"]
    await pool.shutdown()


async def test_fifo_within_a_priority_level() -> None:
    pool = WorkerPool(1, 100)
    log: list[str] = []
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    labels = [f"{p.name}-{i}" for i in range(5) for p in (TaskPriority.LOW, TaskPriority.HIGH)]
    for label in labels:
        priority = TaskPriority[label.split("-")[0]]
        pool.spawn_nowait(recorder(log, label).with_priority(priority))
    gate.release.set()
    await pool.shutdown()
    assert log == [f"HIGH-{i}" for i in range(5)] + [f"LOW-{i}" for i in range(5)]


async def test_queued_tasks_counts_what_is_really_queued() -> None:
    pool = WorkerPool(2, 10)
    gates = [Gate(), Gate()]
    for gate in gates:
        await pool.spawn(Task(gate))
    await asyncio.gather(*(g.started.wait() for g in gates))
    for _ in range(3):
        pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))
    stats = pool.stats()
    assert (stats.active_workers, stats.queued_tasks) == (2, 3)
    for gate in gates:
        gate.release.set()
    await pool.shutdown()
    stats = pool.stats()
    assert (stats.active_workers, stats.queued_tasks, stats.completed_tasks) == (0, 0, 5)


# ---------------------------------------------------------------- bounded queue and shedding


async def test_spawn_nowait_raises_queue_full_without_a_less_urgent_task() -> None:
    pool = WorkerPool(1, 2, name="tiny")
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))
    pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))
    with pytest.raises(QueueFull, match="'tiny' queue is full"):
        pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))
    with pytest.raises(QueueFull):  # equally urgent is not strictly more urgent
        pool.spawn_nowait(Task(lambda: asyncio.sleep(0), priority=TaskPriority.NORMAL))
    assert pool.stats().rejected_tasks == 2
    gate.release.set()
    await pool.shutdown()


async def test_more_urgent_task_sheds_the_newest_least_urgent_one() -> None:
    pool = WorkerPool(1, 3)
    log: list[str] = []
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    old_low = pool.spawn_nowait(recorder(log, "low-old").with_priority(TaskPriority.LOW))
    new_low = pool.spawn_nowait(recorder(log, "low-new").with_priority(TaskPriority.LOW))
    normal = pool.spawn_nowait(recorder(log, "normal"))
    # Full. A HIGH task sheds the newest of the least urgent (LOW) tasks instead of waiting.
    high = pool.spawn_nowait(recorder(log, "high").with_priority(TaskPriority.HIGH))
    shed = await new_low
    assert shed.status is TaskStatus.REJECTED
    assert isinstance(shed.error, QueueFull)
    with pytest.raises(QueueFull, match="shed"):
        shed.unwrap()
    # submit and spawn shed the same way as spawn_nowait.
    critical = await pool.spawn(recorder(log, "critical").with_priority(TaskPriority.CRITICAL))
    assert (await old_low).status is TaskStatus.REJECTED
    assert pool.stats().queued_tasks == 3
    gate.release.set()
    for handle in (normal, high, critical):
        assert (await handle).ok
    await pool.shutdown()
    assert log == ["critical", "high", "normal"]
    assert pool.stats().rejected_tasks == 2


async def test_shed_coroutine_object_is_closed_without_warning() -> None:
    pool = WorkerPool(1, 1)
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    ran: list[str] = []

    async def body() -> None:
        ran.append("ran")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        victim = pool.spawn_nowait(Task(body(), priority=TaskPriority.LOW))
        pool.spawn_nowait(Task(lambda: asyncio.sleep(0), priority=TaskPriority.HIGH))
        assert (await victim).status is TaskStatus.REJECTED
        gc.collect()
    gate.release.set()
    await pool.shutdown()
    assert ran == []


async def test_spawn_waits_for_room_and_gets_it_in_priority_then_arrival_order() -> None:
    pool = WorkerPool(1, 1)
    log: list[str] = []
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    first = pool.spawn_nowait(recorder(log, "queued"))
    waiting = [
        asyncio.ensure_future(pool.spawn(recorder(log, label).with_priority(priority)))
        for label, priority in [
            ("low", TaskPriority.LOW),
            ("normal-1", TaskPriority.NORMAL),
            ("normal-2", TaskPriority.NORMAL),
        ]
    ]
    await settle()
    assert not any(w.done() for w in waiting)  # no room, nothing less urgent than NORMAL queued
    gate.release.set()
    for handle in [first, *[await w for w in waiting]]:
        assert (await handle).ok
    await pool.shutdown()
    assert log == ["queued", "normal-1", "normal-2", "low"]


async def test_submit_waits_for_room_then_for_the_result() -> None:
    pool = WorkerPool(1, 1)
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))

    async def answer() -> int:
        return 42

    submitted = asyncio.ensure_future(pool.submit(Task(answer)))
    await settle()
    assert not submitted.done()
    gate.release.set()
    assert (await submitted).unwrap() == 42
    await pool.shutdown()


async def test_cancelled_spawn_while_waiting_for_room_leaves_nothing_queued() -> None:
    pool = WorkerPool(1, 1)
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))
    ran: list[int] = []

    async def body() -> None:
        ran.append(1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        waiting = asyncio.ensure_future(pool.spawn(Task(body())))
        await settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gc.collect()
    gate.release.set()
    await pool.shutdown()
    assert ran == []
    assert pool.stats().completed_tasks == 2


# ---------------------------------------------------------------- failures and timeouts


async def test_a_raising_task_does_not_kill_the_single_worker() -> None:
    pool = WorkerPool(1, 10)

    async def boom() -> None:
        raise ValueError("boom")

    async def fine(n: int) -> int:
        return n

    failed = await pool.submit(Task(boom))
    healthy = [await pool.submit(Task(functools.partial(fine, n))) for n in range(3)]
    assert failed.status is TaskStatus.FAILED
    assert isinstance(failed.error, ValueError)
    with pytest.raises(ValueError, match="boom"):
        failed.unwrap()
    assert [r.unwrap() for r in healthy] == [0, 1, 2]
    stats = pool.stats()
    assert (stats.failed_tasks, stats.completed_tasks) == (1, 3)
    await pool.shutdown()


async def test_a_task_raising_cancelled_error_by_itself_keeps_the_worker() -> None:
    pool = WorkerPool(1, 10)

    async def self_cancel() -> None:
        raise asyncio.CancelledError

    assert (await pool.submit(Task(self_cancel))).status is TaskStatus.CANCELLED
    assert (await pool.submit(Task(lambda: asyncio.sleep(0, "after")))).unwrap() == "after"
    await pool.shutdown()


class _OwnBaseException(BaseException):
    """A BaseException meant for the task alone, as some libraries define."""


async def _until_done(handle: TaskHandle[Any], steps: int = 100) -> bool:
    """Let the loop run up to ``steps`` rounds, polling ``handle``; no real time passes."""
    for _ in range(steps):
        if handle.done():
            return True
        await asyncio.sleep(0)
    return handle.done()


@pytest.mark.parametrize("error", [GeneratorExit, _OwnBaseException])
async def test_a_task_raising_a_base_exception_fails_and_the_queue_keeps_moving(
    error: type[BaseException],
) -> None:
    pool = WorkerPool(1, 10)

    async def raises() -> None:
        raise error("from the task")

    first = pool.spawn_nowait(Task(raises))
    queued = pool.spawn_nowait(Task(lambda: asyncio.sleep(0, "after")))
    assert await _until_done(queued), "the queued task was stranded behind the dead worker"
    assert first.result().status is TaskStatus.FAILED
    assert isinstance(first.result().error, error)
    assert queued.result().unwrap() == "after"
    assert pool.stats().failed_tasks == 1
    await pool.shutdown()


async def test_a_task_that_cancels_its_own_worker_is_replaced_at_once() -> None:
    pool = WorkerPool(1, 10)

    async def cancel_myself() -> None:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        await asyncio.sleep(0)

    first = pool.spawn_nowait(Task(cancel_myself))
    queued = pool.spawn_nowait(Task(lambda: asyncio.sleep(0, "after")))
    assert await _until_done(queued), "the queued task was stranded after the worker was lost"
    assert first.result().status is TaskStatus.CANCELLED
    assert queued.result().unwrap() == "after"
    assert pool.stats().worker_count == 1
    await pool.shutdown()


@pytest.mark.parametrize("how", ["spawn_nowait", "spawn", "submit"])
async def test_a_task_submitted_twice_is_refused_at_the_call(how: str) -> None:
    pool = WorkerPool(1, 10)
    task: Task[str] = Task(lambda: asyncio.sleep(0, "once"))
    assert (await pool.submit(task)).unwrap() == "once"

    async def again() -> object:
        if how == "spawn_nowait":
            return pool.spawn_nowait(task)
        if how == "spawn":
            return await pool.spawn(task)
        return await pool.submit(task)

    with pytest.raises(RuntimeError, match="already submitted"):
        await again()
    queued: Task[str] = Task(lambda: asyncio.sleep(0, "queued"))
    handle = pool.spawn_nowait(queued)
    with pytest.raises(RuntimeError, match="already submitted"):
        pool.spawn_nowait(queued)  # still queued: it would run twice
    assert (await handle).unwrap() == "queued"
    await pool.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": "soon"}, TypeError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"priority": True}, TypeError),
        ({"priority": 7}, ValueError),
        ({"priority": "HIGH"}, TypeError),
    ],
)
def test_task_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Task(lambda: asyncio.sleep(0), **kwargs)
    task = Task(lambda: asyncio.sleep(0))
    builder = task.with_timeout if "timeout" in kwargs else task.with_priority
    with pytest.raises(error):
        builder(*kwargs.values())


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((True, 10), {}, TypeError),
        ((4, True), {}, TypeError),
        ((4.0, 10), {}, TypeError),
        ((4, 10), {"default_timeout": "soon"}, TypeError),
        ((4, 10), {"default_timeout": float("nan")}, ValueError),
    ],
)
def test_pool_arguments_are_checked(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        WorkerPool(*args, **kwargs)


async def test_shutdown_timeout_is_checked() -> None:
    pool = WorkerPool(1, 1)
    with pytest.raises(TypeError):
        await pool.shutdown(timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        await pool.shutdown(timeout=float("nan"))
    await pool.shutdown()


def test_status_prints_as_its_value() -> None:
    assert str(TaskStatus.TIMED_OUT) == "timed_out"
    assert f"{TaskStatus.COMPLETED}" == "completed"


async def test_timeout_runs_from_the_start_of_execution() -> None:
    clock = FakeClock()
    pool = WorkerPool(1, 10, clock=clock)
    gate = Gate()
    blocker = await pool.spawn(Task(gate))
    await gate.started.wait()
    timed = await pool.spawn(Task(lambda: clock.sleep(10), timeout=5))
    await clock.run_for(60)  # queued for 60 s: the timeout has not started
    assert not timed.done()
    gate.release.set()
    await settle()
    await clock.run_for(4.9)
    assert not timed.done()
    await clock.run_for(0.1)
    result = await timed
    assert result.status is TaskStatus.TIMED_OUT
    assert isinstance(result.error, TimeoutError)
    assert result.wait_time == pytest.approx(60.0)
    assert result.run_time == pytest.approx(5.0)
    with pytest.raises(TimeoutError):
        result.unwrap()
    assert (await blocker).ok
    # The worker survives its timed-out task.
    assert (await pool.submit(Task(lambda: asyncio.sleep(0, "next")))).unwrap() == "next"
    assert pool.stats().timeout_tasks == 1
    await pool.shutdown()


async def test_default_timeout_applies_only_to_tasks_without_one() -> None:
    clock = FakeClock()
    pool = WorkerPool(2, 10, default_timeout=3, clock=clock)
    defaulted = await pool.spawn(Task(lambda: clock.sleep(10)))
    own = await pool.spawn(Task(lambda: clock.sleep(10), timeout=20))
    await clock.run_for(3)
    assert (await defaulted).status is TaskStatus.TIMED_OUT
    assert not own.done()
    await clock.run_for(7)
    assert (await own).ok
    await pool.shutdown()


async def test_one_timer_serves_every_running_tasks_timeout() -> None:
    clock = FakeClock()
    pool = WorkerPool(4, 100, default_timeout=30, clock=clock)
    handles = [await pool.spawn(Task(lambda: clock.sleep(1))) for _ in range(40)]
    await settle()
    # 4 running tasks sleeping on the clock, and one timeout timer for all of them.
    assert clock.pending_timers == 4 + 1
    await clock.run_for(10)
    assert all(handle.result().ok for handle in handles)
    await pool.shutdown()
    assert clock.pending_timers == 0  # the timeout timer does not outlive the pool


async def test_a_later_task_with_a_shorter_timeout_times_out_at_its_own_deadline() -> None:
    clock = FakeClock()
    pool = WorkerPool(3, 10, clock=clock)
    long = await pool.spawn(Task(lambda: clock.sleep(100), timeout=10))
    await clock.run_for(2)
    short = await pool.spawn(Task(lambda: clock.sleep(100), timeout=0.5))
    await clock.run_for(0.49)
    assert not short.done()
    await clock.run_for(0.01)
    assert (await short).status is TaskStatus.TIMED_OUT
    assert (await short).run_time == pytest.approx(0.5)
    assert not long.done()
    await clock.run_for(7.5)  # t = 10
    assert (await long).status is TaskStatus.TIMED_OUT
    await pool.shutdown()


async def test_no_timeout_means_no_limit() -> None:
    clock = FakeClock()
    pool = WorkerPool(1, 10, clock=clock)
    handle = await pool.spawn(Task(lambda: clock.sleep(3600)))
    await clock.run_for(3599)
    assert not handle.done()
    await clock.run_for(1)
    assert (await handle).ok
    await pool.shutdown()


async def test_a_task_that_swallows_its_timeout_completes_and_the_worker_survives() -> None:
    clock = FakeClock()
    pool = WorkerPool(1, 10, clock=clock)

    async def stubborn() -> str:
        try:
            await clock.sleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    handle = await pool.spawn(Task(stubborn, timeout=1))
    await clock.run_for(1)
    assert (await handle).unwrap() == "swallowed"
    follow_up = await pool.spawn(Task(lambda: clock.sleep(2, "ok")))
    await clock.run_for(2)
    assert (await follow_up).unwrap() == "ok"
    await pool.shutdown()


# ---------------------------------------------------------------- cancellation


async def test_cancelling_a_queued_handle_means_it_never_runs() -> None:
    pool = WorkerPool(1, 10)
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    log: list[str] = []
    handle = pool.spawn_nowait(recorder(log, "never"))
    assert handle.cancel() is True
    result = await handle
    assert result.status is TaskStatus.CANCELLED
    assert isinstance(result.error, TaskCancelled)
    assert handle.done()
    assert handle.cancel() is False
    assert pool.stats().queued_tasks == 0
    gate.release.set()
    await pool.shutdown()
    assert log == []
    assert pool.stats().cancelled_tasks == 1


async def test_cancelling_a_running_handle_cancels_the_task_not_the_worker() -> None:
    pool = WorkerPool(1, 10)
    gate = Gate()
    handle = await pool.spawn(Task(gate))
    await gate.started.wait()
    assert handle.cancel() is True
    result = await handle
    assert result.status is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelled):
        result.unwrap()
    assert (await pool.submit(Task(lambda: asyncio.sleep(0, 1)))).unwrap() == 1
    await pool.shutdown()


async def test_cancelling_an_awaiter_does_not_cancel_the_task_or_other_awaiters() -> None:
    pool = WorkerPool(1, 10)
    gate = Gate()
    handle = await pool.spawn(Task(gate))
    await gate.started.wait()

    async def wait_for_it() -> TaskResult[str]:
        return await handle

    impatient = asyncio.ensure_future(wait_for_it())
    patient = asyncio.ensure_future(wait_for_it())
    await settle()
    impatient.cancel()
    await settle()
    assert impatient.cancelled()
    assert not patient.done()
    gate.release.set()
    assert (await patient).unwrap() == "opened"
    await pool.shutdown()


async def test_cancelling_submit_cancels_its_task() -> None:
    pool = WorkerPool(1, 10)
    gate = Gate()
    submitted = asyncio.ensure_future(pool.submit(Task(gate)))
    await gate.started.wait()
    submitted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitted
    await pool.shutdown()
    assert pool.stats().cancelled_tasks == 1


# ---------------------------------------------------------------- shutdown


async def test_drain_shutdown_runs_everything_queued_and_refuses_new_work() -> None:
    pool = WorkerPool(2, 50)
    log: list[str] = []
    handles = [pool.spawn_nowait(recorder(log, str(i))) for i in range(20)]
    stopping = asyncio.ensure_future(pool.shutdown(drain=True))
    await asyncio.sleep(0)
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))
    with pytest.raises(PoolClosed):
        await pool.submit(Task(lambda: asyncio.sleep(0)))
    await stopping
    assert all(h.done() and h.result().ok for h in handles)
    assert sorted(log, key=int) == [str(i) for i in range(20)]
    assert pool.stats().completed_tasks == 20


async def test_no_drain_shutdown_cancels_queued_and_lets_running_finish() -> None:
    clock = FakeClock()
    pool = WorkerPool(1, 10, clock=clock)
    running = await pool.spawn(Task(lambda: clock.sleep(5, "done")))
    await settle()
    queued = [pool.spawn_nowait(Task(lambda: clock.sleep(1))) for _ in range(3)]
    stopping = asyncio.ensure_future(pool.shutdown(drain=False, timeout=30))
    await settle()
    assert all(h.done() and h.result().status is TaskStatus.CANCELLED for h in queued)
    assert not running.done()
    await clock.run_for(5)
    await stopping
    assert (await running).unwrap() == "done"


@pytest.mark.parametrize("drain", [True, False])
async def test_shutdown_timeout_cancels_running_tasks_and_resolves_every_handle(
    drain: bool,
) -> None:
    clock = FakeClock()
    pool = WorkerPool(2, 10, clock=clock)
    ran: list[int] = []

    async def queued_body() -> None:
        ran.append(1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        running = [await pool.spawn(Task(lambda: clock.sleep(100))) for _ in range(2)]
        await settle()
        queued = [pool.spawn_nowait(Task(queued_body())) for _ in range(3)]
        stopping = asyncio.ensure_future(pool.shutdown(drain=drain, timeout=10))
        await clock.run_for(9.9)
        assert not stopping.done()
        await clock.run_for(0.1)
        await stopping
        gc.collect()
    for handle in running + queued:
        assert handle.done()
        assert handle.result().status is TaskStatus.CANCELLED
    assert ran == []
    assert pool.stats().cancelled_tasks == 5
    assert pool.stats().active_workers == 0


async def test_shutdown_resolves_a_task_that_ignores_cancellation() -> None:
    clock = FakeClock()
    pool = WorkerPool(1, 10, clock=clock)
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    handle = await pool.spawn(Task(deaf))
    await settle()
    stopping = asyncio.ensure_future(pool.shutdown(timeout=1))
    await clock.run_for(1)
    assert not stopping.done()  # the grace for a task that ignores cancellation
    await clock.run_for(1)
    await stopping
    assert handle.result().status is TaskStatus.CANCELLED
    release.set()  # let the stubborn task end so the test leaves no pending task behind
    await settle()


async def test_shutdown_refuses_submitters_waiting_for_room() -> None:
    pool = WorkerPool(1, 1)
    gate = Gate()
    await pool.spawn(Task(gate))
    await gate.started.wait()
    pool.spawn_nowait(Task(lambda: asyncio.sleep(0)))
    waiting = asyncio.ensure_future(pool.spawn(Task(lambda: asyncio.sleep(0))))
    await settle()
    stopping = asyncio.ensure_future(pool.shutdown())
    with pytest.raises(PoolClosed, match="shutting down"):
        await waiting
    gate.release.set()
    await stopping


async def test_shutdown_is_idempotent_and_a_later_no_drain_escalates() -> None:
    clock = FakeClock()
    pool = WorkerPool(1, 10, clock=clock)
    running = await pool.spawn(Task(lambda: clock.sleep(5)))
    await settle()
    queued = pool.spawn_nowait(Task(lambda: clock.sleep(5)))
    first = asyncio.ensure_future(pool.shutdown(drain=True))
    await settle()
    assert not queued.done()
    second = asyncio.ensure_future(pool.shutdown(drain=False))
    await settle()
    assert queued.result().status is TaskStatus.CANCELLED
    await clock.run_for(5)
    await asyncio.gather(first, second)
    assert (await running).ok
    await pool.shutdown()  # a third call returns at once


async def test_async_with_drains_on_exit() -> None:
    log: list[str] = []
    async with WorkerPool(2, 10) as pool:
        for i in range(5):
            pool.spawn_nowait(recorder(log, str(i)))
    assert len(log) == 5
    assert pool.closed


async def test_workers_start_lazily_and_never_exceed_the_count() -> None:
    pool = WorkerPool(3, 100)
    assert len(pool._workers) == 0
    peak = 0
    active = 0

    async def body() -> None:
        nonlocal peak, active
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        active -= 1

    handles = [pool.spawn_nowait(Task(body)) for _ in range(30)]
    assert len(pool._workers) == 3
    for handle in handles:
        await handle
    await pool.shutdown()
    assert peak == 3
    assert len(pool._workers) == 0


async def test_stats_average_processing_time_uses_the_clock() -> None:
    clock = FakeClock()
    pool = WorkerPool(2, 10, clock=clock)
    first = await pool.spawn(Task(lambda: clock.sleep(1)))
    second = await pool.spawn(Task(lambda: clock.sleep(3)))
    await clock.run_for(3)
    await first
    await second
    assert pool.stats().avg_processing_time_ms == pytest.approx(2000.0)
    await pool.shutdown()


async def test_handle_repr_and_result_before_done() -> None:
    pool = WorkerPool(1, 10)
    gate = Gate()
    handle: TaskHandle[str] = await pool.spawn(Task(gate, name="gated"))
    with pytest.raises(asyncio.InvalidStateError):
        handle.result()
    await gate.started.wait()
    assert "gated" in repr(handle)
    assert "running" in repr(handle)
    gate.release.set()
    await handle
    assert "completed" in repr(handle)
    await pool.shutdown()


async def test_done_callbacks_run_once_for_every_outcome_and_errors_are_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    pool = WorkerPool(1, 1, clock=clock)
    seen: list[tuple[int, TaskStatus]] = []

    def record(handle: TaskHandle[Any]) -> None:
        seen.append((handle.task_id, handle.result().status))

    def broken(handle: TaskHandle[Any]) -> None:
        raise RuntimeError("callback bug")

    async def boom() -> None:
        raise ValueError("boom")

    completed = await pool.spawn(Task(lambda: clock.sleep(1)))
    completed.add_done_callback(broken)
    completed.add_done_callback(record)
    await settle()
    failed = pool.spawn_nowait(Task(boom, priority=TaskPriority.LOW))
    failed.add_done_callback(record)
    shed = pool.spawn_nowait(Task(boom, priority=TaskPriority.HIGH))  # sheds `failed`
    shed.add_done_callback(record)
    await clock.run_for(1)
    await shed
    timed = await pool.spawn(Task(lambda: clock.sleep(5), timeout=1))
    timed.add_done_callback(record)
    await clock.run_for(1)
    await timed
    timed.add_done_callback(record)  # already done: runs at once
    await pool.shutdown()
    assert seen == [
        (failed.task_id, TaskStatus.REJECTED),
        (completed.task_id, TaskStatus.COMPLETED),
        (shed.task_id, TaskStatus.FAILED),
        (timed.task_id, TaskStatus.TIMED_OUT),
        (timed.task_id, TaskStatus.TIMED_OUT),
    ]
    assert "callback bug" in caplog.text
    assert pool.free_slots == 1


# ---------------------------------------------------------------- internal jobs


async def test_an_internal_job_whose_settling_raises_leaves_the_worker_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from zeroclaw.concurrency.worker_pool import _Job

    class ExplodingJob(_Job):
        __slots__ = ("label",)

        def __init__(self, label: str) -> None:
            self.label = label
            self._priority = TaskPriority.NORMAL
            self._timeout = None
            self._cancel_reason = None

        async def _work(self) -> str:
            return self.label

        def _call(self) -> Any:
            return self._work()

        def _completed(self, value: Any, wait_time: float, run_time: float) -> None:
            raise RuntimeError(f"settling {value} failed")

        def _ended(
            self, status: TaskStatus, error: BaseException, wait_time: float, run_time: float
        ) -> None:
            raise RuntimeError(f"settling {status} failed")

        def _discard(self) -> None:
            pass

        def _describe(self) -> str:
            return f"exploding job {self.label}"

    pool = WorkerPool(1, 10)
    pool._queue_job(ExplodingJob("a"))
    result = await pool.submit(Task(lambda: asyncio.sleep(0, "after")))
    assert result.unwrap() == "after"  # the one worker survived the first job's settling
    assert "settling exploding job a raised" in caplog.text
    await pool.shutdown()
    assert pool.stats().completed_tasks == 2
