"""Worker pool: zeroclaw's WorkerPool vs a hand-written asyncio.Queue pool and aiojobs.

Target (issue 2): per task, the pool costs at most 1.5× the hand-written baseline: an
``asyncio.Queue`` of the same bound, the same number of workers, one future per task.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiojobs

from benchmarks.harness import Report, interleave, run_group
from zeroclaw.concurrency.worker_pool import Task, TaskHandle, WorkerPool

GROUP = "worker_pool"


async def noop() -> None:
    return None


async def baseline_round(tasks: int, workers: int, queue_size: int) -> float:
    """Hand-written: bounded asyncio.Queue, N workers, a future per task."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = asyncio.Queue(
        queue_size
    )

    async def worker() -> None:
        while True:
            fn, future = await queue.get()
            try:
                future.set_result(await fn())
            except Exception as exc:
                future.set_exception(exc)

    runners = [loop.create_task(worker()) for _ in range(workers)]
    start = time.perf_counter()
    futures = []
    for _ in range(tasks):
        future = loop.create_future()
        await queue.put((noop, future))
        futures.append(future)
    for future in futures:
        await future
    elapsed = time.perf_counter() - start
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    return elapsed / tasks


async def pool_round(tasks: int, workers: int, queue_size: int) -> float:
    pool = WorkerPool(workers, queue_size)
    start = time.perf_counter()
    handles: list[TaskHandle[None]] = []
    for _ in range(tasks):
        handles.append(await pool.spawn(Task(noop)))
    for handle in handles:
        await handle
    elapsed = time.perf_counter() - start
    await pool.shutdown()
    return elapsed / tasks


async def aiojobs_round(tasks: int, workers: int, queue_size: int) -> float:
    scheduler = aiojobs.Scheduler(limit=workers, pending_limit=queue_size)
    start = time.perf_counter()
    jobs = [await scheduler.spawn(noop()) for _ in range(tasks)]
    for job in jobs:
        await job.wait()
    elapsed = time.perf_counter() - start
    await scheduler.close()
    return elapsed / tasks


async def run(report: Report, quick: bool) -> None:
    tasks = 20_000 if quick else 100_000
    rounds = 3 if quick else 7
    workers, queue_size = 4, 1000
    timings = await interleave(
        {
            "WorkerPool spawn+await": lambda: pool_round(tasks, workers, queue_size),
            "asyncio.Queue + workers + futures": lambda: baseline_round(tasks, workers, queue_size),
            "aiojobs Scheduler": lambda: aiojobs_round(tasks, workers, queue_size),
        },
        rounds,
    )
    ours = timings["WorkerPool spawn+await"]
    note = f"{tasks} no-op tasks, {workers} workers, queue {queue_size}"
    report.ratio(GROUP, ours, timings["asyncio.Queue + workers + futures"], target=1.5, note=note)
    report.ratio(GROUP, ours, timings["aiojobs Scheduler"], note=note)
    report.figure(GROUP, "WorkerPool throughput", 1.0 / ours.median, "tasks/s", note)

    scaled = await interleave(
        {
            f"{count} workers": functools.partial(pool_round, tasks, count, queue_size)
            for count in (1, 4, 16, 64)
        },
        rounds,
    )
    for name, timing in scaled.items():
        report.figure(GROUP, f"WorkerPool throughput, {name}", 1.0 / timing.median, "tasks/s")


if __name__ == "__main__":
    run_group(run)
