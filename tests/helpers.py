"""Builders and doubles the test modules share: one ``msg()``, a scripted channel, a fake LLM,
an intake that records.

Import them with ``from tests.helpers import ...`` (``tests`` is a package).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    Channel,
    ChannelMessage,
    MessageResult,
    MessageResultKind,
)
from zeroclaw.testing import FakeClock

Handler = Callable[[ChannelMessage], Awaitable[str]]


def msg(
    id: str,
    content: str = "hi",
    *,
    sender: str = "alice",
    channel: str = "telegram",
    reply_target: str | None = None,
    **metadata: Any,
) -> ChannelMessage:
    """A :class:`ChannelMessage` with defaults for what a test does not care about.

    Keyword arguments beyond the named ones become its ``metadata``.
    """
    return ChannelMessage(
        id=id,
        sender=sender,
        content=content,
        channel=channel,
        timestamp=0.0,
        reply_target=reply_target,
        metadata=metadata,
    )


class FakeChannel:
    """A channel that delivers a script of messages, then stays open until cancelled.

    ``arrive(message)`` makes a message arrive while it listens; ``sent`` records every
    ``send(text, recipient)`` as ``(recipient, text)``. ``send_hangs`` makes sends never return.
    """

    def __init__(
        self,
        name: str,
        script: list[ChannelMessage] | None = None,
        *,
        stay_open: bool = True,
        failures: int = 0,
    ) -> None:
        self._name = name
        self.script = list(script or [])
        self.stay_open = stay_open
        self.failures_left = failures
        self.listen_calls = 0
        self.sent: list[tuple[str, str]] = []
        self.send_hangs = False
        self.send_error: Exception | None = None
        self.incoming: asyncio.Queue[ChannelMessage] = asyncio.Queue()

    def arrive(self, message: ChannelMessage) -> None:
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
        if self.send_hangs:
            await asyncio.Event().wait()
        if self.send_error is not None:
            raise self.send_error
        self.sent.append((recipient, message))

    async def health_check(self) -> bool:
        return True


class DeliveringFakeChannel(FakeChannel):
    """A :class:`FakeChannel` with the ``deliver`` hook: records ``(message id, result, text)``."""

    def __init__(self, name: str, script: list[ChannelMessage] | None = None, **kw: Any) -> None:
        super().__init__(name, script, **kw)
        self.delivered: list[tuple[str, MessageResult, str | None]] = []

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        if self.send_hangs:
            await asyncio.Event().wait()
        self.delivered.append((message.id, result, text))


class FakeProvider:
    """An LLM double: answers ``re: <message>`` after ``latency`` fake seconds, or fails while
    ``down``; records its calls and the peak number of calls in flight."""

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


class UnusedProvider:
    """The processor's provider slot: the gateway's handler answers instead, never calling it."""

    name = "unused"

    async def chat_with_system(
        self, system_prompt: str | None, message: str, model: str, temperature: float
    ) -> str:
        raise AssertionError("the handler answers, not the provider")

    async def chat(self, message: str, model: str, temperature: float) -> str:
        raise AssertionError("the handler answers, not the provider")


@dataclass
class Script:
    """A gateway-style handler for the processor's ``handler=`` hook: echo by default (or
    ``behaviour``), recording every message it is called with."""

    calls: list[ChannelMessage] = field(default_factory=list)
    behaviour: Handler | None = None

    def hold(self) -> asyncio.Event:
        """From now on, answer ``"done"`` only once the returned event is set."""
        release = asyncio.Event()

        async def held(message: ChannelMessage) -> str:
            await release.wait()
            return "done"

        self.behaviour = held
        return release

    async def __call__(self, message: ChannelMessage) -> str:
        self.calls.append(message)
        if self.behaviour is not None:
            return await self.behaviour(message)
        return f"echo: {message.content}"


@dataclass
class RecordingIntake:
    """An intake that admits (or refuses) everything and records what it saw."""

    admission: Admission = field(default_factory=lambda: Admission(AdmissionKind.ACCEPTED))
    submitted: list[ChannelMessage] = field(default_factory=list)
    finished_results: list[tuple[str, MessageResultKind]] = field(default_factory=list)
    ignored_messages: list[tuple[str, str, str]] = field(default_factory=list)

    async def submit(self, channel: Channel, message: ChannelMessage) -> Admission:
        self.submitted.append(message)
        return self.admission

    def ignored(self, channel: str, message: ChannelMessage, reason: str) -> None:
        self.ignored_messages.append((channel, message.content, reason))

    def finished(self, message: ChannelMessage, result: MessageResult) -> None:
        self.finished_results.append((message.id, result.kind))
