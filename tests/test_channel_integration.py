"""MessageProcessor: docs/channel_integration.md and issue 6, bullet by bullet."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import pytest

from tests.helpers import msg
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
    ProcessedMessage,
    channel_priority,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig, CircuitState
from zeroclaw.concurrency.worker_pool import TaskPriority
from zeroclaw.testing import FakeClock, settle


async def collect(processor: MessageProcessor) -> list[ProcessedMessage]:
    return [item async for item in processor.responses]


def echo_after(clock: FakeClock, seconds: float) -> Any:
    async def handler(message: ChannelMessage) -> str:
        await clock.sleep(seconds)
        return f"echo {message.content}"

    return handler


# ---------------------------------------------------------------- configuration


def test_config_defaults_are_the_originals() -> None:
    config = MessageProcessorConfig()
    assert (
        config.worker_pool_size,
        config.task_queue_size,
        config.max_concurrent_requests,
        config.dedup_ttl,
        config.processing_timeout,
        config.admission,
    ) == (4, 100, 10, 60.0, 30.0, "wait")
    assert config.enable_dedup
    assert config.enable_circuit_breaker
    assert config.enable_backpressure
    assert config.circuit_config == CircuitConfig()


def test_config_presets_follow_the_seed_sizing_table() -> None:
    small, medium, large = (
        MessageProcessorConfig.small(),
        MessageProcessorConfig.medium(),
        MessageProcessorConfig.large(),
    )
    assert (small.worker_pool_size, small.max_concurrent_requests, small.dedup_ttl) == (2, 5, 30)
    assert (medium.worker_pool_size, medium.max_concurrent_requests, medium.dedup_ttl) == (
        4,
        20,
        60,
    )
    assert (large.worker_pool_size, large.max_concurrent_requests, large.dedup_ttl) == (8, 50, 120)
    assert large.circuit_config == CircuitConfig.lenient()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("worker_pool_size", 0, "worker_pool_size"),
        ("task_queue_size", -1, "task_queue_size"),
        ("max_concurrent_requests", 0, "max_concurrent_requests"),
        ("dedup_ttl", -5, "dedup_ttl"),
        ("processing_timeout", -1, "processing_timeout"),
        ("admission", "maybe", "admission"),
        ("dedup_key", "sender", "dedup_key"),
    ],
)
def test_config_validation_names_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MessageProcessorConfig(**{field: value})  # type: ignore[arg-type]


def test_seed_channel_priorities() -> None:
    assert channel_priority("cli", msg("1")) is TaskPriority.CRITICAL
    assert channel_priority("telegram", msg("1")) is TaskPriority.HIGH
    assert channel_priority("email", msg("1")) is TaskPriority.NORMAL
    assert channel_priority("webhook", msg("1")) is TaskPriority.NORMAL
    assert channel_priority("webhook", msg("1", priority="low")) is TaskPriority.LOW


def test_processor_builds_outside_an_event_loop() -> None:
    processor = MessageProcessor()
    assert processor.stats().accepted == 0
    assert "processor" in repr(processor)


# ---------------------------------------------------------------- admission


async def test_admission_returns_at_once_while_the_handler_takes_200ms() -> None:
    clock = FakeClock()
    processor = MessageProcessor(clock=clock)
    started = time.perf_counter()
    admission = await processor.process_message("telegram", msg("1"), echo_after(clock, 0.2))
    elapsed = time.perf_counter() - started
    assert admission == Admission(AdmissionKind.ACCEPTED)
    assert elapsed < 0.05
    assert clock.now() == 0.0
    assert processor.stats().in_flight == 1
    await clock.run_for(0.2)
    await processor.shutdown()
    [(channel, message, result)] = await collect(processor)
    assert (channel, message.id, result.kind, result.value) == (
        "telegram",
        "1",
        MessageResultKind.SUCCESS,
        "echo hi",
    )
    assert result.run_time == pytest.approx(0.2)


async def test_same_content_different_ids_are_both_answered_and_a_redelivery_is_not() -> None:
    clock = FakeClock()
    processor = MessageProcessor(clock=clock)
    handler = echo_after(clock, 0.1)
    first = await processor.process_message("slack", msg("1", "ok"), handler)
    second = await processor.process_message("slack", msg("2", "ok"), handler)
    redelivery = await processor.process_message("slack", msg("1", "ok"), handler)
    assert [first.kind, second.kind, redelivery.kind] == [
        AdmissionKind.ACCEPTED,
        AdmissionKind.ACCEPTED,
        AdmissionKind.DUPLICATE,
    ]
    await clock.run_for(1)
    await processor.shutdown()
    results = await collect(processor)
    assert [(m.id, r.value) for _, m, r in results] == [("1", "echo ok"), ("2", "echo ok")]
    assert processor.stats().duplicates == 1


async def test_content_hash_dedup_key_is_available_as_an_option() -> None:
    clock = FakeClock()
    processor = MessageProcessor(MessageProcessorConfig(dedup_key="content"), clock=clock)
    handler = echo_after(clock, 0.1)
    assert (await processor.process_message("cli", msg("1", "ok"), handler)).accepted
    assert (
        await processor.process_message("cli", msg("2", "ok"), handler)
    ).kind is AdmissionKind.DUPLICATE
    await clock.run_for(1)
    await processor.shutdown()


async def test_a_failed_message_redelivered_is_processed() -> None:
    clock = FakeClock()
    processor = MessageProcessor(clock=clock)
    attempts = 0

    async def flaky(message: ChannelMessage) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("provider hiccup")
        return "answer"

    assert (await processor.process_message("telegram", msg("42"), flaky)).accepted
    await settle()
    assert (await processor.process_message("telegram", msg("42"), flaky)).accepted
    await settle()
    await processor.shutdown()
    results = await collect(processor)
    assert [r.kind for _, _, r in results] == [MessageResultKind.FAILED, MessageResultKind.SUCCESS]
    assert isinstance(results[0].result.error, ConnectionError)
    # A success keeps its claim: the next redelivery is a duplicate.
    processor2 = MessageProcessor(clock=clock)
    assert (await processor2.process_message("telegram", msg("7"), flaky)).accepted
    await settle()
    assert (
        await processor2.process_message("telegram", msg("7"), flaky)
    ).kind is AdmissionKind.DUPLICATE
    await processor2.shutdown()


async def test_breaker_opens_after_real_failures_and_refuses_at_admission() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(
        circuit_config=CircuitConfig(failure_threshold=3, timeout_duration=30)
    )
    processor = MessageProcessor(config, clock=clock)

    async def down(message: ChannelMessage) -> str:
        raise RuntimeError("503")

    for i in range(3):
        assert (await processor.process_message("slack", msg(str(i)), down)).accepted
        await settle()
    assert processor.breaker is not None
    assert processor.breaker.state is CircuitState.OPEN
    refused = await processor.process_message("slack", msg("after"), down)
    assert refused.kind is AdmissionKind.REJECTED
    assert refused.reason == "circuit open"
    assert refused.retry_after == pytest.approx(30.0)
    # The refused message left no dedup claim: once the breaker lets it through, it runs.
    await clock.run_for(30)

    async def up(message: ChannelMessage) -> str:
        return "back"

    assert (await processor.process_message("slack", msg("after"), up)).accepted
    await settle()
    await processor.shutdown()
    results = await collect(processor)
    assert [r.kind for _, _, r in results] == [MessageResultKind.FAILED] * 3 + [
        MessageResultKind.SUCCESS
    ]
    stats = processor.stats()
    assert stats.circuit_breaker is not None
    assert stats.circuit_breaker.failed_calls == 3


async def test_timeouts_count_as_breaker_failures() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(
        processing_timeout=1, circuit_config=CircuitConfig(failure_threshold=2)
    )
    processor = MessageProcessor(config, clock=clock)
    hang = echo_after(clock, 100)
    for i in range(2):
        assert (await processor.process_message("cli", msg(str(i), sender=f"u{i}"), hang)).accepted
    await clock.run_for(1)
    assert processor.breaker is not None
    assert processor.breaker.state is CircuitState.OPEN
    await processor.shutdown()
    assert [r.kind for _, _, r in await collect(processor)] == [MessageResultKind.TIMEOUT] * 2


async def test_messages_queued_when_the_breaker_opens_are_not_sent_to_the_provider() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(circuit_config=CircuitConfig(failure_threshold=1))
    processor = MessageProcessor(config, clock=clock)
    calls: list[str] = []

    async def down(message: ChannelMessage) -> str:
        calls.append(message.id)
        await clock.sleep(1)
        raise RuntimeError("outage")

    # One conversation: the second message waits behind the first in its lane.
    for i in range(2):
        assert (await processor.process_message("cli", msg(str(i)), down)).accepted
    await clock.run_for(1)
    await settle()
    await processor.shutdown()
    results = await collect(processor)
    assert calls == ["0"]
    assert [r.kind for _, _, r in results] == [
        MessageResultKind.FAILED,
        MessageResultKind.REJECTED,
    ]


async def test_admission_reject_refuses_at_capacity_and_wait_waits() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(max_concurrent_requests=2, admission="reject")
    processor = MessageProcessor(config, clock=clock)
    handler = echo_after(clock, 1)
    kinds = [
        (await processor.process_message("cli", msg(str(i), sender=f"u{i}"), handler)).kind
        for i in range(3)
    ]
    assert kinds == [AdmissionKind.ACCEPTED, AdmissionKind.ACCEPTED, AdmissionKind.REJECTED]
    # The refused message left no claim: it is accepted once there is room.
    await clock.run_for(1)
    assert (await processor.process_message("cli", msg("2", sender="u2"), handler)).accepted
    await clock.run_for(1)
    await processor.shutdown()
    assert len(await collect(processor)) == 3

    waiting = MessageProcessor(MessageProcessorConfig(max_concurrent_requests=1), clock=clock)
    assert (await waiting.process_message("cli", msg("a", sender="x"), handler)).accepted
    pending = asyncio.ensure_future(waiting.process_message("cli", msg("b", sender="y"), handler))
    await settle()
    assert not pending.done()
    await clock.run_for(1)
    assert (await pending).accepted
    await clock.run_for(1)
    await waiting.shutdown()


async def test_cancelled_while_waiting_for_admission_leaves_nothing_behind() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(
        max_concurrent_requests=1, circuit_config=CircuitConfig(half_open_max_calls=1)
    )
    processor = MessageProcessor(config, clock=clock)
    handler = echo_after(clock, 1)
    assert (await processor.process_message("cli", msg("a", sender="x"), handler)).accepted
    pending = asyncio.ensure_future(processor.process_message("cli", msg("b", sender="y"), handler))
    await settle()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await clock.run_for(1)
    # No dedup claim was left: the same message is admitted; the permit came back too.
    assert (await processor.process_message("cli", msg("b", sender="y"), handler)).accepted
    stats = processor.stats()
    assert stats.backpressure is not None
    assert stats.backpressure.active_count == 1
    await clock.run_for(1)
    await processor.shutdown()
    assert len(await collect(processor)) == 2


# ---------------------------------------------------------------- lanes


async def test_30_messages_from_3_conversations_keep_per_conversation_order() -> None:
    clock = FakeClock()
    rng = random.Random(6)
    processor = MessageProcessor(
        MessageProcessorConfig(max_concurrent_requests=30, worker_pool_size=4), clock=clock
    )
    running: dict[str, int] = defaultdict(int)
    overlap = False

    async def handler(message: ChannelMessage) -> str:
        nonlocal overlap
        running[message.sender] += 1
        overlap |= running[message.sender] > 1
        await clock.sleep(rng.uniform(0.01, 0.5))
        running[message.sender] -= 1
        return message.content

    sent: dict[str, list[str]] = defaultdict(list)
    for i in range(30):
        sender = f"user{rng.randrange(3)}"
        sent[sender].append(str(i))
        admission = await processor.process_message(
            "telegram", msg(str(i), str(i), sender=sender), handler
        )
        assert admission.accepted
    await clock.run_for(30)
    await processor.shutdown()
    done: dict[str, list[str]] = defaultdict(list)
    for _, message, result in await collect(processor):
        assert result.ok
        done[message.sender].append(result.value or "")
    assert done == sent
    assert not overlap


async def test_four_conversations_of_one_100ms_message_finish_in_about_100ms() -> None:
    clock = FakeClock()
    processor = MessageProcessor(clock=clock)
    finished: list[float] = []

    async def handler(message: ChannelMessage) -> str:
        await clock.sleep(0.1)
        finished.append(clock.now())
        return "ok"

    for i in range(4):
        await processor.process_message("slack", msg(str(i), sender=f"user{i}"), handler)
    await clock.run_for(0.1)
    assert finished == [pytest.approx(0.1)] * 4
    await processor.shutdown()


async def test_priority_orders_between_conversations() -> None:
    clock = FakeClock()
    processor = MessageProcessor(
        MessageProcessorConfig(worker_pool_size=1, max_concurrent_requests=10), clock=clock
    )
    order: list[str] = []

    async def handler(message: ChannelMessage) -> str:
        order.append(message.channel)
        await clock.sleep(1)
        return "ok"

    await processor.process_message("email", msg("0", channel="email", sender="a"), handler)
    await settle()  # the single worker takes the first message
    for channel in ("email", "telegram", "cli"):
        await processor.process_message(channel, msg("1", channel=channel, sender="b"), handler)
    await clock.run_for(10)
    await processor.shutdown()
    assert order == ["email", "cli", "telegram", "email"]


# ---------------------------------------------------------------- shutdown and accounting


async def test_drain_shutdown_finishes_everything_and_responses_end() -> None:
    clock = FakeClock()
    processor = MessageProcessor(MessageProcessorConfig(max_concurrent_requests=20), clock=clock)
    reader = asyncio.ensure_future(collect(processor))
    for i in range(12):
        await processor.process_message(
            "cli", msg(str(i), sender=f"u{i % 3}"), echo_after(clock, 1)
        )
    stopping = asyncio.ensure_future(processor.shutdown(drain=True))
    await settle()
    refused = await processor.process_message("cli", msg("late"), echo_after(clock, 1))
    assert (refused.kind, refused.reason) == (AdmissionKind.REJECTED, "shutting down")
    await clock.run_for(10)
    await stopping
    results = await reader
    assert len(results) == 12
    assert all(r.ok for _, _, r in results)


async def test_no_drain_shutdown_cancels_waiting_messages_with_a_result_each() -> None:
    clock = FakeClock()
    processor = MessageProcessor(MessageProcessorConfig(max_concurrent_requests=20), clock=clock)
    for i in range(6):
        await processor.process_message("cli", msg(str(i), sender="same"), echo_after(clock, 1))
    await settle()
    stopping = asyncio.ensure_future(processor.shutdown(drain=False, timeout=5))
    await clock.run_for(1)
    await stopping
    results = await collect(processor)
    kinds = [r.kind for _, _, r in results]
    assert kinds.count(MessageResultKind.SUCCESS) == 1  # the running one finished
    assert kinds.count(MessageResultKind.CANCELLED) == 5
    stats = processor.stats()
    assert (stats.in_flight, stats.conversations) == (0, 0)
    # Cancelled messages released their claims: a redelivery would be processed.
    assert stats.deduplicator is not None
    assert stats.deduplicator.current_entries == 1


async def test_shutdown_timeout_cancels_hung_handlers() -> None:
    clock = FakeClock()
    processor = MessageProcessor(MessageProcessorConfig(processing_timeout=None), clock=clock)
    await processor.process_message("cli", msg("1"), echo_after(clock, 1000))
    stopping = asyncio.ensure_future(processor.shutdown(drain=True, timeout=3))
    await clock.run_for(3)
    await stopping
    [(_, _, result)] = await collect(processor)
    assert result.kind is MessageResultKind.CANCELLED


async def test_chaos_results_match_accepted_admissions_one_to_one() -> None:
    clock = FakeClock()
    rng = random.Random(2026)
    config = MessageProcessorConfig(
        worker_pool_size=3,
        max_concurrent_requests=8,
        processing_timeout=2,
        circuit_config=CircuitConfig(failure_threshold=1000, window_size=1000, min_calls=1000),
    )
    processor = MessageProcessor(config, clock=clock)
    reader = asyncio.ensure_future(collect(processor))

    async def chaotic(message: ChannelMessage) -> str:
        roll = rng.random()
        if roll < 0.2:
            raise RuntimeError("random failure")
        if roll < 0.3:
            await clock.sleep(10)  # hangs past the timeout
        await clock.sleep(rng.uniform(0, 1))
        return message.id

    accepted: list[str] = []
    ids = [str(i) for i in range(150)]

    async def deliver(message_id: str) -> None:
        message = msg(message_id, sender=f"user{int(message_id) % 7}")
        admission = await processor.process_message("slack", message, chaotic)
        if admission.accepted:
            accepted.append(message_id)

    deliveries = []
    for i, message_id in enumerate(ids):
        deliveries.append(asyncio.ensure_future(deliver(message_id)))
        if rng.random() < 0.3:  # the platform redelivers some messages
            deliveries.append(asyncio.ensure_future(deliver(rng.choice(ids[: i + 1]))))
        await clock.run_for(rng.uniform(0, 0.2))
    stopping = asyncio.ensure_future(processor.shutdown(drain=False, timeout=1))
    await clock.run_for(5)
    await stopping
    await asyncio.gather(*deliveries)
    results = await reader
    delivered = [message.id for _, message, _ in results]
    assert sorted(delivered) == sorted(accepted)
    kinds = {r.kind for _, _, r in results}
    assert {MessageResultKind.SUCCESS, MessageResultKind.FAILED, MessageResultKind.TIMEOUT} <= kinds
    stats = processor.stats()
    assert stats.in_flight == 0
    assert stats.accepted == len(accepted)
    assert stats.backpressure is not None
    assert stats.backpressure.active_count == 0


async def test_stats_count_every_outcome() -> None:
    clock = FakeClock()
    processor = MessageProcessor(MessageProcessorConfig(processing_timeout=1), clock=clock)

    async def fail(message: ChannelMessage) -> str:
        raise ValueError("nope")

    await processor.process_message("cli", msg("1", sender="a"), echo_after(clock, 0.5))
    await processor.process_message("cli", msg("2", sender="b"), fail)
    await processor.process_message("cli", msg("3", sender="c"), echo_after(clock, 5))
    await processor.process_message("cli", msg("1", sender="a"), fail)
    await clock.run_for(1)
    await processor.shutdown()
    stats = processor.stats()
    assert (stats.accepted, stats.duplicates, stats.succeeded, stats.failed, stats.timed_out) == (
        3,
        1,
        1,
        1,
        1,
    )
    assert stats.undelivered_results == 3
    assert stats.worker_pool.completed_tasks == 1
