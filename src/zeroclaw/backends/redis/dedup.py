"""The dedup claim in Redis: ``SET key 1 NX PX ttl``, so processes sharing a server claim a key
once between them."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING

from zeroclaw.backends.redis.keys import Keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisDedupStore"]


class RedisDedupStore:
    """A :class:`~zeroclaw.concurrency.DedupStore` in Redis, with ``EXACT`` semantics.

    A claim is the key ``keys.seen(key)`` set with ``SET NX PX``: one atomic command, so of
    concurrent claims of one key, from any number of clients or processes, exactly one succeeds.
    It expires ``ttl`` after the first sighting (a duplicate does not extend it). Redis answers
    exactly: no false positive, and a released key is new again.

    Every call waits for one round trip and raises redis' ``ConnectionError`` or ``TimeoutError``
    when Redis is unreachable or does not answer within the client's socket timeout. It does not
    fall back to memory: whether to refuse the message or to process it unclaimed is the caller's
    decision. With a client that retries commands (``connect()``'s does not), a claim whose reply
    was lost and that was sent again would read as a duplicate of itself.

    A claim can end before its TTL only if the server evicts keys (a ``maxmemory-policy`` other
    than ``noeviction`` or ``volatile-*`` on other keys) or loses writes (no AOF, or a failover
    to a replica that had not received them).

    Args:
        client: a ``redis.asyncio.Redis`` (e.g. from :func:`~zeroclaw.backends.redis.connect`).
        keys: the key names of the gateway's namespace.
        ttl: seconds (or a ``timedelta``) a claim lasts; sent in whole milliseconds, rounded up.

    Raises:
        TypeError: ``keys`` is not a :class:`~zeroclaw.backends.redis.Keys`, or ``ttl`` is not a
            number of seconds or a ``timedelta``.
        ValueError: ``ttl`` is not > 0 and finite.
    """

    __slots__ = ("_client", "_keys", "_ttl_ms")

    def __init__(self, client: Redis, keys: Keys, *, ttl: float | timedelta) -> None:
        if not isinstance(keys, Keys):
            raise TypeError(f"keys must be a Keys, not {type(keys).__name__}")
        if isinstance(ttl, timedelta):
            seconds = ttl.total_seconds()
        elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
            seconds = float(ttl)
        else:
            raise TypeError(f"ttl must be seconds (float) or a timedelta, not {type(ttl).__name__}")
        if not (seconds > 0.0 and math.isfinite(seconds)):
            raise ValueError(f"ttl must be > 0 and finite, got {ttl!r}")
        self._client = client
        self._keys = keys
        self._ttl_ms = math.ceil(seconds * 1000.0)

    @property
    def ttl(self) -> float:
        """How long a claim lasts, in seconds (the whole milliseconds sent to Redis)."""
        return self._ttl_ms / 1000.0

    @property
    def keys(self) -> Keys:
        """The key names this store uses."""
        return self._keys

    async def claim(self, key: str) -> bool:
        """``True`` if ``key`` was not claimed within the TTL (it is now), ``False`` for a
        duplicate: ``SET <seen key> 1 NX PX <ttl ms>``.

        Waits for one round trip. Raises ``TypeError`` if ``key`` is not a ``str``, and redis'
        ``ConnectionError`` or ``TimeoutError`` when Redis is unreachable.
        """
        done = await self._client.set(self._name(key), b"1", nx=True, px=self._ttl_ms)
        return bool(done)

    async def release(self, key: str) -> bool:
        """Forget the claim on ``key`` (``DEL``); ``True`` if it was held.

        Waits for one round trip. Raises as :meth:`claim`.
        """
        removed = await self._client.delete(self._name(key))
        return bool(removed)

    async def contains(self, key: str) -> bool:
        """Whether ``key`` is claimed now (``EXISTS``). Claims nothing.

        Waits for one round trip. Raises as :meth:`claim`.
        """
        found = await self._client.exists(self._name(key))
        return bool(found)

    def _name(self, key: object) -> bytes:
        if not isinstance(key, str):
            raise TypeError(f"a dedup store key is a str, not {type(key).__name__}")
        # A str subclass may format as something else (an Enum member as "Kind.A").
        text = key if key.__class__ is str else str.__str__(key)
        # surrogatepass: any str the in-memory store takes is a key here too, and stays distinct.
        return self._keys.seen(text).encode("utf-8", "surrogatepass")

    def __repr__(self) -> str:
        return f"RedisDedupStore(namespace={self._keys.namespace!r}, ttl={self.ttl:g})"
