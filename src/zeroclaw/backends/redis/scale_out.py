"""Several gateway processes as one: ingress into partition streams, partition owners, fenced
replies (docs/scale-out.md).

:class:`ScaleOut` sits between a gateway's channels and its local
:class:`~zeroclaw.concurrency.channel_integration.ConcurrentMessageProcessor`:

- **Ingress** (:meth:`ScaleOut.submit`, in any process): the message's conversation picks its
  partition; one script claims the message's dedup key (``SET NX PX``) and appends it to the
  partition's stream, atomically, so a claim never exists without its entry and a delivery of a
  seen message to any process is a duplicate. Only then is the message acknowledged to the
  platform (the webhook's 202): from that moment it survives the loss of this process. A
  partition whose backlog passed ``max_backlog`` refuses (429 + ``Retry-After``); Redis
  unreachable refuses (503 + ``Retry-After``), never acknowledges.
- **Ownership**: each partition is owned by one member at a time through a lease with a fencing
  epoch (:mod:`~zeroclaw.backends.redis.leases`); members heartbeat, each owns the partitions the
  assignment gives it (about ``partitions / N`` each), releases the ones it gives a newcomer
  (after their in-flight entries finished), and takes over a dead member's once its lease
  expired.
- **Processing**: an owner reads its partition under a consumer name fixed per partition
  (``p<N>``), so a new owner first reads what the previous one received and never acknowledged
  (``XREADGROUP ... 0``, in order), then new entries (``>``); research processing.md §2.9,
  recipe 1. Entries go to the local processor in stream order, so each conversation's order
  holds, and conversations run concurrently. An entry handed out more than ``max_deliveries``
  times goes to the partition's dead-letter stream with its reason instead.
- **Replies**: the processor hands every result to a fenced channel (:class:`FencedChannel`):
  before the reply goes out, a script checks the lease and epoch and marks the message
  ``sending``; after it went, one script marks it ``done`` and acknowledges the entry. A reply
  already ``done`` is never sent again. A message found ``sending`` by an earlier attempt (its
  owner died while the reply was going out, and it may have gone) is counted as ``in_doubt`` and
  not sent again (``in_doubt = "drop"``, the default: at most once, a reply may be missing) or
  sent again (``"resend"``: at least once, a reply may be doubled); exactly-once is impossible
  without the platform's help (research processing.md §9.5).
- **Trimming**: acknowledged entries are trimmed with ``XTRIM MINID`` below the oldest pending
  one; never ``MAXLEN``, which drops work still pending (research processing.md §2.5).

Every loop survives Redis being unreachable: it backs off (capped) and retries; an owner that
could not renew its leases for a whole TTL stops reading and answering them (another process may
own them by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from zeroclaw.backends.redis.codec import (
    ENTRY_META,
    EntryRef,
    decode_entry,
    encode_entry,
    message_digest,
    partition_of,
)
from zeroclaw.backends.redis.connection import MAX_CONNECTIONS, connect, redis_module
from zeroclaw.backends.redis.keys import Keys
from zeroclaw.backends.redis.leases import LeaseClient, assign_partitions
from zeroclaw.backends.redis.settings import RedisSettings
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    Channel,
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageResult,
    MessageResultKind,
)
from zeroclaw.concurrency.circuit_breaker import CircuitState
from zeroclaw.concurrency.errors import Rejected

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["GROUP", "FencedChannel", "ScaleOut", "ScaleOutStats"]

_logger = logging.getLogger("zeroclaw.redis")

#: The consumer group every partition stream is read through.
GROUP = "workers"
_UNSUCCESSFUL = frozenset(
    {
        MessageResultKind.FAILED,
        MessageResultKind.TIMEOUT,
        MessageResultKind.CANCELLED,
        MessageResultKind.REJECTED,
    }
)
# Entries read from a stream at a time, per partition.
_READ_COUNT = 16
# How long a read waits for new entries, ms: also how soon a reader notices it should stop.
_BLOCK_MS = 1000
# How often an owner looks again at its partitions' pending entries, seconds: one a read handed
# to its consumer name but whose reply was lost, or that a former owner's late read put there
# after this one took over, is answered within this.
_PENDING_SCAN = 10.0
# Backoff after a Redis error, first and longest, seconds.
_BACKOFF = (0.1, 2.0)
# How often acknowledged entries are trimmed, in stats refreshes.
_TRIM_EVERY = 10

# KEYS: seen, stream; ARGV: ttl_ms, dedup (1/0), then the entry's fields and values.
# 'dup' when the message was seen, else the new entry's id.
_INGRESS = """
if ARGV[2] == '1' then
  if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) == false then
    return 'dup'
  end
end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
return redis.call('XADD', KEYS[2], '*', unpack(fields))
"""

# KEYS: lease, epoch, replied; ARGV: member, epoch, ttl_ms, in_doubt policy, attempt token.
# 'lost' (not our lease), 'done' (the reply went out already), 'send' (the marker now says this
# attempt is sending). An earlier attempt began sending it and may have sent it (its owner died
# meanwhile): with the policy 'resend', 'doubt' (marked sending, to be sent again); with 'drop',
# 'dropped' (marked done: at most once). The marker names the attempt, so this attempt's own
# call, run again because its reply was lost, is not taken for an earlier one.
_BEFORE_SEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 'lost'
end
local marker = redis.call('GET', KEYS[3])
if marker == 'done' then return 'done' end
local mine = 'sending:' .. ARGV[2] .. ':' .. ARGV[5]
if marker and marker ~= mine and ARGV[4] == 'drop' then
  redis.call('SET', KEYS[3], 'done', 'PX', ARGV[3])
  return 'dropped'
end
redis.call('SET', KEYS[3], mine, 'PX', ARGV[3])
if marker and marker ~= mine then return 'doubt' end
return 'send'
"""

# KEYS: lease, epoch, replied, stream, seen; ARGV: member, epoch, ttl_ms, group, entry id,
# sent (1/0), forget (1/0). The reply went out (sent = 1): marked done whoever owns the lease now
# (it is true). forget = 1 (the message ended without success): its dedup claim and reply marker
# are dropped instead, so a redelivery is processed and answered again, as with the in-memory
# dedup. The entry is acknowledged only under our lease: 1 acknowledged, 0 fenced out.
_AFTER_SEND = """
if ARGV[7] == '1' then
  redis.call('DEL', KEYS[5], KEYS[3])
elseif ARGV[6] == '1' then
  redis.call('SET', KEYS[3], 'done', 'PX', ARGV[3])
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('XACK', KEYS[4], ARGV[4], ARGV[5])
return 1
"""

# KEYS: lease, epoch, stream, dead; ARGV: member, epoch, group, entry id, reason, then the
# entry's fields and values. 1: moved; 0: fenced out.
_DEAD_LETTER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
local fields = {'reason', ARGV[5], 'entry', ARGV[4]}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[4], '*', unpack(fields))
redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


@dataclass(frozen=True, slots=True)
class ScaleOutStats:
    """A snapshot of one process's share of the gateway (``/status``'s ``redis``).

    ``connected``: the last Redis command succeeded. ``members``: processes alive in the
    namespace. ``partitions_owned``: the partitions this process owns. ``pending``: entries of
    those partitions handed out and not acknowledged; ``lag``: entries not yet handed out.
    ``redeliveries``: entries this process read again after an earlier owner had them;
    ``dead_letters``: entries it moved to a dead-letter stream; ``lease_changes``: leases it
    acquired, released or lost; ``fenced_out``: replies it did not send because its lease had
    passed on; ``in_doubt``: replies an earlier owner died sending (it may have sent them), sent
    again or not as ``[redis] in_doubt`` says;
    ``refused``: messages its ingress refused (backlog full, Redis unreachable).
    """

    connected: bool
    member: str
    members: int
    partitions: int
    partitions_owned: int
    owned: tuple[int, ...]
    pending: int
    lag: int
    redeliveries: int
    dead_letters: int
    lease_changes: int
    fenced_out: int
    in_doubt: int
    refused: int


class _Partition:
    """One partition this process owns: its epoch, its reader, its entries in flight."""

    __slots__ = ("epoch", "handing_over", "in_flight", "index", "last_scan", "reader", "reread")

    def __init__(self, index: int, epoch: int) -> None:
        self.index = index
        self.epoch = epoch
        self.reader: asyncio.Task[None] | None = None
        self.in_flight = 0
        self.handing_over = False  # given to another member: released once its reader is done
        self.last_scan = 0.0
        # Read the entries pending under the partition's consumer name before new ones: at
        # first (an earlier owner's), and after a read or an answer that went wrong (ours).
        self.reread = True


class FencedChannel:
    """A channel whose answers to stream entries are fenced and acknowledged.

    The processor gets one per channel in place of the channel (same name); its :meth:`deliver`
    takes every result. For a message read from a partition it checks the lease, sends (the
    inner channel's ``deliver``, else ``send`` when there is a text), then marks the reply done
    and acknowledges the entry. Other messages go straight to the inner channel.
    """

    def __init__(self, inner: Channel, scale_out: ScaleOut) -> None:
        self.inner = inner
        self._scale_out = scale_out
        self._deliver = getattr(inner, "deliver", None)

    @property
    def name(self) -> str:
        """The inner channel's name."""
        return self.inner.name

    @property
    def delivery_budget(self) -> float:
        """The inner channel's longest delivery (0 when it does not say)."""
        return float(getattr(self.inner, "delivery_budget", 0.0))

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        """The inner channel's ``listen``."""
        await self.inner.listen(queue)

    async def send(self, message: str, recipient: str) -> None:
        """The inner channel's ``send``."""
        await self.inner.send(message, recipient)

    async def health_check(self) -> bool:
        """The inner channel's health."""
        return await self.inner.health_check()

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Answer ``message`` (see the class docstring). Waits for Redis and the send.

        Raises what the inner channel's delivery raises (after the entry was acknowledged: a
        reply that could not be sent is given up, as without Redis).
        """
        ref = message.metadata.get(ENTRY_META)
        if not isinstance(ref, EntryRef):
            await self._send(message, result, text)
            return
        scale_out = self._scale_out
        relay_to = ref.relay_to if ref.relay_to != scale_out.member else None

        async def send() -> None:
            if relay_to is not None:
                await scale_out.relay(relay_to, message, result, text)
            else:
                await self._send(message, result, text)

        if result.kind is MessageResultKind.MERGED and result.merged_into is not None:
            # Answered by the turn it was merged into: acknowledged with that turn's answer, so
            # a crash before it re-runs the whole batch, not the last message alone.
            await send()
            scale_out.hold_merged(ref, result.merged_into)
            return
        # Interrupted messages were answered by another turn: as good as success.
        succeeded = result.kind not in _UNSUCCESSFUL
        await scale_out.answer(ref, send, succeeded=succeeded, message_id=message.id)

    async def _send(self, message: ChannelMessage, result: MessageResult, text: str | None) -> None:
        if self._deliver is not None:
            await self._deliver(message, result, text)
        elif text:
            await self.inner.send(text, message.reply_to)

    def __repr__(self) -> str:
        return f"<FencedChannel {self.inner!r}>"


class ScaleOut:
    """One process's part of a gateway spread over Redis. See the module docstring.

    Args:
        settings: the ``[redis]`` settings.
        processor: the local processor (started before :meth:`start`).
        channels: the gateway's channels; :meth:`channels_for_processor` wraps them.
        dedup: ``"message_id"`` (channel + sender + platform id), ``"content"`` (channel +
            sender + the text) or ``None`` (no dedup) — what the processor's ``enable_dedup``
            and ``dedup_key`` said (the processor's own dedup is then turned off: this replaces
            it, gateway-wide).
        client: a Redis client (default: one made from ``settings.url``).
        member: this process's member id (default: host, pid and a random suffix).

    Raises:
        ImportError: the ``redis`` extra is missing.
    """

    def __init__(
        self,
        settings: RedisSettings,
        processor: ConcurrentMessageProcessor,
        channels: Sequence[Channel],
        *,
        dedup: Literal["message_id", "content"] | None = "message_id",
        client: Redis | None = None,
        member: str | None = None,
    ) -> None:
        redis_module()
        self.settings = settings
        self.keys = Keys(settings.namespace)
        # Each owned partition's reader holds a connection while it blocks, the relay
        # subscription one more: room for every partition besides the usual commands.
        self.client: Redis = (
            client
            if client is not None
            else connect(settings.url, max_connections=settings.partitions + MAX_CONNECTIONS)
        )
        self._own_client = client is None
        self.member = member or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._processor = processor
        self._dedup = dedup
        self._fenced = {c.name: FencedChannel(c, self) for c in channels}
        self._tick = min(1.0, settings.lease_ttl / 5)
        # A lease key lives one tick less than lease_ttl: the owner renews it every tick, so a
        # dead owner's key is gone within lease_ttl - tick of its death, and the next owner,
        # acting on its next tick, has taken over within lease_ttl.
        self._key_ttl = settings.lease_ttl - self._tick
        self._leases = LeaseClient(self.client, self.keys, self.member, self._key_ttl)
        self._ingress: Any = self.client.register_script(_INGRESS)
        self._before_send: Any = self.client.register_script(_BEFORE_SEND)
        self._after_send: Any = self.client.register_script(_AFTER_SEND)
        self._dead_letter: Any = self.client.register_script(_DEAD_LETTER)
        self._marker_ttl_ms = max(1, round(settings.dedup_ttl * 1000))
        self._owned: dict[int, _Partition] = {}
        self._backlog = [0] * settings.partitions
        self._pending = 0
        self._lag = 0
        self._members: list[str] = []
        self._slots = asyncio.Semaphore(max(1, processor.config.max_concurrent_requests))
        self._entries: dict[tuple[int, str, int], _Partition] = {}
        # Entries merged into a turn, by (partition, epoch, the turn's message id), waiting for
        # its answer to be acknowledged with it.
        self._merged: dict[tuple[int, int, str], list[EntryRef]] = {}
        self._spawned: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._reading = False
        self._closing = False
        self._connected = True
        self._last_renewed = 0.0
        self._redeliveries = 0
        self._dead_letters = 0
        self._lease_changes = 0
        self._fenced_out = 0
        self._in_doubt = 0
        self._refused = 0
        self._outages: set[str] = set()

    # ------------------------------------------------------------------ wiring

    def channels_for_processor(self) -> list[Channel]:
        """The channels to give the processor: each wrapped in a :class:`FencedChannel`."""
        return list(self._fenced.values())

    async def start(self) -> None:
        """Join the gateway: check Redis answers, then heartbeat, own partitions and read them
        in the background. Waits for the first round trip.

        Redis unreachable is logged and retried in the background (messages are refused until
        it answers); this never raises for it.
        """
        try:
            await self.client.ping()
        except Exception as error:
            if not _is_redis_error(error):
                raise
            self._redis_failed("membership", error)
        loop = asyncio.get_running_loop()
        self._reading = True
        self._last_renewed = loop.time()
        self._tasks = [
            loop.create_task(self._membership(), name="redis:membership"),
            loop.create_task(self._refresh_stats(), name="redis:stats"),
            loop.create_task(self._take_relays(), name="redis:relays"),
        ]

    def stop_reading(self) -> None:
        """Stop taking entries (a drain began); what was taken is still answered. Does not
        block."""
        self._reading = False
        for partition in self._owned.values():
            if partition.reader is not None:
                partition.reader.cancel()

    async def aclose(self) -> None:
        """Leave the gateway: stop every loop, give every lease back at once and say this
        member is gone, so the others take over without waiting for a TTL; then close the
        client. Entries not answered stay pending for the next owner. Waits for Redis (a few
        round trips; errors are logged, not raised)."""
        self.stop_reading()
        # Besides cancelling: redis-py can finish a command its task was cancelled in and
        # return, the cancellation spent; every loop also stops on this flag.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        readers = [p.reader for p in self._owned.values() if p.reader is not None]
        await asyncio.gather(*self._tasks, *readers, return_exceptions=True)
        try:
            for partition in list(self._owned.values()):
                await self._leases.release(partition.index, partition.epoch)
                self._lease_changes += 1
            self._owned.clear()
            await self._leases.leave()
        except Exception as error:
            _logger.warning("leaving the gateway: Redis did not answer: %s", error)
        if self._own_client:
            await self.client.aclose()

    # ------------------------------------------------------------------ ingress

    async def submit(self, channel: Channel, message: ChannelMessage) -> Admission:
        """Append ``message`` to its partition's stream, once per dedup key gateway-wide.

        Waits for one round trip. Returns ACCEPTED (it is in Redis), DUPLICATE, or REJECTED
        (``"backlog full"``, ``"circuit open"``, ``"redis unavailable"``, with a
        ``retry_after``).

        Raises:
            RuntimeError: the local processor is not running.
        """
        processor = self._processor.processor
        if processor is None or not self._processor.started:
            raise RuntimeError("the gateway is not running yet")
        breaker = processor.breaker
        if breaker is not None and breaker.state is CircuitState.OPEN:
            self._refused += 1
            return Admission(AdmissionKind.REJECTED, "circuit open", breaker.retry_after)
        index = partition_of(
            processor.conversation_of(channel.name, message), self.settings.partitions
        )
        if self._backlog[index] >= self.settings.max_backlog:
            self._refused += 1
            return Admission(AdmissionKind.REJECTED, "backlog full", 1.0)
        if self._dedup == "content":
            digest = message_digest(channel.name, message.sender, "content", message.content)
        else:
            digest = message_digest(channel.name, message.sender, message.id)
        waits = bool(getattr(channel, "sync", False))  # its HTTP request waits here
        fields = encode_entry(message, digest, self.member, waits=waits)
        args: list[str | int] = [self._marker_ttl_ms, 1 if self._dedup else 0]
        for name, value in fields.items():
            args += [name, value]
        try:
            added = await self._ingress(
                keys=[self.keys.seen_in(index, digest), self.keys.partition(index)], args=args
            )
        except Exception as error:
            if not _is_redis_error(error):
                raise
            self._redis_failed("ingress", error)
            self._refused += 1
            return Admission(AdmissionKind.REJECTED, "redis unavailable", 1.0)
        self._redis_ok("ingress")
        if added == b"dup":
            return Admission(AdmissionKind.DUPLICATE)
        self._backlog[index] += 1
        return Admission(AdmissionKind.ACCEPTED)

    # ------------------------------------------------------------------ membership and leases

    async def _membership(self) -> None:
        """Every tick: heartbeat, renew the leases, take and release partitions."""
        loop = asyncio.get_running_loop()
        delay = _BACKOFF[0]
        while not self._closing:
            try:
                await self._rebalance(loop)
                self._redis_ok("membership")
                delay = _BACKOFF[0]
                await asyncio.sleep(self._tick)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not _is_redis_error(error):
                    _logger.exception("scale-out membership failed; retrying")
                else:
                    self._redis_failed("membership", error)
                if loop.time() - self._last_renewed > self._key_ttl - self._tick:
                    # Stop before the keys can have expired: another process may own them then.
                    self._drop_all("its leases could not be renewed (Redis unreachable)")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])

    async def _rebalance(self, loop: asyncio.AbstractEventLoop) -> None:
        members = await self._leases.heartbeat()
        self._members = members
        for partition in list(self._owned.values()):
            if not await self._leases.renew(partition.index, partition.epoch):
                self._lose(partition, "its lease passed to another process")
        self._last_renewed = loop.time()
        if not self._reading:
            return
        owners = assign_partitions(self.settings.partitions, members)
        for index in range(self.settings.partitions):
            preferred = owners.get(index)
            owned = self._owned.get(index)
            if owned is None and preferred == self.member:
                epoch = await self._leases.acquire(index)
                if epoch:
                    self._take(index, epoch)
            elif owned is not None and preferred == self.member and owned.handing_over:
                owned.handing_over = False  # given back before it was released: read on
                if owned.reader is None or owned.reader.done():
                    self._start_reader(owned)
            elif owned is not None and preferred not in (None, self.member):
                owned.handing_over = True
                reader = owned.reader
                if reader is not None and not reader.done():
                    # Python 3.11's asyncio.wait_for (inside redis-py's sends) can swallow a
                    # cancellation: the reader also stops by itself once it sees handing_over.
                    # The lease goes only once it is done, so nothing it reads lands in the
                    # pending entries after the successor has read them.
                    reader.cancel()
                elif owned.in_flight == 0:
                    await self._leases.release(index, owned.epoch)
                    del self._owned[index]
                    self._lease_changes += 1
                    _logger.info("partition %d released to %s", index, preferred)

    def _take(self, index: int, epoch: int) -> None:
        partition = _Partition(index, epoch)
        self._owned[index] = partition
        self._lease_changes += 1
        self._start_reader(partition)
        _logger.info("partition %d acquired (epoch %d)", index, epoch)

    def _start_reader(self, partition: _Partition) -> None:
        partition.reader = asyncio.get_running_loop().create_task(
            self._read(partition), name=f"redis:p{partition.index}"
        )

    def _lose(self, partition: _Partition, why: str) -> None:
        if self._owned.get(partition.index) is partition:
            del self._owned[partition.index]
        if partition.reader is not None:
            partition.reader.cancel()
        self._lease_changes += 1
        _logger.warning("partition %d lost: %s", partition.index, why)

    def _drop_all(self, why: str) -> None:
        for partition in list(self._owned.values()):
            self._lose(partition, why)

    # ------------------------------------------------------------------ reading a partition

    async def _read(self, partition: _Partition) -> None:
        """Hand the partition's entries to the processor in order: first those taken under the
        partition's consumer name and never acknowledged (an earlier owner's, or ours that
        could not be answered), then new ones. Runs until cancelled."""
        stream = self.keys.partition(partition.index)
        consumer = f"p{partition.index}"
        loop = asyncio.get_running_loop()
        delay = _BACKOFF[0]
        while self._should_read(partition):
            try:
                await self._ensure_group(stream)
                while self._should_read(partition):
                    if partition.reread or loop.time() - partition.last_scan > _PENDING_SCAN:
                        partition.reread = False
                        partition.last_scan = loop.time()
                        await self._read_pending(partition, stream, consumer)
                    reply: Any = await self.client.xreadgroup(
                        GROUP, consumer, {stream: ">"}, count=_READ_COUNT, block=_BLOCK_MS
                    )
                    self._redis_ok("read")
                    delay = _BACKOFF[0]
                    for _stream, entries in reply or ():
                        for entry_id, fields in entries:
                            await self._hand_over(partition, stream, entry_id, fields, 1)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not _is_redis_error(error):
                    _logger.exception("partition %d: reading failed; retrying", partition.index)
                else:
                    self._redis_failed("read", error)
                # A read whose reply was lost still handed its entries to our consumer name.
                partition.reread = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])

    def _should_read(self, partition: _Partition) -> bool:
        """Whether ``partition``'s reader goes on: it is still owned here, under this object,
        and neither a drain nor a hand-over began (checked as well as the reader's
        cancellation, which a read can swallow)."""
        return (
            self._reading
            and not partition.handing_over
            and self._owned.get(partition.index) is partition
        )

    async def _ensure_group(self, stream: str) -> None:
        redis = redis_module()
        try:
            await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _read_pending(self, partition: _Partition, stream: str, consumer: str) -> None:
        """The entries pending under the partition's consumer name that are not being answered
        here now, in order, each claimed again (``XCLAIM``: that counts a delivery) and handed
        over with its delivery count."""
        start = "-"
        while True:
            described: Any = await self.client.xpending_range(
                stream, GROUP, min=start, max="+", count=100, consumername=consumer
            )
            if not described:
                return
            counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in described}
            start = "(" + _text(described[-1]["message_id"])
            wanted: list[Any] = [
                entry
                for entry in counts
                if (partition.index, entry, partition.epoch) not in self._entries
            ]
            if not wanted:
                continue
            claimed: Any = await self.client.xclaim(stream, GROUP, consumer, 0, wanted)
            payloads = {_text(entry_id): fields for entry_id, fields in claimed}
            for entry in wanted:
                if entry not in payloads:  # deleted from the stream: XCLAIM dropped it
                    continue
                self._redeliveries += 1
                await self._hand_over(partition, stream, entry, payloads[entry], counts[entry] + 1)

    async def _hand_over(
        self,
        partition: _Partition,
        stream: str,
        entry_id: bytes | str,
        fields: Mapping[bytes, bytes] | None,
        deliveries: int,
    ) -> None:
        """Give one entry to the processor (waiting for room), or dead-letter it."""
        entry = _text(entry_id)
        if not fields:  # deleted from the stream while pending: nothing left to answer
            await self.client.xack(stream, GROUP, entry)
            _logger.warning(
                "partition %d: entry %s has no payload; acknowledged", partition.index, entry
            )
            return
        if deliveries > self.settings.max_deliveries:
            await self._bury(
                partition,
                stream,
                entry,
                fields,
                f"handed out {deliveries} times without an answer "
                f"(max_deliveries {self.settings.max_deliveries})",
            )
            return
        try:
            message = decode_entry(fields, partition.index, entry, partition.epoch)
        except ValueError as error:
            await self._bury(partition, stream, entry, fields, str(error))
            return
        channel = self._fenced.get(message.channel)
        if channel is None:
            await self._bury(
                partition, stream, entry, fields, f"no channel named {message.channel!r} here"
            )
            return
        await self._slots.acquire()
        slot = (partition.index, entry, partition.epoch)
        self._entries[slot] = partition
        partition.in_flight += 1
        try:
            admission = await self._processor.submit(channel, message)
        except BaseException:
            self._entry_done(slot)
            raise
        if admission.kind is AdmissionKind.ACCEPTED:
            return
        if admission.kind is AdmissionKind.DUPLICATE or admission.reason == "shutting down":
            # Left pending: the next owner (or this one, after a restart) answers it.
            self._entry_done(slot)
            return
        notices = self._processor.notices
        text = notices.unavailable if admission.reason == "circuit open" else notices.refused
        refusal = Rejected(admission.reason or "refused", retry_after=admission.retry_after)
        result = MessageResult(MessageResultKind.REJECTED, error=refusal)
        task = asyncio.get_running_loop().create_task(channel.deliver(message, result, text))
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _bury(
        self,
        partition: _Partition,
        stream: str,
        entry: str,
        fields: Mapping[bytes, bytes],
        reason: str,
    ) -> None:
        lease, epoch = self.keys.lease(partition.index)
        args: list[str | int | bytes] = [self.member, partition.epoch, GROUP, entry, reason]
        for name, value in fields.items():
            args += [name, value]
        moved = await self._dead_letter(
            keys=[lease, epoch, stream, self.keys.dead_letters(partition.index)], args=args
        )
        if moved:
            self._dead_letters += 1
            _logger.error(
                "partition %d: entry %s dead-lettered: %s", partition.index, entry, reason
            )

    def _entry_done(self, slot: tuple[int, str, int]) -> None:
        """An entry handed to the processor was answered (or given up): its slot is free."""
        partition = self._entries.pop(slot, None)
        if partition is not None:
            partition.in_flight -= 1
            self._slots.release()

    # ------------------------------------------------------------------ answering

    async def answer(
        self,
        ref: EntryRef,
        send: Callable[[], Awaitable[None]],
        *,
        succeeded: bool = True,
        message_id: str | None = None,
    ) -> None:
        """Send one entry's answer under its lease, then acknowledge it (see the module doc),
        with the entries merged into its turn (``message_id``: its message's id, which their
        MERGED results name); ``succeeded=False`` (the message failed, timed out, was refused
        or cancelled) also releases their dedup claims. Waits for Redis (retrying while it is
        unreachable) and the send.

        Raises what ``send()`` raises, after the entries were acknowledged.
        """
        lease, epoch = self.keys.lease(ref.partition)
        fence = [self.member, ref.epoch]
        held = self._merged.pop((ref.partition, ref.epoch, message_id), []) if message_id else []
        attempt = uuid.uuid4().hex[:12]
        try:
            verdict = await self._retrying(
                lambda: self._before_send(
                    keys=[lease, epoch, self.keys.replied(ref.partition, ref.digest)],
                    args=[*fence, self._marker_ttl_ms, self.settings.in_doubt, attempt],
                )
            )
            if verdict == b"lost":
                self._fenced_out += 1
                _logger.info(
                    "partition %d: entry %s not answered here: the lease passed on",
                    ref.partition,
                    ref.entry_id,
                )
                return
            failure: BaseException | None = None
            if verdict in (b"doubt", b"dropped"):
                self._in_doubt += 1
                _logger.info(
                    "partition %d: the answer to entry %s was being sent when its owner died: %s",
                    ref.partition,
                    ref.entry_id,
                    "sent again" if verdict == b"doubt" else "not sent again (in_doubt = drop)",
                )
            if verdict in (b"send", b"doubt"):
                try:
                    await send()
                except Exception as error:
                    failure = error
            sent = verdict in (b"send", b"doubt") and failure is None
            for entry in (ref, *held):
                acked = await self._acknowledge(entry, sent=sent, succeeded=succeeded)
                if not acked:
                    self._fenced_out += 1
            if failure is not None:
                raise failure
        except asyncio.CancelledError:
            # Not acknowledged (Redis unreachable until the send timeout): read it again.
            self._reread(ref)
            raise
        finally:
            for entry in (ref, *held):
                self._entry_done((entry.partition, entry.entry_id, entry.epoch))

    async def _acknowledge(self, ref: EntryRef, *, sent: bool, succeeded: bool) -> bool:
        """The after-send script for one entry: ``True`` when it was acknowledged."""
        lease, epoch = self.keys.lease(ref.partition)
        keys = [
            lease,
            epoch,
            self.keys.replied(ref.partition, ref.digest),
            self.keys.partition(ref.partition),
            self.keys.seen_in(ref.partition, ref.digest),
        ]
        args = [
            self.member,
            ref.epoch,
            self._marker_ttl_ms,
            GROUP,
            ref.entry_id,
            1 if sent else 0,
            0 if succeeded else 1,
        ]
        return bool(await self._retrying(lambda: self._after_send(keys=keys, args=args)))

    def hold_merged(self, ref: EntryRef, carrier_id: str) -> None:
        """Keep a MERGED entry unacknowledged until the answer of the turn it was merged into
        (the message ``carrier_id`` of its partition) is acknowledged; its slot stays taken, so
        a rescan of the pending entries does not hand it out again meanwhile. Does not block."""
        self._merged.setdefault((ref.partition, ref.epoch, carrier_id), []).append(ref)

    def _reread(self, ref: EntryRef) -> None:
        partition = self._owned.get(ref.partition)
        if partition is not None and partition.epoch == ref.epoch:
            partition.reread = True

    async def _retrying(self, command: Any) -> Any:
        """``await command()``, again after a backoff while Redis is unreachable (the caller's
        timeout bounds it)."""
        delay = _BACKOFF[0]
        while True:
            try:
                result = await command()
            except Exception as error:
                if not _is_redis_error(error):
                    raise
                self._redis_failed("reply", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
                continue
            self._redis_ok("reply")
            return result

    # ------------------------------------------------------------------ relays

    async def relay(
        self, member: str, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Hand an answer to ``member``, the process holding the request it goes to (a sync
        webhook's). Waits for one round trip. Raises redis-py's errors when Redis is
        unreachable; a member that is gone (its request went with it) is only logged."""
        error = result.error
        payload = {
            "channel": message.channel,
            "id": message.id,
            "sender": message.sender,
            "reply_target": message.reply_target,
            "thread_id": message.thread_id,
            "kind": result.kind.value,
            "text": text,
            "value": result.value,
            "error": None if error is None else [type(error).__name__, str(error)],
            "retry_after": getattr(error, "retry_after", None),
            "merged_into": result.merged_into,
        }
        taken = await self.client.publish(self.keys.relay(member), json.dumps(payload))
        if not taken:
            _logger.info(
                "the answer to message %r is not relayed: %s, which held its request, is gone",
                message.id,
                member,
            )

    async def _take_relays(self) -> None:
        """Take the answers other owners relay to requests this process holds, and give each to
        its channel's ``deliver``. Runs until cancelled; resubscribes after a lost
        connection."""
        delay = _BACKOFF[0]
        while not self._closing:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.keys.relay(self.member))
                delay = _BACKOFF[0]
                while not self._closing:
                    relayed = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if relayed is not None:
                        await self._relayed(relayed["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not _is_redis_error(error):
                    _logger.exception("taking relayed answers failed; retrying")
                else:
                    self._redis_failed("relay", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _relayed(self, data: bytes) -> None:
        try:
            payload = json.loads(data)
            fenced = self._fenced.get(payload["channel"])
            deliver = getattr(fenced.inner, "deliver", None) if fenced is not None else None
            if deliver is None:
                _logger.warning("relayed answer for unknown channel %r", payload["channel"])
                return
            message = ChannelMessage(
                id=payload["id"],
                sender=payload["sender"],
                content="",
                channel=payload["channel"],
                timestamp=0.0,
                reply_target=payload["reply_target"],
                thread_id=payload["thread_id"],
            )
            await deliver(message, _result_of(payload), payload["text"])
        except Exception:
            _logger.exception("a relayed answer could not be delivered")

    # ------------------------------------------------------------------ figures

    async def _refresh_stats(self) -> None:
        """Every second: each partition's backlog (for admission), and the owned ones' pending
        and lag; every few refreshes, trim what the owned partitions acknowledged."""
        refreshes = 0
        while not self._closing:
            await asyncio.sleep(1.0)
            refreshes += 1
            try:
                await self._refresh_once(trim=refreshes % _TRIM_EVERY == 0)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not _is_redis_error(error):
                    _logger.exception("scale-out figures failed")
                else:
                    self._redis_failed("stats", error)

    async def _refresh_once(self, *, trim: bool) -> None:
        redis = redis_module()
        async with self.client.pipeline(transaction=False) as pipe:
            for index in range(self.settings.partitions):
                pipe.xinfo_groups(self.keys.partition(index))
            replies = await pipe.execute(raise_on_error=False)
        pending = lag = 0
        for index, reply in enumerate(replies):
            if isinstance(reply, redis.ResponseError):  # no stream yet
                self._backlog[index] = 0
                continue
            if isinstance(reply, Exception):
                raise reply
            group = next((g for g in reply if _text(g.get("name", b"")) == GROUP), None)
            if group is None:
                continue
            group_pending = int(group.get("pending") or 0)
            group_lag = group.get("lag")
            group_lag = int(group_lag) if group_lag is not None else 0
            self._backlog[index] = group_pending + group_lag
            if index in self._owned:
                pending += group_pending
                lag += group_lag
                if trim:
                    await self._trim(index, group)
        self._pending, self._lag = pending, lag

    async def _trim(self, index: int, group: Mapping[str, Any]) -> None:
        """Drop the entries below the oldest pending one (all acknowledged)."""
        stream = self.keys.partition(index)
        summary = await self.client.xpending(stream, GROUP)
        oldest = summary.get("min") if summary and summary.get("pending") else None
        bound = _text(oldest) if oldest else _text(group.get("last-delivered-id", b"0-0"))
        if bound != "0-0":
            await self.client.xtrim(stream, minid=bound, approximate=False)

    def stats(self) -> ScaleOutStats:
        """This process's figures (see :class:`ScaleOutStats`). Does not block."""
        owned = tuple(sorted(self._owned))
        return ScaleOutStats(
            connected=self._connected,
            member=self.member,
            members=len(self._members),
            partitions=self.settings.partitions,
            partitions_owned=len(owned),
            owned=owned,
            pending=self._pending,
            lag=self._lag,
            redeliveries=self._redeliveries,
            dead_letters=self._dead_letters,
            lease_changes=self._lease_changes,
            fenced_out=self._fenced_out,
            in_doubt=self._in_doubt,
            refused=self._refused,
        )

    # ------------------------------------------------------------------ connection state

    def _redis_failed(self, where: str, error: BaseException) -> None:
        if not self._outages:
            _logger.warning("Redis unreachable (%s): %s; retrying with backoff", where, error)
        self._outages.add(where)
        self._connected = False

    def _redis_ok(self, where: str) -> None:
        if where in self._outages:
            self._outages.discard(where)
            if not self._outages:
                _logger.warning("Redis reachable again")
                self._connected = True

    def __repr__(self) -> str:
        return (
            f"<ScaleOut {self.member} namespace={self.settings.namespace!r} "
            f"owned={len(self._owned)}/{self.settings.partitions}>"
        )


_ERROR_TYPES: dict[str, type[Exception]] = {}


def _result_of(payload: Mapping[str, Any]) -> MessageResult:
    """The :class:`MessageResult` a relay describes; its error, when it has one, is an exception
    of the same class name and text (what a sync webhook's answer shows)."""
    kind = MessageResultKind(payload["kind"])
    error: BaseException | None = None
    described = payload.get("error")
    if kind is MessageResultKind.REJECTED:
        reason = described[1] if described else "refused"
        error = Rejected(reason, retry_after=payload.get("retry_after"))
    elif described:
        name, text = str(described[0]), str(described[1])
        cls = _ERROR_TYPES.get(name)
        if cls is None:
            cls = _ERROR_TYPES[name] = type(name, (Exception,), {})
        error = cls(text)
    return MessageResult(
        kind, value=payload.get("value"), error=error, merged_into=payload.get("merged_into")
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_redis_error(error: BaseException) -> bool:
    """A lost or refused connection, a timeout, or a server that is loading or read-only:
    worth retrying."""
    redis = redis_module()
    return isinstance(
        error,
        redis.ConnectionError
        | redis.TimeoutError
        | redis.BusyLoadingError
        | OSError
        | TimeoutError,
    ) or (isinstance(error, redis.ResponseError) and "READONLY" in str(error))
