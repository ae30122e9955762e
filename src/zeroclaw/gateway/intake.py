"""The gateway's intake: how channels hand messages to the processor, and what it counts.

Push channels call :meth:`GatewayIntake.submit` (the processor's ``submit``) and answer their
platform from the admission; every admission, ignored message and delivered result is counted in
the :class:`~zeroclaw.gateway.metrics.MessageLedger`. Once a drain begins, new messages are
refused ``"shutting down"`` with a ``retry_after`` (the webhook answers 503 + ``Retry-After``)
while the processor finishes what it had.
"""

from __future__ import annotations

import logging
from typing import Protocol

from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    Channel,
    ChannelMessage,
    MessageResult,
)
from zeroclaw.gateway.metrics import MessageLedger

__all__ = ["GatewayIntake", "Submitter"]

_logger = logging.getLogger("zeroclaw.gateway")

# Retry-After given while draining when the drain's end is unknown or past, in seconds.
_DRAIN_RETRY_AFTER = 1.0
_DUPLICATE = Admission(AdmissionKind.DUPLICATE)


class Submitter(Protocol):
    """What admits a push channel's message (``ConcurrentMessageProcessor.submit``)."""

    async def submit(self, channel: Channel, message: ChannelMessage) -> Admission: ...


class GatewayIntake:
    """Admission for push channels plus the message ledger. See the module docstring.

    Args:
        processor: admits messages; ``None`` until :meth:`attach` (channels are built with the
            intake before the processor exists).
        ledger: counts them.
        clock: time source of the drain deadline.
    """

    def __init__(
        self, processor: Submitter | None, ledger: MessageLedger, *, clock: Clock | None = None
    ) -> None:
        self._processor = processor
        self.ledger = ledger
        self._clock = resolve_clock(clock)
        self._drain_deadline: float | None = None

    def attach(self, processor: Submitter) -> None:
        """Admit through ``processor`` from now on."""
        self._processor = processor

    @property
    def draining(self) -> bool:
        """``True`` once :meth:`begin_draining` was called."""
        return self._drain_deadline is not None

    def begin_draining(self, timeout: float) -> None:
        """Refuse new messages from now on; the drain is expected to last ``timeout`` seconds."""
        if self._drain_deadline is None:
            self._drain_deadline = self._clock.now() + timeout

    async def submit(self, channel: Channel, message: ChannelMessage) -> Admission:
        """Admit ``message`` (see :class:`~zeroclaw.channels.base.Intake`). Waits for admission.

        Raises:
            RuntimeError: the processor is not running.
        """
        if self._drain_deadline is not None:
            admission = Admission(
                AdmissionKind.REJECTED, "shutting down", self._drain_retry_after()
            )
        elif self._processor is None:
            raise RuntimeError("the gateway is not running yet")
        else:
            admission = await self._processor.submit(channel, message)
            if (
                admission.kind is AdmissionKind.REJECTED
                and admission.reason == "shutting down"
                and admission.retry_after is None
            ):
                admission = Admission(admission.kind, admission.reason, self._drain_retry_after())
        self.ledger.admitted(message.channel, message, admission)
        return admission

    def _drain_retry_after(self) -> float:
        if self._drain_deadline is None:
            return _DRAIN_RETRY_AFTER
        return max(_DRAIN_RETRY_AFTER, self._drain_deadline - self._clock.now())

    def ignored(self, channel: str, message: ChannelMessage, reason: str) -> None:
        """Count and log a message that is not processed. Does not block."""
        _logger.info(
            "channel %r: message %r from %r ignored: %s",
            channel,
            message.id,
            message.sender,
            reason,
        )
        self.ledger.ignored(channel)

    def duplicate(self, channel: str, message: ChannelMessage) -> None:
        """Count a redelivery that a channel recognised itself and answered without submitting
        it (a Slack retry of an event admitted earlier than the processor's dedup remembers).
        Does not block."""
        self.ledger.admitted(channel, message, _DUPLICATE)

    def finished(self, message: ChannelMessage, result: MessageResult) -> None:
        """Count an accepted message's delivered result. Does not block."""
        self.ledger.finished(message, result)
