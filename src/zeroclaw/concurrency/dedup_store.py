"""The dedup claim as an async store: one interface over one process's memory or a shared server.

A gateway claims every delivery id on receipt and processes the message only when the claim is
new; when admission then refuses the message, it releases the claim, so the platform's redelivery
is processed instead of being dropped as a duplicate::

    if not await store.claim(event_id):
        return                              # a duplicate within the TTL
    if not admitted:
        await store.release(event_id)       # let the redelivery through

:class:`MemoryDedupStore` answers from an ``EXACT`` :class:`~zeroclaw.concurrency.Deduplicator`
(one process); ``zeroclaw.backends.redis.dedup.RedisDedupStore`` answers from Redis, so several
processes sharing one server claim each key once between them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from zeroclaw.concurrency.deduplicator import Deduplicator, DedupStrategy

__all__ = ["DedupStore", "MemoryDedupStore"]


@runtime_checkable
class DedupStore(Protocol):
    """The async interface of a dedup claim store (``isinstance`` works on it).

    A key is a ``str``; build one from several parts with
    :meth:`DedupKey.combine(...).digest <zeroclaw.concurrency.DedupKey.digest>`. A claim lasts
    :attr:`ttl` seconds from the first sighting; a duplicate does not extend it.
    """

    @property
    def ttl(self) -> float:
        """How long a claim lasts, in seconds."""
        ...

    async def claim(self, key: str) -> bool:
        """Claim ``key``: ``True`` if this is its first sighting within the TTL (it is now
        claimed), ``False`` if it is a duplicate. Atomic: of concurrent claims of one key, exactly
        one gets ``True``."""
        ...

    async def release(self, key: str) -> bool:
        """Forget the claim on ``key``, so that its next sighting is new again; ``True`` if a claim
        was held."""
        ...

    async def contains(self, key: str) -> bool:
        """Whether ``key`` is claimed now. Claims nothing."""
        ...


class MemoryDedupStore:
    """A :class:`DedupStore` over an ``EXACT`` :class:`~zeroclaw.concurrency.Deduplicator`: one
    process's claims.

    Every call completes without suspending (nothing to wait for), so claims made from one event
    loop are atomic. A claim can end before its TTL only when the deduplicator's ``max_entries``
    is reached within one TTL (it evicts the oldest keys).

    Raises:
        TypeError: ``deduplicator`` is not a :class:`~zeroclaw.concurrency.Deduplicator`.
        ValueError: its strategy is not ``EXACT``.
    """

    __slots__ = ("_dedup",)

    def __init__(self, deduplicator: Deduplicator) -> None:
        if not isinstance(deduplicator, Deduplicator):
            raise TypeError(f"a MemoryDedupStore needs a Deduplicator, not {type(deduplicator)}")
        if deduplicator.strategy is not DedupStrategy.EXACT:
            raise ValueError(
                f"a MemoryDedupStore needs an EXACT Deduplicator, not {deduplicator.strategy}: a "
                "claim needs an exact answer (a bloom false positive would drop a new message, and "
                "a bloom filter cannot release a claim), and a sliding window would extend a "
                "claim on every duplicate"
            )
        self._dedup = deduplicator

    @property
    def deduplicator(self) -> Deduplicator:
        """The deduplicator that holds the claims."""
        return self._dedup

    @property
    def ttl(self) -> float:
        """How long a claim lasts, in seconds (the deduplicator's TTL)."""
        return self._dedup.ttl

    async def claim(self, key: str) -> bool:
        """``True`` if ``key`` was not claimed within the TTL (it is now), ``False`` for a
        duplicate. Does not suspend. Raises ``TypeError`` if ``key`` is not a ``str``."""
        return not self._dedup.check_and_update(_checked(key))

    async def release(self, key: str) -> bool:
        """Forget the claim on ``key``; ``True`` if it was held. Does not suspend. Raises
        ``TypeError`` if ``key`` is not a ``str``."""
        return self._dedup.remove(_checked(key))

    async def contains(self, key: str) -> bool:
        """Whether ``key`` is claimed now. Does not suspend. Raises ``TypeError`` if ``key`` is not
        a ``str``."""
        return self._dedup.contains(_checked(key))

    def __repr__(self) -> str:
        return f"MemoryDedupStore({self._dedup!r})"


def _checked(key: object) -> str:
    # Only str: the Redis store names its key after the text, and a DedupKey's str() joins its
    # parts with ":" (not injective), so both stores refuse anything else alike.
    if not isinstance(key, str):
        raise TypeError(f"a dedup store key is a str, not {type(key).__name__}")
    return key
