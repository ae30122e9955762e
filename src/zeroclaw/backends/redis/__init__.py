"""Scale-out on Redis: several ``zeroclaw serve`` processes with one ``[redis]`` url and namespace
act as one gateway (docs/scale-out.md).

Needs the ``redis`` extra (``pip install 'zeroclaw[redis]'``: redis-py's asyncio client) and a
Redis >= 6.2; importing this package does not import redis-py (the first client does). What is
shared, each in a module of its own:

- :mod:`~zeroclaw.backends.redis.keys`: the key names under a namespace;
- :mod:`~zeroclaw.backends.redis.connection`: the client, made from a url, with the missing-extra
  message;
- :mod:`~zeroclaw.backends.redis.settings`: the ``[redis]`` table's settings;
- :mod:`~zeroclaw.backends.redis.dedup`: the dedup claim store (``SET NX PX``);
- :mod:`~zeroclaw.backends.redis.rate_limit`: a GCRA rate limit and a shared pause, in Lua;
- :mod:`~zeroclaw.backends.redis.breaker`: the circuit breaker's open/probe decision;
- :mod:`~zeroclaw.backends.redis.leases`: membership, the partition assignment, leases with
  fencing epochs;
- :mod:`~zeroclaw.backends.redis.codec`: a message as a stream entry;
- :mod:`~zeroclaw.backends.redis.scale_out`: ingress, partition owners, fenced replies.
"""

from zeroclaw.backends.redis.breaker import SharedBreakerDecision
from zeroclaw.backends.redis.connection import connect
from zeroclaw.backends.redis.dedup import RedisDedupStore
from zeroclaw.backends.redis.keys import Keys
from zeroclaw.backends.redis.rate_limit import RedisRateLimiter, SharedPause
from zeroclaw.backends.redis.scale_out import ScaleOut
from zeroclaw.backends.redis.settings import RedisSettings

__all__ = [
    "Keys",
    "RedisDedupStore",
    "RedisRateLimiter",
    "RedisSettings",
    "ScaleOut",
    "SharedBreakerDecision",
    "SharedPause",
    "connect",
]
