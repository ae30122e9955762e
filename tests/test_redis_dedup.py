"""The dedup claim stores against a real Redis: the contract both stores keep, the claim shared
between clients, durability across a SIGKILL, and the session fixture's message without Redis."""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.redis_support import (
    URL_ENV,
    NoRedis,
    RedisServer,
    answers,
    delete_matching,
    no_redis_message,
    session_redis,
    unused_port,
    url_from,
)
from zeroclaw.backends.redis import Keys, connect
from zeroclaw.backends.redis.dedup import RedisDedupStore
from zeroclaw.concurrency import DedupKey, Deduplicator, DedupStore, DedupStrategy, MemoryDedupStore

TTL = 600.0
KINDS = ["memory", "redis"]
StoreFactory = Callable[[float], DedupStore]


async def poll(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` is true, failing after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.005)


@pytest.fixture(params=KINDS)
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Builds a store of each kind with a given TTL (Redis ones in the test's namespace)."""
    if request.param == "memory":
        return lambda ttl: MemoryDedupStore(Deduplicator(ttl))
    client: redis.asyncio.Redis = request.getfixturevalue("redis_client")
    keys = Keys(request.getfixturevalue("namespace"))
    return lambda ttl: RedisDedupStore(client, keys, ttl=ttl)


@pytest.fixture
def store(make_store: StoreFactory) -> DedupStore:
    return make_store(TTL)


# ---- the contract, on both stores ------------------------------------------------------------


async def test_first_claim_wins_and_repeats_are_duplicates(store: DedupStore) -> None:
    assert isinstance(store, DedupStore)
    assert not await store.contains("ev-1")
    assert await store.claim("ev-1") is True
    assert await store.contains("ev-1")
    assert await store.claim("ev-1") is False
    assert await store.claim("ev-1") is False
    assert await store.claim("ev-2") is True  # another key is independent
    assert not await store.contains("ev-3")


async def test_release_lets_the_redelivery_through(store: DedupStore) -> None:
    assert await store.release("never") is False
    assert await store.claim("ev") is True
    assert await store.release("ev") is True
    assert not await store.contains("ev")
    assert await store.release("ev") is False  # nothing left to release
    assert await store.claim("ev") is True  # the redelivery is new again
    assert await store.claim("ev") is False


async def test_contains_claims_nothing(store: DedupStore) -> None:
    assert not await store.contains("ev")
    assert not await store.contains("ev")
    assert await store.claim("ev") is True


async def test_keys_are_exact_text(store: DedupStore) -> None:
    """Near-identical, empty, non-ASCII and surrogate texts are distinct keys; a composite key's
    digest is a key like any other."""
    composite = DedupKey.combine(["a", "b"]).digest
    keys = ["a", "A", "a ", "", "é", "e\u0301", "\ud800", "ns:seen:a", composite]
    assert [await store.claim(k) for k in keys] == [True] * len(keys)
    assert [await store.claim(k) for k in keys] == [False] * len(keys)


async def test_a_str_subclass_is_its_text(store: DedupStore) -> None:
    class Loud(str):
        def __str__(self) -> str:
            return "LOUD"

        def __format__(self, spec: str) -> str:
            return "LOUD"

    assert await store.claim(Loud("a")) is True
    assert await store.claim("LOUD") is True
    assert await store.claim("a") is False


@pytest.mark.parametrize("bad", [b"ev", 1, None, DedupKey.of("ev")])
async def test_a_key_is_a_str(store: DedupStore, bad: object) -> None:
    for call in (store.claim, store.release, store.contains):
        with pytest.raises(TypeError, match="str"):
            await call(bad)  # type: ignore[arg-type]


async def test_ttl_is_reported(make_store: StoreFactory) -> None:
    assert make_store(TTL).ttl == TTL
    assert make_store(2.5).ttl == 2.5


async def test_a_claim_ends_after_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(0.05)
    assert await store.claim("short") is True
    assert await store.claim("short") is False

    async def released() -> bool:
        return not await store.contains("short")

    await poll(released, "the claim's expiry")
    assert await store.claim("short") is True


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["claim", "release", "contains"]),
            st.sampled_from(["a", "b", "c", "", "\ud800"]),
        ),
        max_size=30,
    )
)
@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.parametrize("kind", KINDS)
def test_claims_and_releases_match_a_set(
    kind: str, redis_url: str, namespace: str, ops: list[tuple[str, str]]
) -> None:
    """Any sequence of claim/release/contains answers as a set of claimed keys does."""

    async def scenario() -> None:
        client = connect(redis_url)
        try:
            store: DedupStore
            if kind == "memory":
                store = MemoryDedupStore(Deduplicator(TTL))
            else:  # a namespace per example, under the test's (deleted at its teardown)
                store = RedisDedupStore(client, Keys(f"{namespace}:{uuid.uuid4().hex}"), ttl=TTL)
            model: set[str] = set()
            for op, key in ops:
                if op == "claim":
                    assert await store.claim(key) is (key not in model), (op, key)
                    model.add(key)
                elif op == "release":
                    assert await store.release(key) is (key in model), (op, key)
                    model.discard(key)
                else:
                    assert await store.contains(key) is (key in model), (op, key)
        finally:
            await client.aclose()

    asyncio.run(scenario())


# ---- the in-memory store ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy", [DedupStrategy.SLIDING_WINDOW, DedupStrategy.BLOOM, DedupStrategy.COMBINED]
)
def test_memory_store_refuses_inexact_strategies(strategy: DedupStrategy) -> None:
    with pytest.raises(ValueError, match=r"EXACT.*exact answer"):
        MemoryDedupStore(Deduplicator(TTL, strategy=strategy))


def test_memory_store_needs_a_deduplicator() -> None:
    with pytest.raises(TypeError, match="Deduplicator"):
        MemoryDedupStore(object())  # type: ignore[arg-type]


async def test_memory_store_never_suspends() -> None:
    """Each call completes in the first step of its coroutine: nothing can run between a
    check and its update."""
    store = MemoryDedupStore(Deduplicator(TTL))
    for call in (store.claim, store.contains, store.release):
        coroutine = call("ev")
        with pytest.raises(StopIteration):
            coroutine.send(None)
    assert store.deduplicator.ttl == TTL


# ---- the Redis store ----------------------------------------------------------------------------


async def test_redis_claim_is_a_key_in_the_namespace_with_the_ttl(
    redis_client: redis.asyncio.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    store = RedisDedupStore(redis_client, keys, ttl=TTL)
    assert await store.claim("ev") is True
    name = keys.seen("ev")
    assert await redis_client.get(name) == b"1"
    ttl_ms = int(TTL * 1000)
    first = await redis_client.pttl(name)
    assert 0 < first <= ttl_ms

    async def aged() -> bool:
        return int(await redis_client.pttl(name)) <= ttl_ms - 50

    await poll(aged, "50 ms off the claim's TTL")
    before = await redis_client.pttl(name)
    assert await store.claim("ev") is False
    assert 0 < await redis_client.pttl(name) <= before  # a duplicate does not extend the claim


async def test_redis_ttl_is_whole_milliseconds_rounded_up(
    redis_client: redis.asyncio.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    store = RedisDedupStore(redis_client, keys, ttl=timedelta(microseconds=1500))
    assert store.ttl == 0.002
    assert RedisDedupStore(redis_client, keys, ttl=1e-9).ttl == 0.001
    assert RedisDedupStore(redis_client, keys, ttl=timedelta(minutes=10)).ttl == TTL


@pytest.mark.parametrize("ttl", [0, 0.0, -1.0, math.nan, math.inf, timedelta(0)])
def test_redis_store_refuses_a_ttl_that_is_not_positive_and_finite(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be > 0"):
        RedisDedupStore(connect("redis://127.0.0.1:1/0"), Keys("ns"), ttl=ttl)


@pytest.mark.parametrize("ttl", ["600", True, None])
def test_redis_store_refuses_a_ttl_that_is_not_seconds(ttl: object) -> None:
    with pytest.raises(TypeError, match="ttl must be seconds"):
        RedisDedupStore(connect("redis://127.0.0.1:1/0"), Keys("ns"), ttl=ttl)  # type: ignore[arg-type]


def test_redis_store_needs_keys() -> None:
    with pytest.raises(TypeError, match="Keys"):
        RedisDedupStore(connect("redis://127.0.0.1:1/0"), "ns", ttl=TTL)  # type: ignore[arg-type]


async def test_namespaces_do_not_share_claims(
    redis_client: redis.asyncio.Redis, namespace: str
) -> None:
    one = RedisDedupStore(redis_client, Keys(f"{namespace}-one"), ttl=TTL)
    two = RedisDedupStore(redis_client, Keys(f"{namespace}-two"), ttl=TTL)
    assert await one.claim("ev") is True
    assert await two.claim("ev") is True
    assert repr(one) == f"RedisDedupStore(namespace='{namespace}-one', ttl=600)"


@pytest.fixture
async def two_clients(redis_url: str) -> AsyncIterator[tuple[redis.asyncio.Redis, ...]]:
    """Two clients with connections of their own: stand-ins for two gateway processes."""
    clients = (connect(redis_url), connect(redis_url))
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


async def test_two_processes_claim_each_key_once_between_them(
    two_clients: tuple[redis.asyncio.Redis, ...], namespace: str
) -> None:
    keys = Keys(namespace)
    stores = [RedisDedupStore(client, keys, ttl=TTL) for client in two_clients]
    for round_ in range(5):
        names = [f"r{round_}-{i}" for i in range(200)]
        # Interleaved so that the two stores' claims of one key are in flight together; 400
        # commands at once also exceed each client's connection pool, so some of them queue.
        calls = [store.claim(name) for name in names for store in stores]
        results = await asyncio.gather(*calls)
        for i, name in enumerate(names):
            pair = results[2 * i : 2 * i + 2]
            assert sorted(pair) == [False, True], (name, pair)


async def test_claims_from_both_clients_are_shared(
    two_clients: tuple[redis.asyncio.Redis, ...], namespace: str
) -> None:
    one, two = (RedisDedupStore(client, Keys(namespace), ttl=TTL) for client in two_clients)
    assert await one.claim("ev") is True
    assert await two.contains("ev")
    assert await two.claim("ev") is False
    assert await two.release("ev") is True  # either process may release a claim
    assert not await one.contains("ev")
    assert await one.claim("ev") is True


async def test_unreachable_redis_raises_connection_error(namespace: str) -> None:
    client = connect(f"redis://127.0.0.1:{unused_port()}/0", socket_timeout=2.0)
    store = RedisDedupStore(client, Keys(namespace), ttl=TTL)
    try:
        for call in (store.claim, store.release, store.contains):
            with pytest.raises(redis.ConnectionError):
                await call("ev")
    finally:
        await client.aclose()


async def test_an_acknowledged_claim_survives_a_sigkill(private_redis: RedisServer) -> None:
    """AOF with appendfsync always: a claim Redis acknowledged is on disk, so after a SIGKILL and a
    restart it is still a duplicate; meanwhile the store raises instead of answering."""
    client = connect(private_redis.url)
    store = RedisDedupStore(client, Keys("durable"), ttl=TTL)
    try:
        claimed = [f"ev-{i}" for i in range(50)]
        assert await asyncio.gather(*(store.claim(k) for k in claimed)) == [True] * 50
        private_redis.kill()
        assert not private_redis.running
        with pytest.raises(redis.ConnectionError):
            await store.claim("during-outage")
        private_redis.start()
        answered: list[bool] = []

        async def back() -> bool:
            try:
                answered.append(await store.contains(claimed[0]))
            except redis.ConnectionError:  # a pooled connection from before the restart
                return False
            return True

        await poll(back, "the store answering after the restart")
        assert answered == [True]
        assert [await store.claim(k) for k in claimed] == [False] * 50
        assert await store.claim("after-restart") is True
    finally:
        await client.aclose()


def test_private_redis_restarts_on_its_port_and_stops(private_redis: RedisServer) -> None:
    port = private_redis.port
    assert answers(private_redis.url)
    with pytest.raises(RuntimeError, match="already running"):
        private_redis.start()
    private_redis.stop()
    assert not answers(private_redis.url)
    private_redis.stop()  # idempotent
    private_redis.start()
    assert private_redis.port == port
    assert answers(private_redis.url)
    assert "Ready to accept connections" in private_redis.log_tail(100)


# ---- the session fixture's choices ------------------------------------------------------------


def test_without_redis_the_session_says_how_to_get_one(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{unused_port()}/0"
    with pytest.raises(NoRedis) as missing:
        session_redis(url, tmp_path / "redis", path=str(tmp_path))  # no redis-server there
    message = str(missing.value)
    assert message == no_redis_message(url)
    assert url in message
    for advice in ("apt-get install redis-server", "127.0.0.1:6379", URL_ENV):
        assert advice in message
    assert not (tmp_path / "redis").exists()


def test_without_redis_at_the_url_a_private_server_is_started(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{unused_port()}/0"
    found, server = session_redis(url, tmp_path / "redis", path=os.environ.get("PATH"))
    assert server is not None
    try:
        assert found == server.url != url
        assert answers(found)
        assert not server.durable
    finally:
        server.stop()
    assert not answers(found)


def test_a_url_that_answers_is_used_as_it_is(redis_url: str, tmp_path: Path) -> None:
    assert session_redis(redis_url, tmp_path, path=str(tmp_path)) == (redis_url, None)


def test_the_url_comes_from_the_environment() -> None:
    assert url_from({}) == "redis://127.0.0.1:6379/0"
    assert url_from({URL_ENV: ""}) == "redis://127.0.0.1:6379/0"
    assert url_from({URL_ENV: "redis://10.0.0.5:6380/2"}) == "redis://10.0.0.5:6380/2"


def test_delete_matching_scans_away_only_the_namespace(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        names = [f"{namespace}:a", f"{{{namespace}:x}}:b", f"pre-{namespace}-post"]
        other = f"zctest-other-{uuid.uuid4().hex}"
        for name in [*names, other]:
            client.set(name, b"1", px=60_000)
        assert delete_matching(redis_url, f"*{namespace}*") == len(names)
        assert client.exists(*names) == 0
        assert client.exists(other) == 1
        client.delete(other)
    finally:
        client.close()
