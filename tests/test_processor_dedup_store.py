"""ConcurrentMessageProcessor(dedup_store=...): an async claim store in place of the in-memory
deduplicator, against the in-memory store and a real Redis (two processors sharing one Redis
store stand in for two processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from tests.gateway_process import until
from tests.helpers import DeliveringFakeChannel, UnusedProvider, msg
from zeroclaw.backends.redis import Keys
from zeroclaw.backends.redis.dedup import RedisDedupStore
from zeroclaw.concurrency import Deduplicator, DedupStrategy, MemoryDedupStore
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
)


async def answer(message: ChannelMessage) -> str:
    if message.content == "fail":
        raise RuntimeError("provider down")
    return f"re: {message.content}"


@asynccontextmanager
async def running(
    store: Any, config: MessageProcessorConfig | None = None
) -> AsyncIterator[tuple[ConcurrentMessageProcessor, DeliveringFakeChannel]]:
    processor = ConcurrentMessageProcessor(
        config, handler=answer, handle_signals=False, dedup_store=store
    )
    channel = DeliveringFakeChannel("web")
    task = asyncio.get_running_loop().create_task(
        processor.start([channel], UnusedProvider(), None)
    )
    await processor.wait_started()
    try:
        yield processor, channel
    finally:
        await processor.stop()
        await task


def memory_store() -> MemoryDedupStore:
    return MemoryDedupStore(Deduplicator(timedelta(minutes=5), strategy=DedupStrategy.EXACT))


async def test_the_store_replaces_the_in_memory_deduplicator() -> None:
    store = memory_store()
    async with running(store) as (processor, web):
        first = await processor.submit(web, msg("1", channel="web"))
        again = await processor.submit(web, msg("1", channel="web"))
        assert (first.kind, again.kind) == (AdmissionKind.ACCEPTED, AdmissionKind.DUPLICATE)
        stats = processor.stats()
        assert stats is not None
        assert stats.deduplicator is None  # no second, in-memory dedup behind the store
        await until(lambda: len(web.delivered) == 1)
    counts = store.deduplicator.stats()
    assert (counts.unique_added, counts.duplicates_found) == (1, 1)


async def test_a_failed_message_releases_its_claim() -> None:
    store = memory_store()
    async with running(store) as (processor, web):
        await processor.submit(web, msg("f", "fail", channel="web"))
        await until(lambda: len(web.delivered) == 1)
        assert web.delivered[0][1].kind is MessageResultKind.FAILED

        async def released() -> bool:
            return not await store.contains("web\0alice\0f")

        await until(released)
        redelivered = await processor.submit(web, msg("f", "fail", channel="web"))
        assert redelivered.kind is AdmissionKind.ACCEPTED


async def test_a_refused_message_releases_its_claim() -> None:
    store = memory_store()
    config = MessageProcessorConfig(max_concurrent_requests=1, admission="reject")
    gate = asyncio.Event()

    async def slow(message: ChannelMessage) -> str:
        await gate.wait()
        return "done"

    processor = ConcurrentMessageProcessor(
        config, handler=slow, handle_signals=False, dedup_store=store
    )
    web = DeliveringFakeChannel("web")
    task = asyncio.get_running_loop().create_task(processor.start([web], UnusedProvider(), None))
    await processor.wait_started()
    try:
        busy = await processor.submit(web, msg("a", channel="web", sender="u1"))
        refused = await processor.submit(web, msg("b", channel="web", sender="u2"))
        assert (busy.kind, refused.kind) == (AdmissionKind.ACCEPTED, AdmissionKind.REJECTED)
        assert not await store.contains("web\0u2\0b")
        gate.set()
        await until(lambda: len(web.delivered) == 1)
        retried = await processor.submit(web, msg("b", channel="web", sender="u2"))
        assert retried.kind is AdmissionKind.ACCEPTED
    finally:
        gate.set()
        await processor.stop()
        await task


def test_a_store_and_no_dedup_contradict_each_other() -> None:
    with pytest.raises(ValueError, match="enable_dedup=False"):
        ConcurrentMessageProcessor(
            MessageProcessorConfig(enable_dedup=False), dedup_store=memory_store()
        )


async def test_two_processors_sharing_a_redis_store_admit_a_message_once(
    redis_client: Any, namespace: str
) -> None:
    keys = Keys(namespace)
    store_a = RedisDedupStore(redis_client, keys, ttl=60.0)
    store_b = RedisDedupStore(redis_client, keys, ttl=60.0)
    async with running(store_a) as (a, web_a), running(store_b) as (b, web_b):
        admissions = await asyncio.gather(
            *(
                target.submit(channel, msg(f"m{i}", channel="web", sender=f"u{i}"))
                for i in range(50)
                for target, channel in ((a, web_a), (b, web_b))
            )
        )
        kinds = [admission.kind for admission in admissions]
        assert kinds.count(AdmissionKind.ACCEPTED) == 50
        assert kinds.count(AdmissionKind.DUPLICATE) == 50
        await until(lambda: len(web_a.delivered) + len(web_b.delivered) == 50)
        answered = sorted(mid for mid, _, _ in [*web_a.delivered, *web_b.delivered])
        assert answered == sorted(f"m{i}" for i in range(50))
