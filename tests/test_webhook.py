"""The generic webhook channel and the server, in process, over real loopback sockets.

A real ``ConcurrentMessageProcessor`` (with the gateway's handler hook) admits the messages; the
server is the gateway's aiohttp server on port 0 and the client a real aiohttp session. The
end-to-end tests (tests/test_gateway_e2e.py) run the same paths through ``zeroclaw serve``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.helpers import Script, UnusedProvider
from zeroclaw.channels.webhook import WebhookChannel
from zeroclaw.concurrency.channel_integration import (
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
)
from zeroclaw.concurrency.circuit_breaker import CircuitConfig
from zeroclaw.gateway.intake import GatewayIntake
from zeroclaw.gateway.metrics import MessageLedger
from zeroclaw.gateway.server import GatewayServer

TOKEN = "s3cret-token"


@dataclass
class Rig:
    base: str
    session: aiohttp.ClientSession
    script: Script
    cmp: ConcurrentMessageProcessor
    intake: GatewayIntake
    server: GatewayServer
    channels: dict[str, WebhookChannel]

    async def post(
        self, path: str, body: Any = None, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
        if body is not None:
            kw["json"] = body
        async with self.session.post(self.base + path, headers=headers, **kw) as response:
            return response.status, await response.json(), response.headers


async def start_rig(
    config: MessageProcessorConfig | None = None,
    *,
    callback_url: str | None = None,
    callback_options: dict[str, Any] | None = None,
    max_body_bytes: int = 65536,
) -> Rig:
    script = Script()
    config = config or MessageProcessorConfig(processing_timeout=5.0)
    cmp = ConcurrentMessageProcessor(
        config, handler=script, handle_signals=False, send_timeout=5.0, drain_timeout=5.0
    )
    ledger = MessageLedger()
    intake = GatewayIntake(cmp, ledger)
    channels = {
        "web": WebhookChannel("web", intake=intake, allowed_users=("*",)),
        "secure": WebhookChannel(
            "secure", intake=intake, allowed_users=("alice",), token=TOKEN, path="/hooks/secure"
        ),
        "small": WebhookChannel(
            "small", intake=intake, allowed_users=("*",), max_body_bytes=max_body_bytes
        ),
    }
    if callback_url is not None:
        channels["cb"] = WebhookChannel(
            "cb",
            intake=intake,
            allowed_users=("*",),
            callback_url=callback_url,
            **(
                callback_options
                or {
                    "callback_timeout": 0.5,
                    "callback_retries": 3,
                    "callback_backoff": (0.01, 0.05),
                }
            ),
        )
    runner = asyncio.get_running_loop().create_task(
        cmp.start(list(channels.values()), UnusedProvider(), None)
    )
    await asyncio.wait_for(cmp.wait_started(), 10)
    server = GatewayServer(
        host="127.0.0.1",
        port=0,
        channels=list(channels.values()),
        metrics=lambda: b"",
        status=_empty_status,
        max_body_bytes=max_body_bytes * 16,
    )
    port = await server.start()
    session = aiohttp.ClientSession()
    rig = Rig(f"http://127.0.0.1:{port}", session, script, cmp, intake, server, channels)
    rig._runner = runner  # type: ignore[attr-defined]
    return rig


async def _empty_status() -> dict[str, Any]:
    return {}


async def stop_rig(rig: Rig) -> None:
    await rig.session.close()
    await rig.cmp.stop()
    await asyncio.wait_for(rig._runner, 10)  # type: ignore[attr-defined]
    for channel in rig.channels.values():
        await channel.aclose()
    await rig.server.stop()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = await start_rig()
    try:
        yield rig
    finally:
        await stop_rig(rig)


async def healthy(rig: Rig) -> bool:
    async with rig.session.get(rig.base + "/healthz") as response:
        return response.status == 200 and await response.text() == "ok"


# ---------------------------------------------------------------------------- sync mode


async def test_sync_round_trip_answers_with_the_reply(rig: Rig) -> None:
    status, body, _ = await rig.post(
        "/channels/web", {"sender": "u1", "content": "hello", "id": "m-1"}
    )
    assert status == 200
    assert body == {"id": "m-1", "status": "success", "reply": "echo: hello"}
    (seen,) = rig.script.calls
    assert (seen.id, seen.sender, seen.content, seen.channel) == ("m-1", "u1", "hello", "web")


async def test_optional_fields_reach_the_message(rig: Rig) -> None:
    await rig.post(
        "/channels/web",
        {
            "sender": "u1",
            "content": "hi",
            "reply_target": "room-7",
            "thread_id": "t-3",
            "metadata": {"k": [1, 2]},
        },
    )
    (seen,) = rig.script.calls
    assert (seen.reply_target, seen.thread_id, dict(seen.metadata)) == (
        "room-7",
        "t-3",
        {"k": [1, 2]},
    )


async def test_idempotency_key_header_then_fresh_id(rig: Rig) -> None:
    _, by_header, _ = await rig.post(
        "/channels/web", {"sender": "u", "content": "x"}, headers={"Idempotency-Key": "hdr-1"}
    )
    _, body_wins, _ = await rig.post(
        "/channels/web",
        {"sender": "u", "content": "x", "id": "body-1"},
        headers={"Idempotency-Key": "hdr-2"},
    )
    _, fresh_a, _ = await rig.post("/channels/web", {"sender": "u", "content": "x"})
    _, fresh_b, _ = await rig.post("/channels/web", {"sender": "u", "content": "x"})
    assert by_header["id"] == "hdr-1"
    assert body_wins["id"] == "body-1"
    assert fresh_a["id"] != fresh_b["id"]
    assert fresh_a["status"] == fresh_b["status"] == "success"  # no id: never a duplicate


async def test_three_deliveries_of_one_id_call_the_handler_once(rig: Rig) -> None:
    answers = [
        await rig.post("/channels/web", {"sender": "u", "content": "once", "id": "dup-1"})
        for _ in range(3)
    ]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert answers[0][1]["status"] == "success"
    assert [body for _, body, _ in answers[1:]] == [{"id": "dup-1", "status": "duplicate"}] * 2
    assert len(rig.script.calls) == 1


async def test_duplicate_of_a_message_still_running_is_answered_at_once(rig: Rig) -> None:
    release = asyncio.Event()

    async def slow(message: ChannelMessage) -> str:
        await release.wait()
        return "late"

    rig.script.behaviour = slow
    first = asyncio.ensure_future(
        rig.post("/channels/web", {"sender": "u", "content": "a", "id": "run-1"})
    )
    await _until(lambda: len(rig.script.calls) == 1)
    status, body, _ = await rig.post(
        "/channels/web", {"sender": "u", "content": "a", "id": "run-1"}
    )
    assert (status, body) == (200, {"id": "run-1", "status": "duplicate"})
    release.set()
    status, body, _ = await first
    assert (status, body["reply"]) == (200, "late")


async def test_a_client_that_gives_up_leaves_nothing_behind(rig: Rig) -> None:
    release = asyncio.Event()

    async def slow(message: ChannelMessage) -> str:
        await release.wait()
        return "nobody reads this"

    rig.script.behaviour = slow
    with pytest.raises(TimeoutError):
        async with rig.session.post(
            rig.base + "/channels/web",
            json={"sender": "u", "content": "x", "id": "gone-1"},
            timeout=aiohttp.ClientTimeout(total=0.3),
        ) as response:
            await response.read()
    release.set()
    await _until(lambda: rig.intake.ledger.snapshot()["web"].outcomes["success"] == 1)
    await _until(lambda: not rig.channels["web"]._waiting)
    assert await healthy(rig)
    status, body, _ = await rig.post(
        "/channels/web", {"sender": "u", "content": "x", "id": "gone-1"}
    )
    assert (status, body["status"]) == (200, "duplicate")


async def test_handler_failure_is_502(rig: Rig) -> None:
    async def broken(message: ChannelMessage) -> str:
        raise RuntimeError("model exploded")

    rig.script.behaviour = broken
    status, body, _ = await rig.post("/channels/web", {"sender": "u", "content": "x", "id": "f1"})
    assert status == 502
    assert body["status"] == "failed"
    assert body["id"] == "f1"
    assert "model exploded" in body["error"]


async def test_processing_timeout_is_504() -> None:
    rig = await start_rig(MessageProcessorConfig(processing_timeout=0.2))
    try:

        async def hang(message: ChannelMessage) -> str:
            await asyncio.Event().wait()
            return "never"

        rig.script.behaviour = hang
        status, body, _ = await rig.post(
            "/channels/web", {"sender": "u", "content": "x", "id": "t"}
        )
        assert (status, body) == (504, {"id": "t", "status": "timeout"})
        assert await healthy(rig)
    finally:
        await stop_rig(rig)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b'{"content": "x"}', "'sender'"),
        (b'{"sender": "u"}', "'content'"),
        (b'{"sender": "", "content": "x"}', "'sender'"),
        (b'{"sender": "u", "content": "   "}', "'content'"),
        (b'{"sender": 7, "content": "x"}', "'sender'"),
        (b'{"sender": "u", "content": ["x"]}', "'content'"),
        (b'{"sender": "u", "content": "x", "id": 5}', "'id'"),
        (b'{"sender": "u", "content": "x", "thread_id": ""}', "'thread_id'"),
        (b'{"sender": "u", "content": "x", "metadata": [1]}', "'metadata'"),
        (b"\xff\xfe{", "malformed JSON"),
    ],
)
async def test_malformed_bodies_are_400(rig: Rig, raw: bytes, why: str) -> None:
    status, body, _ = await rig.post(
        "/channels/web", data=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert why in body["error"]
    assert rig.script.calls == []
    assert await healthy(rig)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415(rig: Rig, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with rig.session.post(
        rig.base + "/channels/web",
        data=b'{"sender": "u", "content": "x"}',
        headers=headers,
        skip_auto_headers=["Content-Type"],
    ) as response:
        assert response.status == 415
        assert "application/json" in (await response.json())["error"]
    assert rig.script.calls == []


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"]
)
async def test_missing_or_wrong_token_is_401(rig: Rig, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    status, body, response_headers = await rig.post(
        "/hooks/secure", {"sender": "alice", "content": "x"}, headers=headers
    )
    assert status == 401
    assert "token" in body["error"]
    assert response_headers["WWW-Authenticate"].startswith("Bearer")
    assert rig.script.calls == []


async def test_right_token_and_allowed_sender_is_answered(rig: Rig) -> None:
    status, body, _ = await rig.post(
        "/hooks/secure",
        {"sender": "alice", "content": "x"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert (status, body["status"]) == (200, "success")


async def test_sender_not_allowed_is_403_and_counted_ignored(rig: Rig) -> None:
    status, body, _ = await rig.post(
        "/hooks/secure",
        {"sender": "mallory", "content": "x"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 403
    assert body == {"error": "sender not allowed"}
    assert rig.script.calls == []
    assert rig.intake.ledger.snapshot()["secure"].outcomes["ignored"] == 1


async def test_default_path_is_not_served_when_path_is_set(rig: Rig) -> None:
    status, body, _ = await rig.post("/channels/secure", {"sender": "alice", "content": "x"})
    assert status == 404
    assert "/channels/secure" in body["error"]


async def test_unknown_path_404_and_wrong_method_405_are_json(rig: Rig) -> None:
    async with rig.session.get(rig.base + "/nope") as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        assert "error" in await response.json()
    async with rig.session.get(rig.base + "/channels/web") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert "GET" in (await response.json())["error"]
    async with rig.session.post(rig.base + "/healthz") as response:
        assert response.status == 405
        assert "error" in await response.json()
    assert await healthy(rig)


# ---------------------------------------------------------------------------- body limit


async def test_declared_oversized_body_is_refused_before_it_is_sent(rig: Rig) -> None:
    """A 100 MB Content-Length gets 413 while the client has sent almost nothing."""
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b"x" * 65536
        for _ in range(100 * 16):  # 100 MiB
            sent += len(chunk)
            yield chunk

    started = time.monotonic()
    try:
        async with rig.session.post(
            rig.base + "/channels/web",
            data=body(),
            headers={"Content-Type": "application/json", "Content-Length": str(100 * 2**20)},
        ) as response:
            status = response.status
            payload = await response.json()
    except aiohttp.ClientError:
        pytest.fail("the server must answer 413, not drop the connection unanswered")
    assert status == 413
    assert "exceeds" in payload["error"]
    assert sent < 50 * 2**20
    assert time.monotonic() - started < 10
    assert await healthy(rig)


async def test_chunked_oversized_body_is_refused_while_reading(rig: Rig) -> None:
    """No Content-Length: the channel counts bytes as they arrive and stops past the limit."""
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"sender": "u", "content": "'
        chunk = b"y" * 65536
        for _ in range(1600):
            sent += len(chunk)
            yield chunk
            await asyncio.sleep(0)

    try:
        async with rig.session.post(
            rig.base + "/channels/small",
            data=body(),
            headers={"Content-Type": "application/json"},
        ) as response:
            status = response.status
    except aiohttp.ClientError:
        status = None  # the server may close while the client still writes; check the count
    assert status in (413, None)
    assert sent < 50 * 2**20
    assert rig.script.calls == []
    assert await healthy(rig)


async def _raw_exchange(rig: Rig, head: bytes, body: bytes | None = None) -> tuple[bytes, bytes]:
    """Send ``head`` on a raw socket; read the first answer; then send ``body``, read the rest."""
    port = int(rig.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        rest = b""
        if body is not None:
            writer.write(body)
            await writer.drain()
            rest = await asyncio.wait_for(reader.read(65536), 10)
        return first, rest
    finally:
        writer.close()


async def test_expect_100_continue_refuses_a_large_body_before_it_is_sent(rig: Rig) -> None:
    head = (
        b"POST /channels/web HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\nExpect: 100-continue\r\n\r\n"
    )
    first, _ = await _raw_exchange(rig, head)
    assert first.startswith(b"HTTP/1.1 413")


async def test_expect_100_continue_lets_a_small_body_through(rig: Rig) -> None:
    body = b'{"sender": "u", "content": "continued"}'
    head = (
        b"POST /channels/web HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    first, rest = await _raw_exchange(rig, head, body)
    assert first.startswith(b"HTTP/1.1 100 Continue")
    assert rest.startswith(b"HTTP/1.1 200")
    assert b"echo: continued" in rest


async def test_body_at_the_limit_is_accepted() -> None:
    rig = await start_rig(max_body_bytes=200)
    try:
        base = b'{"sender": "u", "content": "'
        raw = base + b"z" * (200 - len(base) - 2) + b'"}'
        assert len(raw) == 200
        status, _, _ = await rig.post(
            "/channels/small", data=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 200
        status, _, _ = await rig.post(
            "/channels/small",
            data=raw[:-2] + b'z"}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 413
    finally:
        await stop_rig(rig)


# ---------------------------------------------------------------------------- refusals


async def test_open_breaker_is_503_with_retry_after() -> None:
    config = MessageProcessorConfig(
        processing_timeout=5.0,
        circuit_config=CircuitConfig(failure_threshold=2, timeout_duration=30.0),
    )
    rig = await start_rig(config)
    try:

        async def broken(message: ChannelMessage) -> str:
            raise RuntimeError("down")

        rig.script.behaviour = broken
        for n in range(2):
            status, _, _ = await rig.post("/channels/web", {"sender": "u", "content": f"{n}"})
            assert status == 502
        status, body, headers = await rig.post("/channels/web", {"sender": "u", "content": "x"})
        assert status == 503
        assert body["status"] == "rejected"
        assert "circuit" in body["reason"]
        retry_after = int(headers["Retry-After"])
        assert 1 <= retry_after <= 30
        assert len(rig.script.calls) == 2
        assert await healthy(rig)
    finally:
        await stop_rig(rig)


async def test_overload_is_429_with_retry_after() -> None:
    config = MessageProcessorConfig(
        processing_timeout=5.0, max_concurrent_requests=1, admission="reject"
    )
    rig = await start_rig(config)
    try:
        release = asyncio.Event()

        async def slow(message: ChannelMessage) -> str:
            await release.wait()
            return "done"

        rig.script.behaviour = slow
        first = asyncio.ensure_future(rig.post("/channels/web", {"sender": "a", "content": "1"}))
        await _until(lambda: len(rig.script.calls) == 1)
        status, body, headers = await rig.post("/channels/web", {"sender": "b", "content": "2"})
        assert status == 429
        assert body["status"] == "rejected"
        assert body["reason"]
        assert int(headers["Retry-After"]) >= 1
        release.set()
        assert (await first)[0] == 200
    finally:
        await stop_rig(rig)


async def test_draining_refuses_503_and_healthz_turns_503(rig: Rig) -> None:
    rig.intake.begin_draining(7.5)
    rig.server.begin_draining()
    status, body, headers = await rig.post("/channels/web", {"sender": "u", "content": "x"})
    assert status == 503
    assert (body["status"], body["reason"]) == ("rejected", "shutting down")
    assert 1 <= int(headers["Retry-After"]) <= 8
    async with rig.session.get(rig.base + "/healthz") as response:
        assert response.status == 503
    assert rig.script.calls == []


async def test_closing_the_channel_answers_requests_still_waiting(rig: Rig) -> None:
    """A delivery given up at shutdown must not leave its HTTP request hanging."""
    release = asyncio.Event()

    async def hang(message: ChannelMessage) -> str:
        await release.wait()
        return "too late"

    rig.script.behaviour = hang
    waiting = asyncio.ensure_future(
        rig.post("/channels/web", {"sender": "u", "content": "x", "id": "w-1"})
    )
    await _until(lambda: len(rig.script.calls) == 1)
    await rig.channels["web"].aclose()
    status, body, headers = await asyncio.wait_for(waiting, 10)
    assert (status, body) == (503, {"id": "w-1", "status": "cancelled"})
    assert headers["Retry-After"] == "1"
    release.set()


# ---------------------------------------------------------------------------- async mode


@dataclass
class Receiver:
    """A callback endpoint: records every POST; scripted failures first."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    fail_first: int = 0
    fail_status: int = 500
    hang_for: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    keys: list[str | None] = field(default_factory=list)  # each attempt's Idempotency-Key

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.keys.append(request.headers.get("Idempotency-Key"))
        payload = await request.json()
        if payload.get("recipient") in self.hang_for:
            await asyncio.Event().wait()
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=self.fail_status)
        self.received.append(payload)
        self.arrived.set()
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/replies", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/replies"
    try:
        yield receiver
    finally:
        await runner.cleanup()


async def test_async_mode_answers_202_then_posts_the_reply(receiver: Receiver) -> None:
    rig = await start_rig(callback_url=receiver.url)
    try:
        status, body, _ = await rig.post(
            "/channels/cb", {"sender": "u", "content": "ping", "id": "a-1", "reply_target": "r"}
        )
        assert (status, body) == (202, {"id": "a-1", "status": "accepted"})
        await _until(lambda: len(receiver.received) == 1)
        assert receiver.received == [
            {"id": "a-1", "channel": "cb", "recipient": "r", "text": "echo: ping", "kind": "reply"}
        ]
        status, body, _ = await rig.post(
            "/channels/cb", {"sender": "u", "content": "ping", "id": "a-1"}
        )
        assert (status, body) == (200, {"id": "a-1", "status": "duplicate"})
    finally:
        await stop_rig(rig)


async def test_a_reply_in_a_thread_names_the_thread_in_its_callback(receiver: Receiver) -> None:
    rig = await start_rig(callback_url=receiver.url)
    try:
        status, _, _ = await rig.post(
            "/channels/cb",
            {"sender": "u", "content": "ping", "id": "t-1", "reply_target": "r", "thread_id": "t9"},
        )
        assert status == 202
        await _until(lambda: len(receiver.received) == 1)
        assert receiver.received == [
            {
                "id": "t-1",
                "channel": "cb",
                "recipient": "r",
                "text": "echo: ping",
                "kind": "reply",
                "thread_id": "t9",
            }
        ]
    finally:
        await stop_rig(rig)


async def test_async_failure_posts_a_notice(receiver: Receiver) -> None:
    rig = await start_rig(callback_url=receiver.url)
    try:

        async def broken(message: ChannelMessage) -> str:
            raise RuntimeError("no")

        rig.script.behaviour = broken
        status, _, _ = await rig.post(
            "/channels/cb", {"sender": "bob", "content": "x", "id": "n-1"}
        )
        assert status == 202
        await _until(lambda: len(receiver.received) == 1)
        (notice,) = receiver.received
        assert (notice["id"], notice["kind"], notice["recipient"]) == ("n-1", "notice", "bob")
        assert notice["text"]
    finally:
        await stop_rig(rig)


async def test_callback_5xx_is_retried_until_it_lands(receiver: Receiver) -> None:
    receiver.fail_first = 2
    rig = await start_rig(callback_url=receiver.url)
    try:
        await rig.post("/channels/cb", {"sender": "u", "content": "x", "id": "r-1"})
        # The receiver has the body before the channel has read its answer: wait for the count.
        await _until(lambda: rig.channels["cb"].callbacks_sent == 1)
        assert len(receiver.received) == 1
        assert receiver.attempts == 3
        assert rig.channels["cb"].callback_retried == 2
        # Every attempt of one answer carries the same key: a receiver can drop repeats.
        assert receiver.keys == ["cb:r-1"] * 3
    finally:
        await stop_rig(rig)


async def test_callback_4xx_is_not_retried_and_counts_a_send_failure(receiver: Receiver) -> None:
    receiver.fail_first = 1
    receiver.fail_status = 404
    rig = await start_rig(callback_url=receiver.url)
    try:
        await rig.post("/channels/cb", {"sender": "u", "content": "x", "id": "g-1"})
        await _until(lambda: rig.channels["cb"].callback_failures == 1)
        await _until(lambda: rig.cmp.channel_stats()["cb"].send_failures == 1)
        assert receiver.attempts == 1
        assert receiver.received == []
    finally:
        await stop_rig(rig)


async def test_retries_are_bounded(receiver: Receiver) -> None:
    receiver.fail_first = 100
    rig = await start_rig(callback_url=receiver.url)
    try:
        await rig.post("/channels/cb", {"sender": "u", "content": "x"})
        await _until(lambda: rig.channels["cb"].callback_failures == 1)
        assert receiver.attempts == 4  # the first attempt and 3 retries
    finally:
        await stop_rig(rig)


async def test_a_hung_callback_is_timed_out_and_blocks_no_other_reply(receiver: Receiver) -> None:
    receiver.hang_for = {"stuck"}
    rig = await start_rig(
        callback_url=receiver.url,
        callback_options={
            "callback_timeout": 0.3,
            "callback_retries": 1,
            "callback_backoff": (0.01, 0.01),
        },
    )
    try:
        await rig.post("/channels/cb", {"sender": "stuck", "content": "x", "id": "h-1"})
        await rig.post("/channels/cb", {"sender": "fine", "content": "y", "id": "h-2"})
        await _until(lambda: len(receiver.received) == 1)
        assert receiver.received[0]["id"] == "h-2"
        await _until(lambda: rig.channels["cb"].callback_failures == 1)
        assert receiver.attempts == 3  # two for the hung one, one for the other
    finally:
        await stop_rig(rig)


# ---------------------------------------------------------------------------- helpers


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` (real I/O is involved) with a generous bound."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
