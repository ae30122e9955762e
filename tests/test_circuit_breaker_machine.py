"""Stateful property test: random allow / success / failure / ignored / cancel / slow / clock
moves / force_open / force_close / reset against a small reference model of the breaker docs, plus
invariants checked independently of it. Manual calls report with their ticket or without it (and
results with no ``allow_request`` before them, and tickets recorded twice, are tried too).

Guarded calls (``call`` and ``async with``) are driven by hand, without an event loop: each one is a
coroutine suspended at a gate we control, stepped inside its own ``contextvars.Context`` as an
asyncio task would be. That lets one example interleave dozens of calls deterministically.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zeroclaw.concurrency.circuit_breaker import (
    CallTicket,
    CircuitBreaker,
    CircuitConfig,
    CircuitState,
)
from zeroclaw.concurrency.errors import CircuitOpenError
from zeroclaw.testing import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
TIMEOUT = 5.0
SUCCESS, FAILURE, IGNORED, SLOW = "success", "failure", "ignored", "slow"


class Boom(Exception):
    pass


class NotOurFault(Exception):
    pass


class Gate:
    """An awaitable that suspends once, then returns or raises what the test decided."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def __await__(self) -> Generator[None, None, str]:
        yield None
        if self.error is not None:
            raise self.error
        return "done"


# --------------------------------------------------------------------------- the reference model

Ticket = tuple[str, int] | None  # ("closed", period) / ("probe", id); None: recorded without one


@dataclass
class Model:
    """docs/circuit_breaker.md's rules written the plain way: lists, no ring buffer, no tricks."""

    config: CircuitConfig
    timeout: float
    probe_timeout: float
    state: CircuitState = CLOSED
    open_until: float = 0.0
    window: list[int] = field(default_factory=list)
    period: int = 0
    in_flight: int = 0  # guarded calls admitted in the current CLOSED period, not yet reported
    manual_in_flight: int = 0  # manual calls (allow_request) of the period, not yet reported
    probes: list[tuple[int, float, bool]] = field(default_factory=list)  # (id, deadline, manual)
    next_probe: int = 0
    consec_fail: int = 0
    consec_succ: int = 0
    successes: int = 0
    failures: int = 0
    rejected: int = 0
    ignored: int = 0
    slow: int = 0
    late: int = 0
    transitions: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)

    def move(self, new: CircuitState, now: float) -> None:
        self.transitions.append((self.state, new))
        self.state = new
        self.probes.clear()
        if new is CLOSED:
            self.window.clear()
            self.consec_fail = self.consec_succ = 0
            self.period += 1
            self.in_flight = self.manual_in_flight = 0
        elif new is OPEN:
            self.open_until = now + self.timeout
            self.consec_succ = 0
            self.in_flight = self.manual_in_flight = 0
        else:
            self.consec_succ = 0

    def force_open(self, now: float, duration: float) -> None:
        if self.state is not OPEN:
            self.move(OPEN, now)
        self.open_until = now + duration

    def force_close(self, now: float) -> None:
        if self.state is not CLOSED:
            self.move(CLOSED, now)

    def reset(self, now: float) -> None:
        if self.state is not CLOSED:
            self.move(CLOSED, now)
        else:  # a new CLOSED period all the same: calls in flight become late
            self.window.clear()
            self.consec_fail = self.consec_succ = 0
            self.period += 1
            self.in_flight = self.manual_in_flight = 0
        self.successes = self.failures = self.rejected = 0
        self.ignored = self.slow = self.late = 0

    def refresh(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.move(HALF_OPEN, now)

    def admit(self, now: float, manual: bool) -> tuple[bool, Ticket]:
        self.refresh(now)
        if self.state is CLOSED:
            if manual:
                self.manual_in_flight += 1
            else:
                self.in_flight += 1
            return True, ("closed", self.period)
        if self.state is OPEN:
            self.rejected += 1
            return False, None
        self.probes = [probe for probe in self.probes if probe[1] > now]
        if len(self.probes) < self.config.half_open_max_calls:
            self.next_probe += 1
            self.probes.append((self.next_probe, now + self.probe_timeout, manual))
            return True, ("probe", self.next_probe)
        self.rejected += 1
        return False, None

    def record(self, ticket: Ticket, outcome: str, now: float, manual: bool) -> None:
        if self.state is CLOSED:
            if manual and (ticket is None or ticket == ("closed", self.period)):
                # A manual result counts. With its ticket it is this period's; without one it
                # cannot be told from one and is taken for it. It frees a manual call's slot if
                # one is out, never a guarded call's: that call reports for itself later.
                if self.manual_in_flight:
                    self.manual_in_flight -= 1
            elif ticket == ("closed", self.period):
                self.in_flight -= 1
            else:  # a ticket from before a transition
                self.late += 1
                return
            if outcome == IGNORED:
                self.ignored += 1
                return
            if outcome == FAILURE:
                self.failures += 1
                self.consec_succ = 0
                self.consec_fail += 1
            else:
                self.successes += 1
                self.consec_fail = 0
                self.consec_succ += 1
                if outcome == SLOW:
                    self.slow += 1
            self.window.append(0 if outcome == SUCCESS else 1)
            del self.window[: -self.config.window_size]
            if outcome == SUCCESS:
                return
            n = len(self.window)
            if self.consec_fail >= self.config.failure_threshold or (
                n >= self.config.min_calls
                and sum(self.window) / n >= self.config.failure_rate_threshold
            ):
                self.move(OPEN, now)
            return
        if self.state is OPEN:
            self.late += 1
            return
        ids = [pid for pid, _, _ in self.probes]
        if ticket is None:  # counts; frees the oldest manual probe's slot, if one is out
            manual_ids = [pid for pid, _, by_hand in self.probes if by_hand]
            if manual_ids:
                self.probes.pop(ids.index(manual_ids[0]))
        elif ticket[0] == "probe" and ticket[1] in ids:
            self.probes.pop(ids.index(ticket[1]))
        else:
            self.late += 1
            return
        if outcome == SUCCESS:
            self.successes += 1
            self.consec_fail = 0
            self.consec_succ += 1
            if self.consec_succ >= self.config.success_threshold:
                self.move(CLOSED, now)
        elif outcome == IGNORED:
            self.ignored += 1
        else:
            if outcome == FAILURE:
                self.failures += 1
                self.consec_fail += 1
            else:
                self.successes += 1
                self.slow += 1
            self.move(OPEN, now)


# --------------------------------------------------------------------------- the machine


@dataclass
class Guarded:
    coro: Coroutine[Any, Any, str]
    context: contextvars.Context
    gate: Gate
    ticket: Ticket
    started: float


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.calls: list[Guarded] = []
        self.manual_calls: list[tuple[CallTicket, Ticket]] = []
        self.recorded: list[CallTicket] = []
        self.seen: list[tuple[CircuitState, CircuitState]] = []
        self.open_deadline: float | None = None
        self.admissions_while_open = 0

    @initialize(
        failure_threshold=st.integers(1, 3),
        success_threshold=st.integers(1, 3),
        window_size=st.integers(1, 6),
        min_fraction=st.floats(0, 1),
        rate=st.sampled_from([0.3, 0.5, 2 / 3, 1.0]),
        half_open_max_calls=st.integers(1, 3),
        probe_timeout=st.sampled_from([None, 3.0]),
        slow=st.sampled_from([None, 4.0]),
    )
    def setup(
        self,
        failure_threshold: int,
        success_threshold: int,
        window_size: int,
        min_fraction: float,
        rate: float,
        half_open_max_calls: int,
        probe_timeout: float | None,
        slow: float | None,
    ) -> None:
        self.config = CircuitConfig(
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            timeout_duration=TIMEOUT,
            failure_rate_threshold=rate,
            window_size=window_size,
            min_calls=max(1, round(min_fraction * window_size)),
            half_open_max_calls=half_open_max_calls,
            is_failure=lambda exc: not isinstance(exc, NotOurFault),
            probe_timeout=probe_timeout,
            slow_call_duration=slow,
        )
        self.breaker = CircuitBreaker(self.config, name="m", clock=self.clock)
        self.breaker.on_state_change(self._on_change)
        self.model = Model(
            self.config, TIMEOUT, TIMEOUT if probe_timeout is None else probe_timeout
        )

    def _on_change(self, old: CircuitState, new: CircuitState) -> None:
        self.seen.append((old, new))
        if new is OPEN:
            self.open_deadline = self.clock.now() + TIMEOUT
        elif new is CLOSED:
            self.open_deadline = None

    def _admitted(self) -> None:
        # The open time is honoured: nothing is admitted before the last opening's period is over.
        if self.open_deadline is not None and self.clock.now() < self.open_deadline:
            self.admissions_while_open += 1

    # ------------------------------------------------------------------ rules

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def manual_allow(self) -> None:
        ticket = self.breaker.allow_request()
        expected, model_ticket = self.model.admit(self.clock.now(), manual=True)
        assert (ticket is not None) == expected
        if ticket is not None:
            assert ticket
            self._admitted()
            self.manual_calls.append((ticket, model_ticket))

    def _recorder(self, outcome: str) -> Callable[[CallTicket | None], None]:
        return {
            SUCCESS: self.breaker.record_success,
            FAILURE: self.breaker.record_failure,
            IGNORED: self.breaker.record_ignored,
        }[outcome]

    @precondition(lambda self: self.manual_calls)
    @rule(data=st.data(), outcome=st.sampled_from([SUCCESS, FAILURE, IGNORED]), keep=st.booleans())
    def manual_record(self, data: st.DataObject, outcome: str, keep: bool) -> None:
        # With its ticket (keep) or without it, as a caller that ignores the ticket would.
        index = data.draw(st.integers(0, len(self.manual_calls) - 1))
        ticket, model_ticket = self.manual_calls.pop(index)
        self._recorder(outcome)(ticket if keep else None)
        self.model.record(model_ticket if keep else None, outcome, self.clock.now(), manual=True)
        if keep and ticket.recorded:  # (a CLOSED period's ticket is shared by its calls)
            self.recorded = [ticket, *self.recorded[:2]]

    @rule(outcome=st.sampled_from([SUCCESS, FAILURE, IGNORED]))
    def record_without_allow(self, outcome: str) -> None:
        # A result with no allow_request() before it counts (the original's tests do this).
        self._recorder(outcome)(None)
        self.model.record(None, outcome, self.clock.now(), manual=True)

    @precondition(lambda self: any(ticket.recorded for ticket in self.recorded))
    @rule(outcome=st.sampled_from([SUCCESS, FAILURE, IGNORED]))
    def record_a_ticket_twice(self, outcome: str) -> None:
        # One result more than the ticket admitted calls: refused, and nothing changes (the
        # invariants check the latter against the model, which is not told).
        spent = next(ticket for ticket in self.recorded if ticket.recorded)
        with pytest.raises(ValueError, match="already recorded"):
            self._recorder(outcome)(spent)

    @rule(form=st.sampled_from(["call", "async_with"]))
    def guarded_start(self, form: str) -> None:
        gate = Gate()
        breaker = self.breaker

        async def protected() -> str:
            return await gate

        async def with_block() -> str:
            async with breaker:
                return await gate

        coro = breaker.call(protected) if form == "call" else with_block()
        context = contextvars.copy_context()
        expected, ticket = self.model.admit(self.clock.now(), manual=False)
        try:
            context.run(coro.send, None)
        except CircuitOpenError as error:
            refused: CircuitOpenError | None = error
        else:
            refused = None
        if refused is not None:
            assert not expected
            assert refused.retry_after is not None
            assert refused.retry_after >= 0
            return
        assert expected
        self._admitted()
        self.calls.append(Guarded(coro, context, gate, ticket, self.clock.now()))

    @precondition(lambda self: self.calls)
    @rule(
        data=st.data(),
        outcome=st.sampled_from([SUCCESS, FAILURE, IGNORED, "cancel"]),
    )
    def guarded_finish(self, data: st.DataObject, outcome: str) -> None:
        index = data.draw(st.integers(0, len(self.calls) - 1))
        call = self.calls.pop(index)
        now = self.clock.now()
        if outcome == "cancel":
            try:
                call.context.run(call.coro.throw, asyncio.CancelledError())
            except asyncio.CancelledError:
                pass
            else:
                raise AssertionError("the cancellation was swallowed")
            self.model.record(call.ticket, IGNORED, now, manual=False)
            return
        call.gate.error = {SUCCESS: None, FAILURE: Boom(), IGNORED: NotOurFault()}[outcome]
        result: object = None
        try:
            call.context.run(call.coro.send, None)
        except StopIteration as stop:
            result = stop.value
        except (Boom, NotOurFault) as error:
            result = error
        else:
            raise AssertionError("the guarded call did not finish")
        if outcome == SUCCESS:
            assert result == "done"
        else:
            assert isinstance(result, Boom if outcome == FAILURE else NotOurFault)
        slow = self.config.slow_call_duration
        assert not isinstance(slow, timedelta)
        if outcome == SUCCESS and slow is not None and now - call.started >= slow:
            outcome = SLOW
        self.model.record(call.ticket, outcome, now, manual=False)

    @rule(duration=st.sampled_from([None, 1.0, 8.0]))
    def force_open(self, duration: float | None) -> None:
        now = self.clock.now()
        self.breaker.force_open(duration=duration)
        seconds = TIMEOUT if duration is None else duration
        self.model.force_open(now, seconds)
        self.open_deadline = now + seconds

    @rule()
    def force_close(self) -> None:
        self.breaker.force_close()
        self.model.force_close(self.clock.now())

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.reset(self.clock.now())

    @rule()
    def read_state(self) -> None:
        self.model.refresh(self.clock.now())
        assert self.breaker.state is self.model.state

    # ------------------------------------------------------------------ invariants

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "breaker"):
            return
        now = self.clock.now()
        self.model.refresh(now)
        stats = self.breaker.stats()
        model = self.model
        assert stats.state is model.state
        assert self.seen == model.transitions  # no transition without its condition
        assert stats.consecutive_failures == model.consec_fail
        assert stats.consecutive_successes == model.consec_succ
        assert stats.successful_calls == model.successes
        assert stats.failed_calls == model.failures
        assert stats.total_calls == model.successes + model.failures
        assert stats.rejected_calls == model.rejected
        assert stats.ignored_calls == model.ignored
        assert stats.slow_calls == model.slow
        assert stats.late_results == model.late
        window = model.window
        assert stats.failure_rate == (sum(window) / len(window) if window else 0.0)
        if model.state is HALF_OPEN:
            assert stats.in_flight == len(model.probes)
        elif model.state is CLOSED:
            assert stats.in_flight == model.in_flight + model.manual_in_flight
        else:
            assert stats.in_flight == 0
            assert stats.retry_after == model.open_until - now > 0

    @invariant()
    def in_flight_counts_the_calls_really_out(self) -> None:
        # Independent of the model's bookkeeping: while CLOSED, the count is the guarded calls of
        # this period that are still out (the test holds them) plus the manual calls matched to
        # this period, which cannot exceed the manual calls still out.
        if not hasattr(self, "breaker"):
            return
        stats = self.breaker.stats()
        assert stats.in_flight >= 0
        if stats.state is CLOSED:
            current = ("closed", self.model.period)
            guarded = sum(1 for call in self.calls if call.ticket == current)
            assert 0 <= self.model.manual_in_flight <= len(self.manual_calls)
            assert stats.in_flight == guarded + self.model.manual_in_flight

    @invariant()
    def probes_in_flight_within_the_limit(self) -> None:
        if not hasattr(self, "breaker"):
            return
        if self.breaker.state is HALF_OPEN:
            live = [
                c
                for c in self.calls
                if c.ticket is not None
                and c.ticket[0] == "probe"
                and c.ticket[1] in {pid for pid, _, _ in self.model.probes}
            ]
            assert len(live) <= self.config.half_open_max_calls
            assert self.breaker.stats().in_flight <= self.config.half_open_max_calls

    @invariant()
    def open_time_is_honoured(self) -> None:
        assert self.admissions_while_open == 0

    def teardown(self) -> None:
        for call in self.calls:
            call.coro.close()


BreakerMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_state_machine = BreakerMachine.TestCase
