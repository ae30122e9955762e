"""A fixed set of workers draining a bounded priority queue.

``WorkerPool(workers, queue_size)`` runs tasks on at most ``workers`` asyncio tasks, taking the most
urgent queued task first (``CRITICAL > HIGH > NORMAL > LOW > BACKGROUND``) and, inside one priority,
the oldest first. The Rust original this replaces shipped a FIFO queue that ignored priority, put a
silent 30 s timeout on every task, dropped queued tasks on shutdown and lost a worker for good on
every panic (the Rust original's defect list); none of that holds here.

Design notes:

* One deque per priority level instead of a heap: pushing and popping are O(1), FIFO inside a level
  needs no sequence numbers, and "shed the newest least urgent task" is a ``pop()`` from the right.
* Tasks run inline in the worker coroutine (no ``asyncio.Task`` per job), which is what makes the
  pool cost close to a hand-written ``asyncio.Queue`` + workers loop. Cancelling a running job
  (``handle.cancel()``, its timeout, a shutdown) cancels the worker task and takes the cancellation
  back with ``Task.uncancel()``, the way :func:`asyncio.timeout` does, so the worker survives.
* A full queue sheds instead of blocking urgent work (after aiojobs' bounded pending queue and
  Tower's load-shed layer): a task strictly more urgent than the
  least urgent queued task evicts the newest of those, which resolves ``REJECTED``.
* Submitters waiting for room are served most urgent first, then first come first served; a freed
  slot is handed straight to the waiter (no barging by later callers).

Like asyncio's own primitives a pool belongs to one event loop; it can be built outside one, and its
workers start lazily inside the running loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum, StrEnum
from typing import Any, Generic, NamedTuple, SupportsIndex, TypeVar, cast

from zeroclaw.concurrency._clock import Cancellable, Clock, call_later, resolve_clock
from zeroclaw.concurrency._mypyc import describe_compiled, mypyc_attr
from zeroclaw.concurrency._validate import to_count, to_seconds, to_timeout
from zeroclaw.concurrency.errors import PoolClosed, QueueFull, TaskCancelled

__all__ = [
    "Task",
    "TaskHandle",
    "TaskPriority",
    "TaskResult",
    "TaskStatus",
    "WorkerPool",
    "WorkerPoolStats",
]

T = TypeVar("T")

_logger = logging.getLogger(__name__)
_task_ids = itertools.count(1)


class TaskPriority(IntEnum):
    """How urgent a task is; a higher value runs first."""

    BACKGROUND = 0
    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


_LEVELS = len(TaskPriority)


def _to_priority(value: object) -> TaskPriority:
    """``value`` as a :class:`TaskPriority` (its ``int`` value is accepted, a ``bool`` is not).

    Raises:
        TypeError: not a TaskPriority or an int.
        ValueError: an int that is no level.
    """
    if isinstance(value, TaskPriority):
        return value
    return TaskPriority(to_count(value, what="priority"))


_MOST_URGENT_FIRST = tuple(reversed(range(_LEVELS)))


class TaskStatus(StrEnum):
    """How a task ended; ``str()`` gives the value (``"timed_out"``)."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class TaskResult(NamedTuple, Generic[T]):
    """The outcome of one task (immutable). Never raises by itself; :meth:`unwrap` does.

    ``error`` holds the task's own exception (``FAILED``), a :class:`TimeoutError` (``TIMED_OUT``),
    a :class:`~zeroclaw.concurrency.errors.TaskCancelled` (``CANCELLED``) or a
    :class:`~zeroclaw.concurrency.errors.QueueFull` (``REJECTED``); it is ``None`` on success.
    ``wait_time`` is the seconds spent queued, ``run_time`` the seconds spent running.
    """

    # A NamedTuple rather than a frozen dataclass: it is built once per task on the hot path, and
    # a tuple builds in a fraction of the time a frozen dataclass's __init__ takes.
    task_id: int
    status: TaskStatus
    value: T | None
    error: BaseException | None
    wait_time: float
    run_time: float

    @property
    def ok(self) -> bool:
        """``True`` when the task completed."""
        return self.status is TaskStatus.COMPLETED

    def unwrap(self) -> T:
        """Return the task's value, or raise the error that ended it (see the class docstring)."""
        if self.status is TaskStatus.COMPLETED:
            return cast(T, self.value)
        assert self.error is not None
        raise self.error


# Builds a TaskResult without the NamedTuple's Python-level __new__ (twice as fast, hot path).
_new_result = tuple.__new__
_COMPLETED = TaskStatus.COMPLETED

TaskFn = Callable[[], Awaitable[T]] | Coroutine[Any, Any, T]


@mypyc_attr(allow_interpreted_subclasses=True)
class Task(Generic[T]):
    """A unit of work for a :class:`WorkerPool`.

    Args:
        fn: a zero-argument callable returning an awaitable (an ``async def``, a lambda, a
            ``functools.partial``), or a coroutine object. A coroutine object that never runs
            (its task was shed, cancelled or refused) is closed, so no "never awaited" warning.
        priority: how urgent the task is.
        timeout: seconds (or a ``timedelta``) the task may run, counted from when a worker starts
            it; ``None`` uses the pool's ``default_timeout``.
        name: shown in ``repr`` and logs.

    The pool reads ``priority`` and ``timeout`` when the task is queued; changing them later
    (``with_priority``, ``with_timeout``) affects only a later submission.

    A task runs once: submitting it again (to any pool) raises ``RuntimeError``; make a new
    ``Task`` for each run.

    Raises:
        TypeError: ``fn`` is neither callable nor a coroutine object; a priority that is not a
            :class:`TaskPriority` (or its ``int`` value); a timeout that is not seconds.
        ValueError: a negative or NaN timeout; an ``int`` priority outside the levels.
    """

    __slots__ = ("_fn", "_is_coroutine", "_submitted", "id", "name", "priority", "timeout")

    def __init__(
        self,
        fn: TaskFn[T],
        *,
        priority: TaskPriority | int = TaskPriority.NORMAL,
        timeout: float | timedelta | None = None,
        name: str | None = None,
    ) -> None:
        self._is_coroutine = not callable(fn)
        if self._is_coroutine and not isinstance(fn, Coroutine):
            raise TypeError(f"Task needs a callable or a coroutine object, not {type(fn).__name__}")
        self._fn: TaskFn[T] | None = fn
        self._submitted = False
        self.priority = priority if type(priority) is TaskPriority else _to_priority(priority)
        self.timeout = to_timeout(timeout)
        self.name = name
        self.id: int = next(_task_ids)

    def with_priority(self, priority: TaskPriority | int) -> Task[T]:
        """Set the priority and return this task (a builder, as in the seed)."""
        self.priority = _to_priority(priority)
        return self

    def with_timeout(self, seconds: float | timedelta | None) -> Task[T]:
        """Set the run-time limit and return this task."""
        self.timeout = to_timeout(seconds)
        return self

    def _discard(self) -> None:
        """Forget a task that will never run, closing its coroutine object if it has one."""
        fn = self._fn
        self._fn = None
        if self._is_coroutine and fn is not None:
            cast(Coroutine[Any, Any, T], fn).close()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Task #{self.id}{name} {self.priority.name}>"


# A handle's life: (parked →) queued → running → done, or queued → done when it never runs.
# Parked: its submitter waits for room; the handle is not yet visible to anyone.
_PARKED, _QUEUED, _RUNNING, _DONE = -1, 0, 1, 2

# After a shutdown's timeout cancels running tasks, how long (on the pool's clock) a task that
# ignores its cancellation is waited for before its handle is resolved without it.
_CANCEL_GRACE = 1.0


# Open to subclasses in plain Python too (tests, modules built on the pool), compiled or not.
@mypyc_attr(allow_interpreted_subclasses=True)
class _Job:
    """What a :class:`WorkerPool` queues and runs: a :class:`TaskHandle` or an internal item.

    The pool needs only these fields and hooks, so a module built on the pool (the message
    processor) can queue its own items without a ``Task``, a ``TaskHandle``, a done callback and a
    ``TaskResult`` per item. ``_priority`` and ``_timeout`` are fixed when the job is queued,
    ``_cancel_reason`` starts ``None``, and ``_worker`` is set when a worker starts the job
    (nothing reads it before).
    """

    __slots__ = (
        "_cancel_reason",
        "_deadline",  # set when a worker starts a job that has a timeout
        "_enqueued_at",
        "_priority",
        "_started_at",  # set when a worker starts the job
        "_state",
        "_timeout",
        "_worker",
    )

    _cancel_reason: TaskStatus | None
    _deadline: float
    _enqueued_at: float
    _priority: TaskPriority
    _started_at: float
    _state: int
    _timeout: float | None
    _worker: asyncio.Task[None] | None

    def _call(self) -> Awaitable[Any]:
        """Start the job's work (called once, by the worker that runs it)."""
        raise NotImplementedError

    def _completed(self, value: Any, wait_time: float, run_time: float) -> None:
        """The work returned ``value``."""
        raise NotImplementedError

    def _ended(
        self, status: TaskStatus, error: BaseException, wait_time: float, run_time: float
    ) -> None:
        """The job ended otherwise: failed, timed out, cancelled, or shed or refused unrun."""
        raise NotImplementedError

    def _discard(self) -> None:
        """The job will never run: let go of its work."""
        raise NotImplementedError

    def _describe(self) -> str:
        """Names the job in errors and logs."""
        raise NotImplementedError

    def _interrupt(self, reason: TaskStatus) -> None:
        """Cancel the running job for ``reason``; the worker turns that into the result."""
        if self._cancel_reason is None and self._worker is not None:
            self._cancel_reason = reason
            self._worker.cancel()


class TaskHandle(_Job, Generic[T]):
    """A spawned task: ``await handle`` gives its :class:`TaskResult` and never raises for the task.

    Awaiting is safe to cancel: cancelling the awaiting coroutine does not cancel the task (use
    :meth:`cancel` for that), and other awaiters of the same handle are unaffected.
    """

    __slots__ = ("_callbacks", "_pool", "_result", "_task", "_waiter")

    def __init__(self, pool: WorkerPool, task: Task[T], enqueued_at: float) -> None:
        if task._submitted:
            raise RuntimeError(
                f"{task!r} was already submitted to a pool; a Task runs once, make a new one"
            )
        task._submitted = True
        self._pool = pool
        self._task = task
        self._priority = task.priority
        self._timeout = task.timeout if task.timeout is not None else pool._default_timeout
        self._state = _QUEUED
        self._enqueued_at = enqueued_at
        self._result: TaskResult[T] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[TaskHandle[T]], object]] | None = None
        self._cancel_reason = None

    @property
    def task_id(self) -> int:
        """The id of the task this handle tracks."""
        return self._task.id

    @property
    def task(self) -> Task[T]:
        """The task this handle tracks."""
        return self._task

    def done(self) -> bool:
        """``True`` once the task has a result."""
        return self._result is not None

    def add_done_callback(self, callback: Callable[[TaskHandle[T]], object]) -> None:
        """Call ``callback(handle)`` once the task has a result (at once if it already has).

        The callback runs synchronously, right when the result is set, inside the worker (or the
        caller that resolved the task), so it must not block. Its exceptions are logged and
        otherwise ignored: they never reach the worker or the task.
        """
        if self._result is not None:
            _call_done_callback(callback, self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def result(self) -> TaskResult[T]:
        """The result, without waiting. Raises :class:`asyncio.InvalidStateError` if not done."""
        if self._result is None:
            raise asyncio.InvalidStateError(f"{self!r} has no result yet")
        return self._result

    def cancel(self) -> bool:
        """Cancel the task. Does not block.

        A queued task is removed and never runs; a running one is cancelled at its next await.
        Either way it resolves ``CANCELLED`` (a running task resolves once its cancellation lands).
        Returns ``False`` if the task had already finished.
        """
        return self._pool._cancel_job(self, TaskCancelled(f"{self} cancelled"))

    def _call(self) -> Awaitable[T]:
        task = self._task
        fn = task._fn
        task._fn = None
        return fn if task._is_coroutine else fn()  # type: ignore[misc,operator,return-value]

    def _completed(self, value: Any, wait_time: float, run_time: float) -> None:
        self._resolve(
            _new_result(TaskResult, (self._task.id, _COMPLETED, value, None, wait_time, run_time))
        )

    def _ended(
        self, status: TaskStatus, error: BaseException, wait_time: float, run_time: float
    ) -> None:
        self._resolve(TaskResult(self._task.id, status, None, error, wait_time, run_time))

    def _discard(self) -> None:
        self._task._discard()

    def _describe(self) -> str:
        return repr(self._task)

    def _resolve(self, result: TaskResult[T]) -> None:
        self._state = _DONE
        self._result = result
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._callbacks is not None:
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            _call_done_callback(callback, self)

    def __await__(self) -> Generator[Any, None, TaskResult[T]]:
        while self._result is None:
            if self._pool._workers_pending:
                self._pool._ensure_workers()
            waiter = self._waiter
            if waiter is None or waiter.cancelled():
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                yield from waiter.__await__()
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise
                # Another awaiter of this handle was cancelled and took the shared future with
                # it; this awaiter was not cancelled, so it waits on a fresh future.
        return self._result

    def __repr__(self) -> str:
        state = {_PARKED: "parked", _QUEUED: "queued", _RUNNING: "running", _DONE: "done"}[
            self._state
        ]
        if self._result is not None:
            state = str(self._result.status)
        return f"<TaskHandle {self._task!r} {state}>"


def _call_done_callback(callback: Callable[[TaskHandle[T]], object], handle: TaskHandle[T]) -> None:
    try:
        callback(handle)
    except Exception:
        _logger.exception("done callback %r of %r raised", callback, handle)


@dataclass(frozen=True, slots=True)
class WorkerPoolStats:
    """A snapshot of a pool's counters. ``queued_tasks`` is the number really queued now."""

    worker_count: int
    active_workers: int
    queued_tasks: int
    completed_tasks: int
    failed_tasks: int
    timeout_tasks: int
    cancelled_tasks: int
    rejected_tasks: int
    avg_processing_time_ms: float


class _RoomWaiter:
    """A submitter parked until the queue has room; the slot is handed to it directly."""

    __slots__ = ("future", "handle")

    def __init__(self, handle: _Job, future: asyncio.Future[None]) -> None:
        self.handle = handle
        self.future = future


@mypyc_attr(allow_interpreted_subclasses=True)
class WorkerPool:
    """Run tasks on ``workers`` workers, most urgent first, with a queue of ``queue_size`` tasks.

    Args:
        workers: how many tasks may run at once (``>= 1``).
        queue_size: how many tasks may wait (``>= 1``).
        default_timeout: run-time limit for tasks that have none (``None``: no limit).
        name: used in ``repr``, errors and logs.
        clock: the time source for timeouts and statistics (see :mod:`zeroclaw.testing`).

    Raises:
        TypeError: ``workers`` or ``queue_size`` is not an ``int`` (a ``bool`` is refused).
        ValueError: ``workers < 1`` or ``queue_size < 1``; a negative or NaN default timeout.
    """

    def __init__(
        self,
        workers: SupportsIndex,
        queue_size: SupportsIndex,
        *,
        default_timeout: float | timedelta | None = None,
        name: str = "worker_pool",
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._worker_count = to_count(workers, what=f"WorkerPool {name!r}: workers", minimum=1)
        self._queue_size = to_count(queue_size, what=f"WorkerPool {name!r}: queue_size", minimum=1)
        self._default_timeout = to_timeout(default_timeout, what="default_timeout")
        self._clock = resolve_clock(clock)
        self._now = self._clock.now
        self._queues: tuple[deque[_Job], ...] = tuple(deque() for _ in range(_LEVELS))
        self._queued = 0
        self._room_waiters: tuple[deque[_RoomWaiter], ...] = tuple(deque() for _ in range(_LEVELS))
        self._room_waiting = 0  # submitters parked in _room_waiters
        self._idle_workers: deque[asyncio.Future[None]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._running: set[_Job] = set()
        # Workers stuck in a task that ignored a shutdown's cancellation; not waited for.
        self._abandoned: set[asyncio.Task[None]] = set()
        self._workers_pending = False  # tasks were queued while no event loop was running
        self._closing = False
        self._drain = True
        self._drained: asyncio.Future[None] | None = None
        self._abandon_timer: Cancellable | None = None
        # One timer for every running task's timeout, set for the earliest deadline (a timer per
        # task cost ~1.9 us per message in the pipeline: a loop TimerHandle made and cancelled).
        self._sweep_timer: Cancellable | None = None
        self._sweep_at = math.inf
        self._completed = 0
        self._failed = 0
        self._timed_out = 0
        self._cancelled = 0
        self._rejected = 0
        self._ran_then_cancelled = 0
        self._run_time_total = 0.0

    # ------------------------------------------------------------------ public API

    @property
    def worker_count(self) -> int:
        """The number of workers the pool runs (its concurrency)."""
        return self._worker_count

    @property
    def queue_size(self) -> int:
        """How many tasks may wait in the queue."""
        return self._queue_size

    @property
    def free_slots(self) -> int:
        """How many more tasks the queue takes before ``spawn`` waits. Does not block."""
        return self._queue_size - self._queued

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`shutdown` has begun."""
        return self._closing

    async def submit(self, task: Task[T]) -> TaskResult[T]:
        """Queue ``task``, waiting for room if needed, then wait for and return its result.

        Blocks until the task has finished. The task's own errors are in the result, never raised.
        Cancelling the caller cancels the task.

        Raises:
            PoolClosed: the pool is shutting down (also if it starts to while this call waits).
            QueueFull: never raised here; a full queue makes this call wait (or shed, see class).
        """
        handle = await self.spawn(task)
        try:
            return await handle
        except asyncio.CancelledError:
            handle.cancel()
            raise

    async def spawn(self, task: Task[T]) -> TaskHandle[T]:
        """Queue ``task``, waiting only for room, and return its handle.

        Blocks while the queue is full and no less urgent task can be shed. If the caller is
        cancelled while it waits, the task is not queued (and is cancelled if it just was).

        Raises:
            PoolClosed: the pool is shutting down (also if it starts to while this call waits).
        """
        if not self._closing and self._queued < self._queue_size:  # fast path: room
            handle = TaskHandle(self, task, self._now())
            self._push(handle)
            return handle
        handle = self._offer(task, wait=True)
        if handle._state != _PARKED:
            return handle
        waiter = _RoomWaiter(handle, asyncio.get_running_loop().create_future())
        self._room_waiters[task.priority].append(waiter)
        self._room_waiting += 1
        try:
            await waiter.future  # resolved when a slot is handed over; PoolClosed at shutdown
        except asyncio.CancelledError:
            if handle._state == _PARKED:
                # Never queued. Still in line, unless a hand-over or a shutdown that came after
                # the cancellation (and before this resumed) dropped it, or a shutdown refused it
                # (PoolClosed) just before: the cancellation wins either way.
                waiters = self._room_waiters[task.priority]
                if waiter in waiters:
                    waiters.remove(waiter)
                    self._room_waiting -= 1
                task._discard()
            else:  # the slot was handed over just as we were cancelled: nobody holds the handle
                handle.cancel()
            raise
        return handle

    def spawn_nowait(self, task: Task[T]) -> TaskHandle[T]:
        """Queue ``task`` now and return its handle. Does not block.

        Raises:
            QueueFull: the queue is full and holds no less urgent task to shed.
            PoolClosed: the pool is shutting down.
        """
        if not self._closing and self._queued < self._queue_size:  # fast path: room
            handle = TaskHandle(self, task, self._now())
            self._push(handle)
            return handle
        return self._offer(task, wait=False)

    async def shutdown(self, *, drain: bool = True, timeout: float | timedelta = 30.0) -> None:
        """Stop the pool: refuse new work at once, then finish or cancel what is left.

        ``drain=True`` lets the queue empty and running tasks finish; ``drain=False`` resolves
        queued tasks ``CANCELLED`` at once and lets running ones finish. Either way, tasks still
        running after ``timeout`` seconds are cancelled and resolve ``CANCELLED``. When this
        returns, every handle has a result and every worker has exited. Calling it again waits for
        the same end (a later ``drain=False`` still cancels what is queued). Blocks until done.
        """
        seconds = to_seconds(timeout, what="timeout")
        if not self._closing:
            self._closing = True
            self._refuse_room_waiters()
        if not drain and self._drain:
            self._drain = False
            self._cancel_queued()
        self._ensure_workers()
        drained = self._drained_future()
        self._check_drained()
        if not drained.done() and seconds == 0:
            self._force_stop()
        if not drained.done():
            timer = call_later(self._clock, seconds, self._force_stop)
            try:
                await asyncio.shield(drained)
            finally:
                timer.cancel()
                if self._abandon_timer is not None:
                    self._abandon_timer.cancel()
        await self._join_workers()

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown(drain=True)

    def stats(self) -> WorkerPoolStats:
        """A snapshot of the pool's counters. Does not block; works outside an event loop."""
        ran = self._completed + self._failed + self._timed_out + self._ran_then_cancelled
        return WorkerPoolStats(
            worker_count=self._worker_count,
            active_workers=len(self._running),
            queued_tasks=self._queued,
            completed_tasks=self._completed,
            failed_tasks=self._failed,
            timeout_tasks=self._timed_out,
            cancelled_tasks=self._cancelled,
            rejected_tasks=self._rejected,
            avg_processing_time_ms=(self._run_time_total / ran * 1000.0) if ran else 0.0,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return (
            f"<WorkerPool {self.name!r} {state} workers={len(self._running)}/{self._worker_count}"
            f" queued={self._queued}/{self._queue_size}>"
        )

    # ------------------------------------------------------------------ queueing

    def _offer(self, task: Task[T], *, wait: bool) -> TaskHandle[T]:
        """Queue ``task`` if there is room or a less urgent task to shed.

        Otherwise return an unqueued handle (``wait``) or raise ``QueueFull``.
        """
        if self._closing:
            task._discard()
            raise PoolClosed(f"WorkerPool {self.name!r} is shutting down; {task!r} refused")
        handle = TaskHandle(self, task, self._now())
        priority = task.priority
        if self._queued >= self._queue_size and not self._shed_for(priority):
            if wait:
                handle._state = _PARKED
                return handle
            self._rejected += 1
            task._discard()
            raise QueueFull(
                f"WorkerPool {self.name!r} queue is full ({self._queue_size} tasks, none less "
                f"urgent than {priority.name}); {task!r} refused"
            )
        self._push(handle)
        return handle

    def _queue_job(self, job: _Job) -> None:
        """Queue an internal job whose ``_priority`` and ``_timeout`` are set. Does not block.

        For modules built on the pool (the message processor); the caller makes sure there is room
        (``free_slots > 0``), so nothing is shed.

        Raises:
            PoolClosed: the pool is shutting down.
        """
        if self._closing:
            raise PoolClosed(
                f"WorkerPool {self.name!r} is shutting down; {job._describe()} refused"
            )
        job._enqueued_at = self._now()
        self._push(job)

    def _push(self, handle: _Job) -> None:
        self._queues[handle._priority].append(handle)
        self._queued += 1
        handle._state = _QUEUED
        idle_workers = self._idle_workers
        while idle_workers:
            idle = idle_workers.popleft()
            # Done only if its worker was cancelled as it went idle (a task that cancelled its
            # own worker) and has not resumed yet to leave: wake another; it ends, and
            # _worker_ended replaces it.
            if not idle.done():
                idle.set_result(None)
                return
        if len(self._workers) < self._worker_count:
            self._start_worker()

    def _shed_for(self, priority: TaskPriority) -> bool:
        """Shed the newest least urgent queued task if it is less urgent than ``priority``."""
        for level in range(priority):
            queue = self._queues[level]
            if queue:
                victim = queue.pop()
                self._queued -= 1
                self._rejected += 1
                self._finish_unrun(
                    victim,
                    TaskStatus.REJECTED,
                    QueueFull(
                        f"WorkerPool {self.name!r}: {victim._describe()} shed from the full queue "
                        f"for a {priority.name} task"
                    ),
                    count=False,
                )
                return True
        return False

    def _hand_room_over(self) -> None:
        """Give a freed slot to the most urgent (then the oldest) submitter waiting for room."""
        for level in _MOST_URGENT_FIRST:
            waiters = self._room_waiters[level]
            while waiters:
                waiter = waiters.popleft()
                self._room_waiting -= 1
                if waiter.future.done():
                    # Its submitter was cancelled and has not resumed yet to leave the line:
                    # the slot goes to the next one (its spawn discards the task).
                    continue
                self._push(waiter.handle)
                waiter.future.set_result(None)
                return

    def _unqueue(self, handle: _Job) -> None:
        self._queues[handle._priority].remove(handle)
        self._queued -= 1
        if self._room_waiting and not self._closing:
            self._hand_room_over()

    def _refuse_room_waiters(self) -> None:
        for waiters in self._room_waiters:
            while waiters:
                waiter = waiters.popleft()
                self._room_waiting -= 1
                if waiter.future.done():  # cancelled, not resumed yet: its spawn discards it
                    continue
                refused = waiter.handle
                refused._discard()
                waiter.future.set_exception(
                    PoolClosed(
                        f"WorkerPool {self.name!r} is shutting down; {refused._describe()} refused"
                    )
                )

    def _cancel_queued(self) -> None:
        for queue in self._queues:
            while queue:
                handle = queue.popleft()
                self._queued -= 1
                self._finish_unrun(
                    handle,
                    TaskStatus.CANCELLED,
                    TaskCancelled(
                        f"{handle._describe()} cancelled by the shutdown of {self.name!r}"
                    ),
                )
        self._check_drained()

    def _job_room(self) -> int:
        """How many jobs :meth:`_queue_job` may queue now without the queue outgrowing its size
        once the workers have taken theirs: the free places in the queue plus the workers not
        running a task (each takes one from the queue as soon as it runs). Does not block.

        For modules built on the pool, as :meth:`_queue_job`.
        """
        return self._queue_size - self._queued + self._worker_count - len(self._running)

    def _cancel_job(self, job: _Job, error: BaseException) -> bool:
        """Cancel ``job``: a queued one is removed and resolves CANCELLED (with ``error``) at once,
        a running one is cancelled at its next await and resolves once that lands. Returns
        ``False`` if it had already finished (or is parked). Does not block.

        For modules built on the pool, as :meth:`_queue_job` (the message processor interrupts
        a conversation's turn with it); :meth:`TaskHandle.cancel` is this.
        """
        if job._state == _QUEUED:
            self._unqueue(job)
            self._finish_unrun(job, TaskStatus.CANCELLED, error)
            return True
        if job._state == _RUNNING:
            job._interrupt(TaskStatus.CANCELLED)
            return True
        return False

    def _finish_unrun(
        self,
        handle: _Job,
        status: TaskStatus,
        error: BaseException,
        *,
        count: bool = True,
    ) -> None:
        """Resolve a task that will never run."""
        handle._discard()
        handle._state = _DONE
        if count:
            if status is TaskStatus.CANCELLED:
                self._cancelled += 1
            else:
                self._rejected += 1
        self._end_job(handle, status, error, self._now() - handle._enqueued_at, 0.0)

    # ------------------------------------------------------------------ workers

    def _ensure_workers(self) -> None:
        """Start workers for queued tasks that arrived while no event loop was running."""
        self._workers_pending = False
        for _ in range(min(self._queued, self._worker_count) - len(self._workers)):
            self._start_worker()

    def _start_worker(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop yet (spawn_nowait from synchronous code): the first await of a handle, or
            # the shutdown, starts the workers.
            self._workers_pending = True
            return
        worker = loop.create_task(self._work(), name=f"{self.name}-worker")
        self._workers.add(worker)
        worker.add_done_callback(self._worker_ended)

    def _worker_ended(self, worker: asyncio.Task[None]) -> None:
        """Forget an ended worker; replace it at once if it was lost with work still queued.

        A worker ends on its own only once the pool is closing. Otherwise it was cancelled from
        outside (the event loop closing, or a task that cancelled its own worker with
        ``asyncio.current_task().cancel()``) or a KeyboardInterrupt/SystemExit went through it;
        without a replacement the queued tasks would wait for the next submission to start one.
        """
        self._workers.discard(worker)
        if self._queued and not self._closing and len(self._workers) < self._worker_count:
            self._start_worker()

    async def _work(self) -> None:
        # The task runs inline in this coroutine rather than in a coroutine or Task of its own:
        # that is what keeps the per-task cost near a hand-written queue loop.
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        now = self._now
        running = self._running
        queues = tuple(reversed(self._queues))  # most urgent first
        # When a task follows another without the worker suspending in between, its start time is
        # the previous task's end time: one clock read per task instead of two.
        last_end: float | None = None
        while True:
            handle = None
            for queue in queues:
                if queue:
                    handle = queue.popleft()
                    self._queued -= 1
                    if self._room_waiting and not self._closing:
                        self._hand_room_over()
                    break
            if handle is None:
                if self._closing:
                    return
                last_end = None
                idle: asyncio.Future[None] = loop.create_future()
                self._idle_workers.append(idle)
                try:
                    await idle
                except asyncio.CancelledError:
                    if idle in self._idle_workers:
                        self._idle_workers.remove(idle)
                    raise
                continue
            handle._state = _RUNNING
            handle._worker = me
            running.add(handle)
            started = handle._started_at = now() if last_end is None else last_end
            timeout = handle._timeout
            if timeout is not None:
                deadline = handle._deadline = started + timeout
                if deadline < self._sweep_at:  # rare: the one timer is set for a later time
                    self._arm_sweep(deadline)
            try:
                if type(handle) is TaskHandle:  # handle._call(), inlined for the public job type
                    task = handle._task
                    fn = task._fn
                    task._fn = None
                    value = await (fn if task._is_coroutine else fn())  # type: ignore[operator,misc]
                else:
                    value = await handle._call()
            except BaseException as exc:
                handle._worker = None
                last_end = None
                reraise = self._task_raised(handle, me, exc, started)
                if reraise is not None:
                    raise reraise from None
                continue
            handle._worker = None
            if handle._cancel_reason is not None:
                me.uncancel()  # the task swallowed our cancellation and finished anyway
                if handle._state == _DONE:  # abandoned by a shutdown that stopped waiting
                    last_end = None
                    continue
            ended = last_end = now()
            running.discard(handle)
            self._completed += 1
            self._run_time_total += ended - started
            handle._state = _DONE
            if type(handle) is TaskHandle:  # handle._completed(), inlined: the per-task hot path
                handle._result = _new_result(
                    TaskResult,
                    (
                        handle._task.id,
                        _COMPLETED,
                        value,
                        None,
                        started - handle._enqueued_at,
                        ended - started,
                    ),
                )
                waiter = handle._waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if handle._callbacks is not None:
                    handle._run_callbacks()
            else:
                try:
                    handle._completed(value, started - handle._enqueued_at, ended - started)
                except Exception:
                    _logger.exception("%r: settling %s raised", self, handle._describe())
            if self._closing:
                self._check_drained()

    def _end_job(
        self, job: _Job, status: TaskStatus, error: BaseException, wait: float, run: float
    ) -> None:
        """``job._ended(...)``; a hook that raises is logged, never let out into a worker."""
        try:
            job._ended(status, error, wait, run)
        except Exception:
            _logger.exception("%r: settling %s raised", self, job._describe())

    def _arm_sweep(self, deadline: float) -> None:
        """Set the one timeout timer for ``deadline``."""
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_at = deadline
        self._sweep_timer = call_later(
            self._clock, max(0.0, deadline - self._now()), self._sweep_timeouts
        )

    def _sweep_timeouts(self) -> None:
        """Time out the running tasks whose deadline has come; set the timer for the next one.

        At most ``workers`` tasks run, so this looks at a handful; with one timeout for all
        tasks it fires about once per timeout period, whatever the traffic.
        """
        # The timer was set for _sweep_at: what was due then is due now, even if the clock's
        # float arithmetic lands a hair earlier.
        now = max(self._now(), self._sweep_at)
        self._sweep_timer = None
        self._sweep_at = math.inf
        earliest = math.inf
        for job in list(self._running):
            if job._timeout is None or job._state != _RUNNING:
                continue
            if job._deadline <= now:
                job._interrupt(TaskStatus.TIMED_OUT)
            elif job._deadline < earliest:
                earliest = job._deadline
        if earliest < math.inf:
            self._arm_sweep(earliest)

    def _task_raised(
        self, handle: _Job, me: asyncio.Task[None], exc: BaseException, started: float
    ) -> BaseException | None:
        """Resolve a task that raised; return what the worker must re-raise, if anything."""
        reraise: BaseException | None = None
        if isinstance(exc, asyncio.CancelledError) or handle._cancel_reason is not None:
            # A CancelledError, or another error the task turned our cancellation into.
            status, error, worker_cancelled = self._classify_cancel(handle, me)
            if worker_cancelled:
                reraise = (
                    exc if isinstance(exc, asyncio.CancelledError) else asyncio.CancelledError()
                )
            if status is TaskStatus.CANCELLED and not isinstance(exc, asyncio.CancelledError):
                error = exc
        elif isinstance(exc, KeyboardInterrupt | SystemExit):
            # The process is asked to stop: resolve the task, then let it through the worker.
            status, error, reraise = TaskStatus.FAILED, exc, exc
        else:  # any Exception, and BaseExceptions meant for the task alone (GeneratorExit...)
            status, error = TaskStatus.FAILED, exc
        if handle._state == _DONE:  # abandoned by a shutdown that stopped waiting
            return reraise
        ended = self._now()
        self._running.discard(handle)
        self._run_time_total += ended - started
        if status is TaskStatus.FAILED:
            self._failed += 1
        elif status is TaskStatus.TIMED_OUT:
            self._timed_out += 1
        else:
            self._cancelled += 1
            self._ran_then_cancelled += 1
        handle._state = _DONE
        self._end_job(handle, status, error, started - handle._enqueued_at, ended - started)
        if self._closing:
            self._check_drained()
        return reraise

    def _classify_cancel(
        self, handle: _Job, me: asyncio.Task[None]
    ) -> tuple[TaskStatus, BaseException, bool]:
        """Turn a cancellation that reached a running task into its status.

        Returns ``(status, error, worker_cancelled)``. Only a cancellation the pool asked for is
        absorbed; when the worker task itself is being cancelled too (someone cancelled it, or the
        event loop is closing), ``worker_cancelled`` tells the caller to re-raise once the task is
        resolved. A ``CancelledError`` the task raised on its own (nobody cancelled the worker)
        resolves the task ``CANCELLED`` and leaves the worker running.
        """
        reason = handle._cancel_reason
        worker_cancelled = me.cancelling() > 0 if reason is None else me.uncancel() > 0
        if reason is TaskStatus.TIMED_OUT and not worker_cancelled:
            return (
                TaskStatus.TIMED_OUT,
                TimeoutError(f"{handle._describe()} timed out after {handle._timeout}s"),
                False,
            )
        return (
            TaskStatus.CANCELLED,
            TaskCancelled(f"{handle._describe()} cancelled"),
            worker_cancelled,
        )

    # ------------------------------------------------------------------ shutdown

    def _drained_future(self) -> asyncio.Future[None]:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained

    def _check_drained(self) -> None:
        """When closing and nothing is queued or running: let shutdown finish, let workers exit."""
        if not self._closing or self._queued or self._running:
            return
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
            self._sweep_at = math.inf
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        while self._idle_workers:
            idle = self._idle_workers.popleft()
            if not idle.done():  # (cancelled as it went idle: that worker is ending anyway)
                idle.set_result(None)

    def _force_stop(self) -> None:
        """The shutdown timeout ended: cancel what is queued and what is running."""
        self._cancel_queued()
        for handle in list(self._running):
            handle._interrupt(TaskStatus.CANCELLED)
        if self._running:
            self._abandon_timer = call_later(self._clock, _CANCEL_GRACE, self._abandon)

    def _abandon(self) -> None:
        """Resolve tasks that ignored the shutdown's cancellation, so that nothing hangs."""
        for handle in list(self._running):
            _logger.warning(
                "%r: %s ignored cancellation; resolved without it", self, handle._describe()
            )
            self._running.discard(handle)
            if handle._worker is not None:
                self._abandoned.add(handle._worker)
            self._cancelled += 1
            handle._state = _DONE
            self._end_job(
                handle,
                TaskStatus.CANCELLED,
                TaskCancelled(f"{handle._describe()} ignored cancellation at shutdown"),
                handle._started_at - handle._enqueued_at,
                self._now() - handle._started_at,
            )
        self._check_drained()

    async def _join_workers(self) -> None:
        while pending := self._workers - self._abandoned:
            await asyncio.wait(pending)


describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
