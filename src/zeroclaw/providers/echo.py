"""The ``echo`` backend: replies with the user's message. No network, no model."""

from __future__ import annotations

from collections.abc import Sequence

from zeroclaw.providers.base import ChatMessage, last_user_text

__all__ = ["EchoBackend"]


class EchoBackend:
    """Replies with the content of the last ``user`` message; ``model`` and ``temperature`` are
    ignored. Useful to try a gateway end to end and to measure it without a provider's latency."""

    __slots__ = ("_closed",)

    def __init__(self) -> None:
        self._closed = False

    @property
    def name(self) -> str:
        """``"echo"``."""
        return "echo"

    async def complete(
        self, messages: Sequence[ChatMessage], *, model: str, temperature: float
    ) -> str:
        """Return the last user message's content. Never blocks.

        Raises:
            ValueError: when ``messages`` has no user message.
            RuntimeError: after :meth:`aclose`.
        """
        if self._closed:
            raise RuntimeError("echo backend is closed")
        return last_user_text(messages)

    async def aclose(self) -> None:
        """Mark the backend closed. Idempotent."""
        self._closed = True

    def __repr__(self) -> str:
        return "EchoBackend()"
