"""MessageProcessor defects of issue 16, one regression test (or a few) each.

Each of these failed on the code before the fix: callbacks that raise leaked the dedup claim, the
permit and the in-flight count; a cancelled admission woken by the drain made shutdown wait its
whole timeout; cancelling one responses reader cancelled them all; an empty deduplicator read as
disabled; a sync handler failed later with a cryptic error; failures were not logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from tests.helpers import FakeChannel, FakeProvider, msg
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
    Notices,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig, CircuitState
from zeroclaw.concurrency.worker_pool import TaskPriority
from zeroclaw.testing import FakeClock, settle


async def echo(message: ChannelMessage) -> str:
    return message.content


def raising(channel: str, message: ChannelMessage) -> Any:
    raise ValueError("no key for you")


def returns_int(channel: str, message: ChannelMessage) -> Any:
    return 2  # TaskPriority.NORMAL's value, but not a TaskPriority


def returns_list(channel: str, message: ChannelMessage) -> Any:
    return [channel, message.sender]


def bad_only_for_id(bad: str, good: Callable[[str, ChannelMessage], Any]) -> Any:
    def pick(channel: str, message: ChannelMessage) -> Any:
        if message.id == bad:
            return raising(channel, message)
        return good(channel, message)

    return pick


BAD_CALLBACKS = [
    pytest.param({"priority": raising}, ValueError, id="priority-raises"),
    pytest.param({"priority": returns_int}, TypeError, id="priority-not-TaskPriority"),
    pytest.param({"conversation_key": raising}, ValueError, id="conversation-key-raises"),
    pytest.param({"conversation_key": returns_list}, TypeError, id="conversation-key-unhashable"),
]


@pytest.mark.parametrize(("callbacks", "error"), BAD_CALLBACKS)
@pytest.mark.parametrize("admission", ["wait", "reject"])
async def test_a_failing_callback_raises_and_leaves_nothing_behind(
    callbacks: dict[str, Any], error: type[Exception], admission: Any
) -> None:
    config = MessageProcessorConfig(max_concurrent_requests=1, admission=admission, **callbacks)
    processor = MessageProcessor(config, clock=FakeClock())
    with pytest.raises(error, match=r"MessageProcessorConfig|no key"):
        await processor.process_message("telegram", msg("1"), echo)
    stats = processor.stats()
    assert stats.in_flight == 0
    assert stats.accepted == 0
    assert stats.backpressure is not None
    assert stats.backpressure.active_count == 0  # the permit was given back
    assert stats.deduplicator is not None
    # The dedup claim too: a redelivery is not a DUPLICATE.
    assert stats.deduplicator.current_entries == 0
    with pytest.raises(error):
        await processor.process_message("telegram", msg("1"), echo)
    # shutdown(timeout=...) returns without moving the fake clock: nothing is left in flight.
    await asyncio.wait_for(processor.shutdown(timeout=30), timeout=5)


@pytest.mark.parametrize("field", ["priority", "conversation_key"])
async def test_the_next_messages_are_processed_after_a_callback_failed(field: str) -> None:
    good = {"priority": lambda c, m: TaskPriority.NORMAL, "conversation_key": lambda c, m: c}
    config = MessageProcessorConfig(**{field: bad_only_for_id("bad", good[field])})
    processor = MessageProcessor(config, clock=FakeClock())
    with pytest.raises(ValueError, match="no key"):
        await processor.process_message("telegram", msg("bad"), echo)
    admission = await processor.process_message("telegram", msg("good", "fine"), echo)
    assert admission.kind is AdmissionKind.ACCEPTED
    await processor.shutdown()
    results = [result async for _, _, result in processor.responses]
    assert [(r.kind, r.value) for r in results] == [(MessageResultKind.SUCCESS, "fine")]


async def test_the_gateway_intake_survives_a_callback_that_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: the intake task died on the first such message; nothing more was answered.
    def key(channel: str, message: ChannelMessage) -> Hashable:
        if message.id == "bad":
            raise ValueError("no key for you")
        return (channel, message.sender)

    clock = FakeClock()
    channel = FakeChannel("cli")
    config = MessageProcessorConfig(conversation_key=key)
    notices = Notices(failed="FAILED")
    gateway = ConcurrentMessageProcessor(config, clock=clock, notices=notices, handle_signals=False)
    running = asyncio.ensure_future(gateway.start([channel], FakeProvider(clock, 0.0), None))
    await settle()
    channel.arrive(msg("bad", sender="a", channel="cli"))
    channel.arrive(msg("good", "q", sender="b", channel="cli"))
    await settle()
    assert channel.sent == [("a", "FAILED"), ("b", "re: q")]
    assert gateway.channel_stats()["cli"].admission_errors == 1
    assert "'bad' of channel 'cli' could not be admitted: ValueError" in caplog.text
    await gateway.stop()
    await running


# ---------------------------------------------------------------- shutdown and admissions


async def test_shutdown_ends_when_an_admission_it_woke_is_cancelled() -> None:
    # Regression: the drain check was not re-run on this path; shutdown waited its whole timeout.
    loop = asyncio.get_running_loop()
    clock = FakeClock()
    processor = MessageProcessor(MessageProcessorConfig(max_concurrent_requests=1), clock=clock)
    release = asyncio.Event()
    waiting: list[asyncio.Task[Any]] = []

    async def first(message: ChannelMessage) -> str:
        await release.wait()
        # Queued before the permit hands over to the waiting admission: the cancel reaches it
        # after it was woken, before it ran.
        loop.call_soon(waiting[0].cancel)
        return "done"

    assert (await processor.process_message("cli", msg("1"), first)).accepted
    waiting.append(asyncio.ensure_future(processor.process_message("cli", msg("2"), echo)))
    await settle()
    shutdown = asyncio.ensure_future(processor.shutdown(timeout=30))
    await settle()
    release.set()
    await settle()
    assert waiting[0].cancelled()
    assert shutdown.done()  # without the fake clock moving: not after its 30 s timeout
    await shutdown
    assert processor.stats().in_flight == 0


async def test_cancelling_one_responses_reader_leaves_the_others_waiting() -> None:
    # Regression: the readers shared one future; cancelling one cancelled them all.
    processor = MessageProcessor(clock=FakeClock())
    readers = [asyncio.ensure_future(anext(aiter(processor.responses))) for _ in range(3)]
    await settle()
    readers[0].cancel()
    await settle()
    assert not readers[1].done()
    assert not readers[2].done()
    assert (await processor.process_message("cli", msg("1", "x"), echo)).accepted
    await settle()
    done = [reader for reader in readers[1:] if reader.done()]
    assert len(done) == 1  # each result goes to one reader
    assert done[0].result().result.value == "x"
    await processor.shutdown()
    await settle()
    assert all(reader.done() for reader in readers)


def test_stats_of_an_empty_deduplicator_are_not_none() -> None:
    # Regression: the stage was tested for truth, and an empty deduplicator has len() 0.
    processor = MessageProcessor()
    stats = processor.stats()
    assert stats.deduplicator is not None
    assert stats.deduplicator.current_entries == 0
    disabled = MessageProcessor(MessageProcessorConfig(enable_dedup=False)).stats()
    assert disabled.deduplicator is None


# ---------------------------------------------------------------- handlers


def sync_handler(message: ChannelMessage) -> str:
    return message.content


def generator_handler(message: ChannelMessage) -> Any:
    yield message.content


async def async_generator_handler(message: ChannelMessage) -> Any:
    yield message.content


@pytest.mark.parametrize(
    "handler",
    [sync_handler, generator_handler, async_generator_handler, "not callable", None],
    ids=["sync-def", "generator", "async-generator", "str", "None"],
)
async def test_a_handler_that_cannot_be_async_is_refused_at_the_call(handler: Any) -> None:
    processor = MessageProcessor(clock=FakeClock())
    with pytest.raises(TypeError, match="must be an async function"):
        await processor.process_message("cli", msg("1"), handler)
    stats = processor.stats()
    assert (stats.accepted, stats.in_flight) == (0, 0)
    assert stats.deduplicator is not None
    assert stats.deduplicator.current_entries == 0


async def test_a_lambda_returning_a_coroutine_is_a_handler() -> None:
    processor = MessageProcessor(clock=FakeClock())
    assert (await processor.process_message("cli", msg("1", "x"), lambda m: echo(m))).accepted
    await processor.shutdown()
    [(_, _, result)] = [item async for item in processor.responses]
    assert (result.kind, result.value) == (MessageResultKind.SUCCESS, "x")


async def test_a_handler_returning_a_non_awaitable_fails_its_message_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor = MessageProcessor(clock=FakeClock())
    handler: Any = lambda message: message.content  # noqa: E731
    assert (await processor.process_message("cli", msg("1", "x"), handler)).accepted
    await processor.shutdown()
    [(_, _, result)] = [item async for item in processor.responses]
    assert result.kind is MessageResultKind.FAILED
    assert isinstance(result.error, TypeError)
    assert "returned str, which cannot be awaited" in str(result.error)
    assert "message '1' of conversation ('cli', 'alice') failed: TypeError" in caplog.text


# ---------------------------------------------------------------- failure logs


async def test_each_failure_is_logged_once_with_id_conversation_and_error_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    processor = MessageProcessor(MessageProcessorConfig(processing_timeout=1.0), clock=clock)

    async def broken(message: ChannelMessage) -> str:
        raise ConnectionError("503")

    async def slow(message: ChannelMessage) -> str:
        await clock.sleep(5)
        return "late"

    await processor.process_message("cli", msg("a", sender="ann"), broken)
    await processor.process_message("cli", msg("b", sender="bob"), slow)
    await settle()
    await clock.run_for(1.0)
    records = [r.getMessage() for r in caplog.records if r.name.endswith("channel_integration")]
    assert records == [
        "processor: message 'a' of conversation ('cli', 'ann') failed: ConnectionError: 503",
        "processor: message 'b' of conversation ('cli', 'bob') timed out: TimeoutError: "
        + str(processor_error(caplog)),
    ]
    await processor.shutdown()


def processor_error(caplog: pytest.LogCaptureFixture) -> str:
    """The timed-out message's error text as logged (the pool's wording, not ours)."""
    line = next(r.getMessage() for r in caplog.records if "timed out" in r.getMessage())
    return line.split("TimeoutError: ", 1)[1]


async def test_an_outage_is_logged_ten_lines_a_minute_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(enable_circuit_breaker=False, enable_dedup=False)
    processor = MessageProcessor(config, clock=clock)

    async def broken(message: ChannelMessage) -> str:
        raise ConnectionError("503")

    for i in range(130):
        await processor.process_message("cli", msg(str(i), sender=f"u{i}"), broken)
        await settle()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.endswith("channel_integration")]

    assert len(lines()) == 10
    await clock.run_for(60.0)  # the interval ends: one summary line
    assert lines()[10:] == [
        "... and 120 more failures in processor in the last 60s (not logged one by one)"
    ]
    await processor.process_message("cli", msg("next", sender="z"), broken)
    await settle()
    assert len(lines()) == 12  # a new interval logs again
    await processor.shutdown()
    assert logging.WARNING in {r.levelno for r in caplog.records}


def test_the_result_enums_are_str_enums() -> None:
    # enum.StrEnum rather than a hand-written __str__: the members are strings themselves.
    kinds: list[AdmissionKind | MessageResultKind] = [*AdmissionKind, *MessageResultKind]
    for kind in kinds:
        assert isinstance(kind, str)
        assert str(kind) == kind.value
        assert f"{kind}" == kind.value
    assert AdmissionKind("accepted") is AdmissionKind.ACCEPTED


# ---------------------------------------------------------------- the breaker's tickets


async def test_a_stale_calls_failure_does_not_reopen_a_breaker_that_just_recovered() -> None:
    # Regression: results went to the breaker without the call's ticket, so the failure of a call
    # admitted before the breaker opened counted against the CLOSED period that followed the
    # recovery, and re-opened it.
    clock = FakeClock()
    circuit = CircuitConfig(failure_threshold=1, success_threshold=1, timeout_duration=10.0)
    config = MessageProcessorConfig(circuit_config=circuit, processing_timeout=None)
    processor = MessageProcessor(config, clock=clock)
    stale_may_fail = asyncio.Event()

    async def stale(message: ChannelMessage) -> str:
        await stale_may_fail.wait()
        raise ConnectionError("the old connection finally gave up")

    async def broken(message: ChannelMessage) -> str:
        raise ConnectionError("503")

    assert (await processor.process_message("cli", msg("old", sender="a"), stale)).accepted
    assert (await processor.process_message("cli", msg("trip", sender="b"), broken)).accepted
    await settle()
    breaker = processor.breaker
    assert breaker is not None

    def state() -> CircuitState:  # read afresh: mypy would keep the narrowing across awaits
        assert breaker is not None
        return breaker.state

    assert state() is CircuitState.OPEN
    await clock.run_for(10.0)
    assert (await processor.process_message("cli", msg("probe", sender="c"), echo)).accepted
    await settle()
    assert state() is CircuitState.CLOSED  # recovered
    stale_may_fail.set()
    await settle()
    assert state() is CircuitState.CLOSED  # the stale failure is late: it changes nothing
    await processor.shutdown()
    kinds = {m.id: r.kind async for _, m, r in processor.responses}
    assert kinds == {
        "old": MessageResultKind.FAILED,
        "trip": MessageResultKind.FAILED,
        "probe": MessageResultKind.SUCCESS,
    }
