"""Partition ownership: membership heartbeats, which member a partition belongs to, and the
leases with their fencing epochs.

Each partition has at most one owner at a time: a lease key holding the owner's member id with a
TTL, renewed while the owner lives, and an epoch counter bumped by every acquisition. The owner
checks that the lease is still its own, at the epoch it acquired, before it sends a reply or
acknowledges an entry (the fencing token of Kleppmann's "How to do distributed locking"; the
design of research processing.md §9.3), so an owner that lost its lease while it was slow, or cut
off, cannot answer after its successor began.

Which member *should* own a partition is a pure function of the live members,
:func:`assign_partitions`: rendezvous hashing (highest random weight: Thaler & Ravishankar) with
a share per member (each partition goes to the highest-ranked member whose share is not full),
so each of ``N`` members owns ``partitions / N`` rounded down or up, and a member joining or
leaving moves few partitions besides its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zeroclaw.backends.redis.keys import Keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LeaseClient", "assign_partitions"]

# KEYS: members; ARGV: member, ttl_ms. Returns the live members (heartbeat not expired).
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: lease, epoch; ARGV: member, ttl_ms. Returns the new epoch, or 0 when another holds it.
# A lease already ours (an acquisition whose reply was lost, or one this member gave up locally
# while Redis was unreachable) is taken again under a new epoch: whatever ran under the old one
# is fenced out.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return redis.call('INCR', KEYS[2])
end
return 0
"""

# KEYS: lease, epoch; ARGV: member, epoch, ttl_ms. 1: renewed; 0: not ours any more.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

# KEYS: lease, epoch; ARGV: member, epoch. 1: released; 0: it was not ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def assign_partitions(partitions: int, members: Sequence[str]) -> dict[int, str]:
    """Which member should own each of ``partitions`` among ``members`` (see the module
    docstring); empty when there are no members. Pure: every process computes the same.

    Each member's share is ``partitions // N``, one more for the first ``partitions % N``
    members in sorted order; each partition goes to the highest-ranked member whose share is
    not full yet.
    """
    if not members:
        return {}
    ordered = sorted(set(members))
    share, extra = divmod(partitions, len(ordered))
    room = {member: share + (1 if rank < extra else 0) for rank, member in enumerate(ordered)}
    owners: dict[int, str] = {}
    for partition in range(partitions):
        ranked = sorted(ordered, key=lambda member: _weight(member, partition), reverse=True)
        owner = next(member for member in ranked if room[member] > 0)
        room[owner] -= 1
        owners[partition] = owner
    return owners


def _weight(member: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()


class LeaseClient:
    """The membership and lease scripts of one member. Each call is one round trip; each raises
    redis-py's ``ConnectionError``/``TimeoutError`` when Redis is unreachable.

    Args:
        client: the Redis client.
        keys: the namespace's key names.
        member: this process's member id (unique per run).
        ttl: the lease and heartbeat TTL, seconds.
    """

    def __init__(self, client: Redis, keys: Keys, member: str, ttl: float) -> None:
        self._client = client
        self._keys = keys
        self.member = member
        self._ttl_ms = max(1, round(ttl * 1000))
        self._heartbeat: Any = client.register_script(_HEARTBEAT)
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._renew: Any = client.register_script(_RENEW)
        self._release: Any = client.register_script(_RELEASE)

    async def heartbeat(self) -> list[str]:
        """Say this member is alive for one TTL; returns the live members, sorted."""
        members = await self._heartbeat(keys=[self._keys.members], args=[self.member, self._ttl_ms])
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def leave(self) -> None:
        """Say this member is gone (its partitions' preferred owners change at once)."""
        await self._client.zrem(self._keys.members, self.member)

    async def acquire(self, partition: int) -> int:
        """Take ``partition``'s lease if it is free; returns the new epoch, 0 if it is held."""
        lease, epoch = self._keys.lease(partition)
        return int(await self._acquire(keys=[lease, epoch], args=[self.member, self._ttl_ms]))

    async def renew(self, partition: int, epoch: int) -> bool:
        """Extend the lease held at ``epoch``; ``False`` when it is not ours any more."""
        lease, epoch_key = self._keys.lease(partition)
        renewed = await self._renew(
            keys=[lease, epoch_key], args=[self.member, epoch, self._ttl_ms]
        )
        return bool(renewed)

    async def release(self, partition: int, epoch: int) -> bool:
        """Give the lease back at once (``False``: it was not ours)."""
        lease, epoch_key = self._keys.lease(partition)
        return bool(await self._release(keys=[lease, epoch_key], args=[self.member, epoch]))
