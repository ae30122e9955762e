"""The FIFO waiter queue that ``Backpressure``, ``RateLimiter`` and ``AdaptiveLimiter`` wait in.

Modelled on trio's ``ParkingLot``: a waiter *parks* (awaits), its owner *unparks* waiters from the
head once what they asked for is there. What is generic lives here, once; what differs (how much
is free, when tokens refill) is the owner's, behind three methods (:class:`LotOwner`). The rules:

* **FIFO, no barging.** Only the head is ever granted, and the owner may serve a newcomer at once
  only when :meth:`ParkingLot.empty` (no live waiter). A large request at the head holds back
  later small ones, so it cannot starve.
* **A grant is handed over, not offered.** The owner takes the amount from its budget, then
  :meth:`ParkingLot.unpark_first` resolves the waiter's future with the grant time: the waiter
  owns the grant before it even resumes, so nothing can take it in between.
* **Cancellation never leaks.** A waiter cancelled while parked is dead: it stays in the deque
  until it reaches the head (``first``, ``empty`` and the counts skip it), and the owner re-runs
  its grant at once (the dead waiter may have been the head holding others back). A waiter
  cancelled after its grant but before it resumed gives the grant back
  (``owner._undo_grant``), then the owner grants again.
* **Timeouts** run on the owner's clock. Expiry fails the waiter with the owner's
  ``TimeoutError``, counts it in :attr:`ParkingLot.timed_out` and re-runs the grant. A
  timeout of 0 that cannot be served at once is refused at once (and counted alike).

Owners count their own grants; the lot counts timeouts and cancellations, so a change to these
rules is made here and nowhere else. Not thread-safe: like asyncio's primitives, one event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from zeroclaw.concurrency._clock import Cancellable, Clock, call_later
from zeroclaw.concurrency._mypyc import describe_compiled

__all__ = ["LotOwner", "ParkingLot", "Waiter"]

# A parked waiter: its future (result: the grant time) and the amount it asked for.
Waiter = tuple["asyncio.Future[float]", float]


class LotOwner(Protocol):
    """What a :class:`ParkingLot` needs from the primitive whose waiters it holds."""

    def _grant(self) -> None:
        """Unpark waiters from the head while what they ask for is there (and arm any timer)."""
        ...

    def _undo_grant(self, amount: float, granted_at: float) -> None:
        """Take back a grant whose waiter was cancelled before it resumed."""
        ...

    def _timeout_error(self, amount: float, seconds: float) -> TimeoutError:
        """The error for a waiter whose ``timeout`` of ``seconds`` ran out."""
        ...


class ParkingLot:
    """A FIFO queue of waiters, each asking for an amount; see the module docstring for the rules.

    ``waiters`` is the deque itself: owners test ``not lot.waiters`` on their fast paths (an empty
    deque certainly holds no live waiter; a non-empty one may hold only dead ones, which
    :meth:`empty` tells).
    """

    __slots__ = ("cancelled", "timed_out", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        #: Waiters whose timeout ran out (timeout 0 included): refusals.
        self.timed_out = 0
        #: Waiters cancelled while parked, or after their grant but before they resumed.
        self.cancelled = 0

    def first(self) -> Waiter | None:
        """The first live waiter (dead ones before it are dropped), or ``None``. Never blocks."""
        waiters = self.waiters
        while waiters:
            head = waiters[0]
            if not head[0].done():
                return head
            waiters.popleft()
        return None

    def empty(self) -> bool:
        """Whether no live waiter is parked (so a newcomer may be served at once). Never blocks."""
        return not self.waiters or self.first() is None

    def unpark_first(self, granted_at: float) -> None:
        """Grant the head returned by :meth:`first` (its owner has taken the amount already)."""
        self.waiters.popleft()[0].set_result(granted_at)

    def unpark_within(self, budget: float) -> float:
        """Grant waiters from the head while each fits in what is left of ``budget``.

        Returns the total granted, which the owner takes from its budget. Never blocks.
        """
        granted = 0.0
        waiters = self.waiters
        while waiters:
            fut, amount = waiters[0]
            if fut.done():
                waiters.popleft()
                continue
            if amount > budget - granted:
                break
            waiters.popleft()
            granted += amount
            fut.set_result(0.0)
        return granted

    def live_count(self) -> int:
        """Waiters still parked. Never blocks."""
        return sum(1 for fut, _ in self.waiters if not fut.done())

    def live_amount(self) -> float:
        """The sum of what the parked waiters ask for. Never blocks."""
        return sum(amount for fut, amount in self.waiters if not fut.done())

    def fail_over(self, limit: float, error: Callable[[float], BaseException]) -> None:
        """Fail every parked waiter asking for more than ``limit`` with ``error(amount)``.

        The caller re-runs its grant afterwards (a failed head no longer holds anyone back).
        """
        for fut, amount in self.waiters:
            if amount > limit and not fut.done():
                fut.set_exception(error(amount))

    async def park(
        self, owner: LotOwner, amount: float, seconds: float | None, clock: Clock
    ) -> float:
        """Wait in line for ``amount``; return the grant time once it is granted.

        ``seconds`` is the timeout (``None``: none), already validated. Blocks until the owner
        unparks this waiter. Call it only after the owner's own fast path failed.

        Raises:
            TimeoutError: ``owner._timeout_error(...)`` when ``seconds`` pass first (nothing is
                held then).
            asyncio.CancelledError: when cancelled; a grant that was already made is given back.
        """
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters.append((fut, amount))
        head = self.first()
        alone = head is not None and head[0] is fut  # futures compared: tuples may be copies
        if alone:
            # Nobody alive ahead: the owner may grant at once (its fast path does not look past
            # dead waiters), or must arm its refill timer for this new head.
            owner._grant()
            if fut.done():
                return fut.result()
        timer: Cancellable | None = None
        if seconds is not None:
            if seconds <= 0.0:
                fut.cancel()  # dead now: a refusal, not a cancellation
                self.timed_out += 1
                if alone:
                    owner._grant()  # lets the owner disarm a timer armed for it
                raise owner._timeout_error(amount, seconds)
            timer = call_later(clock, seconds, lambda: self._expire(owner, fut, amount, seconds))
        try:
            return await fut
        except BaseException:
            if fut.cancelled():
                self.cancelled += 1
                owner._grant()
            elif fut.exception() is None:  # granted, then cancelled before it resumed
                self.cancelled += 1
                owner._undo_grant(amount, fut.result())
                owner._grant()
            # else it failed (timeout, a shrunk limit): whoever failed it re-ran the grant
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(
        self, owner: LotOwner, fut: asyncio.Future[float], amount: float, seconds: float
    ) -> None:
        if fut.done():
            return
        self.timed_out += 1
        fut.set_exception(owner._timeout_error(amount, seconds))
        owner._grant()

    def __repr__(self) -> str:
        return f"<ParkingLot waiting={self.live_count()}>"


describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
