"""SharedBreakerDecision against a real Redis (the session's, tests/redis_support.py): a trip in
one process makes the others refuse, exactly one process probes, its success closes every
breaker and its failure re-opens them all; with Redis unreachable the local breaker works alone
and says so.

Two decisions on two connections stand in for two processes (one test uses two real ones). The
local breakers run on fake clocks, so their own open periods never run out by themselves: every
half-open here is the shared decision's. The shared times are the server's, real and short
(0.3 s open); conditions are polled for, with generous bounds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from zeroclaw.backends.redis import Keys, connect
from zeroclaw.backends.redis.breaker import (
    OPEN_SCRIPT,
    POLL_SCRIPT,
    SUCCESS_SCRIPT,
    SharedBreakerDecision,
)
from zeroclaw.concurrency import CircuitBreaker, CircuitConfig, CircuitState
from zeroclaw.concurrency.circuit_breaker import CallTicket
from zeroclaw.testing import FakeClock

OPEN_FOR = 0.3
POLL = 0.03
BOUND = 5.0  # seconds: generous, for a loaded machine


def config() -> CircuitConfig:
    return CircuitConfig(failure_threshold=1, success_threshold=1, timeout_duration=OPEN_FOR)


# The session's Redis and a namespace per test (its keys deleted after): tests/redis_support.py.


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[Redis]]:
    made = [connect(redis_url), connect(redis_url)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


class Process:
    """One process's breaker (on a fake clock) and its shared decision."""

    def __init__(self, client: Redis, namespace: str, tag: str) -> None:
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(config(), name="openai", clock=self.clock)
        self.decision = SharedBreakerDecision(
            client,
            Keys(namespace),
            "openai",
            self.breaker,
            poll_interval=POLL,
            clock=self.clock,
            instance_id=tag,
        )

    def trip(self) -> None:
        ticket = self.breaker.allow_request()
        assert ticket is not None
        self.breaker.record_failure(ticket)
        assert self.breaker.state is CircuitState.OPEN


@pytest.fixture
async def pair(namespace: str, clients: list[Redis]) -> AsyncIterator[tuple[Process, Process]]:
    a = Process(clients[0], namespace, "a")
    b = Process(clients[1], namespace, "b")
    async with a.decision, b.decision:
        yield a, b


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"not within {BOUND}s: {what}"
        await asyncio.sleep(0.005)


async def probe_round(procs: tuple[Process, ...]) -> tuple[Process, CallTicket]:
    """Ask every breaker for a call, over and over, until one is admitted (the probe); check
    that no other is admitted meanwhile or for a few polls after."""
    deadline = time.monotonic() + BOUND
    while True:
        admitted = [(p, t) for p in procs if (t := p.breaker.allow_request()) is not None]
        if admitted:
            break
        assert time.monotonic() < deadline, "nobody was let probe"
        await asyncio.sleep(0.005)
    assert len(admitted) == 1
    winner, ticket = admitted[0]
    assert winner.breaker.state is CircuitState.HALF_OPEN
    settle_until = time.monotonic() + 6 * POLL
    while time.monotonic() < settle_until:
        for p in procs:
            if p is not winner:
                assert p.breaker.allow_request() is None  # the loser keeps refusing
        await asyncio.sleep(0.005)
    return winner, ticket


# -- sharing the decision ----------------------------------------------------------------------


async def test_a_trip_in_one_process_makes_the_other_refuse(
    pair: tuple[Process, Process], clients: list[Redis]
) -> None:
    a, b = pair
    a.trip()
    await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
    assert b.breaker.allow_request() is None
    assert a.decision.stats().shared_opens == 1
    assert b.decision.stats().forced_by_peer == 1
    assert b.decision.stats().shared_opens == 0  # b's open was not a trip of its own
    open_key, _ = a.decision.keys
    ttl = await clients[0].pttl(open_key)
    assert 0 < ttl <= (OPEN_FOR + a.decision.grace) * 1000  # expires when given up


async def test_exactly_one_process_probes_and_its_success_closes_both(
    pair: tuple[Process, Process], clients: list[Redis]
) -> None:
    a, b = pair
    a.trip()
    await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
    winner, ticket = await probe_round(pair)
    loser = b if winner is a else a
    assert winner.decision.stats().probes_won == 1
    assert loser.decision.stats().probes_won == 0
    assert loser.decision.stats().probes_lost == 1
    _, probe_key = a.decision.keys
    assert await clients[0].get(probe_key) == winner.decision.instance_id.encode()
    winner.breaker.record_success(ticket)
    assert winner.breaker.state is CircuitState.CLOSED
    await eventually(lambda: loser.breaker.state is CircuitState.CLOSED, "loser closed")
    assert await clients[0].exists(*a.decision.keys) == 0
    assert a.breaker.allow_request() is not None
    assert b.breaker.allow_request() is not None


async def test_a_failed_probe_reopens_every_process(pair: tuple[Process, Process]) -> None:
    a, b = pair
    a.trip()
    await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
    winner, ticket = await probe_round(pair)
    opens_before = winner.decision.stats().shared_opens
    winner.breaker.record_failure(ticket)
    assert winner.breaker.state is CircuitState.OPEN
    await eventually(
        lambda: winner.decision.stats().shared_opens == opens_before + 1, "re-open published"
    )
    # A new open period for all, then a new probe round (the probe key was given back).
    assert a.breaker.allow_request() is None
    assert b.breaker.allow_request() is None
    second, ticket = await probe_round(pair)
    second.breaker.record_success(ticket)
    await eventually(
        lambda: all(p.breaker.state is CircuitState.CLOSED for p in pair), "both closed"
    )


async def test_a_trip_during_the_probe_is_not_erased_by_its_success(
    pair: tuple[Process, Process], namespace: str, clients: list[Redis]
) -> None:
    a, b = pair
    a.trip()
    await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
    winner, ticket = await probe_round(pair)
    # A third process, still closed (its loop not started), trips while the probe runs.
    c = Process(clients[0], namespace, "c")
    c.trip()
    await c.decision.poll_once()
    assert c.decision.stats().shared_opens == 1
    # Whether the winner's success or its loop's look at c's open comes first, the open stands.
    winner.breaker.record_success(ticket)
    await eventually(lambda: winner.breaker.state is CircuitState.OPEN, "winner held open")
    open_key, _ = a.decision.keys
    assert await clients[0].exists(open_key) == 1
    await c.decision.aclose()


async def test_the_success_script_keeps_a_newer_open(namespace: str, clients: list[Redis]) -> None:
    client = clients[0]
    open_key, probe_key = Keys(namespace).breaker("openai")
    success = client.register_script(SUCCESS_SCRIPT)
    server_ms = (await client.time())[0] * 1000
    await client.set(open_key, str(server_ms + 60_000), px=120_000)
    await client.set(probe_key, "w", px=10_000)
    assert await success(keys=[open_key, probe_key], args=["someone else"]) == 0
    assert await client.exists(open_key, probe_key) == 2
    assert await success(keys=[open_key, probe_key], args=["w"]) == 2
    assert await client.exists(open_key) == 1
    assert await client.exists(probe_key) == 0
    await client.set(open_key, str(server_ms - 1), px=120_000)
    await client.set(probe_key, "w", px=10_000)
    assert await success(keys=[open_key, probe_key], args=["w"]) == 1
    assert await client.exists(open_key, probe_key) == 0


async def test_the_local_timer_running_out_unclaimed_is_taken_back(
    pair: tuple[Process, Process],
) -> None:
    """What remains of the window between the local half-open and the claim: a request that
    half-opens the breaker while another process holds the shared open gets through (its result
    is late), and the breaker is open again at once."""
    a, b = pair
    a.trip()
    await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
    b.clock.advance(3600.0)  # as if b's loop had stalled past every hold
    leaked = b.breaker.allow_request()
    assert leaked is not None
    assert b.breaker.state is CircuitState.OPEN  # taken back by the callback
    b.breaker.record_success(leaked)
    assert b.breaker.state is CircuitState.OPEN  # its result changed nothing
    assert b.breaker.allow_request() is None


async def test_a_breaker_open_before_the_decision_is_shared(
    namespace: str, clients: list[Redis]
) -> None:
    a = Process(clients[0], namespace, "a")
    await a.decision.aclose()
    a.trip()
    late = SharedBreakerDecision(
        clients[0], Keys(namespace), "openai", a.breaker, poll_interval=POLL, clock=a.clock
    )
    b = Process(clients[1], namespace, "b")
    async with late, b.decision:
        await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
        assert late.stats().shared_opens == 1


async def test_aclose_hands_the_breaker_its_own_timing_back(pair: tuple[Process, Process]) -> None:
    a, b = pair
    a.trip()
    await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
    await b.decision.aclose()
    assert b.breaker.allow_request() is None
    b.clock.advance(OPEN_FOR)  # the shared period b last saw, on b's clock
    assert b.breaker.allow_request() is not None  # b probes alone now


def test_the_scripts_touch_only_the_keys_they_are_given() -> None:
    import re

    for script in (OPEN_SCRIPT, POLL_SCRIPT, SUCCESS_SCRIPT):
        for command, first in re.findall(r"redis\.call\('(\w+)'(?:, ([^,)]+))?", script):
            if command != "TIME":
                assert re.fullmatch(r"KEYS\[[12]\]", first), (command, first)


# -- Redis unreachable -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_redis_leaves_the_local_breaker_alone_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    proc = Process(dead, "dead", "a")
    try:
        with caplog.at_level(logging.WARNING, logger="zeroclaw.backends.redis.breaker"):
            await proc.decision.poll_once()
            assert proc.decision.connected is False
            proc.trip()
            await proc.decision.poll_once()
            await proc.decision.poll_once()
        stats = proc.decision.stats()
        assert (stats.connected, stats.shared_opens, stats.forced_by_peer) == (False, 0, 0)
        assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
        # The local breaker's own rules: open for its period, then a local probe closes it.
        assert proc.breaker.allow_request() is None
        proc.clock.advance(OPEN_FOR)
        ticket = proc.breaker.allow_request()
        assert ticket is not None
        assert proc.breaker.state is CircuitState.HALF_OPEN
        proc.breaker.record_success(ticket)
        assert proc.breaker.stats().state is CircuitState.CLOSED
    finally:
        await proc.decision.aclose()
        await dead.aclose()


async def test_a_trip_made_during_an_outage_is_shared_once_redis_answers(
    namespace: str, clients: list[Redis], caplog: pytest.LogCaptureFixture
) -> None:
    a = Process(clients[0], namespace, "a")
    b = Process(clients[1], namespace, "b")
    real = a.decision._poll_script

    async def unreachable(**_: object) -> object:
        raise ConnectionError("gone")

    with caplog.at_level(logging.WARNING, logger="zeroclaw.backends.redis.breaker"):
        a.decision._poll_script = unreachable  # type: ignore[assignment]
        await a.decision.poll_once()
        assert not a.decision.connected
        a.trip()
        a.decision._poll_script = real
        async with b.decision:
            await a.decision.poll_once()  # back: the trip is said now
            await a.decision.poll_once()
            assert a.decision.stats().connected
            await eventually(lambda: b.breaker.state is CircuitState.OPEN, "b forced open")
        await a.decision.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("answers again" in m for m in messages) == 1


# -- two OS processes --------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from zeroclaw.backends.redis import Keys, connect
    from zeroclaw.backends.redis.breaker import SharedBreakerDecision
    from zeroclaw.concurrency import CircuitBreaker, CircuitConfig, CircuitState

    async def main(url, namespace, role):
        client = connect(url)
        config = CircuitConfig(failure_threshold=1, success_threshold=1, timeout_duration=0.3)
        breaker = CircuitBreaker(config, name="openai")
        decision = SharedBreakerDecision(client, Keys(namespace), "openai", breaker,
                                         poll_interval=0.03, instance_id=role)
        result = {"seen_open": False, "probed": False}
        async with decision:
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # go
            if role == "a":
                breaker.record_failure(breaker.allow_request())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                ticket = breaker.allow_request()
                state = breaker.state
                if state is not CircuitState.CLOSED:
                    result["seen_open"] = True
                if ticket is not None:
                    if state is CircuitState.HALF_OPEN:
                        result["probed"] = True
                    breaker.record_success(ticket)
                if result["seen_open"] and breaker.state is CircuitState.CLOSED:
                    break
                await asyncio.sleep(0.005)
            result["state"] = str(breaker.state)
            result["won"] = decision.stats().probes_won
        print(json.dumps(result), flush=True)
        await client.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    """
)


def test_two_processes_share_the_trip_and_one_probe(namespace: str, redis_url: str) -> None:
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_url, namespace, role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for role in ("a", "b")
    }
    try:
        for proc in procs.values():
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = {}
        for role, proc in procs.items():
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0
            results[role] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            proc.kill()
    assert results["b"]["seen_open"], results  # a's trip reached b
    assert results["a"]["won"] + results["b"]["won"] == 1, results  # one probe, one process
    assert [results[r]["probed"] for r in ("a", "b")].count(True) == 1, results
    assert results["a"]["state"] == results["b"]["state"] == "Closed", results


async def test_aclose_stops_the_loop_whenever_it_is_called(
    namespace: str, clients: list[Redis]
) -> None:
    # redis-py can finish a command in flight despite the cancel: the loop must stop anyway.
    for i in range(60):
        proc = Process(clients[i % 2], namespace, f"p{i}")
        proc.decision.start()
        for _ in range(i % 5):
            await asyncio.sleep(0.001)
        await asyncio.wait_for(proc.decision.aclose(), BOUND)
