"""Scrape ``zeroclaw serve`` with a real Prometheus server and show what it stored.

    python -m benchmarks.prometheus_scrape [--prometheus /usr/bin/prometheus] [--seconds 6]

Starts ``zeroclaw serve`` (echo provider, one webhook channel, port 0) as the end-to-end tests do
(``tests/gateway_process.py``: run it from a clone), lints its ``/metrics`` with
``promtool check metrics`` when promtool is installed, starts Prometheus (Debian's ``prometheus``
package) with a config scraping it every second, sends a few webhook messages, waits until
Prometheus reports the target ``up``, then queries Prometheus's HTTP API for every zeroclaw
family it stored and prints them. Exits non-zero when the target never comes up or a family of
the metrics table (docs/gateway.md; ``zeroclaw.gateway.metrics.FAMILIES``) is missing from what
Prometheus stored. Not a test: it needs the prometheus binary.

The scrape config it writes is the one to use in production, with your host and port::

    scrape_configs:
      - job_name: zeroclaw
        metrics_path: /metrics
        static_configs:
          - targets: ["127.0.0.1:8080"]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

# The same start-up as the end-to-end tests (a clone has both): one place reads the port.
from tests.gateway_process import start_serve, write_config

from zeroclaw.gateway.metrics import FAMILY_SAMPLES

CONFIG = """
[gateway]
port = 0
[provider]
kind = "echo"
[channels.web]
kind = "webhook"
allowed_users = ["*"]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def main(prometheus: str, seconds: float) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        zeroclaw = await start_serve(write_config(work, CONFIG))
        address = zeroclaw.base.removeprefix("http://")
        prom_port = free_port()
        (work / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: zeroclaw\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{address}']\n"
        )
        server = await asyncio.create_subprocess_exec(
            prometheus,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{address}/metrics") as response:
                    exposition = await response.read()
                promtool = shutil.which("promtool")
                if promtool:
                    lint = await asyncio.create_subprocess_exec(
                        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE
                    )
                    await lint.communicate(exposition)
                    print(f"promtool check metrics: exit {lint.returncode}")
                for n in range(5):
                    await session.post(
                        f"http://{address}/channels/web", json={"sender": "p", "content": f"m{n}"}
                    )
                up = await wait_up(session, api, deadline=time.monotonic() + 60)
                if not up:
                    print("Prometheus never reported the zeroclaw target up", file=sys.stderr)
                    return 1
                await asyncio.sleep(seconds)  # a few more scrapes after the traffic
                stored = await query(session, api, '{__name__=~"zeroclaw_.*"}')
        finally:
            if server.returncode is None:
                server.send_signal(signal.SIGTERM)
            await server.wait()
            await zeroclaw.stop()
    names = sorted({series["metric"]["__name__"] for series in stored})
    print(f"Prometheus stored {len(stored)} zeroclaw series in {len(names)} metrics:")
    for series in stored:
        labels = {k: v for k, v in series["metric"].items() if k not in ("job", "instance")}
        if labels.get("__name__", "").endswith("_bucket"):
            continue
        print(f"  {json.dumps(labels, sort_keys=True)} = {series['value'][1]}")
    missing = [family for family in FAMILY_SAMPLES if family not in names]
    if missing:
        print(f"missing from Prometheus: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("every family of the metrics table in docs/gateway.md was scraped and stored")
    return 0


async def wait_up(session: aiohttp.ClientSession, api: str, *, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{api}/targets") as response:
                targets = (await response.json())["data"]["activeTargets"]
            if targets and all(t["health"] == "up" for t in targets):
                return True
        except (aiohttp.ClientError, KeyError, ValueError):
            pass
        await asyncio.sleep(0.5)
    return False


async def query(session: aiohttp.ClientSession, api: str, expression: str) -> list[Any]:
    async with session.get(f"{api}/query", params={"query": expression}) as response:
        payload = await response.json()
    result: list[Any] = payload["data"]["result"]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if not os.path.exists(args.prometheus):
        sys.exit(f"no prometheus binary at {args.prometheus} (apt-get install prometheus)")
    sys.exit(asyncio.run(main(args.prometheus, args.seconds)))
