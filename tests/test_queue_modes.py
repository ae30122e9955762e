"""Conversation queue modes (``queue_mode`` = followup / collect / interrupt, the per-conversation
cap, :meth:`MessageProcessor.interrupt`) on a fake clock: the examples of
docs/channel_integration.md, and what each mode must keep of the pipeline's accounting (one result
per accepted message, dedup, breaker and permits). The invariants under random traffic are
tests/test_queue_modes_model.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.helpers import msg
from zeroclaw.concurrency import CircuitConfig
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
    ProcessedMessage,
)
from zeroclaw.testing import FakeClock, settle

Handler = Callable[[ChannelMessage], Awaitable[str]]


class Recorder:
    """A handler taking ``seconds`` on the clock; records what it saw and when it ended."""

    def __init__(self, clock: FakeClock, seconds: float = 1.0) -> None:
        self.clock = clock
        self.seconds = seconds
        self.seen: list[ChannelMessage] = []
        self.events: list[tuple[str, str, float]] = []  # (start | end | cancelled, id, time)
        self.fail_ids: set[str] = set()

    async def __call__(self, message: ChannelMessage) -> str:
        self.seen.append(message)
        self.events.append(("start", message.id, self.clock.now()))
        try:
            await self.clock.sleep(self.seconds)
        except asyncio.CancelledError:
            # Clean-up that takes time: the next turn must not start before it ends.
            await asyncio.shield(self.clock.sleep(0.2))
            self.events.append(("cancelled", message.id, self.clock.now()))
            raise
        self.events.append(("end", message.id, self.clock.now()))
        if message.id in self.fail_ids:
            raise RuntimeError("provider failed")
        return f"answer to {message.content!r}"


def processor(clock: FakeClock, **settings: object) -> MessageProcessor:
    config = MessageProcessorConfig(processing_timeout=None, **settings)  # type: ignore[arg-type]
    return MessageProcessor(config, clock=clock)


async def results(p: MessageProcessor) -> list[ProcessedMessage]:
    await p.shutdown()
    return [r async for r in p.responses]


def by_id(found: list[ProcessedMessage]) -> dict[str, ProcessedMessage]:
    return {r.message.id: r for r in found}


# ---------------------------------------------------------------------------- collect


async def test_collect_three_lines_100ms_apart_are_one_turn() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock)
    for n, line in enumerate(["hi", "quick question", "how do I reset it?"]):
        admission = await p.process_message("tg", msg(str(n), line), handler)
        assert admission.kind is AdmissionKind.ACCEPTED
        await clock.run_for(0.1)
    assert handler.seen == []  # the window restarts with each line
    await clock.run_for(0.4)
    [turn] = handler.seen
    assert turn.content == "hi\nquick question\nhow do I reset it?"
    assert turn.id == "2"
    assert turn.metadata["merged_ids"] == ["0", "1", "2"]
    await clock.run_for(1.0)
    found = by_id(await results(p))
    assert found["2"].result.kind is MessageResultKind.SUCCESS
    assert found["2"].message.content == "how do I reset it?"  # its own message, not the merge
    assert found["2"].result.value == "answer to 'hi\\nquick question\\nhow do I reset it?'"
    for earlier in ("0", "1"):
        assert found[earlier].result.kind is MessageResultKind.MERGED
        assert found[earlier].result.merged_into == "2"
    stats = p.stats()
    assert (stats.accepted, stats.succeeded, stats.merged, stats.in_flight) == (3, 1, 2, 0)
    assert stats.backpressure is not None
    assert stats.backpressure.available_permits == 10


async def test_collect_a_lone_message_waits_out_the_window() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock, 0.1)
    await p.process_message("tg", msg("1"), handler)
    await clock.run_for(0.49)
    assert handler.seen == []
    await clock.run_for(0.01)
    assert [m.id for m in handler.seen] == ["1"]
    assert "merged_ids" not in handler.seen[0].metadata
    await clock.run_for(0.1)
    assert [r.result.kind for r in await results(p)] == [MessageResultKind.SUCCESS]


async def test_collect_messages_during_a_turn_join_the_next_batch() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock, 2.0)
    await p.process_message("tg", msg("1", "first"), handler)
    await clock.run_for(0.6)  # the first turn runs from 0.5 s to 2.5 s
    for n in (2, 3, 4):
        await p.process_message("tg", msg(str(n), f"line {n}"), handler)
        await clock.run_for(0.3)
    # The last line came at 1.5 s: its window passed before the turn ended at 2.5 s.
    await clock.run_for(1.0)
    assert [m.id for m in handler.seen] == ["1", "4"]
    assert handler.seen[1].content == "line 2\nline 3\nline 4"
    assert handler.events[2][:2] == ("start", "4")
    assert handler.events[2][2] == pytest.approx(2.5)
    await clock.run_for(2.0)
    kinds = {r.message.id: r.result.kind for r in await results(p)}
    assert kinds == {
        "1": MessageResultKind.SUCCESS,
        "2": MessageResultKind.MERGED,
        "3": MessageResultKind.MERGED,
        "4": MessageResultKind.SUCCESS,
    }


async def test_collect_a_failed_batch_releases_every_dedup_claim() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock, 0.1)
    handler.fail_ids = {"b"}
    await p.process_message("tg", msg("a"), handler)
    await p.process_message("tg", msg("b"), handler)
    await clock.run_for(1.0)
    assert [m.id for m in handler.seen] == ["b"]
    # Both can be redelivered and are processed again.
    for again in ("a", "b"):
        admission = await p.process_message("tg", msg(again), handler)
        assert admission.kind is AdmissionKind.ACCEPTED
    await clock.run_for(1.0)
    found = await results(p)
    assert [r.result.kind for r in found[:2]] == [
        MessageResultKind.MERGED,
        MessageResultKind.FAILED,
    ]


async def test_collect_a_successful_batch_keeps_every_dedup_claim() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock, 0.1)
    await p.process_message("tg", msg("a"), handler)
    await p.process_message("tg", msg("b"), handler)
    await clock.run_for(1.0)
    for again in ("a", "b"):
        admission = await p.process_message("tg", msg(again), handler)
        assert admission.kind is AdmissionKind.DUPLICATE
    await results(p)


async def test_collect_the_breaker_hears_one_outcome_per_batch() -> None:
    clock = FakeClock()
    config = CircuitConfig(failure_threshold=2)
    p = processor(clock, queue_mode="collect", collect_window=0.5, circuit_config=config)
    handler = Recorder(clock, 0.1)
    handler.fail_ids = {"c"}
    for n in "abc":
        await p.process_message("tg", msg(n), handler)
    await clock.run_for(1.0)
    assert p.breaker is not None
    stats = p.breaker.stats()
    assert (stats.failed_calls, stats.consecutive_failures, stats.in_flight) == (1, 1, 0)
    await results(p)


async def test_collect_conversations_do_not_merge_with_each_other() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock, 0.1)
    await p.process_message("tg", msg("a", sender="alice"), handler)
    await p.process_message("tg", msg("b", sender="bob"), handler)
    await clock.run_for(1.0)
    assert sorted(m.id for m in handler.seen) == ["a", "b"]
    await results(p)


async def test_collect_shutdown_without_drain_cancels_a_waiting_batch() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock, 0.1)
    await p.process_message("tg", msg("a"), handler)
    await p.process_message("tg", msg("b"), handler)
    await p.shutdown(drain=False, timeout=0)
    found = [r async for r in p.responses]
    assert [r.result.kind for r in found] == [MessageResultKind.CANCELLED] * 2
    await clock.run_for(1.0)
    assert handler.seen == []
    assert p.stats().in_flight == 0


async def test_collect_shutdown_with_drain_still_answers_the_waiting_batch() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="collect", collect_window=0.5)
    handler = Recorder(clock, 0.1)
    await p.process_message("tg", msg("a"), handler)
    stopping = asyncio.ensure_future(p.shutdown())
    await clock.run_for(1.0)
    await stopping
    assert [r.result.kind async for r in p.responses] == [MessageResultKind.SUCCESS]


# ---------------------------------------------------------------------------- interrupt


async def test_interrupt_a_new_message_cancels_the_running_turn() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="interrupt")
    handler = Recorder(clock, 1.0)
    await p.process_message("tg", msg("1", "how do I reset the router"), handler)
    await clock.run_for(0.5)
    await p.process_message("tg", msg("2", "sorry, the modem"), handler)
    await clock.run_for(0.1)
    # The new turn waits for the cancelled handler's clean-up (0.2 s).
    assert [e[0] for e in handler.events] == ["start"]
    await clock.run_for(0.1)
    assert [e[:2] for e in handler.events[1:]] == [("cancelled", "1"), ("start", "2")]
    assert [e[2] for e in handler.events[1:]] == pytest.approx([0.7, 0.7])
    await clock.run_for(1.0)
    found = by_id(await results(p))
    assert found["1"].result.kind is MessageResultKind.INTERRUPTED
    assert found["2"].result.kind is MessageResultKind.SUCCESS
    assert found["2"].result.value == "answer to 'sorry, the modem'"
    stats = p.stats()
    assert (stats.interrupted, stats.succeeded, stats.failed, stats.cancelled) == (1, 1, 0, 0)


async def test_interrupt_supersedes_the_waiting_messages_and_is_no_failure() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="interrupt", circuit_config=CircuitConfig(failure_threshold=1))
    handler = Recorder(clock, 1.0)
    for n in range(4):
        await p.process_message("tg", msg(str(n)), handler)
        await settle()  # the first one starts; the next ones find it running
    await clock.run_for(3.0)
    assert [e[1] for e in handler.events if e[0] == "start"] == ["0", "3"]
    found = by_id(await results(p))
    assert [found[n].result.kind for n in "012"] == [MessageResultKind.INTERRUPTED] * 3
    assert found["3"].result.kind is MessageResultKind.SUCCESS
    assert p.breaker is not None
    breaker = p.breaker.stats()
    assert (breaker.failed_calls, breaker.successful_calls, breaker.in_flight) == (0, 1, 0)
    assert p.stats().backpressure.available_permits == 10  # type: ignore[union-attr]


async def test_interrupt_before_the_turn_started_it_never_runs() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="interrupt", worker_pool_size=1)
    handler = Recorder(clock, 1.0)
    await p.process_message("tg", msg("busy", sender="bob"), handler)  # holds the one worker
    await p.process_message("tg", msg("1"), handler)  # queued in the pool
    await p.process_message("tg", msg("2"), handler)
    await clock.run_for(3.0)
    assert [e[1] for e in handler.events if e[0] == "start"] == ["busy", "2"]
    found = by_id(await results(p))
    assert found["1"].result.kind is MessageResultKind.INTERRUPTED


async def test_interrupt_releases_the_dedup_claim_of_what_it_interrupts() -> None:
    clock = FakeClock()
    p = processor(clock, queue_mode="interrupt")
    handler = Recorder(clock, 1.0)
    await p.process_message("tg", msg("1"), handler)
    await clock.run_for(0.1)
    await p.process_message("tg", msg("2"), handler)
    await clock.run_for(0.5)
    assert (await p.process_message("tg", msg("1"), handler)).kind is AdmissionKind.ACCEPTED
    await clock.run_for(2.0)
    await results(p)


async def test_interrupt_api_cancels_the_running_turn_and_keeps_the_queue() -> None:
    clock = FakeClock()
    p = processor(clock)  # followup
    handler = Recorder(clock, 1.0)
    await p.process_message("tg", msg("1"), handler)
    await p.process_message("tg", msg("2"), handler)
    await clock.run_for(0.5)
    key = p.conversation_of("tg", msg("x"))
    assert p.interrupt(key) is True
    assert p.interrupt(key) is False  # already being interrupted
    assert p.interrupt(("tg", "nobody")) is False
    await clock.run_for(2.0)
    found = by_id(await results(p))
    assert found["1"].result.kind is MessageResultKind.INTERRUPTED
    assert found["2"].result.kind is MessageResultKind.SUCCESS


# ---------------------------------------------------------------------------- the cap


async def test_the_cap_refuses_the_21st_waiting_message() -> None:
    clock = FakeClock()
    p = processor(clock, max_concurrent_requests=100)
    handler = Recorder(clock, 1.0)
    admissions = [await p.process_message("tg", msg(str(n)), handler) for n in range(22)]
    # One runs, twenty wait: the 22nd message is the 21st waiting one.
    assert [a.kind for a in admissions[:21]] == [AdmissionKind.ACCEPTED] * 21
    assert admissions[21].kind is AdmissionKind.REJECTED
    assert admissions[21].reason == "conversation busy"
    # Nothing of it is kept: its redelivery is no duplicate, and other conversations go on.
    assert p.stats().in_flight == 21
    assert (await p.process_message("tg", msg("x", sender="bob"), handler)).accepted
    await clock.run_for(1.0)
    assert (await p.process_message("tg", msg("21"), handler)).accepted
    p.interrupt(p.conversation_of("tg", msg("0")))
    await clock.run_for(30.0)
    await results(p)


async def test_a_cap_of_zero_means_no_limit() -> None:
    clock = FakeClock()
    p = processor(clock, max_concurrent_requests=100, max_pending_per_conversation=0)
    handler = Recorder(clock, 0.01)
    admissions = [await p.process_message("tg", msg(str(n)), handler) for n in range(50)]
    assert all(a.accepted for a in admissions)
    await clock.run_for(5.0)
    assert len(await results(p)) == 50


# ---------------------------------------------------------------------------- per channel


async def test_each_channel_can_have_its_own_mode() -> None:
    clock = FakeClock()
    p = processor(clock, channel_queue_modes={"slack": ("collect", 0.5)})
    handler = Recorder(clock, 0.1)
    for n in range(3):
        await p.process_message("slack", msg(f"s{n}", channel="slack"), handler)
        await p.process_message("tg", msg(f"t{n}"), handler)
    await clock.run_for(2.0)
    turns = [m.id for m in handler.seen]
    assert sorted(turns) == ["s2", "t0", "t1", "t2"]
    await results(p)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"queue_mode": "batch"}, "queue_mode"),
        ({"collect_window": -1}, "collect_window"),
        ({"collect_window": float("inf")}, "collect_window"),
        ({"max_pending_per_conversation": -1}, "max_pending_per_conversation"),
        ({"max_pending_per_conversation": True}, "max_pending_per_conversation"),
        ({"channel_queue_modes": {"x": ("later", 1.0)}}, "channel_queue_modes"),
        ({"channel_queue_modes": {"x": "collect"}}, "channel_queue_modes"),
    ],
)
def test_bad_queue_settings_are_refused(settings: dict[str, object], words: str) -> None:
    with pytest.raises((ValueError, TypeError), match=words):
        MessageProcessorConfig(**settings)  # type: ignore[arg-type]


async def test_followup_is_unchanged_each_message_its_own_turn() -> None:
    clock = FakeClock()
    p = processor(clock)
    handler = Recorder(clock, 0.5)
    for n in range(3):
        await p.process_message("tg", msg(str(n)), handler)
    await settle()
    await clock.run_for(2.0)
    assert [m.id for m in handler.seen] == ["0", "1", "2"]
    assert {r.result.kind for r in await results(p)} == {MessageResultKind.SUCCESS}
