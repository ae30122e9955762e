"""Stateful property test of the conversation queue modes (docs/channel_integration.md, "Queue
modes"), one machine per mode (followup, collect, interrupt), against a small model of what each
mode promises.

Random steps: a message arrives (one of three conversations, a handler of random duration that
sometimes fails or outlives ``processing_timeout``), a message is redelivered (same id and
sender), fake time moves, ``interrupt(key)`` hits a conversation, and at most once the processor
shuts down (drain or not, with a random timeout), after which arrivals are refused. The
processor's sizes are drawn per example (workers, pool queue, permits, ``admission``, the
per-conversation cap), so lanes wait for the pool, admissions wait for permits and the cap refuses.

Each machine owns a private event loop; a rule runs its coroutines with ``run_until_complete``
and lets the loop settle, so between two rules nothing is ready to run. Time is a
:class:`FakeClock`: nothing sleeps for real, and the examples are the same on every run. A reader
task drains ``responses`` all along; a global sequence number orders what the handlers, the
admissions and the reader saw.

Checked after every step: nothing the handlers or the reader saw broke a rule (below); the
processor's ``in_flight``, the free permits and the breaker's calls in flight match the model's
unresolved messages. Checked at teardown, after a full drain:

1. every ACCEPTED message gets exactly one ProcessedMessage, and nothing else does;
2. per conversation, the handlers see messages (merged or not) in acceptance order;
3. a conversation never has two handlers in flight, the cancelled one's clean-up included;
4. collect: no message is in two batches; a MERGED result names the message whose turn held it;
   a batch starts a window after its last message and holds every message waiting before it;
   interrupt: a message starts only if nothing newer arrived, and is cancelled by the next one;
5. after the drain nothing is in flight: the processor's count, the permits, the breaker;

and each result's kind matches what its handler did (the value its handler returned, the error
it raised, cancelled only when something cancelled it), the dedup claims follow the results
(a redelivery is a duplicate exactly while its message is unresolved or answered), and the breaker
heard one outcome per turn.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.helpers import msg
from zeroclaw.concurrency import CircuitConfig
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
    ProcessedMessage,
)
from zeroclaw.testing import FakeClock, settle

MODES = ("followup", "collect", "interrupt")
CHANNEL = "tg"
SENDERS = ("alice", "bob", "carol")  # one conversation each (channel + reply target)
WINDOW = 0.5  # collect_window
CLEANUP = 0.05  # fake seconds a cancelled handler takes to unwind
PROCESSING_TIMEOUT = 2.5
# Durations include ties with the window, the clean-up and the timeout, and one past the timeout.
DURATIONS = (0.0, 0.05, 0.1, 0.5, 1.0, 3.0)
GAPS = (0.0, 0.01, 0.1, 0.3)  # between the messages of a burst
FAILS = st.sampled_from([False, False, False, True])
STEPS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
EPSILON = 1e-9
CANCEL_GRACE = 1.0  # the pool's wait for a cancelled task before it gives up on it
# A breaker that never trips: an open breaker's refusals would need a model of their own
# (tests/test_circuit_breaker_machine.py has it); its counts are still checked.
NEVER_TRIPS = CircuitConfig(failure_threshold=1000, window_size=1000, min_calls=1000)

K = MessageResultKind
UNRUN_KINDS = {K.INTERRUPTED, K.CANCELLED, K.MERGED}  # what a message no handler saw may end as
CANCELLED_KINDS = {K.INTERRUPTED, K.TIMEOUT, K.CANCELLED}  # what a cancelled turn ends as


@dataclass(eq=False)
class Sent:
    """One acceptance of a message (a redelivery accepted again is another one)."""

    index: int  # acceptance order, over every conversation
    conv: int
    message: ChannelMessage
    handler: ModelHandler
    accepted_seq: int
    accepted_at: float
    result: ProcessedMessage | None = None
    result_seq: int = -1
    turn: Turn | None = None  # the handler call that saw it


@dataclass(eq=False)
class Turn:
    """One handler call: the messages it saw (in the order it saw them) and when it ran."""

    conv: int
    message: ChannelMessage
    parts: list[Sent]
    handler: ModelHandler
    start_seq: int
    start_at: float
    end_seq: int | None = None
    end_at: float | None = None
    cancelled: bool = False
    extra_cancels: int = 0  # cancellations that reached the clean-up itself


@dataclass(eq=False)
class Offer:
    """A ``process_message`` call, from the call to its admission."""

    conv: int
    message: ChannelMessage
    handler: ModelHandler
    called_seq: int
    admission: Admission | None = None
    waited: bool = False  # still waiting when the loop settled after the call


@dataclass
class InterruptCall:
    conv: int
    seq: int
    returned: bool


class ModelHandler:
    """A handler taking ``duration`` fake seconds, then failing or answering; tells the machine
    when it starts and ends. Cancelled, it takes :data:`CLEANUP` seconds to unwind (shielded:
    a second cancellation does not cut the clean-up short), then re-raises."""

    def __init__(self, machine: QueueModeMachine, conv: int, duration: float, fails: bool) -> None:
        self.machine = machine
        self.conv = conv
        self.duration = duration
        self.fails = fails

    async def __call__(self, message: ChannelMessage) -> str:
        machine = self.machine
        turn = machine.turn_started(self, message)
        try:
            await machine.clock.sleep(self.duration)
        except asyncio.CancelledError:
            cleanup = asyncio.ensure_future(machine.clock.sleep(CLEANUP))
            while not cleanup.done():
                try:
                    await asyncio.shield(cleanup)
                except asyncio.CancelledError:
                    turn.extra_cancels += 1
            machine.turn_ended(turn, cancelled=True)
            raise
        machine.turn_ended(turn, cancelled=False)
        if self.fails:
            raise RuntimeError("provider failed")
        return f"answer to {message.content!r}"


class QueueModeMachine(RuleBasedStateMachine):
    """The processor in one queue mode, driven from sync rules through a private event loop."""

    MODE = "followup"  # each mode's subclass sets its own (machine_for)

    def __init__(self) -> None:
        super().__init__()
        self.mode = self.MODE
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self._seq = itertools.count()
        self.violations: list[str] = []
        self.offers: list[Offer] = []
        self.waiting: list[Offer] = []  # admissions still waiting (for a permit)
        self.accepted: list[Sent] = []
        self.live: dict[str, Sent] = {}  # message id -> its unresolved acceptance
        self.last_accepted: dict[str, Sent] = {}  # message id -> its latest acceptance
        self.turns: list[Turn] = []
        self.results: list[ProcessedMessage] = []
        self.interrupts: list[InterruptCall] = []
        self.shutdown_seq: int | None = None
        self.shutdown_task: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.p: MessageProcessor | None = None
        self.ids = itertools.count()
        self.permits = 0
        self.offers_after_close = 0

    # ---------------------------------------------------------------- driving the loop

    def tick(self) -> int:
        return next(self._seq)

    def run(self, seconds: float = 0.0) -> None:
        """Let the loop settle, moving fake time by ``seconds`` first."""
        if seconds:
            self.loop.run_until_complete(self.clock.run_for(seconds))
        else:
            self.loop.run_until_complete(settle())

    @property
    def processor(self) -> MessageProcessor:
        assert self.p is not None
        return self.p

    def violation(self, what: str) -> None:
        self.violations.append(f"at {self.clock.now():.3f}: {what}")

    # ---------------------------------------------------------------- what the loop reports

    def turn_started(self, handler: ModelHandler, message: ChannelMessage) -> Turn:
        conv = handler.conv
        merged = message.metadata.get("merged_ids")
        ids = [message.id] if merged is None else list(merged)
        parts: list[Sent] = []
        for message_id in ids:
            sent = self.live.get(message_id)
            if sent is None:
                self.violation(f"a handler saw {message_id!r}, which is not in flight")
                continue
            parts.append(sent)
        turn = Turn(conv, message, parts, handler, self.tick(), self.clock.now())
        if message.sender != SENDERS[conv]:
            self.violation(f"conversation {conv}'s handler saw a message of {message.sender}")
        if parts and parts[-1].handler is not handler:
            self.violation(f"turn of {message.id!r} ran another message's handler")
        if self.mode != "collect" and merged is not None:
            self.violation(f"{self.mode} merged messages: {ids}")
        if merged is not None:
            if len(ids) < 2 or ids[-1] != message.id:
                self.violation(f"merged_ids {ids} of message {message.id!r}")
            contents = "\n".join(part.message.content for part in parts)
            if message.content != contents:
                self.violation(f"merged content {message.content!r}, expected {contents!r}")
        for part in parts:
            if part.conv != conv:
                self.violation(f"{part.message.id!r} of conversation {part.conv} in {conv}'s turn")
            if part.turn is not None:
                self.violation(f"{part.message.id!r} seen by two handler calls")
            part.turn = turn
        for other in self.turns:
            if other.conv == conv and other.end_seq is None:
                self.violation(
                    f"conversation {conv}: {message.id!r} started while "
                    f"{other.message.id!r} still ran"
                )
        self.turns.append(turn)
        return turn

    def turn_ended(self, turn: Turn, *, cancelled: bool) -> None:
        turn.end_seq = self.tick()
        turn.end_at = self.clock.now()
        turn.cancelled = cancelled

    async def read_responses(self) -> None:
        async for processed in self.processor.responses:
            self.result_read(processed)

    def result_read(self, processed: ProcessedMessage) -> None:
        self.results.append(processed)
        message_id = processed.message.id
        sent = self.live.pop(message_id, None)
        if sent is None:
            self.violation(f"a result for {message_id!r}, which has none due: {processed.result}")
            return
        sent.result = processed
        sent.result_seq = self.tick()
        if processed.message is not sent.message:
            self.violation(f"the result of {message_id!r} carries another message")
        if processed.channel != CHANNEL:
            self.violation(f"the result of {message_id!r} names channel {processed.channel!r}")

    async def offer(self, offer: Offer) -> None:
        admission = await self.processor.process_message(CHANNEL, offer.message, offer.handler)
        self.admitted(offer, admission)  # no await in between: in the admission's own step

    def admitted(self, offer: Offer, admission: Admission) -> None:
        offer.admission = admission
        if offer in self.waiting:
            self.waiting.remove(offer)
        if not admission.accepted:
            return
        message_id = offer.message.id
        if message_id in self.live:
            self.violation(f"{message_id!r} accepted twice while in flight (dedup)")
        sent = Sent(
            len(self.accepted),
            offer.conv,
            offer.message,
            offer.handler,
            self.tick(),
            self.clock.now(),
        )
        self.accepted.append(sent)
        self.live[message_id] = sent
        self.last_accepted[message_id] = sent

    # ---------------------------------------------------------------- the model's questions

    def unresolved(self, conv: int) -> int:
        return sum(1 for sent in self.live.values() if sent.conv == conv)

    def claim_held(self, message_id: str) -> bool:
        """Whether the dedup claim of ``message_id`` is held: it is waiting for admission, in
        flight, or its last acceptance was answered (SUCCESS, or MERGED into a SUCCESS)."""
        if any(offer.message.id == message_id for offer in self.waiting):
            return True
        if message_id in self.live:
            return True
        sent = self.last_accepted.get(message_id)
        if sent is None or sent.result is None:
            return False
        result = sent.result.result
        if result.kind is K.MERGED:
            carrier = self.last_accepted.get(result.merged_into or "")
            return (
                carrier is not None
                and carrier.result is not None
                and carrier.result.result.kind is K.SUCCESS
            )
        return result.kind is K.SUCCESS

    # ---------------------------------------------------------------- rules

    @initialize(
        workers=st.integers(1, 3),
        queue=st.sampled_from([1, 100]),
        permits=st.sampled_from([2, 4, 100, 100]),
        admission=st.sampled_from(["wait", "reject"]),
        cap=st.sampled_from([0, 1, 2, 20]),
    )
    def build(self, workers: int, queue: int, permits: int, admission: str, cap: int) -> None:
        self.permits = permits
        config = MessageProcessorConfig(
            worker_pool_size=workers,
            task_queue_size=queue,
            max_concurrent_requests=permits,
            admission=admission,  # type: ignore[arg-type]
            dedup_ttl=1e6,  # no claim expires during an example
            circuit_config=NEVER_TRIPS,
            processing_timeout=PROCESSING_TIMEOUT,
            queue_mode=self.mode,  # type: ignore[arg-type]
            collect_window=WINDOW,
            max_pending_per_conversation=cap,
        )
        self.p = MessageProcessor(config, clock=self.clock)
        self.reader = self.loop.create_task(self.read_responses())
        self.run()

    def _offer(self, conv: int, message: ChannelMessage, duration: float, fails: bool) -> None:
        p = self.processor
        before = p.stats()
        assert before.backpressure is not None
        assert before.circuit_breaker is not None
        closing = p.closing
        duplicate = self.claim_held(message.id)
        immediate = (
            closing
            or duplicate
            or p.config.admission == "reject"
            or (
                before.backpressure.available_permits >= 1 and not before.backpressure.waiting_count
            )
        )
        unresolved = self.unresolved(conv)
        handler = ModelHandler(self, conv, duration, fails)
        offer = Offer(conv, message, handler, self.tick())
        self.offers.append(offer)
        if closing:
            self.offers_after_close += 1
        self.waiting.append(offer)
        task = self.loop.create_task(self.offer(offer))
        self.run()
        if not task.done():
            offer.waited = True
            if immediate:
                self.violation(f"admission of {message.id!r} waits with a permit free")
            return
        task.result()
        admission = offer.admission
        assert admission is not None
        expected_kind = None
        if closing:
            expected_kind = AdmissionKind.REJECTED
            if admission.reason != "shutting down":
                self.violation(f"{message.id!r} offered while closing: {admission}")
        elif duplicate:
            expected_kind = AdmissionKind.DUPLICATE
        elif admission.kind is AdmissionKind.DUPLICATE:
            self.violation(f"{message.id!r} holds no claim, yet is a duplicate")
        if expected_kind is not None and admission.kind is not expected_kind:
            self.violation(f"{message.id!r}: {admission}, expected {expected_kind}")
        if not closing and not duplicate:
            self._check_refusal(offer, admission, unresolved, before.backpressure.available_permits)
        if not admission.accepted:
            after = p.stats()
            assert after.backpressure is not None
            assert after.circuit_breaker is not None
            left = (
                after.in_flight - before.in_flight,
                after.backpressure.available_permits - before.backpressure.available_permits,
                after.circuit_breaker.in_flight - before.circuit_breaker.in_flight,
            )
            if left != (0, 0, 0):
                self.violation(
                    f"{admission} of {message.id!r} left (in flight, permits, "
                    f"breaker calls) changed by {left}"
                )

    def _check_refusal(
        self, offer: Offer, admission: Admission, unresolved: int, permits_free: int
    ) -> None:
        """An admission decided at the call: the refusals it must and must not have."""
        message_id = offer.message.id
        cap = self.processor.config.max_pending_per_conversation
        overloaded = self.processor.config.admission == "reject" and permits_free == 0
        busy = admission.kind is AdmissionKind.REJECTED and admission.reason == "conversation busy"
        if overloaded:
            if admission.reason != "overloaded":
                self.violation(f"{message_id!r} with no permit free: {admission}")
            return
        if admission.kind is AdmissionKind.REJECTED and not busy:
            self.violation(f"{message_id!r} refused: {admission}")
        if busy and (self.mode == "interrupt" or not cap or unresolved < cap):
            # Waiting messages are among the unresolved ones: fewer than the cap cannot be too many.
            self.violation(
                f"{message_id!r} refused as busy with {unresolved} unresolved, cap {cap}"
            )
        if self.mode == "followup" and cap and unresolved - 1 >= cap and not busy:
            # At most one of them is in the pool: the others wait, at least the cap.
            self.violation(f"{message_id!r} admitted with {unresolved} unresolved, cap {cap}")

    def may_offer(self) -> bool:
        # Past the shutdown, two refused offers show it; more would only spend the steps.
        return self.shutdown_seq is None or self.offers_after_close < 2

    @precondition(may_offer)
    @rule(
        conv=st.integers(0, len(SENDERS) - 1),
        duration=st.sampled_from(DURATIONS),
        fails=FAILS,
    )
    def arrive(self, conv: int, duration: float, fails: bool) -> None:
        self._arrive(conv, duration, fails)

    @precondition(may_offer)
    @rule(
        burst=st.lists(
            st.tuples(
                st.integers(0, len(SENDERS) - 1),
                st.sampled_from(DURATIONS),
                FAILS,
                st.sampled_from(GAPS),
            ),
            min_size=2,
            max_size=6,
        )
    )
    def arrive_in_a_burst(self, burst: list[tuple[int, float, bool, float]]) -> None:
        """Several messages a short gap apart (a user typing fast, several users at once)."""
        for conv, duration, fails, gap in burst:
            self._arrive(conv, duration, fails)
            self.run(gap)

    @precondition(may_offer)
    @rule(
        conv=st.integers(0, len(SENDERS) - 1),
        lines=st.lists(
            st.tuples(st.sampled_from(DURATIONS), FAILS, st.sampled_from(GAPS)),
            min_size=2,
            max_size=5,
        ),
    )
    def one_user_types_fast(self, conv: int, lines: list[tuple[float, bool, float]]) -> None:
        """Several lines of one conversation, each within the collect window of the last."""
        for duration, fails, gap in lines:
            self._arrive(conv, duration, fails)
            self.run(gap)

    def _arrive(self, conv: int, duration: float, fails: bool) -> None:
        n = next(self.ids)
        message = msg(f"m{n}", f"line {n}", sender=SENDERS[conv], channel=CHANNEL)
        self._offer(conv, message, duration, fails)

    @precondition(lambda self: bool(self.offers) and self.may_offer())
    @rule(data=st.data(), duration=st.sampled_from(DURATIONS), fails=FAILS)
    def redeliver(self, data: st.DataObject, duration: float, fails: bool) -> None:
        earlier = data.draw(st.sampled_from(self.offers), label="redelivered")
        self._offer(earlier.conv, earlier.message, duration, fails)

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        self.run(seconds)

    @rule(conv=st.integers(0, len(SENDERS) - 1))
    def interrupt(self, conv: int) -> None:
        key = self.processor.conversation_of(CHANNEL, msg("any", sender=SENDERS[conv]))
        unresolved = self.unresolved(conv)

        async def call() -> bool:
            return self.processor.interrupt(key)

        returned = self.loop.run_until_complete(call())
        self.interrupts.append(InterruptCall(conv, self.tick(), returned))
        if returned and not unresolved:
            self.violation(f"interrupt({key}) found a turn with nothing in flight")
        self.run()

    # Not before some traffic: a shutdown of an idle processor shows little.
    @precondition(lambda self: self.shutdown_task is None and len(self.offers) >= 6)
    @rule(drain=st.booleans(), timeout=st.sampled_from([0.0, 0.3, 100.0]))
    def shut_down(self, drain: bool, timeout: float) -> None:
        self.shutdown_seq = self.tick()
        self.shutdown_task = self.loop.create_task(
            self.processor.shutdown(drain=drain, timeout=timeout)
        )
        self.run()

    # ---------------------------------------------------------------- invariants

    @invariant()
    def nothing_broke(self) -> None:
        assert not self.violations, "\n".join(self.violations)

    @invariant()
    def in_flight_is_what_is_unresolved(self) -> None:
        stats = self.processor.stats()
        assert stats.backpressure is not None
        assert stats.circuit_breaker is not None
        unresolved = len(self.live)
        assert stats.in_flight == unresolved
        assert stats.accepted == len(self.accepted)
        assert stats.undelivered_results == 0  # the reader keeps up
        # Each accepted message holds a permit until its result; a waiting admission holds none.
        assert stats.backpressure.available_permits == self.permits - unresolved
        assert stats.backpressure.waiting_count == len(self.waiting)
        # ... and each holds a breaker ticket, as does an admission waiting for a permit.
        assert stats.circuit_breaker.in_flight == unresolved + len(self.waiting)

    # ---------------------------------------------------------------- teardown

    def teardown(self) -> None:
        try:
            if self.p is not None:
                self.finish()
                self.check_the_run()
        finally:
            self.close_loop()

    def finish(self) -> None:
        """Shut down (drain) if no rule did, and move time until the shutdown has ended."""
        if self.shutdown_task is None:
            self.shut_down(drain=True, timeout=100.0)
        task = self.shutdown_task
        assert task is not None
        while not task.done():
            deadline = self.clock.next_deadline
            assert deadline is not None, "the shutdown waits for nothing the clock will bring"
            self.run(max(deadline - self.clock.now(), 0.0) + EPSILON)
        task.result()
        self.run()
        assert self.reader is not None
        assert self.reader.done(), "responses did not end"
        self.reader.result()
        assert not self.waiting, "admissions still waiting after the shutdown"

    def check_the_run(self) -> None:
        self.nothing_broke()
        self.in_flight_is_what_is_unresolved()
        p = self.processor
        # (1) one result per acceptance, nothing else: result_read refused strays and repeats.
        assert not self.live, f"accepted, never answered: {sorted(self.live)}"
        assert len(self.results) == len(self.accepted)
        # (5) everything given back.
        stats = p.stats()
        assert stats.backpressure is not None
        assert stats.circuit_breaker is not None
        assert (stats.in_flight, stats.conversations) == (0, 0)
        assert stats.backpressure.available_permits == self.permits
        assert stats.circuit_breaker.in_flight == 0
        # Nothing happens after the shutdown. (A timer may be left: the pool's give-up timer
        # when it was stopped twice, by the shutdown's timeout and then by the shutdown itself;
        # it finds nothing to give up. Past its grace none is left.)
        turns, results = len(self.turns), len(self.results)
        self.run(2 * CANCEL_GRACE)
        assert (len(self.turns), len(self.results)) == (turns, results)
        assert self.clock.pending_timers == 0, "a timer outlived the shutdown"
        for turn in self.turns:
            assert turn.end_seq is not None, f"{turn.message.id!r}'s handler never ended"
        self.check_order_and_overlap()
        self.check_kinds()
        self.check_counts()
        if self.mode == "collect":
            self.check_batches()
        if self.mode == "interrupt":
            self.check_interruptions()

    def check_order_and_overlap(self) -> None:
        for conv in range(len(SENDERS)):
            turns = sorted((t for t in self.turns if t.conv == conv), key=lambda t: t.start_seq)
            # (2) acceptance order, merged or not.
            seen = [part.index for turn in turns for part in turn.parts]
            assert seen == sorted(seen), f"conversation {conv} saw {seen} out of order"
            assert len(set(seen)) == len(seen)
            # (3) one handler at a time, clean-up included: each starts after the last one ended.
            for before, after in itertools.pairwise(turns):
                assert before.end_seq is not None
                assert before.end_at is not None
                assert after.start_seq > before.end_seq, (
                    f"conversation {conv}: {after.message.id!r} started before "
                    f"{before.message.id!r} ended"
                )
                assert after.start_at >= before.end_at
            for turn in turns:
                if self.mode != "collect":
                    assert len(turn.parts) == 1

    def check_kinds(self) -> None:
        """Each result's kind against what happened to its message."""
        for sent in self.accepted:
            assert sent.result is not None
            result = sent.result.result
            name = sent.message.id
            turn = sent.turn
            if turn is None:  # no handler saw it
                assert result.kind in UNRUN_KINDS, f"{name} never ran, yet {result}"
                if result.kind is K.MERGED:
                    # Merged into a batch that never ran: its carrier is later, of its
                    # conversation, and never ran either.
                    carrier = self.carrier_of(sent)
                    assert carrier.turn is None
                    assert carrier.result is not None
                    assert carrier.result.result.kind in {K.INTERRUPTED, K.CANCELLED}
            elif turn.parts[-1] is not sent:  # merged into a later message's turn
                assert self.mode == "collect"
                assert result.kind is K.MERGED, f"{name} was merged, yet {result}"
                assert result.merged_into == turn.message.id
            elif turn.cancelled:
                assert result.kind in CANCELLED_KINDS, f"{name}'s handler was cancelled: {result}"
            elif sent.handler.fails:
                assert result.kind is K.FAILED, f"{name}'s handler raised, yet {result}"
                assert isinstance(result.error, RuntimeError)
            else:
                assert result.kind is K.SUCCESS, f"{name}'s handler answered, yet {result}"
                assert result.value == f"answer to {turn.message.content!r}"
            if result.kind is K.CANCELLED:
                assert self.shutdown_seq is not None, f"{name} CANCELLED with no shutdown"
                assert self.shutdown_seq < sent.result_seq, f"{name} CANCELLED before the shutdown"
            if result.kind is K.INTERRUPTED:
                assert self.interrupted_by_something(sent), f"{name} INTERRUPTED by nothing"
            if self.mode != "collect":
                assert result.kind is not K.MERGED

    def carrier_of(self, sent: Sent) -> Sent:
        assert sent.result is not None
        into = sent.result.result.merged_into
        carriers = [
            later
            for later in self.accepted[sent.index + 1 :]
            if later.message.id == into and later.conv == sent.conv
        ]
        assert carriers, f"{sent.message.id} MERGED into {into!r}, no later message of its own"
        return carriers[0]

    def interrupted_by_something(self, sent: Sent) -> bool:
        """An interrupt() of its conversation that found a turn, or (interrupt mode) a newer
        message of its conversation, between its acceptance and its result."""
        if any(
            call.conv == sent.conv and call.returned and sent.accepted_seq < call.seq
            for call in self.interrupts
        ):
            return True
        return self.mode == "interrupt" and any(
            later.conv == sent.conv and later.index > sent.index for later in self.accepted
        )

    def check_counts(self) -> None:
        """The processor's and the breaker's counts against the results."""
        kinds = [r.result.kind for r in self.results]
        stats = self.processor.stats()
        assert (
            stats.succeeded,
            stats.failed,
            stats.timed_out,
            stats.cancelled,
            stats.merged,
            stats.interrupted,
            stats.rejected_after_accept,
        ) == tuple(
            kinds.count(kind)
            for kind in (
                K.SUCCESS,
                K.FAILED,
                K.TIMEOUT,
                K.CANCELLED,
                K.MERGED,
                K.INTERRUPTED,
                K.REJECTED,
            )
        )
        breaker = stats.circuit_breaker
        assert breaker is not None
        # One outcome per turn; interruptions and cancellations are no failures.
        assert breaker.successful_calls == kinds.count(K.SUCCESS)
        assert breaker.failed_calls == kinds.count(K.FAILED) + kinds.count(K.TIMEOUT)
        if self.mode != "interrupt":
            for conv in range(len(SENDERS)):
                found = sum(1 for call in self.interrupts if call.conv == conv and call.returned)
                mine = [s.result.result.kind for s in self.accepted if s.conv == conv and s.result]
                # Each interrupt() that found a turn ends that turn INTERRUPTED, unless its
                # timeout had already cancelled it.
                assert mine.count(K.INTERRUPTED) <= found
                assert found <= mine.count(K.INTERRUPTED) + mine.count(K.TIMEOUT)

    def check_batches(self) -> None:
        """(4) collect: batches are disjoint (turn_started saw to it) and wait out the window.

        A batch is formed when its conversation gets a place in the pool, which is when its
        handler starts only while a worker is free for every conversation. Then it starts a
        window after its last message and holds every message of its conversation accepted
        before it that has not been answered. With fewer workers a batch waiting for one takes
        in what arrives meanwhile (without restarting the window), so only its first message is
        sure to have waited the window out.
        """
        free_pool = self.processor.config.worker_pool_size >= len(SENDERS)
        waited = {id(offer.message) for offer in self.offers if offer.waited}
        for turn in self.turns:
            timed = turn.parts[-1] if free_pool else turn.parts[0]
            assert turn.start_at >= timed.accepted_at + WINDOW - EPSILON, (
                f"batch of {turn.message.id!r} started at {turn.start_at}, its message "
                f"{timed.message.id!r} came at {timed.accepted_at}"
            )
            if not free_pool:
                continue
            for sent in self.accepted:
                if (
                    sent.conv != turn.conv
                    or sent.accepted_seq > turn.start_seq
                    # An admission that waited for a permit may land between the batch's forming
                    # and its start, in the same turn of the loop.
                    or id(sent.message) in waited
                    or sent.result_seq < turn.start_seq
                ):
                    continue
                left_out = (
                    f"{sent.message.id!r} waited when {turn.message.id!r}'s batch started, "
                    "yet was left out of it"
                )
                assert sent.turn is not None, left_out
                assert sent.turn.start_seq <= turn.start_seq, left_out

    def check_interruptions(self) -> None:
        """interrupt mode: a message starts only if nothing newer of its conversation was
        accepted before, and a newer one cancels it while its handler runs."""
        for sent in self.accepted:
            newer = [
                later.accepted_seq
                for later in self.accepted[sent.index + 1 :]
                if later.conv == sent.conv
            ]
            turn = sent.turn
            if turn is None or not newer:
                continue
            assert min(newer) > turn.start_seq, f"{sent.message.id!r} started though superseded"
            assert turn.end_seq is not None
            if min(newer) < turn.end_seq:
                assert turn.cancelled, f"{sent.message.id!r} ran on after a newer message came"
                assert sent.result is not None
                assert sent.result.result.kind in {K.INTERRUPTED, K.TIMEOUT}

    def close_loop(self) -> None:
        """Cancel what is left (after a failure), let it unwind, close the loop."""
        loop = self.loop
        try:
            left = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


# ---------------------------------------------------------------------------- found by the model


async def test_a_pool_queue_smaller_than_the_pool_leaves_no_worker_idle() -> None:
    """Three conversations, three workers, a pool queue of one: all three run at once. (Lanes
    fed the pool only while its queue had a free place, so the second and third waited, with
    two workers idle, for the first to end, then for each other.)"""
    clock = FakeClock()
    config = MessageProcessorConfig(worker_pool_size=3, task_queue_size=1, processing_timeout=None)
    p = MessageProcessor(config, clock=clock)
    started: dict[str, float] = {}

    async def handler(message: ChannelMessage) -> str:
        started[message.id] = clock.now()
        await clock.sleep(10.0)
        return "ok"

    for sender in SENDERS:
        assert (await p.process_message(CHANNEL, msg(sender, sender=sender), handler)).accepted
    await clock.run_for(1.0)
    assert started == dict.fromkeys(SENDERS, 0.0)
    await clock.run_for(10.0)
    await p.shutdown()
    assert [r.result.kind async for r in p.responses] == [K.SUCCESS] * 3


async def test_collect_a_batch_past_its_window_starts_with_a_worker_free() -> None:
    """A batch whose window has passed starts at once when a worker is free, and a message
    arriving then waits for a window of its own. (With the pool queue full for an instant, the
    batch waited for another conversation's turn to end, and took in the newcomer early.)"""
    clock = FakeClock()
    config = MessageProcessorConfig(
        worker_pool_size=3,
        task_queue_size=1,
        processing_timeout=None,
        queue_mode="collect",
        collect_window=WINDOW,
    )
    p = MessageProcessor(config, clock=clock)
    turns: list[tuple[float, list[str]]] = []

    async def handler(message: ChannelMessage) -> str:
        turns.append((clock.now(), list(message.metadata.get("merged_ids", [message.id]))))
        await clock.sleep(1.0 if message.sender == "bob" else 0.0)
        return "ok"

    await p.process_message(CHANNEL, msg("b1", sender="bob"), handler)
    await p.process_message(CHANNEL, msg("a1", sender="alice"), handler)
    await clock.run_for(WINDOW)  # both windows end together: two batches for the pool at once
    await p.process_message(CHANNEL, msg("a2", sender="alice"), handler)
    await clock.run_for(2.0)
    assert sorted(turns) == [(0.5, ["a1"]), (0.5, ["b1"]), (1.0, ["a2"])]
    await p.shutdown()


def _examples() -> int:
    """120 under the default profile (its 100 plus a fifth); the explore profile's ten times."""
    profile = settings.default
    assert profile is not None
    return profile.max_examples * 6 // 5


def machine_for(mode: str) -> type[QueueModeMachine]:
    """The machine of one queue mode."""
    return type(f"{mode.title()}Machine", (QueueModeMachine,), {"MODE": mode})


@pytest.mark.parametrize("mode", MODES)
def test_queue_mode_model(mode: str) -> None:
    """Random traffic, interrupts and one shutdown against the model of ``mode``."""
    run_state_machine_as_test(
        machine_for(mode),
        settings=settings(
            max_examples=_examples(),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
