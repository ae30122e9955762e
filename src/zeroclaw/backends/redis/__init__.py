"""Scale-out on Redis: several ``zeroclaw serve`` processes with one ``[redis]`` url and namespace
act as one gateway (docs/scale-out.md).

Needs the ``redis`` extra (``pip install 'zeroclaw[redis]'``: redis-py's asyncio client) and a
Redis >= 6.2. What is shared, each in a module of its own:

- :mod:`~zeroclaw.backends.redis.keys`: the key names under a namespace;
- :mod:`~zeroclaw.backends.redis.connection`: the client, made from a url, with the missing-extra
  message;
- :mod:`~zeroclaw.backends.redis.dedup`: the dedup claim (``SET NX PX``);
- :mod:`~zeroclaw.backends.redis.rate_limit`: a GCRA rate limit and a shared pause, in Lua;
- :mod:`~zeroclaw.backends.redis.breaker`: the circuit breaker's open/probe decision;
- :mod:`~zeroclaw.backends.redis.partitions`: the work streams, partition leases and their owners.
"""

from zeroclaw.backends.redis.connection import connect
from zeroclaw.backends.redis.keys import Keys

__all__ = ["Keys", "connect"]
