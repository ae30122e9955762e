"""What the message pipeline talks to: :class:`ChannelMessage`, :class:`Channel`, :class:`Provider`.

Re-exported by :mod:`zeroclaw.concurrency.channel_integration`, where the contract names them. They
live in a module of their own because they are ``runtime_checkable`` protocols (``isinstance``
works on them), and mypyc, which compiles ``channel_integration``, cannot compile those; this
module stays plain Python.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Channel", "ChannelMessage", "Provider"]


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """One incoming chat message.

    ``id`` is the platform's id for it (Telegram ``update_id``, Slack ``event_id``...): the
    idempotency key redeliveries share. ``channel`` is the channel's name. ``reply_target`` is
    where the reply goes (a chat or channel id); ``None`` means the sender.
    """

    id: str
    sender: str
    content: str
    channel: str
    timestamp: float
    reply_target: str | None = None
    thread_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def reply_to(self) -> str:
        """Where a reply goes: ``reply_target``, else ``sender``."""
        return self.reply_target or self.sender


@runtime_checkable
class Channel(Protocol):
    """A chat channel: a source of messages and a way to answer."""

    @property
    def name(self) -> str:
        """The channel's name; :attr:`ChannelMessage.channel` refers to it."""
        ...

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        """Put incoming messages on ``queue``; runs until the channel ends or fails."""
        ...

    async def send(self, message: str, recipient: str) -> None:
        """Send ``message`` to ``recipient``."""
        ...

    async def health_check(self) -> bool:
        """``True`` when the channel can send and receive."""
        ...


@runtime_checkable
class Provider(Protocol):
    """An LLM provider."""

    async def chat_with_system(
        self, system_prompt: str | None, message: str, model: str, temperature: float
    ) -> str:
        """Answer ``message`` under ``system_prompt``."""
        ...

    async def chat(self, message: str, model: str, temperature: float) -> str:
        """Answer ``message`` with no system prompt."""
        ...
