"""Property tests: whatever the mix of priorities and queue pressure, the pool's order and
accounting hold."""

from __future__ import annotations

import asyncio
import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from zeroclaw.concurrency.errors import QueueFull
from zeroclaw.concurrency.worker_pool import Task, TaskHandle, TaskPriority, TaskStatus, WorkerPool

priorities = st.sampled_from(list(TaskPriority))


@settings(max_examples=200, deadline=None)
@given(arrivals=st.lists(priorities, max_size=40), queue_size=st.integers(1, 8))
def test_single_worker_order_shedding_and_accounting(
    arrivals: list[TaskPriority], queue_size: int
) -> None:
    """One worker held busy while tasks arrive; then it runs them.

    Model: a full queue sheds the newest least urgent task when a strictly more urgent one
    arrives, refuses otherwise; the survivors run most urgent first, FIFO inside a level.
    """

    async def scenario() -> None:
        pool = WorkerPool(1, queue_size)
        release = asyncio.Event()
        blocker = await pool.spawn(Task(release.wait))
        await asyncio.sleep(0)  # the worker takes the blocker
        ran: list[int] = []
        model: list[tuple[TaskPriority, int]] = []  # the queue, as the model sees it
        expected_shed: set[int] = set()
        refused = 0
        handles: dict[int, TaskHandle[None]] = {}
        for index, priority in enumerate(arrivals):

            async def body(index: int = index) -> None:
                ran.append(index)

            if len(model) >= queue_size:
                least = min(p for p, _ in model)
                if priority > least:
                    victim = max(i for p, i in model if p == least)
                    model.remove((least, victim))
                    expected_shed.add(victim)
                else:
                    refused += 1
                    try:
                        pool.spawn_nowait(Task(body, priority=priority))
                    except QueueFull:
                        continue
                    raise AssertionError("expected QueueFull")
            handles[index] = pool.spawn_nowait(Task(body, priority=priority))
            model.append((priority, index))
        assert pool.stats().queued_tasks == len(model)
        release.set()
        await pool.shutdown()
        assert (await blocker).ok
        expected_order = [i for _, i in sorted(model, key=lambda entry: (-entry[0], entry[1]))]
        assert ran == expected_order
        for index, handle in handles.items():
            status = handle.result().status
            assert status is (
                TaskStatus.REJECTED if index in expected_shed else TaskStatus.COMPLETED
            )
        stats = pool.stats()
        assert stats.completed_tasks == len(model) + 1
        assert stats.rejected_tasks == len(expected_shed) + refused
        assert stats.queued_tasks == 0

    asyncio.run(scenario())


@settings(max_examples=50, deadline=None)
@given(
    workers=st.integers(1, 4),
    plan=st.lists(st.tuples(priorities, st.integers(0, 3), st.booleans()), max_size=30),
    drain=st.booleans(),
)
def test_every_handle_resolves_whatever_the_shutdown(
    workers: int, plan: list[tuple[TaskPriority, int, bool]], drain: bool
) -> None:
    """Tasks that yield a few times, some raising; shutdown mid-flight; every handle resolves."""

    async def scenario() -> None:
        pool = WorkerPool(workers, 64)

        async def body(yields: int, fail: bool) -> None:
            for _ in range(yields):
                await asyncio.sleep(0)
            if fail:
                raise RuntimeError("planned failure")

        handles = [
            pool.spawn_nowait(Task(functools.partial(body, y, f), priority=p)) for p, y, f in plan
        ]
        await asyncio.sleep(0)
        await pool.shutdown(drain=drain)
        assert all(h.done() for h in handles)
        stats = pool.stats()
        counted = (
            stats.completed_tasks + stats.failed_tasks + stats.cancelled_tasks + stats.timeout_tasks
        )
        assert counted == len(plan)
        if drain:
            assert stats.cancelled_tasks == 0
            assert stats.failed_tasks == sum(1 for _, _, f in plan if f)

    asyncio.run(scenario())
