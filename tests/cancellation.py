"""Cancellation at every await: cancel a call at its n-th suspension point, for every n.

:func:`cancel_at_every_await` runs a *case* (an async function that sets up contention, makes the
call under test through :meth:`Attempt.run`, and checks invariants) once per suspension point of
the call and way of cutting it, each time in a fresh event loop, and cancels the call's task at
that point. It goes on
with n + 1 until an attempt finds the call completing before its n-th suspension: the call then has
n - 1 suspension points, and every one of them has been cancelled.

Counting is exact, not by loop turns: :meth:`Attempt.run` wraps the call's coroutine so that every
value it yields to its task (a future, or ``None`` for a bare ``sleep(0)``) passes through the
harness. Suspensions of other tasks (workers, holders, the clock driver) are not counted: only the
caller's own.

Each point is cut in four ways (:data:`Mode`), each in an attempt of its own:

* ``"pending"``: ``task.cancel()`` while the awaited future is still pending, so the code sees a
  ``CancelledError`` from a wait that was never satisfied;
* ``"woken"``: ``task.cancel()`` right after the awaited future got its result (the grant was
  handed over, the room given, the handle resolved) but before the task resumed: the
  "granted, then cancelled before it ran" race where a permit or slot is easiest to lose. When
  the future can never resolve (nothing scheduled would resolve it), the cut falls back to the
  pending form, and :attr:`Coverage.fallbacks` counts it;
* ``"settled"``: ``task.cancel()`` once everything ready has run and the call still waits there
  (before the fake clock moves on): the cancellation from outside a caller usually sees, after
  the work the call set off (a worker starting its task) has begun. A point the call leaves
  within those loop turns cannot be cut this way and is skipped (:attr:`Coverage.skipped`);
* ``"racing"``: ``task.cancel()`` right after the fake clock moved to the deadline at which the
  wait is resolved (measured by the woken attempt), when the timers due then have fired but the
  tasks they woke (a holder about to release, a worker about to hand over room) have not run
  yet: the cancellation races the wake-up, so the code that resolves the call's wait meets a
  waiter already cancelled (a timeout and a release at the same instant). Skipped likewise when
  the call left the point before the clock moved.

After every attempt the harness itself checks what any leak would show: the case returned, the
call raised ``CancelledError`` if (and only if) it was cancelled, ``asyncio.all_tasks()`` is back
to the attempt's baseline, the loop's exception handler saw nothing ("exception never retrieved",
"task destroyed but pending"), and no ``ResourceWarning`` (a permit collected unreleased) or
"never awaited" ``RuntimeWarning`` was emitted. The case checks the rest: the primitive's own
stats, a bystander queued behind the caller, a redelivery.

Time runs on a :class:`~zeroclaw.testing.FakeClock`: :meth:`Attempt.run` lets the loop settle,
then advances the clock to the next deadline, and so on until the call's task is done, so no
attempt sleeps real time and the same attempt always suspends at the same places.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from zeroclaw.testing import FakeClock, settle

__all__ = ["Attempt", "Coverage", "Mode", "Outcome", "cancel_at_every_await"]

T = TypeVar("T")

Mode = Literal["pending", "woken", "settled", "racing"]
MODES: tuple[Mode, ...] = ("pending", "woken", "settled", "racing")

# A call with more suspension points than this is a runaway loop, not a call to cover.
MAX_POINTS = 200
# Deadlines advanced through in one drive before it is called a livelock.
MAX_DEADLINES = 10_000


@dataclass
class Outcome(Generic[T]):
    """How the call under test ended in one attempt.

    ``cancelled``: the harness cancelled it (it raised ``CancelledError``); ``value`` or
    ``error``: what it returned or raised otherwise. ``points`` counts the suspensions the call
    made; ``resolved_at_cut`` is ``True`` for a woken cut, made once the awaited future was done
    (the other cuts do not look: a racing cut may find it done too).
    """

    cancelled: bool
    value: T | None
    error: BaseException | None
    points: int
    resolved_at_cut: bool


class _Counted(Generic[T]):
    """An awaitable that runs ``coro`` and shows the harness every value it yields to its task."""

    def __init__(self, coro: Coroutine[Any, Any, T], attempt: Attempt) -> None:
        self._coro = coro
        self._attempt = attempt

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    yielded = coro.send(sent)
                else:
                    thrown, error = error, None
                    yielded = coro.throw(thrown)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            self._attempt._suspending(yielded)
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # what the task throws in (a cancellation) goes on in
                error = exc
                sent = None


@dataclass
class Attempt:
    """One attempt of a case: cut the call at suspension ``point`` (``None``: never), by ``mode``.

    A case calls :meth:`run` exactly once with the call under test, then checks what it must;
    :meth:`drain` and :meth:`wait_for` drive the fake clock for its own waits. ``cut`` says
    whether the cancellation was issued (a call that completes before ``point`` is not cut),
    ``points`` how often the call suspended, ``resolved_at_cut`` whether a woken cut found its
    wait resolved, ``fell_back`` whether a woken or racing cut had to be made while
    pending because nothing would resolve the wait.
    """

    point: int | None
    mode: Mode
    clock: FakeClock = field(default_factory=FakeClock)
    #: Called right when the cancellation is issued (a case records the state at the cut).
    on_cut: Callable[[], None] | None = None
    points: int = 0
    cut: bool = False
    resolved_at_cut: bool = False
    fell_back: bool = False
    #: The fake time the cut point's wait was resolved at (woken attempts measure it).
    resolved_time: float | None = None
    #: For a racing cut: the deadline to cut at (``None``: the first one after the point).
    race_at: float | None = None
    _task: asyncio.Task[Any] | None = None
    _settle_armed: bool = False
    _race_armed: bool = False
    _armed: asyncio.Future[Any] | None = None
    _runs: int = 0

    def _fire(self) -> None:
        if self.cut or self._task is None or self._task.done():
            return
        self.cut = True
        self._armed = None
        if self.on_cut is not None:
            self.on_cut()
        self._task.cancel()

    def _suspending(self, yielded: object) -> None:
        """The call yields to its task for the ``points``-th time; cut it there if asked."""
        self.points += 1
        if self.point != self.points or self.cut:
            return
        if self.mode == "woken" and isinstance(yielded, asyncio.Future) and not yielded.done():
            # Added before the task adds its own wake-up, so this runs first once the future is
            # done: the cancel then lands between the result and the task's resumption.
            self._armed = yielded

            def woken(future: asyncio.Future[Any]) -> None:
                if self._armed is future:
                    self.resolved_at_cut = True
                    self.resolved_time = self.clock.now()
                    self._fire()

            yielded.add_done_callback(woken)
            return
        if self.mode == "settled":
            self._settle_armed = True  # the drive cuts it once the loop has settled
            return
        if self.mode == "racing":
            self._race_armed = True  # the drive cuts it once the clock has moved
            return
        self._fire()  # pending form (a bare yield has nothing to wait for: the same)

    async def run(self, call: Coroutine[Any, Any, T]) -> Outcome[T]:
        """Run ``call`` in a task of its own, driving the fake clock until that task is done.

        Blocks (in loop turns and fake time only) until the call returned, raised or was
        cancelled. Never raises what the call raised: its ending is in the :class:`Outcome`.

        Raises:
            AssertionError: the call was cut but did not raise ``CancelledError`` (it returned,
                or raised something else), or was cancelled though not cut; it waits for
                something nothing scheduled will do (it hangs); this attempt already ran a call.
        """
        self._runs += 1
        assert self._runs == 1, "a case makes its call once per attempt"
        counted = _Counted(call, self)

        async def caller() -> T:
            return await counted

        task = self._task = asyncio.get_running_loop().create_task(caller(), name="call-under-test")
        await self._drive(task)
        where = f"cut at point {self.point} ({self.mode})"
        if task.cancelled():
            assert self.cut, f"{where}: cancelled though the harness never cut it"
            return Outcome(True, None, None, self.points, self.resolved_at_cut)
        error = task.exception()
        assert not self.cut, f"{where}, the call " + (
            f"raised {error!r} instead of CancelledError" if error is not None else "returned"
        )
        if error is not None:
            return Outcome(False, None, error, self.points, self.resolved_at_cut)
        return Outcome(False, task.result(), None, self.points, self.resolved_at_cut)

    async def drain(self) -> None:
        """Let everything scheduled on the loop and on the fake clock happen, then return.

        Blocks in loop turns and fake time only. Raises ``AssertionError`` on a livelock.
        """
        await self._drive(None)

    async def wait_for(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` (in a task of its own) while driving the fake clock.

        For a case's own waits after the call (a redelivery, a bystander): blocks in loop turns
        and fake time only, and returns what the awaitable returns or raises what it raises.

        Raises:
            AssertionError: it waits for something nothing scheduled will do (it hangs).
        """

        async def waiting() -> T:
            return await awaitable

        task = asyncio.get_running_loop().create_task(waiting())
        await self._drive(task)
        return task.result()

    async def _drive(self, task: asyncio.Task[Any] | None) -> None:
        """Settle the loop, advance the fake clock to its next deadline, again, until ``task``
        is done (``None``: until nothing is scheduled)."""
        clock = self.clock
        for _ in range(MAX_DEADLINES):
            await settle()
            if self._settle_armed:
                self._settle_armed = False
                if self.points == self.point:  # still waiting where it was to be cut
                    self._fire()
                    continue
            if task is not None and task.done():
                return
            deadline = clock.next_deadline
            if deadline is None:
                if self._race_armed:  # no clock to race: cut it as it waits
                    self._race_armed = False
                    if self.points == self.point:
                        self.fell_back = True
                        self._fire()
                    continue
                if self._armed is not None:
                    # The awaited future can never resolve: cut it while pending instead.
                    self.fell_back = True
                    self._fire()
                    continue
                if task is not None:
                    raise AssertionError(
                        f"{task!r} hangs: it waits and nothing is scheduled to wake it"
                    )
                return
            clock.advance_to(deadline)
            if self._race_armed and (self.race_at is None or deadline >= self.race_at):
                self._race_armed = False
                if self.points == self.point:  # still waiting where it was to be cut
                    self._fire()
        raise AssertionError(f"more than {MAX_DEADLINES} deadlines: a livelock")


Case = Callable[[Attempt], Awaitable[None]]


@dataclass
class Coverage:
    """What :func:`cancel_at_every_await` covered: the call's suspension points, all cut."""

    points: int
    attempts: int
    fallbacks: int  # woken/racing cuts made while pending (nothing scheduled would resolve it)
    resolved_cuts: int  # woken cuts made between a result and the resumption
    skipped: int  # settled cuts not made: the call had left the point before the loop settled


def _attempt(case: Case, point: int | None, mode: Mode, race_at: float | None = None) -> Attempt:
    """Run ``case`` once in a fresh event loop; check the leaks any case could show."""
    attempt = Attempt(point, mode, race_at=race_at)
    problems: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: problems.append(context))
        baseline = asyncio.all_tasks()
        await case(attempt)
        assert attempt._runs == 1, "the case never made its call"
        await settle()
        leftover = asyncio.all_tasks() - baseline
        assert not leftover, f"tasks left behind at point {point} ({mode}): {leftover}"
        gc.collect()  # "exception never retrieved" and leaked permits speak when collected
        await settle()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    where = f"cut at point {point} ({mode})" if point is not None else "the completing run"
    assert not problems, f"{where}: the loop reported {problems}"
    noisy = [w for w in caught if issubclass(w.category, ResourceWarning | RuntimeWarning)]
    assert not noisy, f"{where}: {[str(w.message) for w in noisy]}"
    return attempt


def cancel_at_every_await(case: Case, *, modes: tuple[Mode, ...] = MODES) -> Coverage:
    """Run ``case`` with its call cancelled at suspension point 1, 2, ... until it completes.

    Each point is cut in every one of ``modes``; then one attempt runs the call to completion
    (also checked by the case). Every attempt runs in a fresh event loop (``asyncio.run``), so
    this must be called outside a running loop. Blocks until done; sleeps no real time.

    Raises:
        AssertionError: from the case's checks, or for a leak the harness sees itself (see the
            module docstring): a call that did not raise ``CancelledError`` when cut, a task
            left behind, an error the loop reported, a ResourceWarning or RuntimeWarning.
    """
    attempts = fallbacks = resolved = skipped = 0
    point = 1
    while True:
        assert point <= MAX_POINTS, f"more than {MAX_POINTS} suspension points"
        first = _attempt(case, point, modes[0])
        attempts += 1
        if not first.cut:
            # The call completed before suspending `point` times: that is its completing run.
            assert first.points == point - 1, (first.points, point)
            return Coverage(point - 1, attempts, fallbacks, resolved, skipped)
        race_at: float | None = None
        for mode in (first.mode, *modes[1:]):
            done = first if mode == first.mode else _attempt(case, point, mode, race_at)
            if done.resolved_time is not None:
                race_at = done.resolved_time
            if done is not first:
                attempts += 1
            if mode in ("settled", "racing") and not done.cut:
                skipped += 1
                continue
            assert done.cut, f"point {point} ({mode}) was reached once but not this time"
            fallbacks += done.fell_back
            resolved += done.resolved_at_cut
        point += 1
