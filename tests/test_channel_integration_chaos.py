"""MessageProcessor under random chaos (Hypothesis): random sizes, stages switched on and off,
failures, hangs past the timeout, redeliveries, priorities, and a shutdown at a random moment.

Whatever happens: exactly one result per accepted admission, no conversation runs two messages at
once, each conversation's messages start in the order they were accepted, and nothing is left
behind (no message in flight, no conversation, no permit, nothing queued in the pool).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import msg
from zeroclaw.concurrency.channel_integration import (
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    ProcessedMessage,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig
from zeroclaw.concurrency.worker_pool import TaskPriority
from zeroclaw.testing import FakeClock

Conversation = tuple[str, str]


async def chaos(rng: random.Random) -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(
        worker_pool_size=rng.randint(1, 4),
        task_queue_size=rng.randint(1, 6),
        max_concurrent_requests=rng.randint(1, 12),
        processing_timeout=rng.choice([None, 0.5, 2.0]),
        admission=rng.choice(["wait", "reject"]),
        enable_backpressure=rng.random() < 0.8,
        enable_dedup=rng.random() < 0.8,
        enable_circuit_breaker=rng.random() < 0.8,
        circuit_config=CircuitConfig(
            failure_threshold=rng.randint(2, 50), timeout_duration=rng.uniform(0.5, 3)
        ),
    )
    processor = MessageProcessor(config, clock=clock)
    results: list[ProcessedMessage] = []

    async def read() -> None:
        async for result in processor.responses:
            results.append(result)

    reader = asyncio.ensure_future(read())
    started: dict[Conversation, list[int]] = defaultdict(list)
    running: dict[Conversation, int] = defaultdict(int)
    overlapping: list[str] = []

    async def handler(message: ChannelMessage) -> str:
        conversation = (message.channel, message.reply_to)
        running[conversation] += 1
        if running[conversation] > 1:
            overlapping.append(message.id)
        started[conversation].append(int(message.id))
        try:
            roll = rng.random()
            if roll < 0.15:
                raise RuntimeError("provider failure")
            if roll < 0.22:
                await clock.sleep(10)  # hangs past any timeout
            await clock.sleep(rng.uniform(0, 0.6))
            return message.id
        finally:
            running[conversation] -= 1

    accepted: list[int] = []
    conversations = rng.randint(1, 8)

    async def deliver(i: int) -> None:
        urgent = rng.random() < 0.2
        message = msg(str(i), sender=f"user{i % conversations}", channel="slack")
        if urgent:
            message = msg(
                message.id, sender=message.sender, channel="slack", priority=TaskPriority.CRITICAL
            )
        admission = await processor.process_message("slack", message, handler)
        if admission.accepted:
            accepted.append(i)

    deliveries = []
    for i in range(rng.randint(5, 60)):
        deliveries.append(asyncio.ensure_future(deliver(i)))
        if i and rng.random() < 0.2:  # the platform redelivers an earlier message
            deliveries.append(asyncio.ensure_future(deliver(rng.randrange(i))))
        await clock.run_for(rng.uniform(0, 0.15))
    stopping = asyncio.ensure_future(
        processor.shutdown(drain=rng.random() < 0.5, timeout=rng.uniform(0, 3))
    )
    for _ in range(100):
        await clock.run_for(0.5)
        if stopping.done():
            break
    assert stopping.done(), "shutdown never finished"
    await stopping
    await asyncio.gather(*deliveries)
    await reader

    assert sorted(int(message.id) for _, message, _ in results) == sorted(accepted)
    assert overlapping == []
    accepted_order: dict[Conversation, list[int]] = defaultdict(list)
    for i in accepted:
        accepted_order[("slack", f"user{i % conversations}")].append(i)
    for conversation, order in started.items():
        remaining = iter(accepted_order[conversation])
        # The messages that started are the accepted ones, in order (some never start: refused
        # by the breaker at start, or cancelled by the shutdown).
        assert all(any(i == j for j in remaining) for i in order), (order, accepted_order)
    stats = processor.stats()
    assert (stats.in_flight, stats.conversations, stats.accepted) == (0, 0, len(accepted))
    if stats.backpressure is not None:
        assert stats.backpressure.active_count == 0
    assert stats.worker_pool.queued_tasks == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_chaos_keeps_every_promise(seed: int) -> None:
    # A seed rather than Hypothesis-drawn values: a scenario makes hundreds of random choices,
    # some inside handlers still running when a draw budget would end; a failure prints the seed.
    asyncio.run(chaos(random.Random(seed)))
