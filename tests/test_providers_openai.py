"""OpenAIBackend over real loopback sockets, against the fake OpenAI server: the wire format, the
Authorization rule, one pooled session, and each kind of failure mapped to a ProviderError."""

from __future__ import annotations

import asyncio
import email.utils
import json
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tests.fakes.openai_server import (
    FakeOpenAI,
    Respond,
    bad_request,
    completion,
    error,
    hang,
    insufficient_quota,
    rate_limited,
    raw,
    truncated,
    unavailable,
)
from zeroclaw.providers import ChatMessage, ErrorClass, ErrorCode, ProviderError
from zeroclaw.providers.openai import OpenAIBackend

USER = [ChatMessage("user", "hello")]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def backend(fake: FakeOpenAI) -> AsyncIterator[OpenAIBackend]:
    client = OpenAIBackend(fake.base_url, "sk-test", request_timeout=10.0)
    yield client
    await client.aclose()


async def failure(backend: OpenAIBackend) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await backend.complete(USER, model="m", temperature=0.0)
    return caught.value


async def test_posts_the_chat_completions_body_and_returns_the_content(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    fake.script(completion("hi there"))
    messages = [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "one"),
        ChatMessage("assistant", "uno"),
        ChatMessage("user", "two"),
    ]
    reply = await backend.complete(messages, model="gpt-4o-mini", temperature=0.7)
    assert reply == "hi there"
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["content-type"].startswith("application/json")
    assert request.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "uno"},
            {"role": "user", "content": "two"},
        ],
        "temperature": 0.7,
    }


async def test_authorization_is_sent_only_with_a_key(fake: FakeOpenAI) -> None:
    with_key = OpenAIBackend(fake.base_url + "/", "sk-secret")  # a trailing slash is fine
    without_key = OpenAIBackend(fake.base_url, "")
    try:
        await with_key.complete(USER, model="m", temperature=0.0)
        await without_key.complete(USER, model="m", temperature=0.0)
    finally:
        await with_key.aclose()
        await without_key.aclose()
    first, second = fake.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-secret"
    assert "authorization" not in second.headers


async def test_extra_headers_are_sent(fake: FakeOpenAI) -> None:
    client = OpenAIBackend(fake.base_url, headers={"HTTP-Referer": "https://example.org"})
    try:
        await client.complete(USER, model="m", temperature=0.0)
    finally:
        await client.aclose()
    assert fake.requests[0].headers["http-referer"] == "https://example.org"


@pytest.mark.parametrize("trust_env", [False, True])
async def test_proxies_from_the_environment_only_with_trust_env(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, trust_env: bool
) -> None:
    async with FakeOpenAI() as proxy:  # it answers the proxied request as if it were the target
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        client = OpenAIBackend(fake.base_url, trust_env=trust_env)
        try:
            await client.complete(USER, model="m", temperature=0.0)
        finally:
            await client.aclose()
        assert (len(proxy.requests), len(fake.requests)) == ((1, 0) if trust_env else (0, 1))


async def test_one_session_and_one_connection_serve_every_call(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    for _ in range(5):
        assert await backend.complete(USER, model="m", temperature=0.0) == "echo: hello"
    assert len(fake.requests) == 5
    assert fake.connections == 1  # keep-alive: the pool reused the connection
    session = backend._session
    assert session is not None
    await backend.complete(USER, model="m", temperature=0.0)
    assert backend._session is session


async def test_concurrent_calls_share_the_session(fake: FakeOpenAI, backend: OpenAIBackend) -> None:
    replies = await asyncio.gather(
        *(
            backend.complete([ChatMessage("user", str(i))], model="m", temperature=0.0)
            for i in range(8)
        )
    )
    assert replies == [f"echo: {i}" for i in range(8)]
    assert 1 <= fake.connections <= 8


async def test_aclose_closes_the_session_and_later_calls_raise(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    await backend.complete(USER, model="m", temperature=0.0)
    session = backend._session
    assert session is not None
    await backend.aclose()
    assert session.closed
    await backend.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await backend.complete(USER, model="m", temperature=0.0)


async def test_no_session_is_made_before_the_first_call(fake: FakeOpenAI) -> None:
    client = OpenAIBackend(fake.base_url)
    assert client._session is None
    await client.aclose()
    assert fake.requests == []


async def test_429_with_retry_after(fake: FakeOpenAI, backend: OpenAIBackend) -> None:
    fake.script(rate_limited(retry_after="2"))
    err = await failure(backend)
    assert (err.status, err.code, err.retryable, err.retry_after) == (
        429,
        "rate_limit_exceeded",
        True,
        2.0,
    )
    assert err.message == "Rate limit reached for requests"
    assert err.error_class is ErrorClass.RATE_LIMITED


async def test_retry_after_ms_wins_over_retry_after(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    fake.script(rate_limited(retry_after="7", retry_after_ms="1500"))
    assert (await failure(backend)).retry_after == 1.5


async def test_retry_after_as_an_http_date(fake: FakeOpenAI) -> None:
    now = 1_700_000_000.0
    client = OpenAIBackend(fake.base_url, wall_clock=lambda: now)
    fake.script(rate_limited(retry_after=email.utils.formatdate(now + 30, usegmt=True)))
    try:
        assert (await failure(client)).retry_after == 30.0
    finally:
        await client.aclose()


async def test_insufficient_quota_is_not_retryable(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    fake.script(insufficient_quota())
    err = await failure(backend)
    assert (err.status, err.code, err.retryable) == (429, "insufficient_quota", False)
    assert err.error_class is ErrorClass.QUOTA
    assert "quota" in err.message


async def test_503_is_retryable_and_keeps_the_error_type_as_code(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    fake.script(unavailable())
    err = await failure(backend)
    assert (err.status, err.code, err.retryable) == (503, "server_error", True)
    assert err.error_class is ErrorClass.SERVER


async def test_400_is_not_retryable(fake: FakeOpenAI, backend: OpenAIBackend) -> None:
    fake.script(bad_request("Invalid value for 'temperature'"))
    err = await failure(backend)
    assert (err.status, err.code, err.retryable) == (400, "invalid_value", False)
    assert err.message == "Invalid value for 'temperature'"
    assert "HTTP 400 (invalid_value)" in str(err)


@pytest.mark.parametrize(
    ("status", "retryable", "error_class"),
    [
        (401, False, ErrorClass.AUTH),
        (403, False, ErrorClass.AUTH),
        (404, False, ErrorClass.BAD_REQUEST),
        (408, True, ErrorClass.TIMEOUT),
        (409, True, ErrorClass.BAD_REQUEST),
        (500, True, ErrorClass.SERVER),
        (502, True, ErrorClass.SERVER),
    ],
)
async def test_status_classes(
    fake: FakeOpenAI,
    backend: OpenAIBackend,
    status: int,
    retryable: bool,
    error_class: ErrorClass,
) -> None:
    fake.script(error(status, "nope", type="some_error"))
    err = await failure(backend)
    assert (err.status, err.code, err.retryable, err.error_class) == (
        status,
        "some_error",
        retryable,
        error_class,
    )


async def test_error_bodies_that_are_not_openai_shaped(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    fake.script(
        raw('{"error": "model \\"llama9\\" not found"}', status=404),  # Ollama's shape
        raw('{"error": {"code": 502, "message": "upstream failed"}}', status=502),  # OpenRouter
        raw("<html>Bad Gateway</html>", content_type="text/html", status=502),
        raw(b"", status=500),
    )
    ollama = await failure(backend)
    assert (ollama.status, ollama.code, ollama.message) == (404, None, 'model "llama9" not found')
    openrouter = await failure(backend)
    assert (openrouter.status, openrouter.code, openrouter.message) == (
        502,
        "502",
        "upstream failed",
    )
    proxy = await failure(backend)
    assert (proxy.status, proxy.code, proxy.retryable) == (502, None, True)
    assert proxy.message == "<html>Bad Gateway</html>"
    empty = await failure(backend)
    assert empty.status == 500
    assert empty.message.startswith("HTTP 500 from http://127.0.0.1:")


async def test_a_hang_is_a_retryable_timeout(fake: FakeOpenAI) -> None:
    fake.script(hang())
    client = OpenAIBackend(fake.base_url, request_timeout=0.3)
    try:
        err = await failure(client)
    finally:
        await client.aclose()
    assert (err.status, err.code, err.retryable) == (None, ErrorCode.TIMEOUT, True)
    assert err.error_class is ErrorClass.TIMEOUT
    assert "0.3s" in err.message


async def test_a_body_cut_short_is_a_retryable_connection_error(
    fake: FakeOpenAI, backend: OpenAIBackend
) -> None:
    fake.script(truncated())
    err = await failure(backend)
    assert (err.status, err.code, err.retryable) == (None, "connection_error", True)
    assert err.error_class is ErrorClass.CONNECTION
    # The pool recovers: the next call opens a fresh connection.
    assert await backend.complete(USER, model="m", temperature=0.0) == "echo: hello"
    assert fake.connections == 2


@pytest.mark.parametrize(
    ("respond", "reason"),
    [
        (raw("{not json"), "malformed JSON"),
        (raw('{"choices": []}'), "no choices[0].message.content"),
        (raw('{"id": "x"}'), "no choices[0].message.content"),
        (raw('{"choices": [{"message": {"content": null}}]}'), "content is NoneType"),
        (
            raw('{"choices": [{"message": {"content": "hi"}}]}', content_type="text/html"),
            "text/html",
        ),
        (raw("[1, 2]"), "no choices"),
    ],
)
async def test_a_2xx_that_is_not_a_completion_is_not_retryable(
    fake: FakeOpenAI, backend: OpenAIBackend, respond: Respond, reason: str
) -> None:
    fake.script(respond)
    err = await failure(backend)
    assert (err.status, err.code, err.retryable) == (200, "invalid_response", False)
    assert err.error_class is ErrorClass.INVALID_RESPONSE
    assert reason in err.message


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_reply_larger_than_the_bound_is_not_read(fake: FakeOpenAI, chunked: bool) -> None:
    client = OpenAIBackend(fake.base_url, max_response_bytes=4096)
    big = json.dumps({"choices": [{"message": {"content": "x" * 10_000}}]})
    small = json.dumps({"choices": [{"message": {"content": "x" * 100}}]})
    fake.script(raw(big, chunked=chunked), raw(small, chunked=chunked))
    try:
        err = await failure(client)
        assert await client.complete(USER, model="m", temperature=0.0) == "x" * 100
    finally:
        await client.aclose()
    assert (err.status, err.code, err.retryable) == (200, "invalid_response", False)
    assert "max_response_bytes=4096" in err.message


async def test_a_long_error_body_keeps_its_status(fake: FakeOpenAI) -> None:
    client = OpenAIBackend(fake.base_url, max_response_bytes=4096)
    fake.script(raw("<html>" + "busy " * 5000, content_type="text/html", status=503, chunked=True))
    try:
        err = await failure(client)
    finally:
        await client.aclose()
    assert (err.status, err.retryable) == (503, True)
    assert err.message.startswith("<html>busy")
    assert len(err.message) == 500


async def test_the_user_agent_names_zeroclaw(fake: FakeOpenAI, backend: OpenAIBackend) -> None:
    await backend.complete(USER, model="m", temperature=0.0)
    assert fake.requests[0].headers["user-agent"].startswith("zeroclaw/")


async def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        client = OpenAIBackend(f"http://127.0.0.1:{port}/v1", request_timeout=5.0)
        try:
            err = await failure(client)
        finally:
            await client.aclose()
    assert (err.status, err.code, err.retryable) == (None, "connection_error", True)
    assert f"127.0.0.1:{port}" in err.message


async def test_the_session_belongs_to_its_loop(fake: FakeOpenAI, backend: OpenAIBackend) -> None:
    await backend.complete(USER, model="m", temperature=0.0)

    def other_loop() -> None:
        asyncio.run(backend.complete(USER, model="m", temperature=0.0))

    with pytest.raises(RuntimeError, match="event loop other than its own"):
        await asyncio.to_thread(other_loop)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        OpenAIBackend("api.openai.com/v1")
    with pytest.raises(TypeError, match="base_url must be a str"):
        OpenAIBackend(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="api_key must be a str"):
        OpenAIBackend("http://x", 42)  # type: ignore[arg-type]
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="request_timeout"):
            OpenAIBackend("http://x", request_timeout=bad)
    with pytest.raises(TypeError, match="request_timeout"):
        OpenAIBackend("http://x", request_timeout=True)
    with pytest.raises(TypeError, match="trust_env"):
        OpenAIBackend("http://x", trust_env=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_response_bytes"):
        OpenAIBackend("http://x", max_response_bytes=0)
    with pytest.raises(TypeError, match="headers"):
        OpenAIBackend("http://x", headers={"X": 1})  # type: ignore[dict-item]
    assert OpenAIBackend("https://api.openai.com/v1/").base_url == "https://api.openai.com/v1"


def test_without_aiohttp_the_import_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None\n"  # what a missing package looks like to import
        "import zeroclaw.providers\n"  # the package itself does not need aiohttp
        "try:\n"
        "    import zeroclaw.providers.openai\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'zeroclaw[gateway]'" in out.stdout


def test_importing_the_providers_package_does_not_load_aiohttp() -> None:
    code = (
        "import sys, zeroclaw.providers, zeroclaw.gateway.history\n"
        "print('aiohttp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_the_fake_server_runs_standalone() -> None:
    root = pathlib.Path(__file__).parents[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.openai_server",
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        client = OpenAIBackend(base_url)
        try:
            assert await client.complete(USER, model="m", temperature=0.0) == "echo: hello"
        finally:
            await client.aclose()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
