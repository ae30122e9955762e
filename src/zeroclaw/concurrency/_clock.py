"""Time for every primitive: a duck-typed clock, timers on top of it, and seconds conversion.

A clock is any object with ``now() -> float`` (monotonic seconds) and ``async sleep(seconds)``.
Primitives ask the clock for the time and make their decisions as pure functions of it; the only
async work is waiting. Tests pass :class:`zeroclaw.testing.FakeClock` so that no test sleeps real
time to check a timeout or a TTL.

Timers: a primitive that must do something at a later time (wake the next rate-limit waiter, time
out a waiter, time out a task) calls :func:`call_later`. A clock that offers its own
``call_later(delay, callback) -> handle`` (the default clock and ``FakeClock`` do) is used
directly, which costs one event-loop timer; any other clock gets a small task that sleeps on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from zeroclaw.concurrency._validate import to_seconds

__all__ = [
    "Cancellable",
    "Clock",
    "MonotonicClock",
    "call_later",
    "resolve_clock",
    "to_seconds",
]


@runtime_checkable
class Clock(Protocol):
    """What a ``clock=`` argument must provide."""

    def now(self) -> float:
        """Monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class Cancellable(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> object: ...


class MonotonicClock:
    """The default clock: :func:`time.monotonic` and :func:`asyncio.sleep`.

    ``now()`` works with or without a running event loop. ``call_later`` needs the running loop.
    """

    __slots__ = ()

    now = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Run ``callback()`` on the running loop after ``delay`` seconds."""
        return asyncio.get_running_loop().call_later(delay, callback)

    def __repr__(self) -> str:
        return "MonotonicClock()"


DEFAULT_CLOCK = MonotonicClock()


def resolve_clock(clock: Clock | None) -> Clock:
    """Return ``clock``, or the shared default clock when it is ``None``."""
    return DEFAULT_CLOCK if clock is None else clock


class _SleepingTimer:
    """A timer for a clock without ``call_later``: a task that sleeps on the clock, then calls."""

    __slots__ = ("_task",)

    def __init__(self, clock: Clock, delay: float, callback: Callable[[], object]) -> None:
        async def fire() -> None:
            await clock.sleep(delay)
            callback()

        self._task = asyncio.get_running_loop().create_task(fire())

    def cancel(self) -> None:
        self._task.cancel()


def call_later(clock: Clock, delay: float, callback: Callable[[], object]) -> Cancellable:
    """Arrange for ``callback()`` to run once ``delay`` seconds have passed on ``clock``.

    Does not block. Needs a running event loop. Returns a handle whose ``cancel()`` calls it off.
    """
    schedule = getattr(clock, "call_later", None)
    if schedule is not None:
        handle: Cancellable = schedule(delay, callback)
        return handle
    return _SleepingTimer(clock, delay, callback)
