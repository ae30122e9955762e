"""The names of every key a gateway keeps in Redis, under its namespace.

Processes that share a url and a namespace are one gateway. Each Lua script touches only keys of
one resource, and those share a hash tag (``{ns:...}``), so every script's keys live in one slot
of a Redis Cluster and are all passed in ``KEYS[]``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under ``namespace``. Pure: builds strings, touches no server."""

    namespace: str

    def seen(self, dedup_key: str) -> str:
        """The dedup claim of one message."""
        return f"{self.namespace}:seen:{dedup_key}"

    def rate(self, name: str) -> tuple[str, str]:
        """The rate limit ``name``: its GCRA state and its pause (one hash tag)."""
        tag = f"{{{self.namespace}:rate:{name}}}"
        return f"{tag}:tat", f"{tag}:pause"

    def breaker(self, name: str) -> tuple[str, str]:
        """The breaker ``name``'s shared decision: "open until" and the probe owner."""
        tag = f"{{{self.namespace}:breaker:{name}}}"
        return f"{tag}:open", f"{tag}:probe"

    def partition(self, index: int) -> str:
        """The work stream of partition ``index``."""
        return f"{{{self.namespace}:p{index}}}:in"

    def lease(self, index: int) -> tuple[str, str]:
        """Partition ``index``'s lease (owner id) and fencing epoch (one hash tag with its
        stream)."""
        tag = f"{{{self.namespace}:p{index}}}"
        return f"{tag}:lease", f"{tag}:epoch"

    def seen_in(self, index: int, dedup_key: str) -> str:
        """The dedup claim of a message of partition ``index`` (its conversation's partition, so
        every delivery of it names the same key), in the partition's hash tag: the ingress
        script claims it and appends to the stream atomically."""
        return f"{{{self.namespace}:p{index}}}:seen:{dedup_key}"

    def replied(self, index: int, message_key: str) -> str:
        """The marker of the reply to one message of partition ``index``: ``sending:<epoch>``
        while it goes out, ``done`` once it went."""
        return f"{{{self.namespace}:p{index}}}:replied:{message_key}"

    def dead_letters(self, index: int) -> str:
        """The stream of partition ``index``'s entries given up, each with its reason."""
        return f"{{{self.namespace}:p{index}}}:dead"

    def history(self, conversation_digest: str) -> str:
        """The list of one conversation's last exchanges."""
        return f"{self.namespace}:history:{conversation_digest}"

    def relay(self, member: str) -> str:
        """The pub/sub channel on which ``member`` takes the answers to requests it holds."""
        return f"{self.namespace}:relay:{member}"

    @property
    def members(self) -> str:
        """The processes alive: a sorted set of member id → heartbeat deadline (ms)."""
        return f"{self.namespace}:members"
