"""MessageProcessor's per-message fast paths: the dedup key, conversations without a lane, the
priority memo, the pool job, and the paths that only a stopped pool or a failure reaches."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import msg
from zeroclaw.concurrency.channel_integration import (
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
    ProcessedMessage,
    _message_id_key,
    _scoped_key,
)
from zeroclaw.concurrency.circuit_breaker import CircuitBreaker, CircuitConfig, CircuitState
from zeroclaw.concurrency.worker_pool import TaskPriority
from zeroclaw.testing import FakeClock, settle


async def collect(processor: MessageProcessor) -> list[ProcessedMessage]:
    return [item async for item in processor.responses]


# The characters that could make a separator-based key ambiguous, plus ordinary ones.
tricky = st.text(alphabet=st.sampled_from(["\0", "\x01", "\x02", "1", ":", "a"]), max_size=6)


@given(tricky, tricky, tricky, tricky, tricky, tricky)
def test_scoped_key_is_injective(a: str, b: str, c: str, x: str, y: str, z: str) -> None:
    assert (_scoped_key(a, b, c) == _scoped_key(x, y, z)) == ((a, b, c) == (x, y, z))


@given(tricky, tricky, tricky)
def test_message_id_key_is_the_scoped_key_of_channel_sender_and_id(
    channel: str, sender: str, id: str
) -> None:
    message = msg(id, "", sender=sender, channel=channel)
    assert _message_id_key(channel, message) == _scoped_key(channel, sender, id)


def test_scoped_key_examples_that_a_plain_separator_would_confuse() -> None:
    assert _scoped_key("a\0b", "c", "d") != _scoped_key("a", "b\0c", "d")
    assert _scoped_key("a", "b", "c\0d") != _scoped_key("a", "b\0c", "d")
    assert _scoped_key("1:a", "", "") != _scoped_key("", "a", "")


async def test_messages_arriving_behind_a_running_one_open_a_lane_and_keep_their_order() -> None:
    clock = FakeClock()
    processor = MessageProcessor(clock=clock)
    started: list[str] = []

    async def handler(message: ChannelMessage) -> str:
        started.append(message.id)
        await clock.sleep(1.0)
        return message.id

    await processor.process_message("telegram", msg("1"), handler)
    await settle()
    assert started == ["1"]  # running, alone: no lane yet
    await processor.process_message("telegram", msg("2"), handler)
    await processor.process_message("telegram", msg("3"), handler)
    assert processor.stats().conversations == 1
    await clock.run_for(0.5)
    assert started == ["1"]  # 2 and 3 wait behind it
    await clock.run_for(5.0)
    assert started == ["1", "2", "3"]
    assert processor.stats().conversations == 0  # retired once nothing of it is left
    await processor.shutdown()
    assert [result.value for _, _, result in await collect(processor)] == ["1", "2", "3"]


async def test_a_failure_moves_the_conversation_on_to_its_next_message() -> None:
    clock = FakeClock()
    processor = MessageProcessor(clock=clock)

    async def handler(message: ChannelMessage) -> str:
        await clock.sleep(0.1)
        if message.id == "1":
            raise RuntimeError("provider down")
        return message.id

    for i in "123":
        await processor.process_message("telegram", msg(i), handler)
    await clock.run_for(1.0)
    await processor.shutdown()
    kinds = [(message.id, result.kind) for _, message, result in await collect(processor)]
    assert kinds == [
        ("1", MessageResultKind.FAILED),
        ("2", MessageResultKind.SUCCESS),
        ("3", MessageResultKind.SUCCESS),
    ]
    stats = processor.stats()
    assert (stats.accepted, stats.succeeded, stats.failed, stats.in_flight) == (3, 2, 1, 0)


async def test_a_message_whose_pool_was_stopped_under_it_is_cancelled_not_lost() -> None:
    # Only a shutdown's timeout stops the pool while the processor still holds messages; this
    # reaches that path directly, with the conversation's second message waiting in its lane.
    clock = FakeClock()
    processor = MessageProcessor(
        MessageProcessorConfig(worker_pool_size=1, task_queue_size=1), clock=clock
    )
    gate = asyncio.Event()

    async def handler(message: ChannelMessage) -> str:
        await gate.wait()
        return message.id

    await processor.process_message("telegram", msg("1", sender="a"), handler)
    await settle()  # "1" runs
    await processor.process_message("telegram", msg("2", sender="b"), handler)  # queued
    await processor.process_message("telegram", msg("3", sender="c"), handler)  # waits for room
    await processor.process_message("telegram", msg("4", sender="c"), handler)  # behind 3
    await processor._pool.shutdown(drain=False, timeout=0)
    gate.set()
    await processor.shutdown()
    results = {message.id: result.kind for _, message, result in await collect(processor)}
    assert results == {
        "1": MessageResultKind.CANCELLED,
        "2": MessageResultKind.CANCELLED,
        "3": MessageResultKind.CANCELLED,
        "4": MessageResultKind.CANCELLED,
    }
    stats = processor.stats()
    assert (stats.accepted, stats.cancelled, stats.in_flight, stats.conversations) == (4, 4, 0, 0)
    assert stats.backpressure is not None
    assert stats.backpressure.active_count == 0


async def test_default_priority_is_remembered_per_channel_and_metadata_still_wins() -> None:
    clock = FakeClock()
    processor = MessageProcessor(
        MessageProcessorConfig(worker_pool_size=1, max_concurrent_requests=10), clock=clock
    )
    order: list[str] = []
    gate = asyncio.Event()

    async def handler(message: ChannelMessage) -> str:
        await gate.wait()
        order.append(message.id)
        return message.id

    await processor.process_message("email", msg("first", sender="a"), handler)
    await settle()  # occupies the only worker
    await processor.process_message("email", msg("normal", sender="b"), handler)
    await processor.process_message(
        "email", msg("urgent", sender="c", priority=TaskPriority.CRITICAL), handler
    )
    await processor.process_message("email", msg("normal-again", sender="d"), handler)
    gate.set()
    await processor.shutdown()
    assert order == ["first", "urgent", "normal", "normal-again"]


async def test_the_priority_memo_is_bounded() -> None:
    processor = MessageProcessor(MessageProcessorConfig(max_concurrent_requests=5000))

    async def handler(message: ChannelMessage) -> str:
        return message.id

    for i in range(3000):
        await processor.process_message(f"channel{i}", msg(str(i)), handler)
    await processor.shutdown()
    assert len(await collect(processor)) == 3000
    memo = processor._channel_priorities
    assert memo is not None
    assert 0 < len(memo) <= 1024


async def test_an_is_failure_that_raises_counts_a_failure_and_the_pipeline_goes_on() -> None:
    def broken(error: BaseException) -> bool:
        raise LookupError("bug in the predicate")

    clock = FakeClock()
    processor = MessageProcessor(
        MessageProcessorConfig(circuit_config=CircuitConfig(is_failure=broken)), clock=clock
    )

    async def handler(message: ChannelMessage) -> str:
        if message.id == "1":
            raise RuntimeError("provider down")
        return message.id

    await processor.process_message("telegram", msg("1", sender="a"), handler)
    await processor.process_message("telegram", msg("2", sender="a"), handler)
    await settle()
    await processor.shutdown()
    kinds = [result.kind for _, _, result in await collect(processor)]
    assert kinds == [MessageResultKind.FAILED, MessageResultKind.SUCCESS]
    breaker_stats = processor.stats().circuit_breaker
    assert breaker_stats is not None
    assert (breaker_stats.failed_calls, breaker_stats.successful_calls) == (1, 1)


async def test_the_breakers_own_is_failure_decides_not_the_processors_config() -> None:
    clock = FakeClock()
    lenient = CircuitBreaker(
        CircuitConfig(failure_threshold=1, is_failure=lambda error: False), clock=clock
    )
    processor = MessageProcessor(MessageProcessorConfig(), breaker=lenient, clock=clock)

    async def handler(message: ChannelMessage) -> str:
        raise RuntimeError("a user error, not the provider's")

    for i in "123":
        await processor.process_message("telegram", msg(i, sender=i), handler)
    await settle()
    assert lenient.state is CircuitState.CLOSED  # its predicate ignored every error
    await processor.shutdown()
    assert [result.kind for _, _, result in await collect(processor)] == [
        MessageResultKind.FAILED
    ] * 3
