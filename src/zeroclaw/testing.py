"""Test doubles users can import too: a fake clock and a way to let the event loop settle.

Every time-aware zeroclaw primitive takes ``clock=``. Pass a :class:`FakeClock` and move time by
hand, so that tests of timeouts, TTLs and rates run instantly and deterministically::

    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock)
    ...
    await clock.run_for(1.5)   # fires every timer due in the next 1.5 fake seconds, in order
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar, overload

from zeroclaw.concurrency._clock import to_seconds

__all__ = ["FakeClock", "settle"]

T = TypeVar("T")


async def settle(max_rounds: int = 1000) -> None:
    """Let the running event loop run every callback that is ready, then return.

    Blocks only for event-loop turns, never for time. Stops when nothing is ready (as far as the
    loop lets us see; on loops that hide their ready queue it runs a fixed 50 turns) or after
    ``max_rounds`` turns, so a busy loop cannot hang a test.
    """
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    if ready is None:
        for _ in range(50):
            await asyncio.sleep(0)
        return
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        if not ready:
            # One more turn: a callback run in the last turn may have readied a task.
            await asyncio.sleep(0)
            if not ready:
                return


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when told to.

    ``now()`` returns the fake time. ``await sleep(s)`` returns once the fake time reaches
    ``now() + s``. ``advance(s)`` moves the time and fires, in deadline order, every sleeper and
    timer that became due (the time reads each one's deadline while it fires). ``await run_for(s)``
    does the same but lets the event loop run after each deadline, so timers scheduled by woken
    tasks inside the window fire too.

    Like asyncio's primitives, an instance belongs to one event loop.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._sequence = itertools.count()

    def now(self) -> float:
        """The fake monotonic time, in seconds."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> _FakeTimer:
        """Run ``callback()`` once the fake time has advanced by ``delay``; returns a handle."""
        timer = _FakeTimer(self._now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._sequence), timer))
        return timer

    @overload
    async def sleep(self, seconds: float | timedelta) -> None: ...
    @overload
    async def sleep(self, seconds: float | timedelta, result: T) -> T: ...

    async def sleep(self, seconds: float | timedelta, result: T | None = None) -> T | None:
        """Return ``result`` once the fake time reaches ``now() + seconds``, like ``asyncio.sleep``.

        Yields to the event loop once even for 0.
        """
        delay = to_seconds(seconds, what="sleep")
        if delay <= 0:
            await asyncio.sleep(0)
            return result
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await waiter
        finally:
            timer.cancel()
        return result

    @property
    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or ``None`` when nothing waits on this clock."""
        self._drop_cancelled()
        return self._timers[0][0] if self._timers else None

    @property
    def pending_timers(self) -> int:
        """How many sleepers and timers wait on this clock."""
        self._drop_cancelled()
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float | timedelta) -> None:
        """Move the time forward by ``seconds`` and fire everything that became due.

        Does not block. Sleepers woken here run when the event loop next gets control.
        """
        self.advance_to(self._now + to_seconds(seconds, what="advance"))

    def advance_to(self, when: float) -> None:
        """Move the time forward to ``when`` (never backward) and fire what became due."""
        if when < self._now:
            raise ValueError(f"FakeClock cannot go back from {self._now} to {when}")
        while self._timers and self._timers[0][0] <= when:
            deadline, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, deadline)
            timer.cancelled = True
            timer.callback()
        self._now = when

    async def run_for(self, seconds: float | timedelta) -> None:
        """Advance by ``seconds`` one deadline at a time, letting the loop settle after each.

        Blocks only for event-loop turns. Timers that woken tasks schedule inside the window fire
        in order too, as they would in real time.
        """
        target = self._now + to_seconds(seconds, what="run_for")
        await settle()
        while (deadline := self.next_deadline) is not None and deadline <= target:
            self.advance_to(deadline)
            await settle()
        self.advance_to(target)
        await settle()

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, pending_timers={self.pending_timers})"
