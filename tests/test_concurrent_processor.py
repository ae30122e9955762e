"""ConcurrentMessageProcessor: channels in, provider replies out (docs/channel_integration.md)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.helpers import FakeChannel, FakeProvider, msg
from zeroclaw.concurrency.channel_integration import (
    Channel,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
    Notices,
    Provider,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig, CircuitState
from zeroclaw.testing import FakeClock, settle


def test_fakes_satisfy_the_protocols() -> None:
    assert isinstance(FakeChannel("x", []), Channel)
    assert isinstance(FakeProvider(FakeClock()), Provider)


async def test_answers_four_conversations_concurrently_and_replies_to_each() -> None:
    clock = FakeClock()
    telegram = FakeChannel(
        "telegram", [msg(str(i), f"q{i}", sender=f"user{i}", channel="telegram") for i in range(4)]
    )
    provider = FakeProvider(clock, latency=0.1)
    gateway = ConcurrentMessageProcessor(
        model="gpt-test", temperature=0.2, clock=clock, handle_signals=False
    )
    running = asyncio.ensure_future(gateway.start([telegram], provider, "SYS"))
    await clock.run_for(0.1)
    await settle()
    assert sorted(telegram.sent) == [(f"user{i}", f"re: q{i}") for i in range(4)]
    assert provider.peak == 4
    assert provider.calls[0][0] == "SYS"
    assert {c[2:] for c in provider.calls} == {("gpt-test", 0.2)}
    await gateway.stop()
    await running
    assert set(gateway.circuit_breaker_stats()) == {"fake-llm:gpt-test"}


async def test_replies_go_to_reply_target_and_keep_conversation_order() -> None:
    clock = FakeClock()
    script = [
        msg(str(i), f"m{i}", sender=f"member{i % 2}", channel="slack", reply_target="C-general")
        for i in range(5)
    ]
    slack = FakeChannel("slack", script, stay_open=False)
    provider = FakeProvider(clock, latency=0.5)
    gateway = ConcurrentMessageProcessor(clock=clock, handle_signals=False)
    running = asyncio.ensure_future(gateway.start([slack], provider, None))
    await clock.run_for(10)
    await running  # every listener ended and every message was answered
    assert slack.sent == [("C-general", f"re: m{i}") for i in range(5)]
    assert provider.peak == 1  # one conversation: one message at a time


async def test_failures_timeouts_and_refusals_get_short_notices() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(
        processing_timeout=1.0,
        max_concurrent_requests=1,
        admission="reject",
        circuit_config=CircuitConfig(failure_threshold=10),
    )
    channel = FakeChannel("cli", [])
    provider = FakeProvider(clock, latency=5.0)  # past the timeout
    notices = Notices(failed="FAILED", timeout="TIMEOUT", refused="BUSY")
    gateway = ConcurrentMessageProcessor(config, clock=clock, notices=notices, handle_signals=False)
    running = asyncio.ensure_future(gateway.start([channel], provider, None))
    channel.arrive(msg("slow", "slow", sender="a", channel="cli"))
    await settle()
    channel.arrive(msg("extra", "extra", sender="b", channel="cli"))  # at capacity: refused
    await settle()
    assert channel.sent == [("b", "BUSY")]
    await clock.run_for(1.0)
    assert channel.sent[-1] == ("a", "TIMEOUT")
    provider.latency = 0.1
    provider.down = True
    channel.arrive(msg("broken", "x", sender="c", channel="cli"))
    await clock.run_for(0.1)
    assert channel.sent[-1] == ("c", "FAILED")
    await gateway.stop()
    await running


async def test_breaker_per_provider_and_model_opens_and_refuses_with_notice() -> None:
    clock = FakeClock()
    config = MessageProcessorConfig(
        circuit_config=CircuitConfig(failure_threshold=2, timeout_duration=60)
    )
    provider = FakeProvider(clock, latency=0.1)
    provider.down = True
    script = [msg(str(i), "x", sender=f"user{i}", channel="cli") for i in range(2)]
    channel = FakeChannel("cli", script)
    gateway = ConcurrentMessageProcessor(
        config,
        clock=clock,
        notices=Notices(failed="FAILED", refused="BUSY"),
        handle_signals=False,
    )
    running = asyncio.ensure_future(gateway.start([channel], provider, None))
    await clock.run_for(0.1)
    await settle()
    [(name, stats)] = gateway.circuit_breaker_stats().items()
    assert name == "fake-llm:default"
    assert stats.state is CircuitState.OPEN
    assert sorted(channel.sent) == [("user0", "FAILED"), ("user1", "FAILED")]
    processor = gateway.processor
    assert processor is not None
    await gateway.stop()
    await running
    assert len(provider.calls) == 2


async def test_a_failing_listener_is_restarted_with_backoff() -> None:
    clock = FakeClock()
    channel = FakeChannel(
        "telegram", [msg("1", "hello", sender="u", channel="telegram")], failures=3
    )
    provider = FakeProvider(clock, latency=0.0)
    gateway = ConcurrentMessageProcessor(
        clock=clock, listener_backoff=(1.0, 3.0), handle_signals=False
    )
    running = asyncio.ensure_future(gateway.start([channel], provider, None))
    await settle()
    assert channel.listen_calls == 1
    await clock.run_for(1.0)  # first backoff: 1 s
    assert channel.listen_calls == 2
    await clock.run_for(1.9)  # second: 2 s
    assert channel.listen_calls == 2
    await clock.run_for(0.1)
    assert channel.listen_calls == 3
    await clock.run_for(3.0)  # third: capped at 3 s
    assert channel.listen_calls == 4
    await settle()
    assert channel.sent == [("u", "re: hello")]
    await gateway.stop()
    await running


async def test_sigterm_drains_in_flight_messages() -> None:
    clock = FakeClock()
    channel = FakeChannel("cli", [msg("1", "long", sender="u", channel="cli")])
    provider = FakeProvider(clock, latency=2.0)
    gateway = ConcurrentMessageProcessor(clock=clock)
    running = asyncio.ensure_future(gateway.start([channel], provider, None))
    await settle()
    assert provider.in_flight == 1
    os.kill(os.getpid(), signal.SIGTERM)
    await settle()
    assert not running.done()  # draining: the message in flight is still answered
    await clock.run_for(2.0)
    await running
    assert channel.sent == [("u", "re: long")]


async def test_unknown_channel_messages_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    channel = FakeChannel("cli", [msg("1", "x", sender="u", channel="nowhere")], stay_open=False)
    gateway = ConcurrentMessageProcessor(clock=clock, handle_signals=False)
    await gateway.start([channel], FakeProvider(clock), None)
    assert "unknown channel 'nowhere'" in caplog.text
    assert channel.sent == []


async def test_duplicate_channel_names_are_refused() -> None:
    clock = FakeClock()
    gateway = ConcurrentMessageProcessor(clock=clock, handle_signals=False)
    with pytest.raises(ValueError, match="distinct names"):
        await gateway.start([FakeChannel("a", []), FakeChannel("a", [])], FakeProvider(clock), None)
