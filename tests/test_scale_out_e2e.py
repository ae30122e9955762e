"""Scale-out end to end: several ``zeroclaw serve`` processes, one real Redis, a real client.

Each test gets a namespace of its own on the session's Redis (a process killed or a Redis
restarted gets a private server). The webhook channel is in async mode: a message is answered
202 once it is in Redis, and its reply is POSTed to the test's receiver by whichever process
owns the conversation.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.fakes.openai_server import FakeOpenAI, error
from tests.gateway_process import Served, until
from tests.redis_support import RedisServer
from tests.scale_out_world import (
    Receiver,
    post_message,
    scale_out_config,
    start_processes,
    status_of,
)
from zeroclaw.backends.redis import Keys
from zeroclaw.backends.redis.codec import partition_of

pytestmark = pytest.mark.asyncio


async def owned_partitions(session: aiohttp.ClientSession, processes: list[Served]) -> list[int]:
    owned: list[int] = []
    for served in processes:
        owned += (await status_of(session, served))["redis"]["owned"]
    return sorted(owned)


async def stop_all(processes: list[Served]) -> None:
    for served in processes:
        if served.process.returncode is None:
            assert await served.stop() == 0, served.log()


async def test_a_message_delivered_to_two_processes_is_answered_once(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    processes = await start_processes(tmp_path, scale_out_config(redis_url, namespace, receiver), 2)
    try:
        async with aiohttp.ClientSession() as session:
            ids = [f"m{i}" for i in range(50)]
            for index, message_id in enumerate(ids):
                body = {"id": message_id, "sender": f"u{index % 5}", "content": f"hi {index}"}
                first = await post_message(session, processes[0], body)
                again = await post_message(session, processes[1], body)
                assert (first, again) == (202, 200)
            await until(lambda: len(receiver.replies()) >= len(ids), what="every reply")
            # Give a duplicate reply the time to show up, if there were one: every process has
            # nothing pending once each partition's backlog is 0.
            await until(
                lambda: _all_idle(session, processes), timeout=30, what="every partition idle"
            )
            assert sorted(receiver.replied_ids()) == sorted(ids)
    finally:
        await stop_all(processes)
        await receiver.stop()


async def _all_idle(session: aiohttp.ClientSession, processes: list[Served]) -> bool:
    for served in processes:
        redis = (await status_of(session, served))["redis"]
        if redis["pending"] or redis["lag"]:
            return False
    return True


async def test_a_sync_webhook_is_answered_by_whichever_process_owns_the_conversation(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    sync = '[channels.sync]\nkind = "webhook"\nallowed_users = ["*"]\n'
    config = scale_out_config(redis_url, namespace, receiver, extra_channels=sync)
    processes = await start_processes(tmp_path, config, 2)
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _spread(session, processes, 8), timeout=30, what="spread")
            elsewhere = set((await status_of(session, processes[1]))["redis"]["owned"])
            senders = [f"user{i}" for i in range(40)]
            relayed = [s for s in senders if partition_of(("sync", s), 8) in elsewhere]
            assert relayed  # some conversations are owned by the other process

            async def ask(sender: str) -> None:
                body = {"sender": sender, "content": f"question of {sender}"}
                async with session.post(
                    processes[0].base + "/channels/sync", json=body
                ) as response:
                    answer = await response.json()
                    assert response.status == 200, answer
                    assert answer["status"] == "success"
                    assert answer["reply"]

            await asyncio.gather(*(ask(s) for s in senders))
    finally:
        await stop_all(processes)
        await receiver.stop()


def openai_provider(fake: FakeOpenAI, extra: str = "") -> str:
    return f"""
kind = "openai"
base_url = "{fake.base_url}"
api_key = "sk-test"
model = "fake-model"
history_turns = 0
max_retries = 0
{extra}"""


async def test_the_provider_rate_limit_holds_for_the_whole_gateway(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    """Two processes, requests_per_second = 10: the provider sees at most burst + 10 × T
    requests in any T seconds, not twice that."""
    rate, burst, messages = 10.0, 10, 60
    fake = FakeOpenAI()
    await fake.start()
    receiver = Receiver()
    await receiver.start()
    provider = openai_provider(fake, f"requests_per_second = {rate}\nmax_concurrency = 64")
    config = scale_out_config(redis_url, namespace, receiver, provider=provider)
    processes = await start_processes(tmp_path, config, 2)
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _spread(session, processes, 8), timeout=30, what="spread")
            for i in range(messages):
                body = {"id": f"r{i}", "sender": f"user{i}", "content": f"q{i}"}
                assert await post_message(session, processes[i % 2], body) == 202
            await until(lambda: len(receiver.answered) == messages, timeout=60, what="replies")
    finally:
        await stop_all(processes)
        await receiver.stop()
        await fake.stop()
    arrivals = sorted(request.received_at for request in fake.requests)
    assert len(arrivals) == messages
    span = arrivals[-1] - arrivals[0]
    # Over the whole run: unshared, two processes would take half the time.
    assert messages <= burst + rate * span + 1, span
    assert span <= (messages - burst) / rate * 1.5 + 1  # and it is not just slow
    # Any 1 s window: burst + rate, plus one for the arrivals' jitter over loopback.
    for index, start in enumerate(arrivals):
        within = sum(1 for t in arrivals[index:] if t - start <= 1.0)
        assert within <= burst + rate + 1, (start, within)


async def test_a_breaker_tripped_in_one_process_refuses_in_the_other(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    fake = FakeOpenAI()
    await fake.start()
    fake.script(*(error(500, "upstream down") for _ in range(20)))
    receiver = Receiver()
    await receiver.start()
    circuit = "[processor.circuit]\nfailure_threshold = 2\ntimeout_duration = 60.0\n"
    config = scale_out_config(
        redis_url, namespace, receiver, provider=openai_provider(fake), extra_channels=""
    ).replace("[provider]", circuit + "\n[provider]")
    processes = await start_processes(tmp_path, config, 2)
    tripping, other = processes
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _spread(session, processes, 8), timeout=30, what="spread")
            owned = set((await status_of(session, tripping))["redis"]["owned"])
            sender = next(
                f"u{i}" for i in range(1000) if partition_of(("web", f"u{i}"), 8) in owned
            )
            for turn in range(2):  # two failures in the owner of this conversation
                body = {"id": f"fail{turn}", "sender": sender, "content": "x"}
                assert await post_message(session, tripping, body, attempts=1) == 202
            await until(lambda: len(fake.requests) == 2, what="two failed provider calls")

            async def open_elsewhere() -> bool:
                breakers = (await status_of(session, other))["breakers"]
                return any(b["state"] == "open" for b in breakers.values())

            await until(open_elsewhere, timeout=10, what="the other process's breaker open")
            body = {"sender": "someone-else", "content": "hello"}
            async with session.post(other.base + "/channels/web", json=body) as response:
                assert response.status == 503
                assert (await response.json())["reason"] == "circuit open"
            status = await status_of(session, other)
            assert status["provider"]["calls"] == 0  # it never saw a failure itself
            assert status["redis"]["breaker"]["forced_by_peer"] >= 1
            assert len(fake.requests) == 2
    finally:
        await stop_all(processes)
        await receiver.stop()
        await fake.stop()


async def test_partitions_are_spread_and_a_stopping_process_hands_them_over_at_once(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    # A long lease: a takeover within a few seconds can only come from the release.
    config = scale_out_config(redis_url, namespace, receiver, partitions=12, lease_ttl=30.0)
    processes = await start_processes(tmp_path, config, 3)
    try:
        async with aiohttp.ClientSession() as session:

            async def spread() -> bool:
                return await owned_counts(session, processes) == [4, 4, 4]

            await until(spread, timeout=30, what="4 partitions each")
            stopped = time.monotonic()
            assert await processes[0].stop() == 0
            survivors = processes[1:]

            async def taken_over() -> bool:
                return await owned_partitions(session, survivors) == list(range(12))

            await until(taken_over, timeout=10, what="the survivors own every partition")
            assert time.monotonic() - stopped < 10  # lease_ttl is 30 s

            async def rebalanced() -> bool:
                return await owned_counts(session, survivors) == [6, 6]

            # A survivor may first hold a partition the new assignment gives the other: it
            # hands it over once its reader stopped.
            await until(rebalanced, timeout=10, what="6 partitions each")
    finally:
        await stop_all(processes)
        await receiver.stop()


async def test_status_and_metrics_show_the_scale_out_figures(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    (served,) = await start_processes(
        tmp_path, scale_out_config(redis_url, namespace, receiver, partitions=4), 1
    )
    try:
        async with aiohttp.ClientSession() as session:
            await until(
                lambda: _owns(session, served, 4), timeout=30, what="all 4 partitions owned"
            )
            status = await post_message(session, served, {"sender": "a", "content": "x"})
            assert status == 202
            await until(lambda: len(receiver.replies()) == 1, what="the reply")
            redis = (await status_of(session, served))["redis"]
            assert redis["connected"] is True
            assert redis["members"] == 1
            assert redis["owned"] == [0, 1, 2, 3]
            async with session.get(served.base + "/metrics") as response:
                text = await response.text()
            for line in (
                "zeroclaw_redis_partitions_owned 4.0",
                "zeroclaw_redis_connected 1.0",
                "zeroclaw_redis_dead_letters_total 0.0",
                "zeroclaw_redis_redeliveries_total 0.0",
            ):
                assert line in text.splitlines(), text
            assert "zeroclaw_redis_lease_changes_total 4.0" in text.splitlines()
            assert any(line.startswith("zeroclaw_redis_pending ") for line in text.splitlines())
    finally:
        await stop_all([served])
        await receiver.stop()


async def _owns(session: aiohttp.ClientSession, served: Served, count: int) -> bool:
    return bool((await status_of(session, served))["redis"]["partitions_owned"] == count)


async def test_redis_unreachable_refuses_and_stays_healthy(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    (served,) = await start_processes(tmp_path, scale_out_config(dead, namespace, receiver), 1)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                served.base + "/channels/web", json={"sender": "a", "content": "x"}
            ) as response:
                assert response.status == 503
                assert (await response.json())["reason"] == "redis unavailable"
                assert int(response.headers["Retry-After"]) >= 1
            async with session.get(served.base + "/healthz") as response:
                assert response.status == 200
            redis = (await status_of(session, served))["redis"]
            assert redis["connected"] is False
            assert redis["refused"] == 1
    finally:
        await stop_all([served])
        await receiver.stop()
    assert "Redis unreachable" in served.log()


@pytest.mark.parametrize("in_doubt", ["drop", "resend"])
async def test_three_processes_one_killed_mid_run_lose_nothing(
    tmp_path: Path, redis_url: str, namespace: str, in_doubt: str
) -> None:
    """5 000 messages over 200 conversations, each conversation's messages sent in order;
    one of three processes is SIGKILLed mid-run. Every message is processed; the replies the
    dead process was sending are the only ones that may be missing (``drop``) or doubled
    (``resend``), and each of those is counted."""
    conversations, per_conversation, lease_ttl = 200, 25, 3.0
    total = conversations * per_conversation
    receiver = Receiver()
    await receiver.start()
    config = scale_out_config(
        redis_url,
        namespace,
        receiver,
        partitions=16,
        lease_ttl=lease_ttl,
        extra_redis=f'in_doubt = "{in_doubt}"',
    )
    processes = await start_processes(tmp_path, config, 3)
    victim, survivors = processes[0], processes[1:]
    alive = list(processes)
    accepted = 0
    try:
        async with aiohttp.ClientSession() as session:
            await until(
                lambda: _spread(session, processes, 16), timeout=30, what="partitions spread"
            )

            async def conversation(index: int) -> None:
                nonlocal accepted
                for turn in range(per_conversation):
                    body = {"id": f"c{index}-{turn}", "sender": f"user{index}", "content": "go"}
                    for attempt in range(50):
                        target = alive[(index + turn + attempt) % len(alive)]
                        status = await post_message(session, target, body, attempts=3)
                        if status in (200, 202):
                            break
                    else:
                        raise AssertionError(f"{body['id']} was never accepted")
                    accepted += 1

            senders = asyncio.gather(*(conversation(i) for i in range(conversations)))
            await until(lambda: len(receiver.replies()) >= total * 0.4, timeout=120, what="40 %")
            victim.process.send_signal(signal.SIGKILL)
            alive.remove(victim)
            killed_at = time.monotonic()
            await victim.wait()

            async def taken_over() -> bool:
                return await owned_partitions(session, survivors) == list(range(16))

            await until(taken_over, timeout=30, what="the survivors own every partition")
            takeover = time.monotonic() - killed_at
            await senders
            await until(
                lambda: _drained(redis_url, namespace, 16), timeout=180, what="every entry done"
            )
            doubted = 0
            for served in survivors:
                doubted += (await status_of(session, served))["redis"]["in_doubt"]
            if in_doubt == "resend":
                await until(lambda: len(receiver.answered) >= total, timeout=60)
    finally:
        await stop_all(alive)
        await receiver.stop()
    ids = receiver.replied_ids()
    expected = {f"c{i}-{t}" for i in range(conversations) for t in range(per_conversation)}
    duplicates = {message_id: n for message_id, n in Counter(ids).items() if n > 1}
    missing = expected - set(ids)
    assert set(ids) <= expected
    # A reply the killed process was sending when it died may or may not have gone out: the
    # takeover counts it (in_doubt) and, as configured, does not send it again (it may be
    # missing) or does (it may be doubled). Nothing else may be missing or doubled. A repeat
    # carries the first one's Idempotency-Key: a receiver keeping the keys sees it once.
    if in_doubt == "drop":
        assert duplicates == {}
        assert len(missing) <= doubted, (missing, doubted)
    else:
        assert missing == set()
        assert len(duplicates) <= doubted, (duplicates, doubted)
    assert all(r["idempotency_key"] == f"web:{r['id']}" for r in receiver.replies())
    for recipient, replied in receiver.by_recipient().items():
        first_seen = list(dict.fromkeys(replied))
        turns = [int(message_id.rsplit("-", 1)[1]) for message_id in first_seen]
        assert turns == sorted(turns), (recipient, turns)
    # Within the lease TTL, plus the time /status takes to show it on a loaded machine.
    assert takeover <= lease_ttl + 1.0, takeover
    print(
        f"{in_doubt}: takeover {takeover:.2f}s, in doubt {doubted}, "
        f"missing {len(missing)}, doubled {len(duplicates)}"
    )


def _drained(url: str, namespace: str, partitions: int) -> bool:
    """Every partition's entries handed out and acknowledged, asked of Redis itself (the
    processes' figures are refreshed once a second). An entry is acknowledged after its reply
    went, so every reply has arrived by then."""
    client = redis.Redis.from_url(url)
    try:
        for index in range(partitions):
            stream = Keys(namespace).partition(index)
            if not client.exists(stream):
                continue
            (group,) = client.xinfo_groups(stream)
            if group["pending"] or group["lag"]:
                return False
        return True
    finally:
        client.close()


async def owned_counts(session: aiohttp.ClientSession, processes: list[Served]) -> list[int]:
    return [(await status_of(session, s))["redis"]["partitions_owned"] for s in processes]


async def _spread(session: aiohttp.ClientSession, processes: list[Served], partitions: int) -> bool:
    counts = await owned_counts(session, processes)
    return sum(counts) == partitions and min(counts) >= partitions // len(processes)


async def test_a_redis_restart_mid_run_loses_nothing(
    tmp_path: Path, namespace: str, private_redis: RedisServer
) -> None:
    """A private, durable Redis (AOF, fsync always) is SIGKILLed mid-run and started again:
    processing resumes and every accepted message is answered, in order. Each conversation
    sends its next message once the previous one was answered, as a chat user does, so
    messages keep arriving through the outage."""
    conversations, per_conversation = 60, 10
    total = conversations * per_conversation
    server = private_redis
    receiver = Receiver()
    await receiver.start()
    config = scale_out_config(server.url, namespace, receiver, partitions=8, lease_ttl=3.0)
    processes = await start_processes(tmp_path, config, 2)
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _spread(session, processes, 8), timeout=30, what="spread")
            refused = 0

            async def conversation(index: int) -> None:
                nonlocal refused
                for turn in range(per_conversation):
                    body = {"id": f"c{index}-{turn}", "sender": f"user{index}", "content": "go"}
                    target = processes[(index + turn) % 2]
                    while (status := await post_message(session, target, body, attempts=1)) != 202:
                        assert status in (200, 429, 503), status
                        if status == 200:  # a duplicate: an earlier attempt got in
                            break
                        refused += 1
                        await asyncio.sleep(0.2)  # the client's own retry pace
                    await until(functools.partial(receiver.has_answered, str(body["id"])), 120)

            senders = asyncio.gather(*(conversation(i) for i in range(conversations)))
            await until(lambda: len(receiver.replies()) >= total * 0.3, timeout=60, what="30 %")
            await asyncio.to_thread(server.kill)

            async def both_disconnected() -> bool:
                states = [(await status_of(session, s))["redis"]["connected"] for s in processes]
                return not any(states)

            await until(both_disconnected, timeout=30, what="the outage seen")
            async with session.get(processes[0].base + "/healthz") as response:
                assert response.status == 200
            await asyncio.to_thread(server.start)
            await senders
            await until(lambda: len(set(receiver.replied_ids())) >= total, timeout=120)
            await until(lambda: _all_idle(session, processes), timeout=60, what="idle")
            in_doubt = 0
            for served in processes:
                in_doubt += (await status_of(session, served))["redis"]["in_doubt"]
    finally:
        await stop_all(processes)
        await receiver.stop()
    ids = receiver.replied_ids()
    assert set(ids) == {f"c{i}-{t}" for i in range(conversations) for t in range(per_conversation)}
    # No process died: no reply is in doubt (a script run again after its reply was lost in the
    # outage is known for this attempt's own), so none is missing or doubled.
    assert in_doubt == 0
    assert sorted(ids) == sorted(set(ids))
    for recipient, replied in receiver.by_recipient().items():
        turns = [int(message_id.rsplit("-", 1)[1]) for message_id in replied]
        assert turns == sorted(turns), (recipient, turns)
    assert refused > 0  # the outage was met by messages arriving
    print(f"refused while Redis was down: {refused}, in_doubt {in_doubt}")


async def test_a_process_joining_mid_run_takes_its_share_and_nothing_is_lost(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    """Two processes answer a stream of conversations; a third joins mid-run. The partitions
    it is given are handed over by their owners once their entries in flight are answered:
    every message is answered once, in order, and the newcomer ends with its share."""
    conversations, per_conversation, partitions = 60, 20, 12
    total = conversations * per_conversation
    receiver = Receiver()
    await receiver.start()
    # Turns of 0.3 s, each conversation waiting for its answer: about 6 s of traffic.
    config = scale_out_config(redis_url, namespace, receiver, partitions=partitions, latency=0.3)
    processes = await start_processes(tmp_path, config, 2)
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _spread(session, processes, partitions), timeout=30, what="2")
            entry_points = list(processes)

            async def conversation(index: int) -> None:
                for turn in range(per_conversation):
                    body = {"id": f"j{index}-{turn}", "sender": f"user{index}", "content": "go"}
                    target = entry_points[(index + turn) % len(entry_points)]
                    assert await post_message(session, target, body) in (200, 202)
                    await until(functools.partial(receiver.has_answered, body["id"]), 120)

            senders = asyncio.gather(*(conversation(i) for i in range(conversations)))
            await until(lambda: len(receiver.answered) >= total * 0.1, timeout=60, what="10 %")
            (newcomer,) = await start_processes(tmp_path, config, 1)
            processes.append(newcomer)
            entry_points.append(newcomer)
            await until(
                lambda: _spread(session, processes, partitions), timeout=30, what="rebalanced"
            )
            assert len(receiver.answered) < total  # it joined while messages were flowing
            await senders
            await until(lambda: _all_idle(session, processes), timeout=60, what="idle")
            share = (await status_of(session, newcomer))["redis"]["partitions_owned"]
            in_doubt = 0
            for served in processes:
                in_doubt += (await status_of(session, served))["redis"]["in_doubt"]
    finally:
        await stop_all(processes)
        await receiver.stop()
    ids = receiver.replied_ids()
    assert sorted(ids) == sorted(
        f"j{i}-{t}" for i in range(conversations) for t in range(per_conversation)
    )  # each once: a hand-over is not a crash
    assert in_doubt == 0
    assert share == partitions // 3
    for recipient, replied in receiver.by_recipient().items():
        turns = [int(message_id.rsplit("-", 1)[1]) for message_id in replied]
        assert turns == sorted(turns), (recipient, turns)


async def test_a_conversation_keeps_its_history_when_its_partition_changes_hands(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    fake = FakeOpenAI()
    await fake.start()
    receiver = Receiver()
    await receiver.start()
    provider = openai_provider(fake).replace("history_turns = 0", "history_turns = 3")
    config = scale_out_config(redis_url, namespace, receiver, provider=provider)
    processes = await start_processes(tmp_path, config, 2)
    first, second = processes
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _spread(session, processes, 8), timeout=30, what="spread")
            owned = set((await status_of(session, first))["redis"]["owned"])
            ours = (f"u{i}" for i in range(1000) if partition_of(("web", f"u{i}"), 8) in owned)
            sender = next(ours)
            body = {"id": "h1", "sender": sender, "content": "my name is Ada"}
            assert await post_message(session, second, body) == 202
            await until(functools.partial(receiver.has_answered, "h1"), 30)
            assert await first.stop() == 0  # its partitions go to the second process

            async def all_owned() -> bool:
                return await owned_partitions(session, [second]) == list(range(8))

            await until(all_owned, timeout=30, what="the second process owns everything")
            body = {"id": "h2", "sender": sender, "content": "what is my name?"}
            assert await post_message(session, second, body) == 202
            await until(functools.partial(receiver.has_answered, "h2"), 30)
    finally:
        await stop_all(processes)
        await receiver.stop()
        await fake.stop()
    (last,) = [r.json["messages"] for r in fake.requests if "name?" in str(r.json["messages"])]
    assert [m["content"] for m in last] == [
        "my name is Ada",
        "echo: my name is Ada",
        "what is my name?",
    ]
