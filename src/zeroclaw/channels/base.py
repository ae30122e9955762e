"""What the gateway's channels share: the intake messages are admitted through, the settings.

A *push* channel (the generic webhook; Telegram and Slack in webhook mode) receives a message in an
HTTP request whose answer depends on the admission, so it does not put messages on the listener
queue: it calls :meth:`Intake.submit` and answers the platform from the :class:`Admission`. The
gateway's intake also keeps the per-channel message ledger behind ``zeroclaw_messages_total`` and
``zeroclaw_message_duration_seconds``; channels report what happened to each message through it.

This module imports only the standard library and the core, so a channel kind that needs no HTTP
(the terminal) loads no HTTP stack.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    Channel,
    ChannelMessage,
    MessageResult,
)

__all__ = ["ChannelContext", "ChannelSpec", "Intake", "allows", "submit_within"]

_logger = logging.getLogger("zeroclaw.channels")


class Intake(Protocol):
    """Where a channel hands its messages to the gateway (implemented by ``GatewayIntake``).

    ``GatewayIntake`` also has ``duplicate(channel, message)``, looked up with ``getattr`` (an
    intake may lack it): a channel that answers a redelivery from its own memory, without
    submitting it, reports it there so that it is counted as a duplicate.
    """

    async def submit(self, channel: Channel, message: ChannelMessage) -> Admission:
        """Admit ``message`` from ``channel``; returns the admission. Waits while admission waits.

        Raises:
            RuntimeError: the gateway is not running.
        """
        ...

    def ignored(self, channel: str, message: ChannelMessage, reason: str) -> None:
        """Record (and log) a message that is not processed: a sender not allowed, say."""
        ...

    def finished(self, message: ChannelMessage, result: MessageResult) -> None:
        """Record that the reply (or notice) of an accepted ``message`` has been delivered."""
        ...


class ChannelSpec(Protocol):
    """The shape of a channel's settings (``zeroclaw.gateway.config.ChannelSettings`` has it).

    ``options`` holds the kind's own keys (webhook: ``token``, ``callback_url``).
    ``allowed_users`` ``None`` means the key was not given (only the terminal allows that).
    """

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def allowed_users(self) -> tuple[str, ...] | None: ...

    @property
    def path(self) -> str | None: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ChannelContext:
    """What the gateway gives every channel it builds.

    ``stdin_fd`` and ``stdout`` are the terminal channel's; ``max_body_bytes`` the HTTP channels'.
    """

    intake: Intake
    max_body_bytes: int = 1_048_576
    stdin_fd: int = 0
    stdout: TextIO = field(default_factory=lambda: sys.stdout)


def allows(allowed_users: tuple[str, ...] | None, *identities: str | None) -> bool:
    """``True`` when one of ``identities`` is allowed: ``"*"`` allows all, ``()`` denies all.

    ``None`` (no list configured) allows all. Does not block.
    """
    if allowed_users is None or "*" in allowed_users:
        return True
    return any(identity is not None and identity in allowed_users for identity in identities)


async def submit_within(
    intake: Intake, channel: Channel, message: ChannelMessage, timeout: float
) -> Admission:
    """Admit ``message`` through ``intake``, waiting at most ``timeout`` seconds.

    A push channel answers its platform from the result, so it must not wait longer than the
    platform does (Slack: 3 s). Waits for admission; never raises for the two ways admission
    can fail here: past ``timeout`` the submission is cancelled and the answer is REJECTED
    ``"admission timed out"``; a gateway not running (logged) gives REJECTED ``"not running"``.
    Both are answered 429/503 by :func:`zeroclaw.channels.http.refusal_response`, so the
    platform redelivers later.
    """
    try:
        async with asyncio.timeout(timeout):
            return await intake.submit(channel, message)
    except TimeoutError:
        return Admission(AdmissionKind.REJECTED, "admission timed out")
    except RuntimeError as exc:
        _logger.warning("channel %r: %s", channel.name, exc)
        return Admission(AdmissionKind.REJECTED, "not running")
