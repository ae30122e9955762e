"""ManagedProvider as the core processor's provider: replies reach the channel, and the circuit
breaker sees each call's final failure (after the retries), not each attempt."""

from __future__ import annotations

import asyncio

from zeroclaw.concurrency.channel_integration import (
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
    Notices,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig, CircuitState
from zeroclaw.providers import EchoBackend, ManagedProvider, SimulatedBackend
from zeroclaw.testing import FakeClock, settle


class ScriptChannel:
    """Delivers its messages, then whatever :meth:`push` gets; records what was sent.

    (Not named ``deliver``: the processor calls a channel's ``deliver(message, result, text)``
    hook instead of ``send`` when it has one.)
    """

    def __init__(self, messages: list[ChannelMessage]) -> None:
        self.incoming: asyncio.Queue[ChannelMessage] = asyncio.Queue()
        for message in messages:
            self.incoming.put_nowait(message)
        self.sent: list[tuple[str, str]] = []

    def push(self, message: ChannelMessage) -> None:
        self.incoming.put_nowait(message)

    @property
    def name(self) -> str:
        return "cli"

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        while True:
            await queue.put(await self.incoming.get())

    async def send(self, message: str, recipient: str) -> None:
        self.sent.append((recipient, message))

    async def health_check(self) -> bool:
        return True


def incoming(n: int, content: str = "hello") -> ChannelMessage:
    return ChannelMessage(id=str(n), sender=f"user{n}", content=content, channel="cli", timestamp=0)


async def test_replies_come_back_through_the_processor() -> None:
    clock = FakeClock()
    channel = ScriptChannel([incoming(1, "ping"), incoming(2, "pong")])
    provider = ManagedProvider(EchoBackend(), clock=clock)
    gateway = ConcurrentMessageProcessor(clock=clock, handle_signals=False)
    running = asyncio.ensure_future(gateway.start([channel], provider, "be brief"))
    await clock.run_for(1.0)
    await settle()
    assert sorted(channel.sent) == [("user1", "ping"), ("user2", "pong")]
    assert provider.stats().successes == 2
    await gateway.stop()
    await running


async def test_the_breaker_counts_final_failures_after_the_retries() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(error_rate=1.0, base_latency=0.1, latency_sigma=0.0, clock=clock)
    provider = ManagedProvider(backend, max_retries=1, clock=clock)
    config = MessageProcessorConfig(
        circuit_config=CircuitConfig(failure_threshold=3, timeout_duration=60)
    )
    channel = ScriptChannel([incoming(1), incoming(2)])
    gateway = ConcurrentMessageProcessor(
        config, clock=clock, notices=Notices(failed="FAILED", refused="BUSY"), handle_signals=False
    )
    running = asyncio.ensure_future(gateway.start([channel], provider, None))
    await clock.run_for(5.0)
    [(name, breaker)] = gateway.circuit_breaker_stats().items()
    assert name == "simulated:default"
    # Four failed attempts, two failed calls: the breaker counted two.
    assert (breaker.state, breaker.consecutive_failures) == (CircuitState.CLOSED, 2)
    assert sorted(channel.sent) == [("user1", "FAILED"), ("user2", "FAILED")]
    assert backend.calls == 4
    stats = provider.stats()
    assert (stats.failures, stats.retries) == (2, 2)
    assert dict(stats.errors_by_class) == {"server": 2}
    channel.push(incoming(3))
    await clock.run_for(5.0)
    assert backend.calls == 6
    assert gateway.circuit_breaker_stats()[name].state is CircuitState.OPEN  # the third failure
    await gateway.stop()
    await running
