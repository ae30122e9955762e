"""Redis dedup claims: ``RedisDedupStore.claim`` vs ``redis-benchmark -t set`` on the same server.

``redis-benchmark`` (C, no Python) measures what the server itself gives a client
that sends plain ``SET``: our claims (``SET NX PX`` through redis-py's asyncio client and the
store) are compared with it two ways, in interleaved rounds:

- one at a time: each claim awaited before the next, vs ``redis-benchmark -c 1 -P 1``;
- ``CONCURRENCY`` claimers at once (``asyncio.gather`` over one client, each claimer one command
  in flight on a pooled connection of its own), vs ``redis-benchmark -c CONCURRENCY -P 1``
  (its default: ``-t set -n N -q``).

The same command sent by hand with redis-py (no store) runs in the same rounds, so the ratio of
the store to it is what the store adds, and the rest is the client library's.

Ratios are seconds per claim, ours / redis-benchmark's (so 3× means a third of its throughput);
no target: the figure says how much of the server's speed the Python client leaves. Every claim is
of a new key (a realistic stream has 90 % new ids, and a duplicate costs the same round trip).

The server is ``$ZEROCLAW_BENCH_REDIS_URL`` if set (our keys are deleted after each round;
``redis-benchmark`` writes its one key, ``key:__rand_int__``), else a private ``redis-server``
without persistence started for the run on a free port and stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from tests.redis_support import RedisServer, answers, delete_matching

from benchmarks.harness import Report, interleave, run_group
from zeroclaw.backends.redis import Keys, connect
from zeroclaw.backends.redis.connection import MAX_CONNECTIONS
from zeroclaw.backends.redis.dedup import RedisDedupStore

GROUP = "redis_dedup"
URL_ENV = "ZEROCLAW_BENCH_REDIS_URL"
TTL = 600.0
CONCURRENCY = 50  # redis-benchmark's default -c
_RPS = re.compile(r"SET: ([0-9.]+) requests per second")


class Server:
    """Where both contenders send their commands, and how to clean up after ours."""

    def __init__(self, url: str, private: bool) -> None:
        self.url = url
        self.private = private
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.strip("/") or 0)


async def redis_benchmark(server: Server, n: int, clients: int) -> float:
    """Seconds per SET of one ``redis-benchmark -t set -n n -c clients -P 1 -q`` run."""
    process = await asyncio.create_subprocess_exec(
        "redis-benchmark",
        *("-h", server.host, "-p", str(server.port), "--dbnum", str(server.db)),
        *("-t", "set", "-n", str(n), "-c", str(clients), "-P", "1", "-q"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    found = _RPS.findall(out.decode(errors="replace"))
    if process.returncode != 0 or not found:
        raise RuntimeError(f"redis-benchmark failed ({process.returncode}): {err.decode()}")
    return 1.0 / float(found[-1])


Claim = Callable[[str], Awaitable[object]]


class Ours:
    """Claims through one client: each round claims ``n`` new keys, then deletes them."""

    def __init__(self, server: Server, n: int) -> None:
        self.server = server
        self.n = n
        self.client = connect(server.url)
        self.store = RedisDedupStore(self.client, Keys(f"zcbench-{uuid.uuid4().hex}"), ttl=TTL)
        self.rounds = 0

    async def raw(self, key: str) -> object:
        """The store's command sent by hand: what the client costs without the store."""
        name = f"{self.store.keys.namespace}:raw:{key}"
        return await self.client.set(name, b"1", nx=True, px=round(TTL * 1000))

    def _keys(self) -> list[str]:
        self.rounds += 1
        return [f"r{self.rounds}-{i}" for i in range(self.n)]

    async def _clean(self) -> None:
        if self.server.private:
            await self.client.flushdb()
        else:
            pattern = f"*{self.store.keys.namespace}*"
            await asyncio.to_thread(delete_matching, self.server.url, pattern)

    def sequential(self, claim: Claim) -> Callable[[], Awaitable[float]]:
        """A round of one claim at a time, each awaited before the next."""

        async def round_() -> float:
            keys = self._keys()
            start = time.perf_counter()
            for key in keys:
                await claim(key)
            elapsed = time.perf_counter() - start
            await self._clean()
            return elapsed / len(keys)

        return round_

    def concurrent(self, claim: Claim) -> Callable[[], Awaitable[float]]:
        """A round of ``CONCURRENCY`` claimers gathered, each one claim at a time."""

        async def claimer(share: list[str]) -> None:
            for key in share:
                await claim(key)

        async def round_() -> float:
            keys = self._keys()
            shares = [keys[i::CONCURRENCY] for i in range(CONCURRENCY)]
            start = time.perf_counter()
            await asyncio.gather(*(claimer(share) for share in shares))
            elapsed = time.perf_counter() - start
            await self._clean()
            return elapsed / len(keys)

        return round_


async def compare(
    report: Report,
    rounds: int,
    contenders: dict[str, Callable[[], Awaitable[float]]],
    note: str,
) -> None:
    """Interleave store, raw client and redis-benchmark (in that order); record the ratios."""
    ours, raw, peer = (await interleave(contenders, rounds)).values()
    report.ratio(GROUP, ours, peer, note=note)
    report.ratio(GROUP, ours, raw, note="what the store adds to the client's own command")
    for timing in (ours, raw, peer):
        report.figure(GROUP, f"{timing.name}: per second", 1.0 / timing.median, "1/s")
    report.figure(
        GROUP,
        f"{ours.name} ÷ {peer.name}",
        peer.median / ours.median,
        "×",
        "throughput, ours / redis-benchmark's",
    )


async def run(report: Report, quick: bool) -> None:
    n = 20_000 if quick else 100_000
    rounds = 3 if quick else 5
    with tempfile.TemporaryDirectory() as scratch:
        url = os.environ.get(URL_ENV)
        private: RedisServer | None = None
        if url is None:
            binary = shutil.which("redis-server")
            if binary is None or shutil.which("redis-benchmark") is None:
                raise SystemExit(
                    f"{GROUP}: needs redis-server and redis-benchmark on PATH (apt-get install "
                    f"redis-server), or {URL_ENV} naming a server (redis-benchmark still needed)"
                )
            private = RedisServer(Path(scratch) / "redis", durable=False, binary=binary)
            private.start()
            url = private.url
        elif not answers(url):
            raise SystemExit(f"{GROUP}: nothing answers PING at {URL_ENV}={url}")
        server = Server(url, private is not None)
        ours = Ours(server, n)
        try:
            await compare(
                report,
                rounds,
                {
                    "RedisDedupStore.claim, one at a time": ours.sequential(ours.store.claim),
                    "redis-py SET NX PX, one at a time": ours.sequential(ours.raw),
                    "redis-benchmark -c 1 -P 1": lambda: redis_benchmark(server, n, 1),
                },
                note=f"n={n}, SET NX PX vs SET, each awaited before the next",
            )
            await compare(
                report,
                rounds,
                {
                    f"RedisDedupStore.claim, {CONCURRENCY} at once": ours.concurrent(
                        ours.store.claim
                    ),
                    f"redis-py SET NX PX, {CONCURRENCY} at once": ours.concurrent(ours.raw),
                    f"redis-benchmark -c {CONCURRENCY} -P 1": lambda: redis_benchmark(
                        server, n, CONCURRENCY
                    ),
                },
                note=f"n={n}, {CONCURRENCY} claimers over one client (pool of {MAX_CONNECTIONS})",
            )
        finally:
            await ours.client.aclose()
            if private is not None:
                private.stop()


if __name__ == "__main__":
    run_group(run)
