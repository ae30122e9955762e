"""Circuit breakers: stop calling a failing dependency, probe it, and close again when it recovers.

A :class:`CircuitBreaker` guards calls to one dependency (an LLM provider, say)::

    breaker = CircuitBreaker(CircuitConfig(failure_threshold=5), name="openai")

    async with breaker:                 # raises CircuitOpenError when refused
        reply = await provider.complete(prompt)

    reply = await breaker.call(provider.complete, prompt)    # the same, as a call

    if breaker.allow_request():         # the manual protocol
        try:
            reply = await provider.complete(prompt)
        except Exception:
            breaker.record_failure()
            raise
        breaker.record_success()

States (the contract's breaker section; docs/circuit_breaker.md):

- CLOSED: every call is admitted. It trips to OPEN when ``failure_threshold`` consecutive failures
  have been recorded, or when the window of the last ``window_size`` outcomes holds at least
  ``min_calls`` outcomes and its failure rate is at least ``failure_rate_threshold``. Only a failure
  (or a slow call, if slow-call detection is on) can trip it; successes never do.
- OPEN: every call is refused (``CircuitOpenError`` with ``retry_after``) until
  ``timeout_duration`` has passed; the next request then moves it to HALF_OPEN. Results that arrive
  while OPEN, from calls admitted before it opened, change nothing.
- HALF_OPEN: at most ``half_open_max_calls`` probes are *in flight* at once (the rest are refused).
  ``success_threshold`` consecutive probe successes close it (and clear the window); any probe
  failure re-opens it and restarts the open timer. A probe that never reports back is reclaimed
  once its deadline (``probe_timeout``, by default ``timeout_duration``) has passed, so a lost probe
  cannot wedge the breaker (resilience4j's ``maxWaitDurationInHalfOpenState``, Polly's one probe
  per break duration; resilience4j#903 asked for the deadline).

Outcomes are four-valued (as resilience4j's record/ignore): success, failure, *ignored* (neither:
``is_failure`` returned ``False``, or the call was cancelled) and, with ``slow_call_duration`` set,
*slow* (a success that took too long: it counts toward the failure rate, and re-opens a half-open
breaker, but does not count as a consecutive failure). ``CancelledError`` is never a failure.

Every admitted call carries a ticket internally: the generation of the CLOSED period it was
admitted in, or the id of its HALF_OPEN probe slot. A result is applied only if its ticket is still
current, which makes results from before a transition inert and lets a probe's result release
exactly its own slot. The guarded forms (``async with``, ``call``, the decorator) carry the ticket
for you. The manual protocol (``allow_request`` / ``record_*``) has no ticket, so a manual result is
matched to the oldest probe in flight while HALF_OPEN, and to one of the manual calls admitted in
the current period while CLOSED (they are counted apart from the ticketed calls); if there is none
to match, the call was admitted before a transition and its result is inert (late), as a ticketed
one's would be.

The decisions are synchronous and read ``now`` from the clock only when they need it (never on the
closed fast path); nothing here needs a running event loop except awaiting the guarded call itself.
Like asyncio's primitives, a breaker belongs to one event loop (one thread); it takes no locks.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from dataclasses import KW_ONLY, dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from zeroclaw.concurrency._clock import Clock, resolve_clock, to_seconds
from zeroclaw.concurrency._mypyc import describe_compiled, mypyc_attr
from zeroclaw.concurrency.errors import CircuitOpenError

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerGroup",
    "CircuitBreakerStats",
    "CircuitConfig",
    "CircuitState",
]

_log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

StateCallback = Callable[["CircuitState", "CircuitState"], object]


class CircuitState(enum.Enum):
    """The state of a breaker. ``str()`` gives the original's display names."""

    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"

    def __str__(self) -> str:
        return self.value


_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN

# Outcome codes (ints, so recording allocates nothing).
_SUCCESS: Final = 0
_FAILURE: Final = 1
_SLOW: Final = 2
_IGNORED: Final = 3

# Ticket 0 means "no ticket": the manual protocol's results, and a refused admission.
_ANONYMOUS: Final = 0
# A call of the current CLOSED period whose in-flight count was already settled.
_CURRENT: Final = -1
# A ticketed ``async with`` call that exits in a context other than its own, so its ticket is lost.
_FOREIGN: Final = -2


async def _resolved(value: T) -> T:
    return value


def _positive_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return value


# A plain Python class, not a compiled one: a compiled int field would store True as 1 before the
# validation could refuse it.
@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True)
class CircuitConfig:
    """How a breaker judges its dependency. Immutable; validated on construction.

    Args:
        failure_threshold: consecutive failures that trip a CLOSED breaker.
        success_threshold: consecutive probe successes that close a HALF_OPEN breaker.
        timeout_duration: seconds (or a ``timedelta``) an OPEN breaker refuses calls.
        failure_rate_threshold: failure rate (0 < rate <= 1) of the window that trips it.
        window_size: how many recent outcomes (of the CLOSED state) the rate is judged over.
        min_calls: outcomes the window must hold before the rate counts (1..window_size).
        half_open_max_calls: probes allowed in flight at once while HALF_OPEN.
        is_failure: predicate on an exception raised by a guarded call; ``False`` means the call
            is *ignored* (neither success nor failure). ``None``: every ``Exception`` is a failure.
        slow_call_duration: keyword-only; a guarded call that succeeds but takes at least this long
            counts toward the failure rate (and fails a probe). ``None`` (default): off.
        open_jitter: keyword-only; each open period lasts ``timeout_duration * (1 + open_jitter *
            U[0, 1))`` so that many breakers that opened together do not probe together. 0: off.
        probe_timeout: keyword-only; a HALF_OPEN probe that has not reported back after this long
            loses its slot to the next caller. ``None`` (default): ``timeout_duration`` (or never,
            if that is 0).

    Raises:
        ValueError: for an out-of-range value (the message names the field).
        TypeError: for a duration that is neither seconds nor a ``timedelta``.
    """

    failure_threshold: int = 5
    success_threshold: int = 3
    timeout_duration: float | timedelta = 60.0
    failure_rate_threshold: float = 0.5
    window_size: int = 100
    min_calls: int = 10
    half_open_max_calls: int = 1
    is_failure: Callable[[BaseException], bool] | None = None
    _: KW_ONLY
    slow_call_duration: float | timedelta | None = None
    open_jitter: float = 0.0
    probe_timeout: float | timedelta | None = None

    def __post_init__(self) -> None:
        # getattr, not self.<field>: compiled code reads an int field as an int, True as 1.
        for name in (
            "failure_threshold",
            "success_threshold",
            "window_size",
            "min_calls",
            "half_open_max_calls",
        ):
            _positive_int(getattr(self, name), name)
        if self.min_calls > self.window_size:
            raise ValueError(
                f"min_calls ({self.min_calls}) must not exceed window_size ({self.window_size})"
            )
        rate = self.failure_rate_threshold
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < rate <= 1.0:
            raise ValueError(f"failure_rate_threshold must be in (0, 1], got {rate!r}")
        jitter = self.open_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise ValueError(f"open_jitter must be in [0, 1], got {jitter!r}")
        if self.is_failure is not None and not callable(self.is_failure):
            raise ValueError("is_failure must be a callable taking the exception, or None")
        # Durations are stored as float seconds, whatever was passed.
        set_ = object.__setattr__
        set_(self, "timeout_duration", to_seconds(self.timeout_duration, what="timeout_duration"))
        if self.slow_call_duration is not None:
            slow = to_seconds(self.slow_call_duration, what="slow_call_duration")
            if slow <= 0:
                raise ValueError(f"slow_call_duration must be > 0, got {slow!r}")
            set_(self, "slow_call_duration", slow)
        if self.probe_timeout is not None:
            probe = to_seconds(self.probe_timeout, what="probe_timeout")
            if probe <= 0:
                raise ValueError(f"probe_timeout must be > 0, got {probe!r}")
            set_(self, "probe_timeout", probe)

    @classmethod
    def fast_fail(cls) -> CircuitConfig:
        """Trip on the first failure; stay open 30 s."""
        return cls(failure_threshold=1, timeout_duration=30.0)

    @classmethod
    def lenient(cls) -> CircuitConfig:
        """Tolerate bursts: 10 consecutive failures or an 80% rate; stay open 120 s."""
        return cls(failure_threshold=10, timeout_duration=120.0, failure_rate_threshold=0.8)

    @classmethod
    def strict(cls) -> CircuitConfig:
        """Trip early (3 failures or a 30% rate), 5 probe successes to close; open 30 s."""
        return cls(
            failure_threshold=3,
            success_threshold=5,
            timeout_duration=30.0,
            failure_rate_threshold=0.3,
        )


@dataclass(frozen=True, slots=True)
class CircuitBreakerStats:
    """A snapshot of a breaker.

    ``failure_rate`` is over the current window, whatever its size (0.0 when empty);
    ``total_calls`` = recorded successes + failures; ``rejected_calls`` counts refusals (which
    never enter the rate). Extras: ``ignored_calls`` (ignored or cancelled), ``slow_calls`` (slow
    successes, also in ``successful_calls``), ``late_results`` (results that arrived after a
    transition and changed nothing), ``in_flight`` (admitted calls of the current CLOSED period,
    or probes, not yet reported), ``retry_after`` (seconds until a probe is possible).
    """

    name: str
    state: CircuitState
    failure_rate: float
    consecutive_failures: int
    consecutive_successes: int
    total_calls: int
    successful_calls: int
    failed_calls: int
    rejected_calls: int
    time_in_current_state: float
    ignored_calls: int = 0
    slow_calls: int = 0
    late_results: int = 0
    in_flight: int = 0
    retry_after: float = 0.0


class _Subscription:
    """One ``on_state_change`` registration; compared by identity, so each is removed alone."""

    __slots__ = ("callback",)

    def __init__(self, callback: StateCallback) -> None:
        self.callback = callback


class _Frame:
    """The ticket of one tracked ``async with`` call, on a per-task stack (see CircuitBreaker).

    ``live`` turns false when the call exits: a task created inside the block inherits a copy of
    the context, stack included, and must not mistake its parent's frame for its own.
    """

    __slots__ = ("below", "breaker", "live", "start", "ticket")

    def __init__(
        self, breaker: CircuitBreaker, ticket: int, start: float, below: _Frame | None
    ) -> None:
        self.breaker = breaker
        self.ticket = ticket
        self.start = start
        self.below = below
        self.live = True


# ``async with breaker:`` needs the ticket of *this task's* call at exit, but the breaker object is
# shared by concurrent tasks; so (when it needs tickets at all) it keeps them in the task's context,
# as a stack so that nested ``async with`` of breakers work.
_TICKETS: ContextVar[_Frame | None] = ContextVar("zeroclaw_circuit_tickets", default=None)


@mypyc_attr(allow_interpreted_subclasses=True)
class CircuitBreaker:
    """A circuit breaker (see the module docstring for the state machine).

    Args:
        config: a :class:`CircuitConfig` (default: ``CircuitConfig()``).
        name: used in errors, logs, ``repr`` and group keys.
        clock: any object with ``now()`` and ``async sleep()`` (default: monotonic).

    The constructor needs no event loop, nor do the synchronous methods.
    """

    __slots__ = (
        "_bad",
        "_callbacks",
        "_changed_at",
        "_clock",
        "_config",
        "_consec_fail",
        "_consec_succ",
        "_entered",
        "_exited",
        "_fail_mark",
        "_fail_thr",
        "_failures",
        "_fast",
        "_gen",
        "_ho_max",
        "_ignored",
        "_in_flight",
        "_is_failure",
        "_jitter",
        "_late",
        "_manual",
        "_min_calls",
        "_next_id",
        "_notifying",
        "_now",
        "_open_until",
        "_pending",
        "_period_fail",
        "_probe_timeout",
        "_probes",
        "_rate_thr",
        "_registered",
        "_rejected",
        "_seq",
        "_slow",
        "_slow_calls",
        "_stale",
        "_state",
        "_streak",
        "_succ_thr",
        "_successes",
        "_timeout",
        "_untracked",
        "_win_size",
        "name",
    )

    def __init__(
        self,
        config: CircuitConfig | None = None,
        *,
        name: str = "default",
        clock: Clock | None = None,
    ) -> None:
        config = CircuitConfig() if config is None else config
        if not isinstance(config, CircuitConfig):
            raise TypeError(f"config must be a CircuitConfig, not {type(config).__name__}")
        self._config = config
        self.name = name
        self._clock = resolve_clock(clock)
        self._now = self._clock.now
        # Config copied into slots: the hot path reads no attribute chains.
        self._fail_thr = config.failure_threshold
        self._succ_thr = config.success_threshold
        self._timeout = to_seconds(config.timeout_duration)
        self._rate_thr = float(config.failure_rate_threshold)
        self._min_calls = config.min_calls
        self._ho_max = config.half_open_max_calls
        self._is_failure = config.is_failure
        slow = config.slow_call_duration
        self._slow: float | None = None if slow is None else to_seconds(slow)
        self._jitter = float(config.open_jitter)
        probe = config.probe_timeout
        if probe is None:
            probe = self._timeout if self._timeout > 0 else math.inf
        self._probe_timeout = to_seconds(probe)
        # The CLOSED period's outcomes are numbered 0, 1, 2... (``_seq`` is the next number), and
        # only the numbers of the bad ones (failures, slow calls) are kept, in ``_bad``. The window
        # is the last ``window_size`` numbers; bad numbers that fell out of it are dropped when
        # the window is next judged (so ``_bad`` holds at most window_size + 1 of them). A success
        # therefore costs one increment: the consecutive counts and the number of successes of
        # the period are derived from ``_seq``, ``_fail_mark`` (the number after the last
        # failure), ``_streak`` (failures in a row up to it) and ``_period_fail``. The explicit
        # counters below take over outside CLOSED; the period's totals are folded into them
        # when it ends. Cleared when the breaker closes, not when it opens.
        self._win_size = config.window_size
        self._seq = 0
        self._bad: deque[int] = deque()
        self._fail_mark = 0
        self._streak = 0
        self._period_fail = 0
        self._state = _CLOSED
        self._changed_at = self._now()
        self._open_until = 0.0
        self._next_id = 2
        self._gen = 1  # ticket of calls admitted in the current CLOSED period
        self._in_flight = 0  # those calls not yet reported (call(), tracked async with)
        # Manual calls (``allow_request``) admitted in the current CLOSED period, not yet reported.
        # Counted apart: a manual result carries no ticket, so while CLOSED it can only be matched
        # to one of these; with none outstanding, it comes from a call admitted before the breaker
        # closed (a probe, say) and must not release some other call's count.
        self._manual = 0
        # ``async with`` cannot keep a ticket in a local variable. While the breaker is CLOSED and
        # no earlier call is outstanding ("fast mode") it needs none: every call that exits was
        # admitted in this CLOSED period, so it is just counted (``_untracked``). When it leaves
        # CLOSED, those calls become ``_stale``; from then on, until the stale ones and every
        # ticketed one have exited, ``async with`` keeps its ticket in the task's context
        # (``_registered`` of them), and an exit without one is a stale call, hence late.
        self._untracked = 0
        self._stale = 0
        self._registered = 0
        self._fast = self._slow is None
        self._entered: Awaitable[CircuitBreaker] | None = None
        self._exited: Awaitable[None] | None = None
        self._probes: dict[int, float] = {}  # probe ticket -> deadline, oldest first
        self._consec_fail = 0
        self._consec_succ = 0
        self._successes = 0
        self._failures = 0
        self._rejected = 0
        self._ignored = 0
        self._slow_calls = 0
        self._late = 0
        self._callbacks: list[_Subscription] = []
        self._pending: deque[tuple[CircuitState, CircuitState]] = deque()
        self._notifying = False

    # ------------------------------------------------------------------ reading

    @property
    def config(self) -> CircuitConfig:
        """The configuration this breaker was built with."""
        return self._config

    @property
    def state(self) -> CircuitState:
        """The current state. Reading it moves an OPEN breaker whose time is up to HALF_OPEN."""
        if self._state is _OPEN:
            now = self._now()
            if now >= self._open_until:
                self._transition(_HALF_OPEN, now)
                self._notify()
        return self._state

    @property
    def retry_after(self) -> float:
        """Seconds until a call could be admitted: 0.0 if one could be now.

        While HALF_OPEN with every probe slot taken, this is the time until the oldest probe's
        deadline (an upper bound: the probe may report back sooner). Does not block.
        """
        return self._retry_after(self._now())

    def _retry_after(self, now: float) -> float:
        state = self._state
        if state is _OPEN:
            return max(0.0, self._open_until - now)
        if state is _HALF_OPEN and len(self._probes) >= self._ho_max:
            oldest = next(iter(self._probes.values()))
            return max(0.0, oldest - now)
        return 0.0

    def stats(self) -> CircuitBreakerStats:
        """A snapshot of the counters (see :class:`CircuitBreakerStats`). Does not block."""
        state = self.state
        now = self._now()
        n = min(self._seq, self._win_size)
        consec_fail, consec_succ, successes = self._counts()
        if state is _CLOSED:
            in_flight = self._in_flight + self._manual + self._untracked
        elif state is _HALF_OPEN:
            in_flight = len(self._probes)
        else:
            in_flight = 0
        return CircuitBreakerStats(
            name=self.name,
            state=state,
            failure_rate=self._window_failures() / n if n else 0.0,
            consecutive_failures=consec_fail,
            consecutive_successes=consec_succ,
            total_calls=successes + self._failures,
            successful_calls=successes,
            failed_calls=self._failures,
            rejected_calls=self._rejected,
            time_in_current_state=max(0.0, now - self._changed_at),
            ignored_calls=self._ignored,
            slow_calls=self._slow_calls,
            late_results=self._late,
            in_flight=in_flight,
            retry_after=self._retry_after(now),
        )

    # ------------------------------------------------------------------ manual protocol

    def allow_request(self) -> bool:
        """Ask to make one call. ``True``: make it, then report exactly one of
        :meth:`record_success`, :meth:`record_failure`, :meth:`record_ignored`. ``False``: the
        call is refused (counted in ``rejected_calls``). Does not block; never raises.
        """
        if self._state is _CLOSED:
            self._manual += 1
            return True
        return self._admit_slow() != _ANONYMOUS

    def record_success(self) -> None:
        """Report that an admitted call succeeded. Does not block."""
        if self._state is _CLOSED and self._manual:
            self._manual -= 1
            self._seq += 1
            return
        self._record(_ANONYMOUS, _SUCCESS)

    def record_failure(self) -> None:
        """Report that an admitted call failed; may trip the breaker. Does not block."""
        self._record(_ANONYMOUS, _FAILURE)

    def record_ignored(self) -> None:
        """Report that an admitted call ended without a verdict (neither success nor failure):
        it frees the call's slot and changes no counter but ``ignored_calls``. Does not block.
        """
        self._record(_ANONYMOUS, _IGNORED)

    # ------------------------------------------------------------------ guarded forms

    def __aenter__(self) -> Awaitable[CircuitBreaker]:
        """Admit one call or raise :class:`CircuitOpenError`. Does not block."""
        if self._fast:
            self._untracked += 1
            entered = self._entered
            return self._make_awaitables() if entered is None else entered
        return self._enter_tracked()

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        """Record the outcome of the guarded block from its exception; never suppresses it."""
        if self._fast:
            # Fast mode: every outstanding ``async with`` call is untracked and current.
            self._untracked -= 1
            if exc is None:  # a success of the CLOSED period: the hot path
                self._seq += 1
            else:
                self._record(_CURRENT, self._classify(exc))
        else:
            self._exit_tracked(exc)
        exited = self._exited
        return _resolved(None) if exited is None else exited

    def _enter_tracked(self) -> Awaitable[CircuitBreaker]:
        if self._state is _CLOSED:
            self._in_flight += 1
            ticket = self._gen
        else:
            ticket = self._admit_slow()
            if ticket == _ANONYMOUS:
                raise self._open_error()
        start = self._now() if self._slow is not None else 0.0
        _TICKETS.set(_Frame(self, ticket, start, _TICKETS.get()))
        self._registered += 1
        self._fast = False
        entered = self._entered
        return self._make_awaitables() if entered is None else entered

    def _exit_tracked(self, exc: BaseException | None) -> None:
        frame = _TICKETS.get()
        if frame is not None and frame.breaker is self and frame.live:
            frame.live = False
            _TICKETS.set(frame.below)
            self._registered -= 1
            outcome = self._timed_success(frame.start) if exc is None else self._classify(exc)
            self._record(frame.ticket, outcome)
        elif self._stale:
            # Admitted untracked (fast mode) before a transition: its result is late.
            self._stale -= 1
            self._late += 1
        else:  # entered in another context (e.g. an async generator moved between tasks)
            # One registered call has exited, though its frame stays in the other context: count
            # it out, or the fast path would stay off for good.
            if self._registered:
                self._registered -= 1
            self._record(_FOREIGN, _SUCCESS if exc is None else self._classify(exc))
        self._update_fast()

    def _make_awaitables(self) -> Awaitable[CircuitBreaker]:
        # ``async with`` only needs awaitables from __aenter__/__aexit__: already-done futures
        # are the cheapest there are (no coroutine per call). Made lazily: the constructor needs
        # no loop. A done future is never handed to the loop, so any loop may await it.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without a loop (e.g. by hand in a test)
            return _resolved(self)
        entered: asyncio.Future[CircuitBreaker] = loop.create_future()
        entered.set_result(self)
        exited: asyncio.Future[None] = loop.create_future()
        exited.set_result(None)
        self._entered = entered
        self._exited = exited
        return entered

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises:
            CircuitOpenError: the breaker refused the call (``fn`` was not called).
            BaseException: whatever ``fn`` raised, after recording it (failure, or ignored for
                ``is_failure(exc) is False`` and for ``CancelledError`` and other non-``Exception``
                exceptions).
        """
        if self._state is _CLOSED:
            self._in_flight += 1
            ticket = self._gen
        else:
            ticket = self._admit_slow()
            if ticket == _ANONYMOUS:
                raise self._open_error()
        start = self._now() if self._slow is not None else 0.0
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record(ticket, self._classify(exc))
            raise
        if self._slow is None and self._state is _CLOSED and ticket == self._gen:
            self._in_flight -= 1
            self._seq += 1
        else:
            self._record(ticket, self._timed_success(start))
        return result

    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` function so that every call goes through :meth:`call`.

        Raises:
            TypeError: ``fn`` is not an async function.
        """
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@{type(self).__name__} decorates async functions only, not {fn!r}")

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return guarded

    # ------------------------------------------------------------------ control

    def on_state_change(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(old, new)`` once per real state change, after the state is consistent.

        Callbacks run in registration order; an ``Exception`` from one is logged (logger
        ``zeroclaw.concurrency.circuit_breaker``) and does not stop the others. A callback may call
        the breaker; a change it causes is announced after the current one, in order.

        Returns a function that unregisters this registration (idempotent): the callback is not
        called for changes announced after it returns. Registering the same callback twice calls it
        twice; each registration is removed by its own function.
        """
        if not callable(callback):
            raise TypeError("callback must be callable as callback(old, new)")
        entry = _Subscription(callback)
        callbacks = self._callbacks
        callbacks.append(entry)

        def unregister() -> None:
            if entry in callbacks:
                callbacks.remove(entry)

        return unregister

    def force_open(self, *, duration: float | timedelta | None = None) -> None:
        """Open the breaker now, for ``duration`` seconds (default ``timeout_duration``; may be
        ``math.inf``), then half-open as usual. If already OPEN, only the open period is reset.
        """
        seconds = self._timeout if duration is None else to_seconds(duration, what="duration")
        now = self._now()
        if self._state is not _OPEN:
            self._transition(_OPEN, now)
        self._open_until = now + seconds
        self._notify()

    def force_close(self) -> None:
        """Close the breaker now (window and consecutive counters cleared). Does not block."""
        if self._state is not _CLOSED:
            self._transition(_CLOSED, self._now())
            self._notify()

    def reset(self) -> None:
        """Back to a fresh CLOSED breaker: every counter zeroed; results of calls in flight become
        inert. Fires ``on_state_change`` only if the state changes. Does not block.
        """
        now = self._now()
        if self._state is not _CLOSED:
            self._transition(_CLOSED, now)
        else:
            self._enter_closed()
        self._successes = self._failures = self._rejected = 0
        self._ignored = self._slow_calls = self._late = 0
        self._changed_at = now
        self._update_fast()
        self._notify()

    # ------------------------------------------------------------------ the state machine

    def _admit_slow(self) -> int:
        """Admission when not CLOSED: a ticket, or ``_ANONYMOUS`` (0) when refused."""
        now = self._now()
        if self._state is _OPEN:
            if now < self._open_until:
                self._rejected += 1
                return _ANONYMOUS
            self._transition(_HALF_OPEN, now)
        if self._state is _HALF_OPEN:
            probes = self._probes
            # Deadlines are in admission order, so expired probes are at the front.
            while probes:
                oldest = next(iter(probes))
                if probes[oldest] > now:
                    break
                del probes[oldest]
            if len(probes) < self._ho_max:
                ticket = self._next_id
                self._next_id = ticket + 1
                probes[ticket] = now + self._probe_timeout
            else:
                self._rejected += 1
                ticket = _ANONYMOUS
        else:  # CLOSED: callers take the CLOSED path themselves; kept so this is total
            self._in_flight += 1
            ticket = self._gen
        if self._pending:
            self._notify()
        return ticket

    def _open_error(self) -> CircuitOpenError:
        retry_after = self._retry_after(self._now())
        # Forced open indefinitely (or probes without a deadline): no retry time to promise.
        return CircuitOpenError(
            self.name, self._state, None if retry_after == math.inf else retry_after
        )

    def _classify(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return _IGNORED  # CancelledError, KeyboardInterrupt...: no verdict on the dependency
        predicate = self._is_failure
        if predicate is None:
            return _FAILURE
        try:
            return _FAILURE if predicate(exc) else _IGNORED
        except Exception:
            _log.exception(
                "circuit %r: is_failure raised; counting the call as a failure", self.name
            )
            return _FAILURE

    def _timed_success(self, start: float) -> int:
        slow = self._slow
        if slow is not None and self._now() - start >= slow:
            return _SLOW
        return _SUCCESS

    def _window_failures(self) -> int:
        """Bad outcomes among the last ``window_size`` of the CLOSED period."""
        bad = self._bad
        low = self._seq - self._win_size
        while bad and bad[0] < low:
            bad.popleft()
        return len(bad)

    def _counts(self) -> tuple[int, int, int]:
        """(consecutive failures, consecutive successes, successful calls), whatever the state."""
        if self._state is _CLOSED:
            seq = self._seq
            mark = self._fail_mark
            return (
                self._streak if mark == seq else 0,
                seq - mark,
                self._successes + seq - self._period_fail,
            )
        return self._consec_fail, self._consec_succ, self._successes

    def _record(self, ticket: int, outcome: int) -> None:
        """Apply one result (pure in state and ``now``), then announce any transition."""
        state = self._state
        if state is _CLOSED:
            if ticket == _ANONYMOUS:
                if not self._manual:  # no manual call of this period is out: from before it
                    self._late += 1
                    return
                self._manual -= 1
            elif ticket == _CURRENT:
                pass
            elif ticket == self._gen or (ticket == _FOREIGN and self._in_flight):
                self._in_flight -= 1
            else:
                self._late += 1
                return
            seq = self._seq
            if outcome == _SUCCESS:
                self._seq = seq + 1
                return
            if outcome == _IGNORED:
                self._ignored += 1
                return
            self._bad.append(seq)
            if outcome == _FAILURE:
                self._failures += 1
                self._period_fail += 1
                streak = self._streak + 1 if self._fail_mark == seq else 1
                self._streak = streak
                self._fail_mark = seq + 1
            else:  # slow success: counts toward the rate, not as a consecutive failure
                self._slow_calls += 1
                streak = 0
            self._seq = seq + 1
            n = min(seq + 1, self._win_size)
            if streak >= self._fail_thr or (
                n >= self._min_calls and self._window_failures() / n >= self._rate_thr
            ):
                self._transition(_OPEN, self._now())
                self._notify()
            return
        if state is _OPEN:
            self._late += 1  # admitted before it opened: changes nothing
            return
        probes = self._probes
        if ticket in (_ANONYMOUS, _FOREIGN):
            if not probes:
                self._late += 1
                return
            del probes[next(iter(probes))]
        elif ticket in probes:
            del probes[ticket]
        else:
            self._late += 1  # a CLOSED-period call, or a probe whose slot was reclaimed
            return
        if outcome == _SUCCESS:
            self._successes += 1
            self._consec_fail = 0
            self._consec_succ += 1
            if self._consec_succ >= self._succ_thr:
                self._transition(_CLOSED, self._now())
                self._notify()
        elif outcome == _IGNORED:
            self._ignored += 1
        else:
            if outcome == _FAILURE:
                self._failures += 1
                self._consec_fail += 1
            else:
                self._successes += 1
                self._slow_calls += 1
            self._consec_succ = 0
            self._transition(_OPEN, self._now())
            self._notify()

    def _retire_untracked(self) -> None:
        self._stale += self._untracked
        self._untracked = 0

    def _update_fast(self) -> None:
        self._fast = (
            self._state is _CLOSED
            and not self._stale
            and not self._registered
            and self._slow is None
        )

    def _enter_closed(self) -> None:
        self._retire_untracked()
        self._seq = self._fail_mark = self._streak = self._period_fail = 0
        self._bad.clear()
        self._consec_fail = self._consec_succ = 0
        self._gen = self._next_id
        self._next_id += 1
        self._in_flight = self._manual = 0
        self._probes.clear()

    def _transition(self, new: CircuitState, now: float) -> None:
        """Move to ``new`` (a real change) and queue its announcement; callbacks run later."""
        old = self._state
        if old is _CLOSED:  # fold the period's derived counts into the explicit counters
            self._consec_fail, self._consec_succ, self._successes = self._counts()
        self._state = new
        self._changed_at = now
        self._retire_untracked()
        if new is _CLOSED:
            self._enter_closed()
        elif new is _OPEN:
            duration = self._timeout
            if self._jitter:
                duration *= 1.0 + self._jitter * random.random()
            self._open_until = now + duration
            self._consec_succ = 0
            self._probes.clear()
            self._in_flight = self._manual = 0
        else:
            self._consec_succ = 0
            self._probes.clear()
        self._update_fast()
        _log.info("circuit %r: %s -> %s", self.name, old, new)
        self._pending.append((old, new))

    def _notify(self) -> None:
        """Announce queued transitions in order; re-entrant calls leave it to the outer loop."""
        if self._notifying:
            return
        self._notifying = True
        try:
            pending = self._pending
            while pending:
                old, new = pending.popleft()
                for entry in tuple(self._callbacks):
                    callback = entry.callback
                    try:
                        callback(old, new)
                    except Exception:
                        _log.exception(
                            "circuit %r: on_state_change callback %r failed (%s -> %s)",
                            self.name,
                            callback,
                            old,
                            new,
                        )
        finally:
            self._notifying = False

    def _evictable(self) -> bool:
        """CLOSED, nothing in flight, no failure in the window: forgetting it loses nothing."""
        return (
            self._state is _CLOSED
            and self._in_flight == 0
            and self._manual == 0
            and self._untracked == 0
            and self._window_failures() == 0
        )

    def __repr__(self) -> str:
        state = self._state
        parts = [
            f"CircuitBreaker({self.name!r}, state={state}",
            f"consecutive_failures={self._counts()[0]}/{self._fail_thr}",
            f"window={self._window_failures()}/{min(self._seq, self._win_size)}",
        ]
        if state is _OPEN:
            parts.append(f"retry_after={self._retry_after(self._now()):.1f}s")
        elif state is _HALF_OPEN:
            parts.append(f"probes={len(self._probes)}/{self._ho_max}")
        return ", ".join(parts) + ")"


@mypyc_attr(allow_interpreted_subclasses=True)
class CircuitBreakerGroup:
    """Breakers by name (one per provider, model or tenant), with a bounded number of them.

    Args:
        default_config: config of breakers made by :meth:`get_or_create`.
        max_breakers: the bound. When adding a breaker goes over it, the least recently used
            breakers that are CLOSED, have no call in flight and no failure in their window are
            forgotten (forgetting them loses nothing). OPEN and HALF_OPEN breakers, and any with
            failure history, are never evicted: evicting them would let a caller reset a failing
            dependency's history (resilience4j#650 and #703 asked how). If no breaker is
            evictable, the group goes over the bound rather than evict wrongly; ``evictions`` and
            ``len()`` show it.
        clock: passed to every breaker the group makes.

    "Used" means returned by :meth:`get_or_create` or :meth:`get`. A breaker used through the manual
    protocol whose ``allow_request`` is never followed by a ``record_*`` stays "in flight" and so
    is never evicted.
    """

    __slots__ = ("_breakers", "_clock", "_default", "evictions", "max_breakers")

    def __init__(
        self,
        default_config: CircuitConfig | None = None,
        *,
        max_breakers: int = 10_000,
        clock: Clock | None = None,
    ) -> None:
        self._default = CircuitConfig() if default_config is None else default_config
        self.max_breakers = _positive_int(max_breakers, "max_breakers")
        self._clock = clock
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self.evictions = 0

    @property
    def default_config(self) -> CircuitConfig:
        """The config of breakers made by :meth:`get_or_create`."""
        return self._default

    def get_or_create(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``, made with the default config if there is none.
        The same object is returned for the same name while it is in the group."""
        breakers = self._breakers
        breaker = breakers.get(name)
        if breaker is not None:
            breakers.move_to_end(name)
            return breaker
        return self._add(name, CircuitBreaker(self._default, name=name, clock=self._clock))

    def get(self, name: str) -> CircuitBreaker | None:
        """The breaker called ``name``, or ``None``."""
        breaker = self._breakers.get(name)
        if breaker is not None:
            self._breakers.move_to_end(name)
        return breaker

    def create(self, name: str, config: CircuitConfig | None = None) -> CircuitBreaker:
        """Make a breaker called ``name`` with ``config`` (default: the group's), replacing any
        breaker of that name (holders of the old object keep using it, unlinked)."""
        self._breakers.pop(name, None)
        breaker = CircuitBreaker(
            self._default if config is None else config, name=name, clock=self._clock
        )
        return self._add(name, breaker)

    def remove(self, name: str) -> CircuitBreaker | None:
        """Forget the breaker called ``name``; return it, or ``None`` if there was none."""
        return self._breakers.pop(name, None)

    def all_stats(self) -> dict[str, CircuitBreakerStats]:
        """``stats()`` of every breaker, by name."""
        return {name: breaker.stats() for name, breaker in self._breakers.items()}

    def reset_all(self) -> None:
        """``reset()`` every breaker."""
        for breaker in tuple(self._breakers.values()):
            breaker.reset()

    def names(self) -> list[str]:
        """The names, least recently used first."""
        return list(self._breakers)

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._breakers))

    def _add(self, name: str, breaker: CircuitBreaker) -> CircuitBreaker:
        breakers = self._breakers
        breakers[name] = breaker
        excess = len(breakers) - self.max_breakers
        if excess > 0:
            victims: list[str] = []
            for key, candidate in breakers.items():  # least recently used first
                if key != name and candidate._evictable():
                    victims.append(key)
                    if len(victims) == excess:
                        break
            for key in victims:
                del breakers[key]
            self.evictions += len(victims)
        return breaker

    def __repr__(self) -> str:
        open_ = sum(1 for b in self._breakers.values() if b._state is not _CLOSED)
        return (
            f"CircuitBreakerGroup(breakers={len(self._breakers)}/{self.max_breakers}, "
            f"not_closed={open_}, evictions={self.evictions})"
        )


describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
