"""The redis-py asyncio client, made from a ``redis://`` url, and the missing-extra message."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["MISSING_EXTRA", "connect", "raise_if_cancelled", "redis_module"]

MISSING_EXTRA = (
    "scale-out on Redis needs the 'redis' extra (redis-py): pip install 'zeroclaw[redis]'"
)
# A command that takes longer than this is an unreachable server, not a slow one: every command
# we send is O(1) or O(log n) on the server.
SOCKET_TIMEOUT = 5.0
# Connections one client opens at most; further commands wait for a free one (up to the socket
# timeout). redis-py's default pool raises MaxConnectionsError (a ConnectionError, so it would
# read as "Redis is down") beyond 100 commands in flight, which a burst of messages reaches.
MAX_CONNECTIONS = 64


def redis_module() -> Any:
    """``redis.asyncio``, imported on first use. Raises ImportError naming the extra."""
    try:
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(MISSING_EXTRA) from exc
    return redis.asyncio


def connect(
    url: str, *, socket_timeout: float = SOCKET_TIMEOUT, max_connections: int = MAX_CONNECTIONS
) -> Redis:
    """A client for ``url`` (``redis://host:port/db``). Does not connect yet (the first command
    does); replies are ``bytes``.

    Commands sent together share at most ``max_connections`` connections; beyond that a command
    waits up to ``socket_timeout`` for one, then raises redis' ``ConnectionError``. No command is
    retried: a retried ``SET NX`` whose first reply was lost would read as somebody else's claim.

    Raises:
        ImportError: the ``redis`` extra is not installed (the message says how to get it).
        ValueError: ``url`` is not a Redis url.
    """
    module = redis_module()
    pool = module.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=10,
    )
    client: Redis = module.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
    return client


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task was cancelled while a command ran.

    Call it right after awaiting a command. redis-py 8.2's asyncio client often completes a
    command in flight when its task is cancelled and returns the reply, leaving the task marked
    as cancelling but running on: a loop around commands would then never stop, and a cancelled
    caller would go on as if granted. Never blocks.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
