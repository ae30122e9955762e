"""The exception tree shared by every zeroclaw primitive.

::

    Exception
    └── ConcurrencyError          raised by a zeroclaw primitive on its own account
        ├── Rejected              refused now; ``retry_after``: when a retry makes sense
        │   ├── QueueFull         no room in a bounded queue, or shed for a more urgent task
        │   ├── Overloaded        backpressure / admission refused the work
        │   └── CircuitOpenError  a circuit breaker refused the call
        ├── PoolClosed            the pool (or processor) is shutting down or shut down
        └── TaskCancelled         a task's result when it was cancelled before it finished

Waiting with ``timeout=`` raises the builtin :class:`TimeoutError`, never a class from this tree, so
``except TimeoutError`` works the same for zeroclaw and for :func:`asyncio.timeout`.

Messages name the primitive and its state, e.g. ``circuit 'openai' is Open; retry in 12.5s``.
"""

from __future__ import annotations

__all__ = [
    "CircuitOpenError",
    "ConcurrencyError",
    "Overloaded",
    "PoolClosed",
    "QueueFull",
    "Rejected",
    "TaskCancelled",
]


class ConcurrencyError(Exception):
    """Base class of every error a zeroclaw primitive raises on its own account."""


class Rejected(ConcurrencyError):
    """Work was refused; it was not started and may be retried.

    ``retry_after`` is the number of seconds after which a retry can succeed, or ``None`` when the
    refusing primitive cannot tell.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Rejected):
    """A bounded queue had no room, or a queued task was shed to make room for a more urgent one."""


class Overloaded(Rejected):
    """Admission control (backpressure, a limiter) refused the work."""


class CircuitOpenError(Rejected):
    """A circuit breaker refused a call because it is open (or its half-open probes are all out).

    Args:
        name: the breaker's name.
        state: the breaker's state when it refused (a ``CircuitState``; its ``str()`` is used).
        retry_after: seconds until the breaker admits a probe, or ``None`` if unknown.
    """

    def __init__(self, name: str, state: object, retry_after: float | None = None) -> None:
        if retry_after is None:
            message = f"circuit {name!r} is {state}"
        else:
            message = f"circuit {name!r} is {state}; retry in {retry_after:.1f}s"
        super().__init__(message, retry_after=retry_after)
        self.name = name
        self.state = state


class PoolClosed(ConcurrencyError):
    """The pool or processor has begun shutting down and accepts no new work."""


class TaskCancelled(ConcurrencyError):
    """The task was cancelled (by its handle, or by a shutdown) before it finished."""
