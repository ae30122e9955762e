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
    #: A reply its sender died sending (it may or may not have gone out): ``"drop"`` does not
    #: send it again (at most once: a reply may be missing), ``"resend"`` does (at least once:
    #: a reply may be doubled). Either way it is counted (``in_doubt``).
    in_doubt: str = "drop"
