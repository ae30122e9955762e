"""RedisRateLimiter against a real Redis (the session's, tests/redis_support.py): the window
bound across two OS processes, weighted costs, retry_after, the shared pause (also alone, as
SharedPause), key expiry, and the local fallback when Redis is unreachable.

The server's clock decides, so these tests take real (short) time; each uses a namespace of its
own and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from zeroclaw.backends.redis import Keys, connect
from zeroclaw.backends.redis.rate_limit import GCRA_SCRIPT, RedisRateLimiter, SharedPause

# The session's Redis and a namespace per test (its keys deleted after): tests/redis_support.py.


@pytest.fixture
def client(redis_client: Redis) -> Redis:
    """The session Redis's client (``redis_client``), under this module's short name."""
    return redis_client


@pytest.fixture
async def other(redis_url: str) -> AsyncIterator[Redis]:
    """A second client: another process's connection."""
    redis = connect(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


def limiter(client: Redis, namespace: str, *, rate: float, burst: float) -> RedisRateLimiter:
    return RedisRateLimiter(client, Keys(namespace), "provider", rate=rate, burst=burst)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the window bound across processes ---------------------------------------------------------

HAMMER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from zeroclaw.backends.redis import Keys, connect
    from zeroclaw.backends.redis.rate_limit import RedisRateLimiter

    async def main(url, namespace, start_at, seconds, rate, burst):
        client = connect(url)
        limiter = RedisRateLimiter(client, Keys(namespace), "provider", rate=rate, burst=burst)
        await limiter.paused_for()  # connected and the script loaded before the start
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = start_at + seconds
        granted = []

        async def worker():
            while True:
                left = end - time.time()
                if left <= 0:
                    return
                try:
                    await limiter.acquire(timeout=left)
                except TimeoutError:
                    return
                if time.time() <= end:
                    granted.append(time.time())

        await asyncio.gather(*(worker() for _ in range(4)))
        print(json.dumps({"grants": len(granted), "shared": limiter.stats().shared}))
        await client.aclose()

    url, namespace, start_at, seconds, rate, burst = sys.argv[1:]
    asyncio.run(main(url, namespace, float(start_at), float(seconds), float(rate), float(burst)))
    """
)


def test_two_processes_together_stay_within_burst_plus_rate_times_window(
    namespace: str, client: Redis, redis_url: str
) -> None:
    rate, burst, seconds = 50.0, 10.0, 2.0
    start_at = time.time() + 2.0  # both interpreters are up and connected by then
    args = [redis_url, namespace, repr(start_at), repr(seconds), repr(rate), repr(burst)]
    procs = [
        subprocess.Popen([sys.executable, "-c", HAMMER, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        results.append(json.loads(out))
    total = sum(r["grants"] for r in results)
    assert all(r["shared"] for r in results)
    assert all(r["grants"] > 0 for r in results)  # both really drew from the bucket
    assert total <= burst + rate * seconds + 1
    assert total >= 0.8 * rate * seconds


# -- one process, two clients ------------------------------------------------------------------


async def test_the_bucket_starts_full_and_refuses_past_the_burst(
    namespace: str, client: Redis
) -> None:
    rl = limiter(client, namespace, rate=10, burst=5)
    waits = [await rl.try_acquire() for _ in range(6)]
    assert waits[:5] == [0.0] * 5
    # One token refills in 0.1 s; a little of it has passed during the round trips.
    assert 0.0 < waits[5] <= 0.1
    stats = rl.stats()
    assert (stats.grants, stats.refusals, stats.fallbacks, stats.shared) == (5, 1, 0, True)


async def test_weighted_costs(namespace: str, client: Redis) -> None:
    rl = limiter(client, namespace, rate=10, burst=5)
    assert await rl.try_acquire(3) == 0.0
    assert await rl.try_acquire(2) == 0.0
    wait = await rl.try_acquire(2.5)  # 2.5 tokens at 10/s: 0.25 s
    assert 0.2 < wait <= 0.25
    with pytest.raises(ValueError, match="exceed the burst"):
        await rl.try_acquire(5.5)
    with pytest.raises(ValueError, match="tokens"):
        await rl.try_acquire(0)
    with pytest.raises(ValueError, match="exceed the burst"):
        await rl.acquire(6)


async def test_retry_after_is_when_the_tokens_are_there(namespace: str, client: Redis) -> None:
    rl = limiter(client, namespace, rate=20, burst=2)
    assert await rl.try_acquire(2) == 0.0
    wait = await rl.try_acquire(1)
    assert 0.0 < wait <= 0.05
    await asyncio.sleep(wait)
    assert await rl.try_acquire(1) == 0.0
    # And acquire waits for about that long, not much more.
    started = time.monotonic()
    await rl.acquire(1)
    assert time.monotonic() - started < 0.05 + 0.2


async def test_two_clients_share_one_bucket(namespace: str, client: Redis, other: Redis) -> None:
    a = limiter(client, namespace, rate=1, burst=3)
    b = limiter(other, namespace, rate=1, burst=3)
    assert await a.try_acquire(2) == 0.0
    assert await b.try_acquire(1) == 0.0
    assert await b.try_acquire(1) > 0.5
    assert await a.try_acquire(1) > 0.5


async def test_a_pause_by_one_client_holds_the_other(
    namespace: str, client: Redis, other: Redis
) -> None:
    a = limiter(client, namespace, rate=100, burst=10)
    b = limiter(other, namespace, rate=100, burst=10)
    await a.pause(0.4)
    wait = await b.try_acquire()
    # The pause's remainder, plus one token's refill at 100/s (the bucket is empty after it).
    assert 0.3 < wait <= 0.4 + 0.01
    assert 0.3 < await b.paused_for() <= 0.4
    # A shorter pause does not cut the running one.
    await b.pause(0.05)
    assert await a.paused_for() > 0.3
    started = time.monotonic()
    await b.acquire(timeout=2.0)
    assert time.monotonic() - started >= 0.3


async def test_the_bucket_is_empty_after_a_pause(namespace: str, client: Redis) -> None:
    rl = limiter(client, namespace, rate=20, burst=10)
    await rl.pause(0.2)
    deadline = time.monotonic() + 5.0
    while await rl.paused_for() > 0.0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await rl.acquire(timeout=1.0)  # the first token after the pause (0.05 s of refill)
    # Not a full burst: the next one waits about a token's refill.
    assert await rl.try_acquire() > 0.0


async def test_acquire_times_out_without_taking(namespace: str, client: Redis) -> None:
    rl = limiter(client, namespace, rate=1, burst=1)
    assert await rl.try_acquire() == 0.0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await rl.acquire(timeout=0.1)
    assert 0.09 <= time.monotonic() - started < 0.5
    assert rl.stats().grants == 1


async def test_idle_keys_expire_when_the_bucket_is_full_again(
    namespace: str, client: Redis
) -> None:
    rl = limiter(client, namespace, rate=10, burst=5)
    tat_key, pause_key = rl.keys
    await rl.try_acquire(2)
    ttl = await client.pttl(tat_key)
    assert 0 < ttl <= 200  # two tokens refill in 0.2 s: full then, so gone then
    await rl.pause(1.5)
    assert 0 < await client.pttl(pause_key) <= 1500
    assert 1500 < await client.pttl(tat_key) <= 2000  # the pause, then a full burst's refill


def test_the_script_touches_only_keys_it_is_given() -> None:
    # Every redis.call names its key through KEYS[...] (a Redis Cluster routes by them).
    calls = re.findall(r"redis\.call\('(\w+)'(?:, ([^,)]+))?", GCRA_SCRIPT)
    assert calls
    for command, first in calls:
        if command != "TIME":
            assert re.fullmatch(r"KEYS\[[12]\]", first), (command, first)


def test_both_keys_share_one_hash_tag(namespace: str, redis_url: str) -> None:
    rl = RedisRateLimiter(connect(redis_url), Keys(namespace), "p", rate=1, burst=1)
    tags = {re.match(r"\{[^}]+\}", key).group(0) for key in rl.keys}  # type: ignore[union-attr]
    assert len(tags) == 1


def test_bad_arguments(redis_url: str) -> None:
    client = connect(redis_url)
    with pytest.raises(ValueError, match="rate"):
        RedisRateLimiter(client, Keys("x"), "p", rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        RedisRateLimiter(client, Keys("x"), "p", rate=1, burst=-1)
    with pytest.raises(TypeError):
        RedisRateLimiter(client, Keys("x"), "p", rate="1", burst=1)  # type: ignore[arg-type]


# -- Redis unreachable -------------------------------------------------------------------------


async def test_an_unreachable_redis_falls_back_to_a_local_limit_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    rl = RedisRateLimiter(dead, Keys("dead"), "provider", rate=10, burst=3, retry_interval=0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="zeroclaw.backends.redis.rate_limit"):
            waits = [await rl.try_acquire() for _ in range(4)]
            await rl.pause(0.0)
            assert await rl.paused_for() == 0.0
        assert waits[:3] == [0.0] * 3
        assert waits[3] > 0.0  # the local bucket of 3 is spent
        stats = rl.stats()
        assert stats.shared is False
        assert rl.shared is False
        assert stats.fallbacks == 4
        assert (stats.grants, stats.refusals) == (3, 1)
        outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage) == 1  # once per outage, not once per call
    finally:
        await dead.aclose()


async def test_the_limit_is_shared_again_once_redis_answers(
    namespace: str, client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    rl = RedisRateLimiter(client, Keys(namespace), "provider", rate=10, burst=3)
    real = rl._script

    async def unreachable(**_: object) -> object:
        raise ConnectionError("gone")  # builtin ConnectionError is an OSError

    with caplog.at_level(logging.WARNING, logger="zeroclaw.backends.redis.rate_limit"):
        rl._script = unreachable  # type: ignore[assignment]
        assert await rl.try_acquire() == 0.0
        assert rl.shared is False
        rl._script = real
        rl._down_until = 0.0  # the retry interval is over
        assert await rl.try_acquire() == 0.0
        assert rl.stats().shared is True
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1
    assert rl.stats().fallbacks == 1


async def test_a_cancelled_acquire_is_cancelled_even_if_its_command_completed(
    namespace: str, client: Redis
) -> None:
    # redis-py can finish a command in flight despite the cancel; the caller must not go on.
    rl = limiter(client, namespace, rate=1e6, burst=1e6)
    cancelled = 0
    for i in range(200):
        call = asyncio.create_task(rl.acquire())
        await asyncio.sleep(0.0001 * (i % 8))  # lands before, during or after the round trip
        if call.cancel():
            await asyncio.wait((call,))
            assert call.cancelled()
            cancelled += 1
    assert cancelled > 0


async def test_a_shared_pause_alone_holds_every_process_without_a_round_trip_per_call(
    client: Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    here = SharedPause(RedisRateLimiter(client, keys, "p", rate=1e6, burst=1e6))
    there = SharedPause(
        RedisRateLimiter(client, keys, "p", rate=1e6, burst=1e6), poll_interval=0.05
    )
    there.start()
    try:
        await asyncio.wait_for(there.acquire(), 1.0)  # no pause: at once
        await here.pause(0.6)
        assert await here.paused_for() > 0.5

        async def seen_there() -> bool:
            return await there.paused_for() > 0.2

        deadline = asyncio.get_running_loop().time() + 5
        while not await seen_there():
            assert asyncio.get_running_loop().time() < deadline, "the pause never arrived"
            await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        await there.acquire()
        assert asyncio.get_running_loop().time() - started > 0.1  # it waited for the pause
        assert await there.paused_for() == 0.0
    finally:
        await there.aclose()
