"""``max_undelivered_results``: admission stops while too many results wait unread."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import msg
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    ProcessedMessage,
)
from zeroclaw.testing import FakeClock, settle


async def echo(message: ChannelMessage) -> str:
    return message.content


def bounded(limit: int, **overrides: Any) -> MessageProcessor:
    config = MessageProcessorConfig(max_undelivered_results=limit, **overrides)
    return MessageProcessor(config, clock=FakeClock())


async def admit(processor: MessageProcessor, id: str, sender: str = "alice") -> Admission:
    return await processor.process_message("cli", msg(id, id, sender=sender, channel="cli"), echo)


async def read_one(processor: MessageProcessor) -> ProcessedMessage:
    return await anext(aiter(processor.responses))


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "10"])
def test_the_bound_must_be_a_positive_int_or_none(value: object) -> None:
    with pytest.raises(ValueError, match="max_undelivered_results"):
        MessageProcessorConfig(max_undelivered_results=value)  # type: ignore[arg-type]


def test_no_bound_by_default() -> None:
    assert MessageProcessorConfig().max_undelivered_results is None


async def test_reject_mode_refuses_while_the_results_are_unread_and_keeps_no_claim() -> None:
    processor = bounded(2, admission="reject")
    assert (await admit(processor, "a", "u1")).accepted
    assert (await admit(processor, "b", "u2")).accepted
    await settle()
    assert processor.stats().undelivered_results == 2
    refused = await admit(processor, "c", "u3")
    assert refused.kind is AdmissionKind.REJECTED
    assert refused.reason == "results unread"
    assert (await read_one(processor)).message.id == "a"
    # The refusal released the dedup claim: the platform's redelivery of "c" is processed.
    assert (await admit(processor, "c", "u3")).accepted
    await processor.shutdown()
    ids = [item.message.id async for item in processor.responses]
    assert ids == ["b", "c"]
    stats = processor.stats()
    assert (stats.accepted, stats.rejected, stats.succeeded) == (3, 1, 3)


async def test_wait_mode_admits_as_the_reader_makes_room_oldest_first() -> None:
    processor = bounded(2)
    for id in ("a", "b"):
        assert (await admit(processor, id, f"u{id}")).accepted
    await settle()
    admitted: list[str] = []

    async def admit_and_note(id: str) -> Admission:
        admission = await admit(processor, id, f"u{id}")
        admitted.append(id)
        return admission

    waiting = [asyncio.ensure_future(admit_and_note(id)) for id in ("c", "d", "e")]
    await settle()
    assert admitted == []  # two results unread: admission waits
    read = [(await read_one(processor)).message.id]
    await settle()
    # One result read leaves one unread, under the bound: the waiters go in, oldest first, until
    # their own results fill the room again.
    assert admitted[:1] == ["c"]
    assert admitted == sorted(admitted)
    while len(admitted) < 3:
        read.append((await read_one(processor)).message.id)
        await settle()
    assert admitted == ["c", "d", "e"]
    assert all(task.result().accepted for task in waiting)
    await processor.shutdown()
    read += [item.message.id async for item in processor.responses]
    assert read == ["a", "b", "c", "d", "e"]


async def test_an_admission_cancelled_while_waiting_leaves_nothing_behind() -> None:
    processor = bounded(1, max_concurrent_requests=3)
    assert (await admit(processor, "a", "ua")).accepted
    await settle()
    cancelled = asyncio.ensure_future(admit(processor, "b", "ub"))
    next_in_line = asyncio.ensure_future(admit(processor, "c", "uc"))
    await settle()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await read_one(processor)
    await settle()
    assert next_in_line.result().accepted  # the cancelled waiter did not keep the room
    await read_one(processor)
    # No dedup claim, breaker slot or permit was left by the cancelled admission.
    assert (await admit(processor, "b", "ub")).accepted
    await settle()
    stats = processor.stats()
    assert stats.backpressure is not None
    assert stats.backpressure.active_count == 0
    assert stats.circuit_breaker is not None
    assert stats.circuit_breaker.in_flight == 0
    await processor.shutdown()
    assert [item.message.id async for item in processor.responses] == ["b"]


async def test_a_waiter_woken_at_the_moment_it_is_cancelled_passes_the_room_on() -> None:
    processor = bounded(1)
    assert (await admit(processor, "a", "ua")).accepted
    await settle()
    first = asyncio.ensure_future(admit(processor, "b", "ub"))
    second = asyncio.ensure_future(admit(processor, "c", "uc"))
    await settle()
    await read_one(processor)  # wakes "b"...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await settle()
    assert second.result().accepted
    await processor.shutdown()
    assert [item.message.id async for item in processor.responses] == ["c"]


async def test_shutdown_refuses_the_waiting_admissions_even_with_no_reader() -> None:
    processor = bounded(1)
    assert (await admit(processor, "a", "ua")).accepted
    await settle()
    waiting = asyncio.ensure_future(admit(processor, "b", "ub"))
    await settle()
    # A guard against a hang, not a timing: shutdown returns at once in a correct processor.
    await asyncio.wait_for(processor.shutdown(), 5)
    refused = await waiting
    assert refused.kind is AdmissionKind.REJECTED
    assert refused.reason == "shutting down"
    assert [item.message.id async for item in processor.responses] == ["a"]


async def test_without_a_reader_the_buffer_stays_within_its_bound() -> None:
    clock = FakeClock()
    limit, in_flight = 3, 2
    config = MessageProcessorConfig(
        max_undelivered_results=limit, max_concurrent_requests=in_flight, worker_pool_size=2
    )
    processor = MessageProcessor(config, clock=clock)

    async def slow(message: ChannelMessage) -> str:
        await clock.sleep(1)
        return message.content

    async def produce() -> list[Admission]:
        messages = [msg(str(i), str(i), sender=f"u{i}", channel="cli") for i in range(20)]
        return [await processor.process_message("cli", m, slow) for m in messages]

    producer = asyncio.ensure_future(produce())
    most = 0
    for _ in range(30):
        await clock.run_for(1)
        most = max(most, processor.stats().undelivered_results)
    assert not producer.done()  # nobody reads, so admission stopped
    assert most <= limit + in_flight
    delivered: list[ProcessedMessage] = []
    while len(delivered) < 20:
        delivered.append(await read_one(processor))
        await clock.run_for(1)
        assert processor.stats().undelivered_results <= limit + in_flight
    admissions = await producer
    assert all(admission.accepted for admission in admissions)
    assert sorted(int(item.message.id) for item in delivered) == list(range(20))
    await processor.shutdown()
    assert [item async for item in processor.responses] == []
