"""End to end: ``python -m zeroclaw serve --config F`` in a subprocess, a real aiohttp client.

The provider is the fake OpenAI-compatible server (``tests.fakes.openai_server``, in this
process, on loopback), which records every request, so provider calls and the history sent with
them are checked on the wire. One gateway serves most tests of the module; the breaker, the
drain and the terminal get a process of their own.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_server import FakeOpenAI, error
from tests.gateway_process import Served, start_serve, until, write_config
from zeroclaw.gateway.metrics import FAMILY_SAMPLES

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "e2e-token"
BODY_LIMIT = 65536


@dataclass
class Receiver:
    """The async-mode callback endpoint."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response(status=204)


@dataclass
class World:
    fake: FakeOpenAI
    receiver: Receiver
    served: Served
    session: aiohttp.ClientSession

    async def post(
        self, path: str, body: Any = None, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if body is not None:
            kw["json"] = body
        async with self.session.post(self.served.base + path, headers=headers, **kw) as response:
            text = await response.text()
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            return response.status, payload, dict(response.headers)

    async def healthz(self) -> int:
        async with self.session.get(self.served.base + "/healthz") as response:
            return response.status

    def provider_calls_with(self, text: str) -> list[list[dict[str, str]]]:
        """The ``messages`` of every provider request whose last message is ``text``."""
        found = []
        for request in self.fake.requests:
            messages = request.json["messages"]
            if messages[-1]["content"] == text:
                found.append(messages)
        return found


def shared_config(fake: FakeOpenAI, receiver: Receiver) -> str:
    return f"""
[gateway]
port = 0
max_body_bytes = {BODY_LIMIT}
shutdown_timeout = 5.0

[processor]
processing_timeout = 10.0

[provider]
kind = "openai"
base_url = "{fake.base_url}"
api_key = "sk-test"
model = "fake-model"
system_prompt = "Be brief."
history_turns = 2
max_retries = 0

[channels.web]
kind = "webhook"
allowed_users = ["*"]

[channels.secure]
kind = "webhook"
allowed_users = ["alice"]
token = "{TOKEN}"
path = "/hooks/secure"

[channels.cb]
kind = "webhook"
allowed_users = ["*"]
callback_url = "{receiver.url}"
callback_timeout = 2.0
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake = FakeOpenAI()
    await fake.start()
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/replies", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/replies"
    config = write_config(tmp_path_factory.mktemp("e2e"), shared_config(fake, receiver))
    served = await start_serve(config)
    session = aiohttp.ClientSession()
    try:
        yield World(fake, receiver, served, session)
    finally:
        await session.close()
        code = await served.stop()
        await runner.cleanup()
        await fake.stop()
        assert code == 0, served.log()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------- round trips


async def test_sync_round_trip_through_the_provider(world: World) -> None:
    text = unique("hello")
    status, body, _ = await world.post("/channels/web", {"sender": "u1", "content": text})
    assert status == 200, body
    assert body["status"] == "success"
    assert body["reply"] == f"echo: {text}"
    (messages,) = world.provider_calls_with(text)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    request = next(r for r in world.fake.requests if r.json["messages"][-1]["content"] == text)
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json["model"] == "fake-model"


async def test_async_round_trip_posts_the_reply_to_the_callback(world: World) -> None:
    text = unique("async")
    status, body, _ = await world.post(
        "/channels/cb", {"sender": "u2", "content": text, "id": text, "reply_target": "room"}
    )
    assert (status, body) == (202, {"id": text, "status": "accepted"})
    await until(lambda: any(r["id"] == text for r in world.receiver.received), what="callback")
    (reply,) = [r for r in world.receiver.received if r["id"] == text]
    assert reply == {
        "id": text,
        "channel": "cb",
        "recipient": "room",
        "text": f"echo: {text}",
        "kind": "reply",
    }


async def test_three_deliveries_of_one_id_make_one_provider_call(world: World) -> None:
    text = unique("once")
    answers = [
        await world.post("/channels/web", {"sender": "u3", "content": text, "id": text})
        for _ in range(3)
    ]
    assert [a[1]["status"] for a in answers] == ["success", "duplicate", "duplicate"]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert len(world.provider_calls_with(text)) == 1
    header_id = unique("hdr")
    for _ in range(3):
        await world.post(
            "/channels/web",
            {"sender": "u3", "content": header_id},
            headers={"Idempotency-Key": header_id},
        )
    assert len(world.provider_calls_with(header_id)) == 1


async def test_history_is_carried_and_cleared_by_new(world: World) -> None:
    sender = unique("talker")
    first, second, third = unique("first"), unique("second"), unique("third")
    await world.post("/channels/web", {"sender": sender, "content": first})
    await world.post("/channels/web", {"sender": sender, "content": second})
    (with_history,) = world.provider_calls_with(second)
    assert with_history[1:] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": f"echo: {first}"},
        {"role": "user", "content": second},
    ]
    calls_before = len(world.fake.requests)
    status, body, _ = await world.post("/channels/web", {"sender": sender, "content": "/new"})
    assert (status, body["reply"]) == (200, "Started a new conversation.")
    assert len(world.fake.requests) == calls_before  # /new never reaches the provider
    await world.post("/channels/web", {"sender": sender, "content": third})
    (fresh,) = world.provider_calls_with(third)
    assert fresh == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": third},
    ]
    # Another conversation never saw this one's history.
    other = unique("other")
    await world.post("/channels/web", {"sender": unique("someone"), "content": other})
    assert len(world.provider_calls_with(other)[0]) == 2


# ---------------------------------------------------------------------------- bad input


BAD_INPUTS = [
    ("/channels/web", {"Content-Type": "text/plain"}, b'{"sender":"u","content":"x"}', 415),
    ("/channels/web", {"Content-Type": "application/json"}, b"{oops", 400),
    ("/channels/web", {"Content-Type": "application/json"}, b'{"content": "x"}', 400),
    ("/channels/web", {"Content-Type": "application/json"}, b'{"sender": "u"}', 400),
    ("/channels/web", {"Content-Type": "application/json"}, b'{"sender":"","content":"x"}', 400),
    ("/channels/web", {"Content-Type": "application/json"}, b'{"sender":1,"content":"x"}', 400),
    ("/channels/web", {"Content-Type": "application/json"}, b"[]", 400),
    (
        "/hooks/secure",
        {"Content-Type": "application/json"},
        b'{"sender":"alice","content":"x"}',
        401,
    ),
    (
        "/hooks/secure",
        {"Content-Type": "application/json", "Authorization": "Bearer nope"},
        b'{"sender":"alice","content":"x"}',
        401,
    ),
    (
        "/hooks/secure",
        {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        b'{"sender":"eve","content":"x"}',
        403,
    ),
]


async def test_every_bad_input_gets_its_status_and_the_server_stays_healthy(world: World) -> None:
    calls_before = len(world.fake.requests)
    for path, headers, raw, expected in BAD_INPUTS:
        async with world.session.post(
            world.served.base + path,
            data=raw,
            headers=headers,
            skip_auto_headers=["Content-Type"],
        ) as response:
            assert response.status == expected, (path, raw, await response.text())
            assert "error" in await response.json()
    assert len(world.fake.requests) == calls_before
    assert await world.healthz() == 200
    status, body, _ = await world.post(
        "/hooks/secure",
        {"sender": "alice", "content": "x"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert (status, body["status"]) == (200, "success")


async def test_unknown_path_404_and_wrong_method_405_are_json(world: World) -> None:
    async with world.session.get(world.served.base + "/nowhere") as response:
        assert response.status == 404
        assert "error" in await response.json()
    async with world.session.get(world.served.base + "/channels/web") as response:
        assert response.status == 405
        assert "error" in await response.json()
    async with world.session.delete(world.served.base + "/status") as response:
        assert response.status == 405
        assert "error" in await response.json()


async def test_a_100_mb_body_is_refused_413_quickly_without_being_buffered(world: World) -> None:
    rss_before = world.served.rss_bytes()

    async def body() -> AsyncIterator[bytes]:
        chunk = b"x" * 2**20
        for _ in range(100):
            yield chunk

    started = time.monotonic()
    async with world.session.post(
        world.served.base + "/channels/web",
        data=body(),
        headers={"Content-Type": "application/json", "Content-Length": str(100 * 2**20)},
    ) as response:
        assert response.status == 413
        assert "exceeds" in (await response.json())["error"]
    elapsed = time.monotonic() - started

    # Without a Content-Length, and never ending: refused once the limit has been read; the server
    # reads and discards the rest only briefly (so the 413 is not lost to a reset), then closes.
    async def endless() -> AsyncIterator[bytes]:
        chunk = b"y" * 2**16
        while True:
            yield chunk
            await asyncio.sleep(0.005)  # pacing: a steady upload, not a flood of the loopback

    async def endless_upload() -> int | None:
        try:
            async with world.session.post(
                world.served.base + "/channels/web",
                data=endless(),
                headers={"Content-Type": "application/json"},
            ) as response:
                return response.status
        except aiohttp.ClientError:
            return None  # closed while the client was still writing: also a refusal

    status = await asyncio.wait_for(endless_upload(), timeout=60)
    assert status in (413, None)
    grown = world.served.rss_bytes() - rss_before
    # How much of the declared 100 MB the client got to write before the 413 arrived depends on
    # timing (the server discards it while lingering); not buffering it is what RSS shows.
    assert elapsed < 10.0
    assert grown < 20 * 2**20, f"server RSS grew by {grown} bytes"
    assert await world.healthz() == 200


# ---------------------------------------------------------------------------- observing


async def test_metrics_carry_every_family_and_count_the_traffic(world: World) -> None:
    await world.post("/channels/web", {"sender": "m", "content": unique("metric")})
    async with world.session.get(world.served.base + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    missing = [name for name in FAMILY_SAMPLES if name not in samples]
    assert missing == []
    success = [
        s.value
        for s in samples["zeroclaw_messages_total"]
        if s.labels == {"channel": "web", "outcome": "success"}
    ]
    assert success[0] >= 1
    assert any(
        s.labels.get("status") == "200" and s.value >= 1
        for s in samples["zeroclaw_provider_requests_total"]
    )
    states = {s.labels["state"] for s in samples["zeroclaw_circuit_state"]}
    assert states == {"closed", "open", "half_open"}


async def test_status_reports_every_section(world: World) -> None:
    await world.post("/channels/web", {"sender": "s", "content": unique("status")})
    async with world.session.get(world.served.base + "/status") as response:
        assert response.status == 200
        status = await response.json()
    for key in ("version", "uptime_seconds", "processor", "pool", "backpressure", "dedup"):
        assert key in status
    assert status["uptime_seconds"] > 0
    assert status["processor"]["succeeded"] >= 1
    (breaker,) = status["breakers"].values()
    assert breaker["state"] == "closed"
    provider = status["provider"]
    assert provider["calls"] >= 1
    assert provider["concurrency_limit"] >= 1
    assert set(provider) >= {"calls", "errors_by_class", "retries", "concurrency_limit"}
    assert status["channels"]["web"]["kind"] == "webhook"
    assert status["channels"]["web"]["healthy"] is True
    assert status["channels"]["web"]["received"] >= 1
    assert status["channels"]["web"]["sent"] >= 1
    assert set(status["channels"]) == {"web", "secure", "cb"}


# ---------------------------------------------------------------------------- own processes


async def test_breaker_opens_after_provider_failures_then_503_with_retry_after(
    tmp_path: Path,
) -> None:
    async with FakeOpenAI() as fake:
        fake.script(*[error(500, "boom", type="server_error") for _ in range(20)])
        config = write_config(
            tmp_path,
            f"""
[gateway]
port = 0
[processor]
processing_timeout = 10.0
[processor.circuit]
failure_threshold = 2
timeout_duration = 30.0
[provider]
kind = "openai"
base_url = "{fake.base_url}"
model = "m"
max_retries = 0
[channels.web]
allowed_users = ["*"]
kind = "webhook"
""",
        )
        served = await start_serve(config)
        try:
            async with aiohttp.ClientSession() as session:
                url = served.base + "/channels/web"
                for n in range(2):
                    async with session.post(url, json={"sender": "u", "content": f"{n}"}) as r:
                        assert r.status == 502
                        assert (await r.json())["status"] == "failed"
                async with session.post(url, json={"sender": "u", "content": "more"}) as r:
                    assert r.status == 503
                    body = await r.json()
                    assert body["status"] == "rejected"
                    assert "circuit" in body["reason"]
                    assert 1 <= int(r.headers["Retry-After"]) <= 30
                assert len(fake.requests) == 2
                async with session.get(served.base + "/healthz") as r:
                    assert r.status == 200
                async with session.get(served.base + "/metrics") as r:
                    metrics = await r.text()
                assert 'state="open"} 1.0' in metrics
        finally:
            assert await served.stop() == 0


async def test_sigterm_drains_the_request_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    """The provider takes 3 s: room, on a loaded machine, to signal and probe during the drain."""
    config = write_config(
        tmp_path,
        """
[gateway]
port = 0
shutdown_timeout = 20.0
[provider]
kind = "simulated"
base_latency = 3.0
latency_sigma = 0.0
[channels.web]
kind = "webhook"
allowed_users = ["*"]
""",
    )
    served = await start_serve(config)
    async with aiohttp.ClientSession() as session:
        url = served.base + "/channels/web"

        async def in_flight() -> tuple[int, Any]:
            async with session.post(url, json={"sender": "u", "content": "slow"}) as r:
                return r.status, await r.json()

        async def provider_busy() -> bool:
            async with session.get(served.base + "/status") as r:
                return bool((await r.json())["provider"]["in_flight"] == 1)

        pending = asyncio.ensure_future(in_flight())
        await until(provider_busy, what="the provider call to start")
        served.signal(signal.SIGTERM)

        async def draining() -> bool:
            async with session.get(served.base + "/healthz") as r:
                return r.status == 503

        await until(draining, what="/healthz 503")
        # A second SIGTERM (an impatient supervisor) does not cut the drain short.
        served.signal(signal.SIGTERM)
        await until(
            lambda: "SIGTERM again: already draining" in served.log(), what="the second SIGTERM"
        )
        async with session.post(url, json={"sender": "v", "content": "late"}) as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["reason"] == "shutting down"
        status, body = await pending
        assert (status, body["status"]) == (200, "success")
        assert body["reply"]
    assert await served.wait() == 0
    assert "draining" in served.log()


async def test_terminal_channel_chats_over_stdin_and_exits_at_eof(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
[gateway]
port = 0
[provider]
kind = "echo"
[channels.terminal]
""",
    )
    served = await start_serve(config, stdin=asyncio.subprocess.PIPE)
    process = served.process
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(b"hello there\n")
    await process.stdin.drain()
    first = await asyncio.wait_for(process.stdout.readline(), 30)
    assert first == b"hello there\n"
    process.stdin.write(b"\n/new\nagain\n")
    await process.stdin.drain()
    process.stdin.close()
    rest = await asyncio.wait_for(process.stdout.read(), 30)
    assert rest.decode().splitlines() == ["Started a new conversation.", "again"]
    assert await served.wait() == 0
