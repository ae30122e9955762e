"""Conversation history in Redis: the last exchanges of each conversation, kept where every
process of a gateway reads them, so a conversation whose partition changes hands (a takeover, a
rebalance) goes on with its context.

One list per conversation (``Keys.history``), one JSON ``[user, reply]`` item per exchange,
trimmed to the last ``turns`` and expiring ``ttl`` seconds after the conversation's last
exchange. Only the partition's owner answers a conversation, one turn at a time, so reads and
appends of one conversation never race.

Redis unreachable: a turn goes on without its history (the call is answered, without context)
and an exchange that cannot be stored is lost; each is logged (once per outage) and counted in
:meth:`RedisHistory.stats`. A turn is never failed for its history.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zeroclaw.backends.redis.keys import Keys
from zeroclaw.concurrency._validate import to_count, to_positive_number
from zeroclaw.providers.base import ChatMessage

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisHistory", "RedisHistoryStats"]

_logger = logging.getLogger("zeroclaw.redis")


@dataclass(frozen=True, slots=True)
class RedisHistoryStats:
    """``reads_failed``: turns that went without their history; ``writes_failed``: exchanges
    not stored; ``connected``: the last history command succeeded."""

    reads_failed: int
    writes_failed: int
    connected: bool


class RedisHistory:
    """The last ``turns`` exchanges of each conversation, in Redis (see the module docstring).

    Args:
        client: the Redis client.
        keys: the namespace's key names.
        turns: exchanges kept per conversation (0: none, nothing is read or written).
        ttl: seconds a conversation's history lives after its last exchange.

    Raises:
        TypeError, ValueError: ``turns`` not a count, ``ttl`` not > 0.
    """

    def __init__(self, client: Redis, keys: Keys, turns: int, *, ttl: float = 86_400.0) -> None:
        self._client = client
        self._keys = keys
        self.turns = to_count(turns, what="turns")
        self.ttl = to_positive_number(ttl, what="ttl")
        self._ttl_ms = max(1, round(self.ttl * 1000))
        self._reads_failed = 0
        self._writes_failed = 0
        self._connected = True

    def key_of(self, conversation: Hashable) -> str:
        """The list holding ``conversation``'s exchanges: a stable digest of its key's
        ``repr`` (the same in every process)."""
        digest = hashlib.blake2b(repr(conversation).encode(), digest_size=16).hexdigest()
        return self._keys.history(digest)

    async def messages_for(
        self, conversation: Hashable, system_prompt: str | None, user_text: str
    ) -> list[ChatMessage]:
        """The messages for the next call: the system prompt (when not empty or ``None``), the
        conversation's earlier exchanges, oldest first, then ``user_text``. One round trip;
        without its history when Redis does not answer (logged)."""
        messages: list[ChatMessage] = []
        if system_prompt:
            messages.append(ChatMessage("system", system_prompt))
        if self.turns:
            try:
                items: Any = await self._client.lrange(self.key_of(conversation), 0, -1)
            except Exception as error:
                self._failed(error, "read")
                items = []
            else:
                self._ok()
            for item in items:
                user, reply = json.loads(item)
                messages.append(ChatMessage("user", str(user)))
                messages.append(ChatMessage("assistant", str(reply)))
        messages.append(ChatMessage("user", user_text))
        return messages

    async def record(self, conversation: Hashable, user_text: str, reply: str) -> None:
        """Keep one exchange (only a successful one), the oldest beyond ``turns`` dropped. One
        round trip; lost (logged) when Redis does not answer."""
        if not self.turns:
            return
        key = self.key_of(conversation)
        item = json.dumps([user_text, reply], ensure_ascii=False)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, item)
                pipe.ltrim(key, -self.turns, -1)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()
        except Exception as error:
            self._failed(error, "write")
        else:
            self._ok()

    async def clear(self, conversation: Hashable) -> bool:
        """Forget a conversation's history (``/new``); whether it had any. One round trip.

        Raises:
            redis-py's ConnectionError/TimeoutError: Redis did not answer (the caller says so:
                a ``/new`` that did not happen must not be answered as done).
        """
        return bool(await self._client.delete(self.key_of(conversation)))

    def _failed(self, error: Exception, what: str) -> None:
        if what == "read":
            self._reads_failed += 1
        else:
            self._writes_failed += 1
        if self._connected:
            _logger.warning(
                "conversation history: Redis did not answer (%s: %s); turns go without it "
                "until it does",
                type(error).__name__,
                error,
            )
        self._connected = False

    def _ok(self) -> None:
        if not self._connected:
            _logger.warning("conversation history: Redis answers again")
        self._connected = True

    def stats(self) -> RedisHistoryStats:
        """The counters (see :class:`RedisHistoryStats`). Does not block."""
        return RedisHistoryStats(self._reads_failed, self._writes_failed, self._connected)

    def __repr__(self) -> str:
        return f"RedisHistory(turns={self.turns}, ttl={self.ttl:g})"
