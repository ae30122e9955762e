"""A :class:`ChannelMessage` as a stream entry and back, and the names it is known by. Pure.

An entry has three fields, and a fourth for some: ``m``, the message as JSON; ``k``, its dedup
digest (the key of its claim and of its reply marker); ``r``, the member id of the process that
received it; ``w`` (``"1"``) when that process waits for the answer itself (a sync-mode webhook's
HTTP request), so the owner relays the answer there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from zeroclaw.concurrency.channel_integration import ChannelMessage

__all__ = [
    "ENTRY_META",
    "EntryRef",
    "decode_entry",
    "encode_entry",
    "message_digest",
    "partition_of",
]

_logger = logging.getLogger("zeroclaw.redis")

#: The metadata key under which an owner hands a message's stream entry to its delivery.
ENTRY_META = "zeroclaw.redis"


@dataclass(frozen=True, slots=True)
class EntryRef:
    """Which stream entry a message came from, and under which lease it is being answered."""

    partition: int
    entry_id: str
    epoch: int
    digest: str
    #: The member waiting for the answer (it holds the request), when it is not the owner's to
    #: send: ``None`` for a reply any process sends (a callback, a chat message).
    relay_to: str | None = None


def message_digest(*parts: str) -> str:
    """A short, stable digest of a message's identity (channel, sender, platform id or content):
    the dedup key and the reply marker's name. 32 hex characters."""
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def partition_of(conversation: Hashable, partitions: int) -> int:
    """The partition of a conversation: a stable hash (the same in every process and run, unlike
    ``hash()``) of its key's ``repr``, modulo ``partitions``."""
    digest = hashlib.blake2b(repr(conversation).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def _jsonable(metadata: Mapping[str, Any], message_id: str) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            _logger.warning(
                "message %r: metadata %r is not JSON and does not travel to the owning process",
                message_id,
                name,
            )
            continue
        kept[name] = value
    return kept


def encode_entry(
    message: ChannelMessage, digest: str, member: str, *, waits: bool = False
) -> dict[str, str]:
    """The stream fields of ``message`` (see the module docstring); ``waits``: the receiving
    process ``member`` holds the request the answer goes to."""
    body = {
        "id": message.id,
        "sender": message.sender,
        "content": message.content,
        "channel": message.channel,
        "timestamp": message.timestamp,
        "reply_target": message.reply_target,
        "thread_id": message.thread_id,
        "metadata": _jsonable(message.metadata, message.id),
    }
    fields = {"m": json.dumps(body, ensure_ascii=False), "k": digest, "r": member}
    if waits:
        fields["w"] = "1"
    return fields


def decode_entry(
    fields: Mapping[bytes, bytes], partition: int, entry_id: str, epoch: int
) -> ChannelMessage:
    """The message of a stream entry, its :class:`EntryRef` in ``metadata[ENTRY_META]``.

    Raises:
        ValueError: the entry is not one :func:`encode_entry` wrote (a field missing, bad JSON).
    """
    try:
        body = json.loads(fields[b"m"])
        digest = fields[b"k"].decode()
        metadata = dict(body.get("metadata") or {})
        relay_to = fields[b"r"].decode() if fields.get(b"w") == b"1" else None
        metadata[ENTRY_META] = EntryRef(partition, entry_id, epoch, digest, relay_to)
        return ChannelMessage(
            id=str(body["id"]),
            sender=str(body["sender"]),
            content=str(body["content"]),
            channel=str(body["channel"]),
            timestamp=float(body["timestamp"]),
            reply_target=body.get("reply_target"),
            thread_id=body.get("thread_id"),
            metadata=metadata,
        )
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"not a zeroclaw entry: {type(error).__name__}: {error}") from error
