"""Scale-out on Redis: messages/s end to end through 1, 2 and 3 ``zeroclaw serve`` processes
sharing one Redis, against one process without ``[redis]`` (the in-memory mode).

Every configuration runs ``python -m zeroclaw serve --config F`` subprocesses with the ``echo``
provider (``history_turns = 0``), processor sizes large enough that the processor is not the bound
(16 workers, 256 concurrent requests, a queue of 1 000) and one async-mode webhook channel whose
``callback_url`` is a receiver served by this process (aiohttp). The scale-out configurations add
``[redis]`` (32 partitions) with a namespace of their own per round; its keys are deleted after
the round (``SCAN``). A round starts the processes, waits until every partition is owned and
spread, sends a warm-up batch (not timed), then ``N`` messages (6 000; quick: 1 500) with unique
ids over 500 conversations from 64 concurrent posters spreading their POSTs round-robin over the
processes (a 429/503 is retried after its ``Retry-After``, capped at 0.1 s), and stops them.

Throughput is ``N`` / (first POST → last reply callback, ``"kind": "reply"``); latency is the time
from a message's first POST to its reply's arrival at the receiver (p50, p99). Rounds alternate
between the configurations (in-memory, 1, 2, 3 processes, then again); the figures are the
median of the rounds, and the ratios compare seconds per message of scale-out-k against the
in-memory mode (the throughput ratio is their inverse).

**The machine bounds the scaling.** The load generator, the receiver, Redis and every gateway
process share the machine's cores (2 on the machine of docs/performance.md). A gateway process
uses one core at most, so a second or third process can only add throughput while a core is
idle, and the scale-out processes pay Redis round trips (the ingress script, the stream read,
the two reply scripts) the in-memory mode does not. The CPU each party spent in the timed batch
(this process, the gateways from ``/proc``, Redis from ``INFO cpu``; a shared Redis counts its
other clients too) is reported per message and in cores, to show where the time went; so are
the refusals by status and reason.

A scaled-out start whose warm-up leaves a message unanswered while a gateway counts
``fenced_out`` (a process that gave a partition away still read from it: see
:class:`StuckPartition`) is started again, at most ``MAX_RESTARTS`` times, and counted.

    python -m benchmarks.bench_scale_out [--quick]

Needs a Redis at ``ZEROCLAW_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and the
``redis`` extra; without either the group prints why and records nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.harness import Report, Timing, run_group

GROUP = "scale_out"
REDIS_URL = os.environ.get("ZEROCLAW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PARTITIONS = 32
POSTERS = 64
SENDERS = 500
RETRY_CAP = 0.1  # seconds: a refused poster retries soon, the others keep posting meanwhile
LISTENING = re.compile(rb"zeroclaw: listening on http://[^\s:]+:(\d+)")
MAX_RESTARTS = 3  # starts of one round given up to a stuck partition before the group fails
LOG_LINES = 40  # of a gateway's stderr, kept for a failure message
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

CONFIG = """
[gateway]
port = 0
shutdown_timeout = 10.0

[processor]
processing_timeout = 30.0
worker_pool_size = 16
max_concurrent_requests = 256
task_queue_size = 1000

[provider]
kind = "echo"
history_turns = 0

[channels.web]
kind = "webhook"
allowed_users = ["*"]
callback_url = "{callback}"
callback_timeout = 10.0
callback_retries = 5
"""

REDIS_TABLE = """
[redis]
url = "{url}"
namespace = "{namespace}"
partitions = {partitions}
"""


# ---------------------------------------------------------------------------- the receiver


@dataclass
class Receiver:
    """The callback endpoint: when each message's first reply arrived (``perf_counter``)."""

    url: str = ""
    arrived: dict[str, float] = field(default_factory=dict)
    replies: int = 0
    notices: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Serve ``POST /replies`` on a free port of 127.0.0.1. Waits for the bind."""
        app = web.Application()
        app.router.add_post("/replies", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/replies"

    async def stop(self) -> None:
        """Close the server. Waits for its connections (at most ``shutdown_timeout``)."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("kind") == "reply":
            self.replies += 1
            self.arrived.setdefault(str(body["id"]), time.perf_counter())
            self.changed.set()
        else:
            self.notices += 1
        return web.Response(status=204)

    async def until_replied(self, ids: list[str], timeout: float) -> float:
        """Wait until every id in ``ids`` has a reply; returns the last one's arrival.

        Raises:
            RuntimeError: not every reply arrived within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            missing = sum(1 for message_id in ids if message_id not in self.arrived)
            if not missing:
                return max(self.arrived[message_id] for message_id in ids)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"{missing} of {len(ids)} replies missing after {timeout:.0f}s "
                    f"({self.notices} notices)"
                )
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))


# ---------------------------------------------------------------------------- the gateways


@dataclass
class Gateway:
    """One ``zeroclaw serve`` subprocess; the tail of its stderr for error messages."""

    process: asyncio.subprocess.Process
    base: str
    log: collections.deque[str]
    drain: asyncio.Task[None]

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far (from ``/proc``; does not block)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


async def start_gateway(config: Path) -> Gateway:
    """Start ``python -m zeroclaw serve --config config``; returns once it logged its port.

    Raises:
        RuntimeError: it exited, or logged no port within 60 s.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zeroclaw",
        "serve",
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ZEROCLAW_LOG_LEVEL": "warning"},
    )
    assert process.stderr is not None
    log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
    try:
        async with asyncio.timeout(60):
            while True:
                line = await process.stderr.readline()
                if not line:
                    raise RuntimeError("zeroclaw serve exited:\n" + "".join(log))
                log.append(line.decode(errors="replace"))
                match = LISTENING.search(line)
                if match:
                    break
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    drain = asyncio.get_running_loop().create_task(_drain(process.stderr, log))
    return Gateway(process, f"http://127.0.0.1:{int(match.group(1))}", log, drain)


async def _drain(stream: asyncio.StreamReader, log: collections.deque[str]) -> None:
    # Keeps the child from blocking on a full pipe, and its last lines for a failure message.
    while line := await stream.readline():
        log.append(line.decode(errors="replace"))


async def stop_gateway(gateway: Gateway) -> None:
    """SIGTERM, then wait for the exit (SIGKILL after 30 s). Does not raise."""
    if gateway.process.returncode is None:
        gateway.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(gateway.process.wait(), 30)
    except TimeoutError:
        gateway.process.kill()
        await gateway.process.wait()
    await gateway.drain


async def until_ready(
    session: aiohttp.ClientSession, gateways: list[Gateway], scale_out: bool
) -> None:
    """Wait until every gateway answers ``/healthz`` and, scaled out, the partitions are all
    owned and spread (each process at least ``partitions // k``).

    Raises:
        RuntimeError: not within 60 s.
    """
    deadline = time.monotonic() + 60
    owned: list[int] = []
    while time.monotonic() < deadline:
        try:
            owned = []
            for gateway in gateways:
                async with session.get(gateway.base + "/status") as response:
                    document = await response.json(content_type=None)
                if scale_out:
                    owned.append(int(document["redis"]["partitions_owned"]))
            if not scale_out:
                return
            if sum(owned) == PARTITIONS and min(owned) >= PARTITIONS // len(gateways):
                return
        except (aiohttp.ClientError, KeyError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"gateways not ready within 60 s (partitions owned: {owned})")


# ---------------------------------------------------------------------------- the load


@dataclass
class Load:
    """What one batch of posts saw."""

    sent: dict[str, float]  # id -> first POST (perf_counter)
    refused: collections.Counter[str]  # "429 <reason>" / "503 <reason>" answers, each retried
    errors: int  # connection errors, each retried


async def post_all(
    session: aiohttp.ClientSession, urls: list[str], ids: list[str], posters: int
) -> Load:
    """POST a message per id from ``posters`` concurrent posters, round-robin over ``urls``;
    each is retried after a 429/503 (``Retry-After``, capped) or a connection error until it
    is accepted (202) or a duplicate (200). Returns when every message was accepted.

    Raises:
        RuntimeError: a message was answered with any other status.
    """
    load = Load({}, collections.Counter(), 0)
    pending = iter(enumerate(ids))
    targets = itertools.cycle(urls)

    async def poster() -> None:
        for index, message_id in pending:
            body = {"id": message_id, "sender": f"user{index % SENDERS}", "content": "hello"}
            load.sent[message_id] = time.perf_counter()
            while True:
                try:
                    async with session.post(next(targets), json=body) as response:
                        status = response.status
                        answer = await response.read()
                        wait = min(float(response.headers.get("Retry-After", "1")), RETRY_CAP)
                except aiohttp.ClientError:
                    load.errors += 1
                    await asyncio.sleep(RETRY_CAP)
                    continue
                if status in (200, 202):
                    break
                if status not in (429, 503):
                    raise RuntimeError(f"message {message_id}: HTTP {status}")
                try:
                    reason = str(json.loads(answer).get("reason", ""))
                except ValueError:
                    reason = ""
                load.refused[f"{status} {reason}".strip()] += 1
                await asyncio.sleep(wait)

    await asyncio.gather(*(poster() for _ in range(posters)))
    return load


# ---------------------------------------------------------------------------- Redis


async def redis_cpu_seconds(client: Any) -> float:
    """Redis's user + system CPU time so far (``INFO cpu``: all its clients, not only ours)."""
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def delete_namespace(client: Any, namespace: str) -> int:
    """Delete every key of ``namespace`` (plain and hash-tagged names), found with ``SCAN``;
    returns how many. Waits for Redis."""
    deleted = 0
    for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
        batch: list[Any] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await client.unlink(*batch))
    return deleted


# ---------------------------------------------------------------------------- one round


@dataclass
class RoundResult:
    rate: float  # messages/s
    p50: float  # seconds, first POST -> reply
    p99: float
    refused: collections.Counter[str]
    errors: int
    duplicates: int  # replies beyond one per message
    cpu: dict[str, float]  # party -> CPU seconds during the timed batch
    seconds: float
    restarts: int = 0  # starts given up because a partition was stuck (see StuckPartition)


class StuckPartition(RuntimeError):
    """A scaled-out start left a message unanswered: its entry is pending under a partition's
    consumer, read by a process that no longer owns the partition (``fenced_out`` in its
    ``/status``), while the owner has already read the pending entries and will not again."""


async def fenced_out(session: aiohttp.ClientSession, gateways: list[Gateway]) -> int:
    """The sum of the gateways' ``/status`` ``redis.fenced_out``. Waits for the answers."""
    total = 0
    for gateway in gateways:
        async with session.get(gateway.base + "/status") as response:
            total += int((await response.json(content_type=None))["redis"]["fenced_out"])
    return total


async def run_round(
    *,
    processes: int,
    scale_out: bool,
    namespace: str,
    receiver: Receiver,
    redis: Any,
    directory: Path,
    messages: int,
    warmup: int,
    tag: str,
) -> RoundResult:
    """Start the configuration, warm it up, time ``messages`` messages, stop it, delete its keys.

    Raises:
        StuckPartition: scaled out, a warm-up message stayed unanswered (see the class).
        RuntimeError: a gateway did not start or become ready, or replies were missing.
    """
    config = CONFIG.replace("{callback}", receiver.url)
    if scale_out:
        config += REDIS_TABLE.format(url=REDIS_URL, namespace=namespace, partitions=PARTITIONS)
    path = directory / f"{tag}.toml"
    path.write_text(config)
    gateways = list(await asyncio.gather(*(start_gateway(path) for _ in range(processes))))
    connector = aiohttp.TCPConnector(limit=POSTERS * 2)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await until_ready(session, gateways, scale_out)
            urls = [g.base + "/channels/web" for g in gateways]
            warm = [f"{tag}-w{i}" for i in range(warmup)]
            await post_all(session, urls, warm, POSTERS)
            try:
                await receiver.until_replied(warm, timeout=30)
            except RuntimeError as error:
                if scale_out and await fenced_out(session, gateways):
                    raise StuckPartition(str(error)) from None
                raise
            ids = [f"{tag}-{i}" for i in range(messages)]
            replies_before = receiver.replies
            gc.collect()
            cpu_before = _cpu(gateways) | {
                "redis": await redis_cpu_seconds(redis),
                "benchmark": time.process_time(),
            }
            started = time.perf_counter()
            load = await post_all(session, urls, ids, POSTERS)
            last = await receiver.until_replied(ids, timeout=120 + messages / 20)
            elapsed = last - started
            cpu_after = _cpu(gateways) | {
                "redis": await redis_cpu_seconds(redis),
                "benchmark": time.process_time(),
            }
            # Replies beyond one per message: none are expected (no process dies here).
            duplicates = receiver.replies - replies_before - len(ids)
    except BaseException as error:
        if not isinstance(error, StuckPartition):
            for gateway in gateways:
                sys.stderr.write(f"--- gateway {gateway.base}:\n{''.join(gateway.log)}")
        raise
    finally:
        await asyncio.gather(*(stop_gateway(g) for g in gateways))
        if scale_out:
            await delete_namespace(redis, namespace)
    latencies = sorted(receiver.arrived[i] - load.sent[i] for i in ids)
    return RoundResult(
        rate=messages / elapsed,
        p50=_percentile(latencies, 0.50),
        p99=_percentile(latencies, 0.99),
        refused=load.refused,
        errors=load.errors,
        duplicates=duplicates,
        cpu={party: cpu_after[party] - cpu_before[party] for party in cpu_before},
        seconds=elapsed,
    )


def _cpu(gateways: list[Gateway]) -> dict[str, float]:
    return {"gateways": sum(g.cpu_seconds() for g in gateways)}


def _percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# ---------------------------------------------------------------------------- the group


async def run(report: Report, quick: bool) -> None:
    messages = 1500 if quick else 6000
    warmup = 200 if quick else 500
    rounds = 1 if quick else 3
    try:
        import redis.asyncio as aioredis
    except ImportError:
        print(f"  {GROUP}: skipped: the redis package is not installed", file=sys.stderr)
        return
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except Exception as error:
        print(f"  {GROUP}: skipped: no Redis at {REDIS_URL} ({error})", file=sys.stderr)
        await redis.aclose()
        return
    configurations = {
        "in-memory, 1 process": (1, False),
        "redis, 1 process": (1, True),
        "redis, 2 processes": (2, True),
        "redis, 3 processes": (3, True),
    }
    run_id = f"zcbench-{uuid.uuid4().hex[:10]}"
    results: dict[str, list[RoundResult]] = {name: [] for name in configurations}
    receiver = Receiver()
    await receiver.start()
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for round_number in range(rounds):
                for index, (name, (processes, scale_out)) in enumerate(configurations.items()):
                    restarts = 0
                    while True:
                        tag = f"r{round_number}c{index}s{restarts}"
                        try:
                            result = await run_round(
                                processes=processes,
                                scale_out=scale_out,
                                namespace=f"{run_id}-{tag}",
                                receiver=receiver,
                                redis=redis,
                                directory=Path(scratch),
                                messages=messages,
                                warmup=warmup,
                                tag=f"{run_id}-{tag}",
                            )
                            break
                        except StuckPartition as error:
                            restarts += 1
                            print(f"  {name}: stuck partition, restarting ({error})", flush=True)
                            if restarts >= MAX_RESTARTS:
                                raise
                    result.restarts = restarts
                    results[name].append(result)
                    cpu = ", ".join(f"{k} {v:.2f}" for k, v in result.cpu.items())
                    refused = dict(result.refused) or 0
                    print(
                        f"  round {round_number + 1}, {name}: {result.rate:.0f} msgs/s, "
                        f"p50 {result.p50 * 1e3:.0f} ms, p99 {result.p99 * 1e3:.0f} ms, "
                        f"refused {refused}, CPU s: {cpu} in {result.seconds:.1f} s",
                        flush=True,
                    )
    finally:
        await receiver.stop()
        await delete_namespace(redis, run_id)  # anything a failed round left behind
        await redis.aclose()
    load_after = os.getloadavg()

    timings: dict[str, Timing] = {}
    for name, runs in results.items():
        per_message = [1 / r.rate for r in runs]
        timings[name] = Timing(name, statistics.median(per_message), per_message)
        rates = ", ".join(f"{r.rate:.0f}" for r in runs)
        report.figure(
            GROUP,
            f"{name}: messages/s",
            statistics.median(r.rate for r in runs),
            "1/s",
            f"median of {len(runs)} rounds ({rates}); {messages} messages, {POSTERS} posters",
        )
        report.figure(
            GROUP, f"{name}: latency p50", statistics.median(r.p50 for r in runs) * 1e3, "ms"
        )
        report.figure(
            GROUP,
            f"{name}: latency p99",
            statistics.median(r.p99 for r in runs) * 1e3,
            "ms",
            f"first POST to reply; {sum(r.refused.total() for r in runs)} refusals retried, "
            f"{sum(r.errors for r in runs)} connection errors, "
            f"{sum(r.duplicates for r in runs)} duplicate replies, "
            f"{sum(r.restarts for r in runs)} restarts (stuck partition)",
        )
        for party in runs[0].cpu:
            busy = statistics.median(r.cpu[party] / r.seconds for r in runs)
            spent = statistics.median(r.cpu[party] / messages for r in runs) * 1e3
            report.figure(
                GROUP,
                f"{name}: CPU of {party}",
                spent,
                "ms/message",
                f"{busy:.2f} cores (CPU s / wall s)",
            )
    memory = timings["in-memory, 1 process"]
    for name in configurations:
        if name == memory.name:
            continue
        entry = report.ratio(
            GROUP,
            timings[name],
            memory,
            note="seconds per message, median of the rounds; the throughput ratio is the inverse",
        )
        report.figure(GROUP, f"{name} / in-memory: throughput", 1 / entry.ratio, "×")
    report.figure(
        GROUP,
        "machine load average",
        load_after[0],
        "",
        f"before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), {os.cpu_count()} CPUs",
    )


if __name__ == "__main__":
    run_group(run, sys.argv[1:])
