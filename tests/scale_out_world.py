"""Several ``zeroclaw serve`` processes sharing one Redis, a callback receiver, and a client: what
the scale-out end-to-end tests drive.

Each process serves an async-mode webhook channel ``web`` whose replies are POSTed to the
receiver, which records each callback with the order it arrived in. The provider is the
``simulated`` backend (seeded latency, no network).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.gateway_process import Served, start_serve, write_config


@dataclass
class Receiver:
    """The callback endpoint: every reply, in arrival order."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/replies", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/replies"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        payload["idempotency_key"] = request.headers.get("Idempotency-Key")
        self.received.append(payload)
        if payload.get("kind") == "reply":
            self.answered.add(str(payload["id"]))
        return web.Response(status=204)

    def has_answered(self, message_id: str) -> bool:
        return message_id in self.answered

    def replies(self) -> list[dict[str, Any]]:
        return [r for r in self.received if r.get("kind") == "reply"]

    def replied_ids(self) -> list[str]:
        return [str(r["id"]) for r in self.replies()]

    def by_recipient(self) -> dict[str, list[str]]:
        """Per conversation (recipient), the ids of its replies in arrival order."""
        found: dict[str, list[str]] = defaultdict(list)
        for reply in self.replies():
            found[str(reply["recipient"])].append(str(reply["id"]))
        return found


def scale_out_config(
    redis_url: str,
    namespace: str,
    receiver: Receiver,
    *,
    partitions: int = 8,
    lease_ttl: float = 3.0,
    latency: float = 0.01,
    extra_redis: str = "",
    extra_processor: str = "",
    extra_provider: str = "",
    extra_channels: str = "",
    provider: str | None = None,
) -> str:
    if provider is None:
        provider = f"""
kind = "simulated"
base_latency = {latency}
latency_sigma = 0.1
capacity = 1000
history_turns = 0
{extra_provider}"""
    return f"""
[gateway]
port = 0
shutdown_timeout = 5.0

[processor]
processing_timeout = 20.0
max_concurrent_requests = 64
worker_pool_size = 16
task_queue_size = 256
{extra_processor}

[provider]
{provider}

[redis]
url = "{redis_url}"
namespace = "{namespace}"
partitions = {partitions}
lease_ttl = {lease_ttl}
{extra_redis}

[channels.web]
kind = "webhook"
allowed_users = ["*"]
callback_url = "{receiver.url}"
callback_timeout = 5.0
callback_retries = 5
{extra_channels}
"""


async def start_processes(directory: Path, config: str, count: int) -> list[Served]:
    path = write_config(directory, config)
    return list(await asyncio.gather(*(start_serve(path) for _ in range(count))))


async def post_message(
    session: aiohttp.ClientSession,
    served: Served,
    body: dict[str, Any],
    *,
    attempts: int = 200,
) -> int:
    """POST one message, retrying (after ``Retry-After``, capped) while it is refused 429/503
    or the connection fails, as a platform redelivering does. Returns the final status."""
    status = 0
    for _ in range(attempts):
        try:
            async with session.post(served.base + "/channels/web", json=body) as response:
                status = response.status
                if status not in (429, 503):
                    return status
                wait = min(float(response.headers.get("Retry-After", "1")), 0.5)
        except aiohttp.ClientError:
            wait = 0.2
        await asyncio.sleep(wait)
    return status


async def status_of(session: aiohttp.ClientSession, served: Served) -> dict[str, Any]:
    async with session.get(served.base + "/status") as response:
        document: dict[str, Any] = json.loads(await response.text())
        return document
