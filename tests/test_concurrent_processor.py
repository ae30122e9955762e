"""ConcurrentMessageProcessor: channels in, provider replies out (docs/channel_integration.md)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from zeroclaw.concurrency.channel_integration import (
    Channel,
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
    Notices,
    Provider,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig, CircuitState
from zeroclaw.testing import FakeClock, settle


class FakeChannel:
    """A channel that delivers a script of messages, then stays open until cancelled."""

    def __init__(
        self,
        name: str,
        script: list[ChannelMessage],
        *,
        stay_open: bool = True,
        failures: int = 0,
    ) -> None:
        self._name = name
        self.script = list(script)
        self.stay_open = stay_open
        self.failures_left = failures
        self.listen_calls = 0
        self.sent: list[tuple[str, str]] = []
        self.incoming: asyncio.Queue[ChannelMessage] = asyncio.Queue()

    def deliver(self, message: ChannelMessage) -> None:
        """A message arrives from the platform while the channel is listening."""
        self.incoming.put_nowait(message)

    @property
    def name(self) -> str:
        return self._name

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        self.listen_calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("websocket dropped")
        while self.script:
            await queue.put(self.script.pop(0))
        while self.stay_open:
            await queue.put(await self.incoming.get())

    async def send(self, message: str, recipient: str) -> None:
        self.sent.append((recipient, message))

    async def health_check(self) -> bool:
        return True


class FakeProvider:
    """An LLM double: answers after ``latency`` fake seconds, or fails while ``down``."""

    name = "fake-llm"

    def __init__(self, clock: FakeClock, latency: float = 0.1) -> None:
        self.clock = clock
        self.latency = latency
        self.down = False
        self.calls: list[tuple[str | None, str, str, float]] = []
        self.in_flight = 0
        self.peak = 0

    async def chat_with_system(
        self, system_prompt: str | None, message: str, model: str, temperature: float
    ) -> str:
        self.calls.append((system_prompt, message, model, temperature))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.clock.sleep(self.latency)
            if self.down:
                raise ConnectionError("503 Service Unavailable")
            return f"re: {message}"
        finally:
            self.in_flight -= 1

    async def chat(self, message: str, model: str, temperature: float) -> str:
        return await self.chat_with_system(None, message, model, temperature)


def message(channel: str, id: str, sender: str, content: str) -> ChannelMessage:
    return ChannelMessage(id=id, sender=sender, content=content, channel=channel, timestamp=0.0)


def test_fakes_satisfy_the_protocols() -> None:
    assert isinstance(FakeChannel("x", []), Channel)
    assert isinstance(FakeProvider(FakeClock()), Provider)


async def test_answers_four_conversations_concurrently_and_replies_to_each() -> None:
    clock = FakeClock()
    telegram = FakeChannel(
        "telegram", [message("telegram", str(i), f"user{i}", f"q{i}") for i in range(4)]
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
        ChannelMessage(
            id=str(i),
            sender=f"member{i % 2}",
            content=f"m{i}",
            channel="slack",
            timestamp=0.0,
            reply_target="C-general",
        )
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
    channel.deliver(message("cli", "slow", "a", "slow"))
    await settle()
    channel.deliver(message("cli", "extra", "b", "extra"))  # at capacity: refused
    await settle()
    assert channel.sent == [("b", "BUSY")]
    await clock.run_for(1.0)
    assert channel.sent[-1] == ("a", "TIMEOUT")
    provider.latency = 0.1
    provider.down = True
    channel.deliver(message("cli", "broken", "c", "x"))
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
    script = [message("cli", str(i), f"user{i}", "x") for i in range(2)]
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
    channel = FakeChannel("telegram", [message("telegram", "1", "u", "hello")], failures=3)
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
    channel = FakeChannel("cli", [message("cli", "1", "u", "long")])
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
    channel = FakeChannel("cli", [message("nowhere", "1", "u", "x")], stay_open=False)
    gateway = ConcurrentMessageProcessor(clock=clock, handle_signals=False)
    await gateway.start([channel], FakeProvider(clock), None)
    assert "unknown channel 'nowhere'" in caplog.text
    assert channel.sent == []


async def test_duplicate_channel_names_are_refused() -> None:
    clock = FakeClock()
    gateway = ConcurrentMessageProcessor(clock=clock, handle_signals=False)
    with pytest.raises(ValueError, match="distinct names"):
        await gateway.start([FakeChannel("a", []), FakeChannel("a", [])], FakeProvider(clock), None)
