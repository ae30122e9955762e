"""Hostile input against a running ``zeroclaw serve`` (issue 18, part 3): each class of attack
gets its status within a bound, nothing is admitted that should not be, and the server is
healthy afterwards. One gateway (a webhook that allows only ``alice``, a Slack channel, a
Telegram channel in webhook mode, ``client_timeout = 2``) serves the module; a real aiohttp
client and raw sockets on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, FakeSlack, dm_event, signed_headers
from tests.gateway_process import Served, start_serve, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

TG_SECRET = "hostile-secret"
# benchmarks/reliability.py (the long form) raises it.
FUZZ_EXAMPLES = int(os.environ.get("ZEROCLAW_FUZZ_EXAMPLES", "150"))
CLIENT_TIMEOUT = 2.0


def config_text(slack_base: str) -> str:
    return f"""
[gateway]
port = 0
max_body_bytes = 65536
client_timeout = {CLIENT_TIMEOUT}
[provider]
kind = "echo"
[channels.web]
kind = "webhook"
allowed_users = ["alice"]
[channels.slack]
bot_token = "{BOT_TOKEN}"
signing_secret = "{SIGNING_SECRET}"
api_base = "{slack_base}"
allowed_users = ["U0ALICE"]
[channels.tg]
kind = "telegram"
bot_token = "123:abc"
mode = "webhook"
secret_token = "{TG_SECRET}"
api_base = "{slack_base}"
allowed_users = ["*"]
"""


class World:
    def __init__(self, served: Served, session: aiohttp.ClientSession) -> None:
        self.served = served
        self.session = session

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        merged = {"Content-Type": "application/json", **(headers or {})}
        async with self.session.post(self.served.base + path, data=body, headers=merged) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def status(self) -> dict[str, Any]:
        async with self.session.get(self.served.base + "/status") as r:
            document: dict[str, Any] = await r.json()
            return document

    async def healthy(self) -> bool:
        async with self.session.get(self.served.base + "/healthz") as r:
            return r.status == 200


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with FakeSlack() as slack:
        path = write_config(tmp_path_factory.mktemp("hostile"), config_text(slack.base_url))
        served = await start_serve(path)
        async with aiohttp.ClientSession() as session:
            yield World(served, session)
        assert await served.stop() == 0, served.log()
        assert "Traceback" not in served.log()  # nothing was a 500


def _nested(depth: int) -> bytes:
    return (
        b'{"sender": "alice", "content": "x", "metadata": {"a": '
        + b"[" * depth
        + b"]" * depth
        + b"}}"
    )


HOSTILE_BODIES = [
    ("invalid UTF-8", b'{"sender": "alice", "content": "\xff\xfe"}', 400),
    ("JSON nested 100 000 deep", b"[" * 100_000 + b"]" * 100_000, 413),  # 200 kB > 64 kB
    ("JSON nested 30 000 deep", _nested(30_000), 400),
    (
        "a 100 000-digit number",
        b'{"sender": "alice", "content": "x", "n": ' + b"9" * 60_000 + b"}",
        400,
    ),
    (
        "a number out of range",
        b'{"sender": "alice", "content": "x", "metadata": {"n": 1e999}}',
        400,
    ),
    ("NaN", b'{"sender": "alice", "content": "x", "metadata": {"n": NaN}}', 400),
    ("not an object", b'["sender", "alice"]', 400),
    ("a body over max_body_bytes", b'{"content": "' + b"x" * 70_000 + b'"}', 413),
    ("a sender not allowed", b'{"sender": "mallory", "content": "hi"}', 403),
    # Duplicate keys: the last one wins, as in every JSON parser; bob is not allowed.
    ("duplicate keys", b'{"sender": "alice", "sender": "bob", "content": "hi"}', 403),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(body, expected) for _, body, expected in HOSTILE_BODIES],
    ids=[name for name, _, _ in HOSTILE_BODIES],
)
async def test_each_hostile_body_gets_its_status(world: World, body: bytes, expected: int) -> None:
    before = (await world.status())["processor"]["accepted"]
    started = time.monotonic()
    status, _ = await world.post("/channels/web", body)
    assert status == expected
    assert time.monotonic() - started < 5.0
    assert (await world.status())["processor"]["accepted"] == before
    assert await world.healthy()


async def test_headers_too_large_are_refused_without_a_traceback_in_the_log(world: World) -> None:
    for _ in range(3):
        status, _ = await world.post("/channels/web", b"{}", headers={"X-Big": "a" * 100_000})
        assert status == 400
    assert await world.healthy()
    # aiohttp logged each one with a traceback: anyone could fill the log.
    assert "LineTooLong" not in world.served.log()


async def _raw(world: World) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", world.served.port)


async def test_a_slowloris_is_cut_off_and_others_are_served_meanwhile(world: World) -> None:
    reader, writer = await _raw(world)
    writer.write(b"POST /channels/web HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    started = time.monotonic()
    closed_after = None
    while time.monotonic() - started < 10 * CLIENT_TIMEOUT:
        try:
            writer.write(b"X")  # one header byte at a time, never a complete header
            await writer.drain()
            data = await asyncio.wait_for(reader.read(100), 0.5)
        except (TimeoutError, ConnectionError):
            # A client that waits sees nothing; meanwhile others are answered at once.
            ok, _ = await world.post("/channels/web", b'{"sender": "alice", "content": "hi"}')
            assert ok == 200
            continue
        if data == b"":
            closed_after = time.monotonic() - started
            break
    writer.close()
    assert closed_after is not None, "the slow connection was never closed"
    assert closed_after < CLIENT_TIMEOUT + 3.0


async def test_a_body_sent_a_byte_at_a_time_gets_408(world: World) -> None:
    reader, writer = await _raw(world)
    writer.write(
        b"POST /channels/web HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    started = time.monotonic()
    answer = b""
    while time.monotonic() - started < 10 * CLIENT_TIMEOUT and b"\r\n\r\n" not in answer:
        try:
            writer.write(b" ")
            await writer.drain()
            answer += await asyncio.wait_for(reader.read(1000), 0.5)
        except TimeoutError:
            continue
        except ConnectionError:
            break
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < CLIENT_TIMEOUT + 3.0


async def test_a_replayed_slack_signature_is_refused(world: World) -> None:
    body = json.dumps(dm_event("hello", event_id="Ev-replay")).encode()
    stale = signed_headers(body, timestamp=int(time.time()) - 600)
    status, _ = await world.post("/channels/slack", body, stale)
    assert status == 401
    forged = signed_headers(body, secret="not-the-secret")
    assert (await world.post("/channels/slack", body, forged))[0] == 401
    tampered = signed_headers(body)
    assert (await world.post("/channels/slack", body + b" ", tampered))[0] == 401
    assert (await world.status())["channels"]["slack"]["received"] == 0


async def test_a_wrong_telegram_secret_is_refused(world: World) -> None:
    update = {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 5, "type": "private"}}}
    body = json.dumps(update).encode()
    for secret in ("wrong", "", TG_SECRET[:-1], TG_SECRET + "x"):
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
        assert (await world.post("/channels/tg", body, headers))[0] == 401
    assert (await world.post("/channels/tg", body))[0] == 401
    assert (await world.status())["channels"]["tg"]["received"] == 0


async def test_ten_thousand_senders_not_allowed_admit_nothing_and_keep_memory_flat(
    world: World,
) -> None:
    before = await world.status()
    statuses: list[int] = []

    async def batch(start: int) -> None:
        for n in range(start, start + 200):
            body = json.dumps({"sender": f"stranger{n}", "content": "let me in"}).encode()
            statuses.append((await world.post("/channels/web", body))[0])

    await asyncio.gather(*(batch(start) for start in range(0, 10_000, 200)))
    after = await world.status()
    assert statuses == [403] * 10_000
    assert after["processor"]["accepted"] == before["processor"]["accepted"]
    ignored = after["channels"]["web"]["messages"]["ignored"]
    assert ignored - before["channels"]["web"]["messages"].get("ignored", 0) == 10_000
    grown = after["process"]["rss_bytes"] - before["process"]["rss_bytes"]
    assert grown < 16 * 2**20, grown
    assert await world.healthy()


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {"sender": st.sampled_from(["alice", "bob", ""]), "content": st.text(max_size=30)},
            optional={
                "id": st.text(max_size=10),
                "metadata": st.dictionaries(st.text(max_size=5), st.integers()),
            },
        ).map(lambda value: json.dumps(value).encode()),
    ),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
)
async def test_fuzzed_webhook_bodies_never_get_a_500(
    world: World, body: bytes, content_type: str
) -> None:
    async with world.session.post(
        world.served.base + "/channels/web", data=body, headers={"Content-Type": content_type}
    ) as r:
        await r.read()
        assert r.status in {200, 400, 403, 413, 415, 429}
