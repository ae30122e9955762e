"""Circuit breakers: stop calling a failing dependency, probe it, and close again when it recovers.

A :class:`CircuitBreaker` guards calls to one dependency (an LLM provider, say)::

    breaker = CircuitBreaker(CircuitConfig(failure_threshold=5), name="openai")

    async with breaker:                 # raises CircuitOpenError when refused
        reply = await provider.complete(prompt)

    reply = await breaker.call(provider.complete, prompt)    # the same, as a call

    if ticket := breaker.allow_request():   # the manual protocol
        try:
            reply = await provider.complete(prompt)
        except Exception:
            breaker.record_failure(ticket)
            raise
        breaker.record_success(ticket)

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

Every admitted call carries a ticket: the generation of the CLOSED period it was admitted in, or
the id of its HALF_OPEN probe slot. A result is applied only if its ticket is still current, which
makes results from before a transition inert (*late*) and lets a probe's result release exactly
its own slot. The guarded forms (``async with``, ``call``, the decorator) carry the ticket for you;
the manual protocol hands it out: ``allow_request()`` returns a :class:`CallTicket` that
``record_*`` takes. A manual result recorded without its ticket still counts (as in every breaker
users know: ``record_failure()`` five times trips a default breaker); it frees the slot of the
oldest manual call still out, if any, and only while OPEN is it late (no call is admitted then).

Which state an event takes the breaker to is decided by one pure function, ``_next_state(state,
event, now, ..., config)``; the breaker is its shell, which keeps the counts, applies the entry of
each state, and announces the change. The one rule the shell knows by heart is that a CLOSED
success changes nothing (the hot path, which therefore asks nothing). The decisions are
synchronous and read ``now`` from the clock only when they need it (never on the closed fast
path); nothing here needs a running event loop except awaiting the guarded call itself.
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

from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._mypyc import describe_compiled, mypyc_attr
from zeroclaw.concurrency._validate import to_count, to_fraction, to_seconds
from zeroclaw.concurrency.errors import CircuitOpenError

__all__ = [
    "CallTicket",
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


class CircuitState(enum.StrEnum):
    """The state of a breaker. ``str()`` gives the original's display names (its value)."""

    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"


_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN

# Outcome codes (ints, so recording allocates nothing); they are also the events of _next_state,
# with the other events below.
_SUCCESS: Final = 0
_FAILURE: Final = 1
_SLOW: Final = 2
_IGNORED: Final = 3
_ADMIT: Final = 4  # a request, or a look at the state: an OPEN breaker's time may be up
_FORCE_OPEN: Final = 5
_FORCE_CLOSE: Final = 6
_RESET: Final = 7

# Ticket 0 means "no ticket": the manual protocol's results, and a refused admission.
_ANONYMOUS: Final = 0
# A call of the current CLOSED period whose in-flight count was already settled.
_CURRENT: Final = -1
# A ticketed ``async with`` call that exits in a context other than its own, so its ticket is lost.
_FOREIGN: Final = -2

# Set-aside breakers a CircuitBreakerGroup looks at again per new name while over its bound.
_RECHECK: Final = 4


async def _resolved(value: T) -> T:
    return value


def _discard(awaitable: object) -> None:
    """Close a coroutine nobody will await, so it is not reported as "never awaited"."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()


#: The fields of :class:`CircuitConfig` that are counts (ints >= 1); the gateway's config loader
#: reads this list too, so a new count field is checked and documented in one place.
COUNT_FIELDS: Final = (
    "failure_threshold",
    "success_threshold",
    "window_size",
    "min_calls",
    "half_open_max_calls",
)


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
        # Every check is zeroclaw.concurrency._validate's, so both builds refuse the same values
        # with the same words; values are stored converted (int counts, float rates and seconds).
        # getattr, not self.<field>: compiled code reads an int field as an int, True as 1.
        set_ = object.__setattr__
        for name in COUNT_FIELDS:
            set_(self, name, to_count(getattr(self, name), what=name, minimum=1))
        if self.min_calls > self.window_size:
            raise ValueError(
                f"min_calls ({self.min_calls}) must not exceed window_size ({self.window_size})"
            )
        rate = getattr(self, "failure_rate_threshold")  # noqa: B009 - see above
        set_(
            self,
            "failure_rate_threshold",
            to_fraction(rate, what="failure_rate_threshold", low_open=True),
        )
        jitter = getattr(self, "open_jitter")  # noqa: B009 - see above
        set_(self, "open_jitter", to_fraction(jitter, what="open_jitter"))
        if self.is_failure is not None and not callable(self.is_failure):
            raise TypeError(
                "is_failure must be a callable taking the exception, or None, "
                f"not {type(self.is_failure).__name__}"
            )
        # Durations are stored as float seconds, whatever was passed.
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


def _next_state(
    state: CircuitState,
    event: int,
    now: float,
    open_until: float,
    failures_in_a_row: int,
    successes_in_a_row: int,
    window_bad: int,
    window_n: int,
    config: CircuitConfig,
) -> CircuitState:
    """The breaker's transition rule: the state ``event`` takes ``state`` to.

    Every transition of :class:`CircuitBreaker` is decided here, and nowhere else. Pure: a function
    of its arguments only. For an outcome (``_SUCCESS``, ``_FAILURE``, ``_SLOW``, ``_IGNORED``) the
    counts are the breaker's once the outcome is counted: failures and successes in a row, and the
    window's bad outcomes among its ``window_n`` outcomes; other events ignore them. What entering a
    state does (start the open period, clear the window, free the probe slots) is the shell's
    (``CircuitBreaker._transition``). A result that is late never gets here.
    """
    if event == _FORCE_OPEN:
        return _OPEN
    if event in (_FORCE_CLOSE, _RESET):
        return _CLOSED
    if state is _OPEN:  # refuses everything until its period is over; then the next look probes
        return _HALF_OPEN if event == _ADMIT and now >= open_until else _OPEN
    if event == _SUCCESS:  # never trips; enough successes in a row close a probing breaker
        if state is _HALF_OPEN and successes_in_a_row >= config.success_threshold:
            return _CLOSED
        return state
    if event in (_FAILURE, _SLOW):
        if state is _HALF_OPEN:  # a bad probe re-opens it
            return _OPEN
        if failures_in_a_row >= config.failure_threshold:
            return _OPEN
        if window_n >= config.min_calls and window_bad / window_n >= config.failure_rate_threshold:
            return _OPEN
        return _CLOSED
    return state  # ignored outcomes and admissions change nothing else


class CallTicket:
    """The admission of a manual call: what :meth:`CircuitBreaker.allow_request` returns.

    Always truthy. Pass it to the ``record_*`` call that reports the call: the result is then
    matched to the call's own slot (a result whose ticket predates a state change is *late* and
    changes nothing). A HALF_OPEN probe gets a ticket of its own. The calls of one CLOSED period
    share one: the period is all a result needs to name there (their slots are alike), and
    sharing keeps the closed admission free of any allocation. A ticket takes as many results as
    calls were admitted with it; one more (recording a call twice) raises ``ValueError`` and
    changes nothing. Made only by the breaker.
    """

    __slots__ = ("_breaker", "_ident", "_outstanding")

    def __init__(self, breaker: CircuitBreaker, ident: int) -> None:
        self._breaker = breaker
        self._ident = ident  # the internal ticket: the CLOSED period's, or the probe slot's
        self._outstanding = 0  # calls admitted with this ticket and not recorded yet

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker that admitted the call."""
        return self._breaker

    @property
    def recorded(self) -> bool:
        """Whether every call admitted with this ticket has been reported by a ``record_*``."""
        return self._outstanding == 0

    def __repr__(self) -> str:
        done = f"{self._outstanding} out" if self._outstanding else "recorded"
        return f"<CallTicket {self._ident} of circuit {self._breaker.name!r}: {done}>"


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
        "_manual_probes",
        "_next_id",
        "_notifying",
        "_now",
        "_open_until",
        "_pending",
        "_period_fail",
        "_period_ticket",
        "_probe_timeout",
        "_probes",
        "_registered",
        "_rejected",
        "_seq",
        "_slow",
        "_slow_calls",
        "_stale",
        "_state",
        "_streak",
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
        self._timeout = to_seconds(config.timeout_duration)
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
        self._period_ticket = CallTicket(self, 1)  # the manual calls' (allow_request) form of it
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
        self._manual_probes: dict[int, None] = {}  # those admitted by allow_request, oldest first
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
        if self._state is _OPEN and self._step(_ADMIT, self._now()) is not _OPEN:
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

    def allow_request(self) -> CallTicket | None:
        """Ask to make one call. Does not block; never raises.

        Returns a :class:`CallTicket` (truthy) when the call is admitted: make it, then report it
        with exactly one of :meth:`record_success`, :meth:`record_failure`,
        :meth:`record_ignored`, passing the ticket. ``None`` when the call is refused (counted in
        ``rejected_calls``), so ``if breaker.allow_request():`` reads as before.
        """
        if self._state is _CLOSED:
            self._manual += 1
            shared = self._period_ticket
            shared._outstanding += 1
            return shared
        ident = self._admit_slow()
        if ident == _ANONYMOUS:
            return None
        self._manual_probes[ident] = None
        probe = CallTicket(self, ident)
        probe._outstanding = 1
        return probe

    def record_success(self, ticket: CallTicket | None = None) -> None:
        """Report that a call succeeded. Does not block.

        With the ``ticket`` from :meth:`allow_request`, the result is that call's: it releases
        its own slot, and changes nothing but ``late_results`` if the breaker changed state
        since the call was admitted. Without one, the result counts all the same (it frees the
        oldest manual call's slot, if one is out); only while OPEN is it late.

        Raises:
            ValueError: the ticket was already recorded, or belongs to another breaker.
            TypeError: ``ticket`` is neither a ``CallTicket`` nor ``None``.
        """
        if ticket is None:
            if self._state is _CLOSED:  # the closed fast path: one increment
                if self._manual:
                    self._manual -= 1
                self._seq += 1
                return
            self._record(_ANONYMOUS, _SUCCESS)
            return
        ident = self._redeem(ticket)
        if self._state is _CLOSED and ident == self._gen:
            if self._manual:
                self._manual -= 1
            self._seq += 1
            return
        self._record(ident, _SUCCESS, manual=True)

    def record_failure(self, ticket: CallTicket | None = None) -> None:
        """Report that a call failed; may trip the breaker. Does not block.

        ``ticket`` as for :meth:`record_success` (a failure from before a transition trips
        nothing). Raises as :meth:`record_success`.
        """
        if ticket is None:
            self._record(_ANONYMOUS, _FAILURE)
        else:
            self._record(self._redeem(ticket), _FAILURE, manual=True)

    def record_ignored(self, ticket: CallTicket | None = None) -> None:
        """Report that a call ended without a verdict (neither success nor failure): it frees
        the call's slot and changes no counter but ``ignored_calls``. Does not block.

        ``ticket`` as for :meth:`record_success`. Raises as :meth:`record_success`.
        """
        if ticket is None:
            self._record(_ANONYMOUS, _IGNORED)
        else:
            self._record(self._redeem(ticket), _IGNORED, manual=True)

    def _redeem(self, ticket: object) -> int:
        """Check a manual call's ticket and spend it: its internal ticket, once."""
        if not isinstance(ticket, CallTicket):
            raise TypeError(
                f"ticket must be the CallTicket allow_request() returned, or None, "
                f"not {type(ticket).__name__}"
            )
        if ticket._breaker is not self:
            raise ValueError(
                f"{ticket!r} was issued by circuit {ticket._breaker.name!r}, not {self.name!r}"
            )
        if not ticket._outstanding:
            raise ValueError(
                f"{ticket!r} was already recorded for every call it admitted: report each "
                "admitted call exactly once"
            )
        ticket._outstanding -= 1
        return ticket._ident

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
        # The admission lines are also in call(): both are the closed path the breaker benchmark
        # measures (docs/performance.md), where a shared helper would cost a call per guarded
        # call; the decision itself is _admit_slow's, in one place.
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

        Raises:
            TypeError: ``callback`` is not callable, or is an ``async`` function: callbacks run
                synchronously, inside the call that changed the state, so a coroutine would never
                run. To do async work, start a task from a plain callback.
        """
        if not callable(callback):
            raise TypeError("callback must be callable as callback(old, new)")
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            type(callback).__call__  # an object whose __call__ is async
        ):
            raise TypeError(
                f"on_state_change takes a plain function, not the async function {callback!r}: "
                "it is called synchronously and a coroutine would never run (start a task "
                "from a plain callback instead)"
            )
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
        self._step(_FORCE_OPEN, now)
        self._open_until = now + seconds
        self._notify()

    def force_close(self) -> None:
        """Close the breaker now (window and consecutive counters cleared). Does not block."""
        self._step(_FORCE_CLOSE, self._now())
        self._notify()

    def reset(self) -> None:
        """Back to a fresh CLOSED breaker: every counter zeroed; results of calls in flight become
        inert. Fires ``on_state_change`` only if the state changes. Does not block.
        """
        now = self._now()
        if self._state is _CLOSED:
            self._enter_closed()  # a new period all the same: calls in flight become late
        else:
            self._step(_RESET, now)
        self._successes = self._failures = self._rejected = 0
        self._ignored = self._slow_calls = self._late = 0
        self._changed_at = now
        self._update_fast()
        self._notify()

    # ------------------------------------------------------------------ the state machine

    def _admit_slow(self) -> int:
        """Admission when not CLOSED: a ticket, or ``_ANONYMOUS`` (0) when refused."""
        now = self._now()
        if self._state is _OPEN and self._step(_ADMIT, now) is _OPEN:
            self._rejected += 1
            return _ANONYMOUS
        if self._state is _HALF_OPEN:
            probes = self._probes
            # Deadlines are in admission order, so expired probes are at the front.
            while probes:
                oldest = next(iter(probes))
                if probes[oldest] > now:
                    break
                del probes[oldest]
                self._manual_probes.pop(oldest, None)
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

    def _record(self, ticket: int, outcome: int, manual: bool = False) -> None:
        """Apply one result (pure in state and ``now``), then announce any transition.

        ``manual``: the ticket is a :class:`CallTicket`'s (its slot is counted in ``_manual``).
        """
        state = self._state
        if state is _CLOSED:
            if ticket == _ANONYMOUS:
                # No ticket: it counts, and frees a manual call's slot if one is out (it cannot be
                # told from a call admitted before the breaker closed, so it is taken for current).
                if self._manual:
                    self._manual -= 1
            elif ticket == _CURRENT:
                pass
            elif ticket == self._gen:
                if not manual:
                    self._in_flight -= 1
                elif self._manual:  # 0 only if ticketless results took this call's slot
                    self._manual -= 1
            elif ticket == _FOREIGN and self._in_flight:
                self._in_flight -= 1
            else:
                self._late += 1
                return
            seq = self._seq
            if outcome == _SUCCESS:  # a CLOSED success never trips (_next_state): not asked
                self._seq = seq + 1
                return
            if outcome == _IGNORED:
                self._ignored += 1
                return
            self._bad.append(seq)
            if outcome == _FAILURE:
                self._failures += 1
                self._period_fail += 1
                self._streak = self._streak + 1 if self._fail_mark == seq else 1
                self._fail_mark = seq + 1
            else:  # slow success: counts toward the rate, and ends a run of failures
                self._slow_calls += 1
            self._seq = seq + 1
            if self._step(outcome, self._now()) is not _CLOSED:
                self._notify()
            return
        if state is _OPEN:
            self._late += 1  # admitted before it opened: changes nothing
            return
        probes = self._probes
        manual_probes = self._manual_probes
        if ticket == _ANONYMOUS:
            # No ticket: it counts, and frees the oldest manual probe's slot if one is out.
            if manual_probes:
                oldest = next(iter(manual_probes))
                del manual_probes[oldest]
                del probes[oldest]
        elif ticket == _FOREIGN:  # a guarded call whose ticket stayed in another context
            if not probes:
                self._late += 1
                return
            oldest = next(iter(probes))
            del probes[oldest]
            manual_probes.pop(oldest, None)
        elif ticket in probes:
            del probes[ticket]
            if manual:
                manual_probes.pop(ticket, None)
        else:
            self._late += 1  # a CLOSED-period call, or a probe whose slot was reclaimed
            return
        if outcome == _SUCCESS:
            self._successes += 1
            self._consec_fail = 0
            self._consec_succ += 1
        elif outcome == _IGNORED:
            self._ignored += 1
            return
        else:
            if outcome == _FAILURE:
                self._failures += 1
                self._consec_fail += 1
            else:
                self._successes += 1
                self._slow_calls += 1
            self._consec_succ = 0
        if self._step(outcome, self._now()) is not _HALF_OPEN:
            self._notify()

    def _step(self, event: int, now: float) -> CircuitState:
        """Go where :func:`_next_state` says ``event`` takes the breaker; return that state.

        Only an outcome is judged on the counts, so only then are they gathered. The caller
        announces the change (``_notify``) when its own bookkeeping is done.
        """
        state = self._state
        if event <= _IGNORED:
            failures, successes, _ = self._counts()
            n = min(self._seq, self._win_size)
            bad = self._window_failures() if n else 0
        else:
            failures = successes = bad = n = 0
        new = _next_state(
            state, event, now, self._open_until, failures, successes, bad, n, self._config
        )
        if new is not state:
            self._transition(new, now)
        return new

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
        self._period_ticket = CallTicket(self, self._gen)
        self._in_flight = self._manual = 0
        self._probes.clear()
        self._manual_probes.clear()

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
            self._manual_probes.clear()
            self._in_flight = self._manual = 0
        else:
            self._consec_succ = 0
            self._probes.clear()
            self._manual_probes.clear()
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
                        returned = callback(old, new)
                        if inspect.isawaitable(returned):
                            _discard(returned)
                            _log.error(
                                "circuit %r: on_state_change callback %r returned an awaitable, "
                                "which is never awaited (%s -> %s); start a task instead",
                                self.name,
                                callback,
                                old,
                                new,
                            )
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
            f"consecutive_failures={self._counts()[0]}/{self._config.failure_threshold}",
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

    Raises:
        TypeError: ``default_config`` is not a ``CircuitConfig``; ``max_breakers`` not an ``int``.
        ValueError: ``max_breakers`` < 1.

    "Used" means returned by :meth:`get_or_create` or :meth:`get`. A breaker used through the manual
    protocol whose ``allow_request`` is never followed by a ``record_*`` stays "in flight" and so
    is never evicted.

    Eviction costs O(1) amortised per new name, however many breakers cannot be evicted: a breaker
    the eviction scan finds not evictable (OPEN, say) is set aside instead of being judged again
    for every new name. It is a candidate again once it is used. While the group is over its bound,
    each new name also looks again at a few set-aside breakers (4, oldest first), so one that became
    evictable unused (its calls ended) is evicted after at most a quarter as many new names as are
    set aside; until then the group may exceed its bound by that much.
    """

    __slots__ = (
        "_breakers",
        "_clock",
        "_default",
        "_examined",
        "_held",
        "evictions",
        "max_breakers",
    )

    def __init__(
        self,
        default_config: CircuitConfig | None = None,
        *,
        # ``int | bool`` is ``int`` to a type checker; to mypyc it is an object, so a ``True`` gets
        # as far as the check (a plain ``int`` parameter would turn it into 1 on entry).
        max_breakers: int | bool = 10_000,
        clock: Clock | None = None,
    ) -> None:
        self._default = CircuitConfig() if default_config is None else default_config
        if not isinstance(self._default, CircuitConfig):
            raise TypeError(
                f"default_config must be a CircuitConfig, not {type(default_config).__name__}"
            )
        self.max_breakers = to_count(max_breakers, what="max_breakers", minimum=1)
        self._clock = clock
        # Eviction candidates, least recently used first.
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        # Breakers an eviction scan found not evictable, in the order it found them; they were the
        # least recently used then, and none has been used since (use moves it back).
        self._held: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._examined = 0  # breakers judged by eviction scans: the work they did (tests read it)
        self.evictions = 0

    @property
    def default_config(self) -> CircuitConfig:
        """The config of breakers made by :meth:`get_or_create`."""
        return self._default

    def get_or_create(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``, made with the default config if there is none.
        The same object is returned for the same name while it is in the group. Does not block;
        may evict (see the class)."""
        breakers = self._breakers
        breaker = breakers.get(name)
        if breaker is not None:
            breakers.move_to_end(name)
            return breaker
        if self._held:
            breaker = self._held.pop(name, None)
            if breaker is not None:
                breakers[name] = breaker  # used again: a candidate, most recently used
                return breaker
        return self._add(name, CircuitBreaker(self._default, name=name, clock=self._clock))

    def get(self, name: str) -> CircuitBreaker | None:
        """The breaker called ``name``, or ``None``. Does not block."""
        breakers = self._breakers
        breaker = breakers.get(name)
        if breaker is not None:
            breakers.move_to_end(name)
        elif self._held:
            breaker = self._held.pop(name, None)
            if breaker is not None:
                breakers[name] = breaker
        return breaker

    def create(self, name: str, config: CircuitConfig | None = None) -> CircuitBreaker:
        """Make a breaker called ``name`` with ``config`` (default: the group's), replacing any
        breaker of that name (holders of the old object keep using it, unlinked)."""
        self._breakers.pop(name, None)
        self._held.pop(name, None)
        breaker = CircuitBreaker(
            self._default if config is None else config, name=name, clock=self._clock
        )
        return self._add(name, breaker)

    def remove(self, name: str) -> CircuitBreaker | None:
        """Forget the breaker called ``name``; return it, or ``None`` if there was none."""
        breaker = self._breakers.pop(name, None)
        return self._held.pop(name, None) if breaker is None else breaker

    def all_stats(self) -> dict[str, CircuitBreakerStats]:
        """``stats()`` of every breaker, by name (in the order of :meth:`names`)."""
        return {name: self._find(name).stats() for name in self.names()}

    def reset_all(self) -> None:
        """``reset()`` every breaker."""
        for name in self.names():
            self._find(name).reset()

    def names(self) -> list[str]:
        """The names, least recently used first (the breakers an eviction scan set aside come
        first, in the order it found them)."""
        return [*self._held, *self._breakers]

    def __len__(self) -> int:
        return len(self._breakers) + len(self._held)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers or name in self._held

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _find(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        return self._held[name] if breaker is None else breaker

    def _add(self, name: str, breaker: CircuitBreaker) -> CircuitBreaker:
        breakers = self._breakers
        held = self._held
        breakers[name] = breaker
        excess = len(breakers) + len(held) - self.max_breakers
        if excess <= 0:
            return breaker
        evicted = 0
        # The set-aside breakers are the oldest: look again at a few of them first.
        budget = _RECHECK if len(held) > _RECHECK else len(held)
        while budget and evicted < excess:
            budget -= 1
            key, candidate = held.popitem(last=False)
            self._examined += 1
            if candidate._evictable():
                evicted += 1
            else:
                held[key] = candidate  # to the back: the next look starts with another one
        # Then the candidates, least recently used first, never the new one (it is the last). Each
        # is judged once here: evicted, or set aside until it is used again.
        while evicted < excess and len(breakers) > 1:
            key, candidate = breakers.popitem(last=False)
            self._examined += 1
            if candidate._evictable():
                evicted += 1
            else:
                held[key] = candidate
        self.evictions += evicted
        return breaker

    def __repr__(self) -> str:
        open_ = sum(1 for name in self.names() if self._find(name)._state is not _CLOSED)
        return (
            f"CircuitBreakerGroup(breakers={len(self)}/{self.max_breakers}, "
            f"not_closed={open_}, evictions={self.evictions})"
        )


describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
