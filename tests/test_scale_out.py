"""Scale-out in one process against a real Redis: the assignment and codec (pure), the lease and
reply scripts, and a :class:`ScaleOut` in front of a real processor (dead letters, fencing, reply
markers, backlog, trimming).

Each test has a namespace of its own on the session's Redis (tests/redis_support.py); its keys
are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from tests.gateway_process import until
from tests.helpers import DeliveringFakeChannel, UnusedProvider, msg
from zeroclaw.backends.redis import Keys
from zeroclaw.backends.redis.codec import (
    ENTRY_META,
    EntryRef,
    decode_entry,
    encode_entry,
    message_digest,
    partition_of,
)
from zeroclaw.backends.redis.leases import LeaseClient, assign_partitions
from zeroclaw.backends.redis.scale_out import GROUP, ScaleOut
from zeroclaw.backends.redis.settings import RedisSettings
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
    MessageResult,
    MessageResultKind,
)

# ---------------------------------------------------------------------------- pure parts

member_names = st.lists(st.text("abcdef0123", min_size=1, max_size=6), min_size=1, max_size=7)


@given(members=member_names, partitions=st.integers(1, 64))
def test_every_partition_has_one_owner_and_shares_differ_by_at_most_one(
    members: list[str], partitions: int
) -> None:
    owners = assign_partitions(partitions, members)
    assert sorted(owners) == list(range(partitions))
    counts = [list(owners.values()).count(m) for m in set(members)]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == partitions


@given(members=member_names, partitions=st.integers(1, 64), data=st.data())
def test_the_assignment_is_the_same_in_every_process(
    members: list[str], partitions: int, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(members))
    assert assign_partitions(partitions, shuffled) == assign_partitions(partitions, members)


def test_a_member_leaving_moves_its_partitions_and_few_others() -> None:
    members = [f"m{i}" for i in range(4)]
    before = assign_partitions(32, members)
    after = assign_partitions(32, members[:-1])
    moved = [p for p in range(32) if before[p] != after[p] and before[p] != "m3"]
    assert all(after[p] != "m3" for p in range(32))
    assert len(moved) <= 4, moved  # the leaver's 8 are spread; the rest mostly stay


def test_no_members_own_nothing() -> None:
    assert assign_partitions(8, []) == {}


@given(
    content=st.text(),
    reply_target=st.none() | st.text(min_size=1),
    thread=st.none() | st.text(min_size=1),
    extra=st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | st.text()),
)
def test_an_entry_decodes_to_the_message_it_encodes(
    content: str, reply_target: str | None, thread: str | None, extra: dict[str, Any]
) -> None:
    message = ChannelMessage(
        id="42",
        sender="alice",
        content=content,
        channel="web",
        timestamp=12.5,
        reply_target=reply_target,
        thread_id=thread,
        metadata=extra,
    )
    fields = {k.encode(): v.encode() for k, v in encode_entry(message, "d1", "me").items()}
    decoded = decode_entry(fields, 3, "1-0", 7)
    assert decoded == message
    assert decoded.metadata[ENTRY_META] == EntryRef(3, "1-0", 7, "d1")
    assert {k: v for k, v in decoded.metadata.items() if k != ENTRY_META} == extra


def test_metadata_that_is_not_json_stays_behind_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = msg("1", channel="web", callback=object(), kept=1)
    fields = encode_entry(message, "d", "me")
    assert json.loads(fields["m"])["metadata"] == {"kept": 1}
    assert "metadata 'callback' is not JSON" in caplog.text


def test_a_foreign_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="not a zeroclaw entry"):
        decode_entry({b"x": b"y"}, 0, "1-0", 1)


def test_partitions_and_digests_are_stable_across_processes() -> None:
    # Pinned values: hash() is salted per process, and these must be the same in every one.
    assert partition_of(("web", "alice"), 32) == 3
    assert message_digest("web", "alice", "1") == "c4fda30e224952c988233db69438b122"
    assert {partition_of(("web", f"user{i}"), 8) for i in range(200)} == set(range(8))


# ---------------------------------------------------------------------------- Redis fixtures


@dataclass
class Db:
    """A client of the session's Redis and the test's namespace."""

    client: Any
    namespace: str
    url: str


@pytest_asyncio.fixture
async def db(redis_client: Any, namespace: str, redis_url: str) -> Db:
    return Db(redis_client, namespace, redis_url)


# ---------------------------------------------------------------------------- leases


async def test_a_lease_has_one_holder_and_each_acquisition_a_new_epoch(db: Db) -> None:
    keys = Keys(db.namespace)
    a = LeaseClient(db.client, keys, "a", ttl=5.0)
    b = LeaseClient(db.client, keys, "b", ttl=5.0)
    assert await a.acquire(0) == 1
    assert await b.acquire(0) == 0
    assert await a.renew(0, 1)
    assert not await b.renew(0, 1)  # the epoch is right, the holder is not
    assert not await b.release(0, 1)
    assert await a.release(0, 1)
    assert await b.acquire(0) == 2
    assert not await a.renew(0, 1)  # a's epoch is over
    lease, _ = keys.lease(0)
    assert 0 < await db.client.pttl(lease) <= 5000


async def test_a_lease_taken_again_by_its_holder_gets_a_new_epoch(db: Db) -> None:
    """An acquisition whose reply was lost, or a lease given up locally during an outage, is
    taken again under a new epoch: what ran under the old one is fenced out."""
    keys = Keys(db.namespace)
    a = LeaseClient(db.client, keys, "a", ttl=5.0)
    assert await a.acquire(0) == 1
    assert await a.acquire(0) == 2
    assert not await a.renew(0, 1)
    assert await a.renew(0, 2)


async def test_a_reply_check_run_again_after_its_reply_was_lost_is_not_in_doubt(
    db: Db,
) -> None:
    from zeroclaw.backends.redis.scale_out import _BEFORE_SEND

    check = db.client.register_script(_BEFORE_SEND)
    keys = Keys(db.namespace)
    lease, epoch = keys.lease(0)
    fence = [lease, epoch, keys.replied(0, "digest")]
    await db.client.set(lease, "me")
    await db.client.set(epoch, 3)
    first = ["me", 3, 60_000, "drop", "attempt-1"]
    assert await check(keys=fence, args=first) == b"send"
    assert await check(keys=fence, args=first) == b"send"  # the same attempt, run again
    assert await check(keys=fence, args=["me", 3, 60_000, "drop", "attempt-2"]) == b"dropped"
    assert await check(keys=fence, args=["me", 3, 60_000, "drop", "attempt-3"]) == b"done"


async def test_members_expire_unless_they_heartbeat(db: Db) -> None:
    keys = Keys(db.namespace)
    short = LeaseClient(db.client, keys, "short", ttl=0.2)
    long = LeaseClient(db.client, keys, "long", ttl=30.0)
    assert await short.heartbeat() == ["short"]
    assert await long.heartbeat() == ["long", "short"]

    async def short_gone() -> bool:
        return await long.heartbeat() == ["long"]

    await until(short_gone)
    await long.leave()
    assert await short.heartbeat() == ["short"]


# ---------------------------------------------------------------------------- one ScaleOut


@dataclass
class Node:
    scale_out: ScaleOut
    processor: ConcurrentMessageProcessor
    channel: DeliveringFakeChannel
    task: asyncio.Task[None]
    release: asyncio.Event

    async def close(self) -> None:
        self.release.set()
        self.scale_out.stop_reading()
        await self.processor.stop()
        await self.task
        await self.scale_out.aclose()

    def replies(self) -> list[str]:
        return [mid for mid, result, _ in self.channel.delivered if result.ok]


async def start_node(
    db: Db,
    *,
    partitions: int = 2,
    hold: bool = False,
    config: MessageProcessorConfig | None = None,
    channel: DeliveringFakeChannel | None = None,
    **settings: Any,
) -> Node:
    release = asyncio.Event()
    if not hold:
        release.set()

    async def handler(message: ChannelMessage) -> str:
        await release.wait()
        if message.content == "fail":
            raise RuntimeError("the provider failed")
        return f"re: {message.content}"

    processor = ConcurrentMessageProcessor(
        config or MessageProcessorConfig(enable_dedup=False),
        handler=handler,
        handle_signals=False,
    )
    channel = channel or DeliveringFakeChannel("web")
    scale_out = ScaleOut(
        RedisSettings(
            url=db.url,
            namespace=db.namespace,
            partitions=partitions,
            lease_ttl=settings.pop("lease_ttl", 2.0),
            **settings,
        ),
        processor,
        [channel],
    )
    task = asyncio.get_running_loop().create_task(
        processor.start(scale_out.channels_for_processor(), UnusedProvider(), None)
    )
    await processor.wait_started()
    await scale_out.start()
    await until(lambda: scale_out.stats().partitions_owned == partitions)
    return Node(scale_out, processor, channel, task, release)


async def test_messages_go_through_redis_and_are_answered_once(db: Db) -> None:
    node = await start_node(db)
    try:
        web = node.channel
        for i in range(10):
            admission = await node.scale_out.submit(
                web, msg(f"m{i}", channel="web", sender=f"u{i}")
            )
            assert admission.kind is AdmissionKind.ACCEPTED
        again = await node.scale_out.submit(web, msg("m3", channel="web", sender="u3"))
        assert again.kind is AdmissionKind.DUPLICATE
        await until(lambda: len(node.replies()) == 10)
        assert sorted(node.replies()) == sorted(f"m{i}" for i in range(10))
        keys = Keys(db.namespace)
        for index in range(2):
            summary = await db.client.xpending(keys.partition(index), GROUP)
            assert summary["pending"] == 0
    finally:
        await node.close()


async def seed_pending(db: Db, partition: int, fields: dict[str, str], deliveries: int) -> str:
    """An entry an earlier owner took ``deliveries`` times and never acknowledged."""
    stream = Keys(db.namespace).partition(partition)
    await db.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entry_id = await db.client.xadd(stream, fields)
    await db.client.xreadgroup(GROUP, f"p{partition}", {stream: ">"})
    for _ in range(deliveries - 1):
        await db.client.xreadgroup(GROUP, f"p{partition}", {stream: "0"})
    return str(entry_id.decode())


async def test_an_entry_handed_out_too_often_goes_to_the_dead_letters(db: Db) -> None:
    message = msg("poison", channel="web", sender="eve")
    fields = encode_entry(message, message_digest("web", "eve", "poison"), "dead-member")
    entry = await seed_pending(db, 0, fields, deliveries=3)
    node = await start_node(db, partitions=1, max_deliveries=3)
    try:
        dead_key = Keys(db.namespace).dead_letters(0)

        async def buried() -> bool:
            return bool(await db.client.xlen(dead_key) == 1)

        await until(buried)
        ((_, dead),) = await db.client.xrange(dead_key)
        assert dead[b"entry"].decode() == entry
        assert b"handed out 4 times without an answer (max_deliveries 3)" in dead[b"reason"]
        assert json.loads(dead[b"m"])["id"] == "poison"
        assert node.channel.delivered == []
        assert node.scale_out.stats().dead_letters == 1
        summary = await db.client.xpending(Keys(db.namespace).partition(0), GROUP)
        assert summary["pending"] == 0
    finally:
        await node.close()


async def test_a_predecessors_pending_entry_is_answered_first_and_counted(db: Db) -> None:
    message = msg("left", channel="web", sender="bob")
    fields = encode_entry(message, message_digest("web", "bob", "left"), "dead-member")
    await seed_pending(db, 0, fields, deliveries=1)
    node = await start_node(db, partitions=1)
    try:
        await until(lambda: node.replies() == ["left"])
        assert node.scale_out.stats().redeliveries == 1
    finally:
        await node.close()


async def test_a_foreign_entry_is_dead_lettered_not_dropped(db: Db) -> None:
    await seed_pending(db, 0, {"x": "y"}, deliveries=1)
    node = await start_node(db, partitions=1)
    try:
        dead_key = Keys(db.namespace).dead_letters(0)

        async def buried() -> bool:
            return bool(await db.client.xlen(dead_key) == 1)

        await until(buried)
        ((_, dead),) = await db.client.xrange(dead_key)
        assert b"not a zeroclaw entry" in dead[b"reason"]
    finally:
        await node.close()


async def test_a_reply_already_sent_is_not_sent_again(db: Db) -> None:
    message = msg("sent-before", channel="web", sender="carol")
    digest = message_digest("web", "carol", "sent-before")
    await seed_pending(db, 0, encode_entry(message, digest, "dead-member"), deliveries=1)
    await db.client.set(Keys(db.namespace).replied(0, digest), "done")
    node = await start_node(db, partitions=1)
    try:

        async def acknowledged() -> bool:
            summary = await db.client.xpending(Keys(db.namespace).partition(0), GROUP)
            return bool(summary["pending"] == 0)

        await until(acknowledged)
        assert node.channel.delivered == []
    finally:
        await node.close()


@pytest.mark.parametrize("policy", ["drop", "resend"])
async def test_a_reply_an_earlier_owner_was_sending_is_counted_in_doubt(
    db: Db, policy: str
) -> None:
    """Not sent again by default (at most once: it may have gone out already), sent again with
    ``in_doubt = "resend"``; marked done either way."""
    message = msg("maybe", channel="web", sender="dan")
    digest = message_digest("web", "dan", "maybe")
    await seed_pending(db, 0, encode_entry(message, digest, "dead-member"), deliveries=1)
    await db.client.set(Keys(db.namespace).replied(0, digest), "sending:0")
    node = await start_node(db, partitions=1, in_doubt=policy)
    try:

        async def acknowledged() -> bool:
            summary = await db.client.xpending(Keys(db.namespace).partition(0), GROUP)
            return bool(summary["pending"] == 0)

        await until(acknowledged)
        assert node.scale_out.stats().in_doubt == 1
        assert node.replies() == ([] if policy == "drop" else ["maybe"])
        assert await db.client.get(Keys(db.namespace).replied(0, digest)) == b"done"
    finally:
        await node.close()


async def test_an_owner_whose_lease_passed_on_does_not_answer(db: Db) -> None:
    node = await start_node(db, partitions=1, hold=True, lease_ttl=30.0)
    try:
        admission = await node.scale_out.submit(node.channel, msg("late", channel="web"))
        assert admission.kind is AdmissionKind.ACCEPTED

        def running() -> bool:
            stats = node.processor.stats()
            return stats is not None and stats.in_flight == 1

        await until(running)
        lease, epoch = Keys(db.namespace).lease(0)
        await db.client.set(lease, "someone-else")
        await db.client.incr(epoch)
        node.release.set()
        await until(lambda: node.scale_out.stats().fenced_out == 1)
        assert node.channel.delivered == []
        summary = await db.client.xpending(Keys(db.namespace).partition(0), GROUP)
        assert summary["pending"] == 1  # left for the new owner
    finally:
        await node.close()


async def test_a_full_partition_refuses_with_retry_after(db: Db) -> None:
    node = await start_node(db, partitions=1, hold=True, max_backlog=2)
    try:
        web = node.channel
        for i in range(2):
            admission = await node.scale_out.submit(web, msg(f"b{i}", channel="web"))
            assert admission.kind is AdmissionKind.ACCEPTED
        refused = await node.scale_out.submit(web, msg("b2", channel="web"))
        assert (refused.kind, refused.reason) == (AdmissionKind.REJECTED, "backlog full")
        assert refused.retry_after is not None
        assert refused.retry_after > 0
        assert not await db.client.exists(
            Keys(db.namespace).seen_in(0, message_digest("web", "alice", "b2"))
        )  # refused before the claim: a redelivery is not a duplicate
        node.release.set()
        await until(lambda: len(node.replies()) == 2)
    finally:
        await node.close()


async def test_answered_entries_are_trimmed_and_pending_ones_kept(db: Db) -> None:
    node = await start_node(db, partitions=1)
    try:
        for i in range(20):
            await node.scale_out.submit(node.channel, msg(f"t{i}", channel="web", sender=f"s{i}"))
        await until(lambda: len(node.replies()) == 20)
        stream = Keys(db.namespace).partition(0)
        assert await db.client.xlen(stream) == 20
        await node.scale_out._refresh_once(trim=True)
        assert await db.client.xlen(stream) <= 1  # the last one delivered is kept as the bound
    finally:
        await node.close()


async def test_a_refusal_at_the_owner_is_answered_with_a_notice(db: Db) -> None:
    node = await start_node(db, partitions=1)
    try:
        breaker = node.processor.processor.breaker  # type: ignore[union-attr]
        assert breaker is not None
        message = msg("while-open", channel="web")
        fields = encode_entry(message, message_digest("web", "alice", "while-open"), "x")
        breaker.force_open()
        # Straight into the stream: the ingress would have refused it while the breaker is open.
        await db.client.xadd(Keys(db.namespace).partition(0), fields)
        await until(lambda: len(node.channel.delivered) == 1)
        ((message_id, result, text),) = node.channel.delivered
        assert (message_id, result.kind) == ("while-open", MessageResultKind.REJECTED)
        assert text == node.processor.notices.unavailable
    finally:
        await node.close()


def test_a_relayed_result_keeps_its_kind_error_and_retry_after() -> None:
    from zeroclaw.backends.redis.scale_out import _result_of
    from zeroclaw.concurrency.errors import Rejected

    failed = _result_of({"kind": "failed", "error": ["ProviderError", "503 from upstream"]})
    assert failed.kind is MessageResultKind.FAILED
    assert f"{type(failed.error).__name__}: {failed.error}" == "ProviderError: 503 from upstream"
    refused = _result_of(
        {"kind": "rejected", "error": ["Rejected", "circuit open"], "retry_after": 4.0}
    )
    assert isinstance(refused.error, Rejected)
    assert (str(refused.error), refused.error.retry_after) == ("circuit open", 4.0)
    merged = _result_of({"kind": "merged", "merged_into": "m9"})
    assert (merged.kind, merged.merged_into, merged.error) == (MessageResultKind.MERGED, "m9", None)
    ok = _result_of({"kind": "success", "value": "hi"})
    assert (ok.ok, ok.value) == (True, "hi")


async def test_a_failed_message_can_be_delivered_again(db: Db) -> None:
    node = await start_node(db, partitions=1)
    try:
        web = node.channel
        first = await node.scale_out.submit(web, msg("f1", "fail", channel="web"))
        assert first.kind is AdmissionKind.ACCEPTED
        await until(lambda: len(node.channel.delivered) == 1)
        assert node.channel.delivered[0][1].kind is MessageResultKind.FAILED
        seen = Keys(db.namespace).seen_in(0, message_digest("web", "alice", "f1"))
        assert not await db.client.exists(seen)
        again = await node.scale_out.submit(web, msg("f1", "fail", channel="web"))
        assert again.kind is AdmissionKind.ACCEPTED  # as the in-memory dedup forgets a failure
        await until(lambda: len(node.channel.delivered) == 2)
    finally:
        await node.close()


class SlowReplies(DeliveringFakeChannel):
    """Replies (SUCCESS) wait for :attr:`go`; other results are taken at once."""

    def __init__(self) -> None:
        super().__init__("web")
        self.go = asyncio.Event()

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        if result.ok:
            await self.go.wait()
        await super().deliver(message, result, text)


async def test_merged_entries_are_acknowledged_with_the_turn_they_were_merged_into(
    db: Db,
) -> None:
    channel = SlowReplies()
    config = MessageProcessorConfig(enable_dedup=False, queue_mode="collect", collect_window=0.3)
    node = await start_node(db, partitions=1, config=config, channel=channel)
    try:
        for i in range(3):
            admission = await node.scale_out.submit(
                channel, msg(f"c{i}", f"part {i}", channel="web")
            )
            assert admission.kind is AdmissionKind.ACCEPTED
        merged = [mid for mid, result, _ in channel.delivered]
        await until(lambda: len(channel.delivered) == 2)  # c0, c1: MERGED into c2's turn
        merged = [mid for mid, result, _ in channel.delivered]
        assert merged == ["c0", "c1"]
        assert all(r.kind is MessageResultKind.MERGED for _, r, _ in channel.delivered)
        stream = Keys(db.namespace).partition(0)
        # The batch's reply has not gone: all three stay pending (a crash now re-runs them all).
        assert (await db.client.xpending(stream, GROUP))["pending"] == 3
        channel.go.set()
        await until(lambda: len(channel.delivered) == 3)

        async def acknowledged() -> bool:
            return bool((await db.client.xpending(stream, GROUP))["pending"] == 0)

        await until(acknowledged)
        assert channel.delivered[2][2] == "re: part 0\npart 1\npart 2"
    finally:
        channel.go.set()
        await node.close()
