"""The ``[redis]`` settings (docs/gateway.md has each key). Pure: importing it needs no extra."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RedisSettings"]


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """The ``[redis]`` table: scale-out (docs/scale-out.md). Processes with the same ``url`` and
    ``namespace`` are one gateway."""

    url: str
    namespace: str = "zeroclaw"
    partitions: int = 32
    lease_ttl: float = 15.0
    max_deliveries: int = 5
    max_backlog: int = 1000
    dedup_ttl: float = 86_400.0
    history_ttl: float = 86_400.0
