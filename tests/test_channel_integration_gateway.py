"""ConcurrentMessageProcessor: the gateway hooks and its stop.

submit() for push channels, wait_started(), the deliver() channel hook, send_timeout, handler=,
channel_stats(); and the stop paths: stop() before start(), sends that never return, messages
taken from a channel but not yet admitted when the stop comes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.helpers import DeliveringFakeChannel, FakeChannel, FakeProvider, msg
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelCounters,
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
    MessageResultKind,
    Notices,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig, CircuitState
from zeroclaw.concurrency.errors import Rejected
from zeroclaw.testing import FakeClock, settle

NOTICES = Notices(
    failed="FAILED", timeout="TIMEOUT", refused="BUSY", cancelled=None, unavailable="DOWN"
)


def gateway(clock: FakeClock, config: MessageProcessorConfig | None = None, **kw: Any) -> Any:
    kw.setdefault("notices", NOTICES)
    return ConcurrentMessageProcessor(config, clock=clock, handle_signals=False, **kw)


async def running(
    cmp: ConcurrentMessageProcessor, channels: list[Any], provider: Any
) -> asyncio.Task[None]:
    task = asyncio.ensure_future(cmp.start(channels, provider, "SYS"))
    await cmp.wait_started()
    return task


# ---------------------------------------------------------------- wait_started / started


async def test_wait_started_returns_once_start_runs() -> None:
    clock = FakeClock()
    cmp = gateway(clock)
    waiter = asyncio.ensure_future(cmp.wait_started())
    await settle()
    assert not waiter.done()
    assert not cmp.started
    task = asyncio.ensure_future(cmp.start([FakeChannel("cli")], FakeProvider(clock), None))
    await settle()
    assert waiter.done()
    assert waiter.exception() is None
    assert cmp.started
    await cmp.wait_started()  # at once while running
    await cmp.stop()
    await task
    assert not cmp.started


async def test_wait_started_raises_when_start_fails_before_running() -> None:
    clock = FakeClock()
    cmp = gateway(clock)
    waiter = asyncio.ensure_future(cmp.wait_started())
    await settle()
    with pytest.raises(ValueError, match="distinct names"):
        await cmp.start([FakeChannel("a"), FakeChannel("a")], FakeProvider(clock), None)
    with pytest.raises(RuntimeError, match="distinct names"):
        await waiter


# ---------------------------------------------------------------- stop() before start()


async def test_stop_before_start_ran_makes_start_return_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The classic race: the start() task is created, stop() comes before it got to run.
    clock = FakeClock()
    cmp = gateway(clock)
    channel = FakeChannel("cli", [msg("1", channel="cli")])
    caplog.set_level(logging.INFO)
    task = asyncio.ensure_future(cmp.start([channel], FakeProvider(clock), None))
    await cmp.stop()
    await settle()
    assert task.done()
    task.result()
    assert channel.listen_calls == 0
    assert "stop() was called before start() ran" in caplog.text
    # The stop was used up: the next start runs.
    task = asyncio.ensure_future(cmp.start([channel], FakeProvider(clock), None))
    await settle()
    assert cmp.started
    assert not task.done()
    await cmp.stop()
    await clock.run_for(1)
    await task


async def test_wait_started_raises_when_stop_came_first() -> None:
    clock = FakeClock()
    cmp = gateway(clock)
    await cmp.stop()
    waiter = asyncio.ensure_future(cmp.wait_started())
    await settle()
    await cmp.start([FakeChannel("cli")], FakeProvider(clock), None)
    with pytest.raises(RuntimeError, match="stop"):
        await waiter


# ---------------------------------------------------------------- submit


async def test_submit_needs_start_running() -> None:
    clock = FakeClock()
    cmp = gateway(clock)
    with pytest.raises(RuntimeError, match="start"):
        await cmp.submit(FakeChannel("hook"), msg("1", channel="hook"))


async def test_submit_admits_through_the_processor_and_replies_on_the_channel() -> None:
    clock = FakeClock()
    hook = FakeChannel("hook")
    provider = FakeProvider(clock, latency=1.0)
    cmp = gateway(clock)
    task = await running(cmp, [hook], provider)
    first = await cmp.submit(hook, msg("1", "q", sender="u", channel="hook"))
    again = await cmp.submit(hook, msg("1", "q", sender="u", channel="hook"))
    assert first.kind is AdmissionKind.ACCEPTED
    assert again.kind is AdmissionKind.DUPLICATE  # same dedup as the listeners' messages
    await clock.run_for(1.0)
    await settle()
    assert hook.sent == [("u", "re: q")]
    assert provider.calls == [("SYS", "q", "default", 0.7)]
    assert cmp.channel_stats()["hook"] == ChannelCounters(received=2, sent=1, send_failures=0)
    await cmp.stop()
    await task


async def test_submit_sends_no_refusal_notice_itself() -> None:
    clock = FakeClock()
    hook = FakeChannel("hook")
    config = MessageProcessorConfig(max_concurrent_requests=1, admission="reject")
    cmp = gateway(clock, config)
    task = await running(cmp, [hook], FakeProvider(clock, latency=1.0))
    assert (await cmp.submit(hook, msg("1", sender="a", channel="hook"))).accepted
    refused = await cmp.submit(hook, msg("2", sender="b", channel="hook"))
    assert (refused.kind, refused.reason) == (AdmissionKind.REJECTED, "overloaded")
    await settle()
    assert hook.sent == []  # the caller answers the platform
    await cmp.stop()
    await clock.run_for(1.0)
    await task
    assert hook.sent == [("a", "re: hi")]


async def test_submit_refuses_shutting_down_once_stop_began() -> None:
    clock = FakeClock()
    hook = FakeChannel("hook")
    provider = FakeProvider(clock, latency=5.0)
    cmp = gateway(clock)
    task = await running(cmp, [hook], provider)
    assert (await cmp.submit(hook, msg("1", sender="a", channel="hook"))).accepted
    await cmp.stop()
    await settle()
    assert not task.done()  # draining message 1
    refused = await cmp.submit(hook, msg("2", sender="b", channel="hook"))
    assert (refused.kind, refused.reason) == (AdmissionKind.REJECTED, "shutting down")
    await clock.run_for(5.0)
    await task
    assert hook.sent == [("a", "re: hi")]
    with pytest.raises(RuntimeError):
        await cmp.submit(hook, msg("3", channel="hook"))


# ---------------------------------------------------------------- handler=


async def test_handler_replaces_the_provider_call() -> None:
    clock = FakeClock()
    seen: list[str] = []

    async def handler(message: ChannelMessage) -> str:
        seen.append(message.id)
        return f"handled {message.content}"

    channel = FakeChannel("cli", [msg("1", "x", sender="u", channel="cli")])
    provider = FakeProvider(clock)
    cmp = gateway(clock, handler=handler)
    task = await running(cmp, [channel], provider)
    await settle()
    assert channel.sent == [("u", "handled x")]
    assert seen == ["1"]
    assert provider.calls == []
    await cmp.stop()
    await task


def test_handler_must_be_an_async_function() -> None:
    def sync_handler(message: ChannelMessage) -> str:
        return message.content

    with pytest.raises(TypeError, match="async function"):
        ConcurrentMessageProcessor(handler=sync_handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async function"):
        ConcurrentMessageProcessor(handler="reply")  # type: ignore[arg-type]


# ---------------------------------------------------------------- deliver()


async def test_deliver_replaces_send_for_every_result_in_conversation_order() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(processing_timeout=2.0)
    channel = DeliveringFakeChannel("hook")
    provider = FakeProvider(clock, latency=1.0)
    cmp = gateway(clock, config, notices=Notices(cancelled=None, timeout="TIMEOUT"))
    task = await running(cmp, [channel], provider)
    for i in range(3):
        await cmp.submit(channel, msg(str(i), f"q{i}", sender="u", channel="hook"))
    await clock.run_for(3.0)
    await settle()
    assert [(id, result.kind, text) for id, result, text in channel.delivered] == [
        ("0", MessageResultKind.SUCCESS, "re: q0"),
        ("1", MessageResultKind.SUCCESS, "re: q1"),
        ("2", MessageResultKind.SUCCESS, "re: q2"),
    ]
    provider.latency = 10.0  # past the processing timeout
    await cmp.submit(channel, msg("3", sender="u", channel="hook"))
    await clock.run_for(2.0)
    await settle()
    assert channel.delivered[-1][1].kind is MessageResultKind.TIMEOUT
    assert channel.delivered[-1][2] == "TIMEOUT"
    assert channel.sent == []  # deliver instead of send
    await cmp.stop()
    await task
    assert cmp.channel_stats()["hook"].sent == 4


async def test_deliver_gets_results_without_a_notice_text_too() -> None:
    # CANCELLED has no notice (None): a webhook waiting for an answer must still hear of it.
    clock = FakeClock()
    channel = DeliveringFakeChannel("hook")
    provider = FakeProvider(clock, latency=10.0)
    cmp = gateway(clock, drain_timeout=1.0)
    task = await running(cmp, [channel], provider)
    await cmp.submit(channel, msg("1", sender="u", channel="hook"))
    await settle()
    await cmp.stop()
    await clock.run_for(1.0)
    await settle()
    await task
    [(id, result, text)] = channel.delivered
    assert (id, result.kind, text) == ("1", MessageResultKind.CANCELLED, None)


async def test_intake_refusals_are_delivered_with_their_reason() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(max_concurrent_requests=1, admission="reject")
    channel = DeliveringFakeChannel("hook")
    cmp = gateway(clock, config)
    task = await running(cmp, [channel], FakeProvider(clock, latency=1.0))
    channel.arrive(msg("1", sender="a", channel="hook"))
    channel.arrive(msg("2", sender="b", channel="hook"))
    await settle()
    [(id, result, text)] = channel.delivered
    assert (id, result.kind, text) == ("2", MessageResultKind.REJECTED, "BUSY")
    assert isinstance(result.error, Rejected)
    assert str(result.error) == "overloaded"
    await cmp.stop()
    await clock.run_for(1.0)
    await task


# ---------------------------------------------------------------- send_timeout


def test_send_timeout_is_validated() -> None:
    with pytest.raises(ValueError, match="send_timeout"):
        ConcurrentMessageProcessor(send_timeout=0)
    with pytest.raises(ValueError, match="send_timeout"):
        ConcurrentMessageProcessor(send_timeout=float("nan"))
    with pytest.raises(TypeError, match="send_timeout"):
        ConcurrentMessageProcessor(send_timeout="30")  # type: ignore[arg-type]
    ConcurrentMessageProcessor(send_timeout=None)


async def test_a_send_past_send_timeout_is_cancelled_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    channel = FakeChannel("cli", [msg("1", "a", sender="u", channel="cli")])
    channel.send_hangs = True
    cmp = gateway(clock, send_timeout=5.0)
    task = await running(cmp, [channel], FakeProvider(clock, latency=0.0))
    await settle()
    await clock.run_for(4.9)
    assert cmp.channel_stats()["cli"].send_failures == 0
    await clock.run_for(0.1)
    await settle()
    assert cmp.channel_stats()["cli"] == ChannelCounters(received=1, sent=0, send_failures=1)
    assert "timed out after 5s" in caplog.text
    channel.send_hangs = False  # the next answer to the same conversation is not held up
    channel.arrive(msg("2", "b", sender="u", channel="cli"))
    await settle()
    assert channel.sent == [("u", "re: b")]
    await cmp.stop()
    await task


async def test_a_send_error_is_counted_and_the_next_send_goes_out() -> None:
    clock = FakeClock()
    channel = FakeChannel("cli")
    channel.send_error = ConnectionError("platform down")
    cmp = gateway(clock)
    task = await running(cmp, [channel], FakeProvider(clock, latency=0.0))
    channel.arrive(msg("1", sender="u", channel="cli"))
    await settle()
    channel.send_error = None
    channel.arrive(msg("2", sender="u", channel="cli"))
    await settle()
    assert channel.sent == [("u", "re: hi")]
    assert cmp.channel_stats()["cli"] == ChannelCounters(received=2, sent=1, send_failures=1)
    await cmp.stop()
    await task


async def test_stop_cancels_sends_that_never_return() -> None:
    # Regression: a send() that never returned kept start() from returning after stop().
    clock = FakeClock()
    channel = FakeChannel("cli", [msg("1", sender="u", channel="cli")])
    channel.send_hangs = True
    cmp = gateway(clock, drain_timeout=1.0, send_timeout=None)
    task = asyncio.ensure_future(cmp.start([channel], FakeProvider(clock, latency=0.0), None))
    await settle()
    await cmp.stop()
    await clock.run_for(60.0)  # the drain, then the grace for sends still running
    await settle()
    assert task.done()
    task.result()
    assert cmp.channel_stats()["cli"].send_failures == 1


# ---------------------------------------------------------------- stop and the inbox


async def test_messages_taken_but_not_admitted_at_stop_are_answered() -> None:
    # Regression: stop() cancelled the intake, losing the message it was admitting and every
    # message still in the inbox without a word.
    clock = FakeClock()
    script = [msg(str(i), f"q{i}", sender=f"u{i}", channel="cli") for i in range(4)]
    channel = FakeChannel("cli", script)
    config = MessageProcessorConfig(max_concurrent_requests=1)  # admission="wait"
    cmp = gateway(clock, config)
    task = await running(cmp, [channel], FakeProvider(clock, latency=1.0))
    await settle()  # u0 runs; the intake waits to admit u1; u2 and u3 wait in the inbox
    await cmp.stop()
    await clock.run_for(1.0)
    await settle()
    await task
    assert sorted(channel.sent) == [
        ("u0", "re: q0"),
        ("u1", "BUSY"),
        ("u2", "BUSY"),
        ("u3", "BUSY"),
    ]
    stats = cmp.stats()
    assert stats is not None
    assert stats.rejected == 3
    assert cmp.channel_stats()["cli"].received == 4


# ---------------------------------------------------------------- validation, notices


@pytest.mark.parametrize(
    ("backoff", "error"),
    [
        ((0.0, 60.0), ValueError),
        ((-1.0, 60.0), ValueError),
        ((1.0, 0.5), ValueError),
        ((1.0, float("inf")), ValueError),
        ((True, 60.0), TypeError),
        (("1", 60.0), TypeError),
        (1.0, TypeError),
    ],
)
def test_listener_backoff_is_validated(backoff: Any, error: type[Exception]) -> None:
    # Regression: a backoff starting at 0 restarted a failing listener in a busy loop.
    with pytest.raises(error, match="listener_backoff"):
        ConcurrentMessageProcessor(listener_backoff=backoff)


async def test_refusals_while_the_breaker_is_open_say_unavailable_not_busy() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(
        circuit_config=CircuitConfig(failure_threshold=1, timeout_duration=60)
    )
    channel = FakeChannel("cli")
    provider = FakeProvider(clock, latency=0.0)
    provider.down = True
    cmp = gateway(clock, config)
    task = await running(cmp, [channel], provider)
    channel.arrive(msg("1", sender="a", channel="cli"))
    await settle()
    assert cmp.circuit_breaker_stats()["fake-llm:default"].state is CircuitState.OPEN
    channel.arrive(msg("2", sender="b", channel="cli"))
    await settle()
    assert channel.sent == [("a", "FAILED"), ("b", "DOWN")]
    await cmp.stop()
    await task
