"""The gateway over HTTP: ``zeroclaw serve`` vs a bare aiohttp handler answering the same JSON.

Ours: ``python -m zeroclaw serve`` (a subprocess) with the echo provider and one sync-mode webhook
channel: every request goes through the server, the webhook's checks, the processor (dedup,
breaker, backpressure, lanes, pool), the handler with its history, and back. Peer: the same HTTP
stack (aiohttp, in a subprocess of its own) serving a bare handler that parses the same body and
returns the same JSON. The load comes from a third process: an aiohttp client with ``N``
concurrent connections, each posting unique messages (unique ids, many conversations) for a fixed
time. Rounds alternate between the two servers. Target (issue 12): at least 0.7× the bare
handler's requests per second, i.e. ours/peer seconds per request ≤ 1/0.7.

The figures are latency p50/p99 and requests/s of each. On a loaded machine the load generator
shares the CPU with both servers, so the absolute numbers say little; the ratio, taken in the
same run, is the figure.

    python -m benchmarks.bench_gateway [--quick]

``--uvloop`` (from ``python -m benchmarks``) runs only this orchestrating process under uvloop;
the servers and the load generator are subprocesses on asyncio's default loop either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import Report, Timing, run_group

GROUP = "gateway"
TARGET = 1 / 0.7
LISTENING = re.compile(rb"listening on http://[^\s:]+:(\d+)")

CONFIG = """
[gateway]
port = 0
shutdown_timeout = 5.0

[processor]
worker_pool_size = 8
task_queue_size = 1000
max_concurrent_requests = 500

[provider]
kind = "echo"
history_turns = 0

[channels.web]
kind = "webhook"
allowed_users = ["*"]
"""


# ---------------------------------------------------------------------------- the bare server


async def serve_bare() -> None:
    """The peer: aiohttp answering POST /channels/web with the JSON a sync webhook returns."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": body.get("id") or uuid.uuid4().hex,
                "status": "success",
                "reply": body["content"],
            }
        )

    app = web.Application()
    app.router.add_post("/channels/web", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"bare: listening on http://127.0.0.1:{runner.addresses[0][1]}", file=sys.stderr)
    sys.stderr.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.cleanup()


# ---------------------------------------------------------------------------- the load generator


async def load(url: str, connections: int, duration: float) -> dict[str, Any]:
    """Post unique messages from ``connections`` concurrent clients for ``duration`` seconds."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=connections)

    async def client(session: aiohttp.ClientSession, number: int) -> None:
        nonlocal errors
        sequence = 0
        while time.perf_counter() < deadline:
            sequence += 1
            body = {
                "sender": f"user{number}-{sequence % 50}",
                "content": "hello",
                "id": f"{number}-{sequence}-{uuid.uuid4().hex[:8]}",
            }
            started = time.perf_counter()
            try:
                async with session.post(url, json=body) as response:
                    answer = await response.json()
                    ok = response.status == 200 and answer.get("status") == "success"
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50": percentile(0.50),
        "p99": percentile(0.99),
    }


async def run_load(url: str, connections: int, duration: float) -> dict[str, Any]:
    """Run :func:`load` in a process of its own; returns its figures."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bench_gateway",
        "--load",
        url,
        str(connections),
        str(duration),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed ({process.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


# ---------------------------------------------------------------------------- the servers


async def start_server(command: list[str]) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ZEROCLAW_LOG_LEVEL": "warning"},
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while True:
            line = await process.stderr.readline()
            if not line:
                raise RuntimeError(f"{command} exited before listening")
            match = LISTENING.search(line)
            if match:
                break
    # Keep draining stderr so the child never blocks on a full pipe.
    asyncio.get_running_loop().create_task(_drain(process.stderr))
    return process, f"http://127.0.0.1:{int(match.group(1))}/channels/web"


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def stop_server(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()


async def run(report: Report, quick: bool) -> None:
    connections = 32
    duration = 2.0 if quick else 5.0
    rounds = 2 if quick else 5
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "zeroclaw.toml"
        config.write_text(CONFIG)
        ours, ours_url = await start_server(
            [sys.executable, "-m", "zeroclaw", "serve", "--config", str(config)]
        )
        bare, bare_url = await start_server(
            [sys.executable, "-m", "benchmarks.bench_gateway", "--serve-bare"]
        )
        try:
            results: dict[str, list[dict[str, Any]]] = {"zeroclaw serve": [], "bare aiohttp": []}
            urls = {"zeroclaw serve": ours_url, "bare aiohttp": bare_url}
            for url in urls.values():  # warm-up, discarded
                await run_load(url, connections, min(1.0, duration))
            for _ in range(rounds):
                for name, url in urls.items():
                    results[name].append(await run_load(url, connections, duration))
        finally:
            await stop_server(ours)
            await stop_server(bare)
    timings: dict[str, Timing] = {}
    for name, runs in results.items():
        per_request = [1 / r["rps"] for r in runs if r["rps"] > 0]
        timings[name] = Timing(name, statistics.median(per_request), per_request)
        errors = sum(r["errors"] for r in runs)
        report.figure(
            GROUP, f"{name}: requests/s", statistics.median(r["rps"] for r in runs), "1/s"
        )
        report.figure(
            GROUP, f"{name}: latency p50", statistics.median(r["p50"] for r in runs) * 1e3, "ms"
        )
        report.figure(
            GROUP,
            f"{name}: latency p99",
            statistics.median(r["p99"] for r in runs) * 1e3,
            "ms",
            f"{connections} connections, {errors} errors over {len(runs)} rounds",
        )
    report.ratio(
        GROUP,
        timings["zeroclaw serve"],
        timings["bare aiohttp"],
        target=TARGET,
        note=f"seconds per request at {connections} connections; target: ≥ 0.7× the bare "
        "handler's requests/s",
    )


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve-bare"]:
        asyncio.run(serve_bare())
    elif argv[:1] == ["--load"]:
        url, connections, duration = argv[1], int(argv[2]), float(argv[3])
        print(json.dumps(asyncio.run(load(url, connections, duration))))
    else:
        run_group(run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
