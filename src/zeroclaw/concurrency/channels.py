"""What the message pipeline talks to: :class:`ChannelMessage`, :class:`Channel`, :class:`Provider`,
and the optional :class:`DeliveringChannel` hook.

Re-exported by :mod:`zeroclaw.concurrency.channel_integration`, where the contract names them. They
live in a module of their own because they are ``runtime_checkable`` protocols (``isinstance``
works on them), and mypyc, which compiles ``channel_integration``, cannot compile those; this
module stays plain Python.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from zeroclaw.concurrency.channel_integration import MessageResult

__all__ = ["Channel", "ChannelMessage", "DeliveringChannel", "Provider"]


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


class DeliveringChannel(Channel, Protocol):
    """A :class:`Channel` that takes each result itself: the optional ``deliver`` hook.

    :class:`~zeroclaw.concurrency.channel_integration.ConcurrentMessageProcessor` looks it up with
    ``getattr(channel, "deliver", None)``; when a channel has it, the processor calls it **instead
    of** ``send`` for every answer to a message from that channel, one at a time per conversation
    and in order, under the processor's ``send_timeout``. A sync-mode webhook resolves the HTTP
    request that waits for the answer from it. (Not ``runtime_checkable``: the lookup is by name.)
    """

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Deliver the answer to ``message``.

        ``result`` is how it ended (a refusal by the intake has kind ``REJECTED`` and a
        :class:`~zeroclaw.concurrency.errors.Rejected` error carrying the reason); ``text`` is the
        reply on SUCCESS, else the notice that would have been sent, or ``None`` when the notice
        for that case is off. Raising or exceeding the send timeout counts as a send failure.
        """
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
