"""A fake OpenAI-compatible chat-completions server for tests: aiohttp on 127.0.0.1, a free port.

It speaks the real wire format (``POST /v1/chat/completions``, OpenAI's completion and error
bodies, ``retry-after``/``retry-after-ms`` headers), answers from a script, and records every
request it got::

    async with FakeOpenAI() as fake:
        fake.script(rate_limited(retry_after="2"), completion("hello"))
        backend = OpenAIBackend(fake.base_url, "sk-test")
        ...
        assert len(fake.requests) == 2

Scripted responses are used in order, one per request; once the script is spent every request
gets :meth:`FakeOpenAI.default`: a 200 whose content is ``"echo: <last user message>"``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackFake

__all__ = [
    "FakeOpenAI",
    "RecordedRequest",
    "Respond",
    "bad_request",
    "completion",
    "error",
    "hang",
    "insufficient_quota",
    "rate_limited",
    "raw",
    "truncated",
    "unavailable",
]


@dataclass(frozen=True, slots=True)
class Respond:
    """One scripted response.

    ``body`` is sent as is with ``content_type``; ``hang`` never answers (until the client goes
    away or the server stops); ``truncate`` announces ``Content-Length`` for the whole body, sends
    half of it and drops the connection; ``chunked`` sends the body in 1 KiB chunks with no
    ``Content-Length``.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False
    truncate: bool = False
    chunked: bool = False


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What the server received: ``headers`` keyed in lower case; ``json`` the parsed body
    (``None`` when it was not JSON); ``peer`` the client's (host, port), one per connection."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any
    peer: tuple[str, int]
    received_at: float


def _completion_body(content: str, model: str = "fake-model") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def completion(content: str, *, headers: Mapping[str, str] | None = None) -> Respond:
    """A 200 chat completion whose ``choices[0].message.content`` is ``content``."""
    return Respond(200, _completion_body(content), headers=dict(headers or {}))


def error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str | None = None,  # the OpenAI body's field name
    headers: Mapping[str, str] | None = None,
) -> Respond:
    """An OpenAI error body ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return Respond(status, json.dumps(body).encode(), headers=dict(headers or {}))


def rate_limited(*, retry_after: str | None = None, retry_after_ms: str | None = None) -> Respond:
    """A 429 ``rate_limit_exceeded``, with the given ``retry-after`` / ``retry-after-ms``."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    return error(
        429,
        "Rate limit reached for requests",
        code="rate_limit_exceeded",
        type="requests",
        headers=headers,
    )


def insufficient_quota() -> Respond:
    """OpenAI's 429 for an exhausted quota (never worth a retry)."""
    return error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        code="insufficient_quota",
        type="insufficient_quota",
    )


def unavailable(*, headers: Mapping[str, str] | None = None) -> Respond:
    """A 503, as OpenAI sends when it is overloaded."""
    return error(
        503,
        "The server is overloaded or not ready yet.",
        type="server_error",
        headers=headers,
    )


def bad_request(message: str = "Invalid value for 'temperature'") -> Respond:
    """A 400 ``invalid_request_error``."""
    return error(400, message, code="invalid_value", type="invalid_request_error")


def hang() -> Respond:
    """Never answer: the client's request timeout is what ends it."""
    return Respond(hang=True)


def truncated() -> Respond:
    """A 200 whose body stops halfway and whose connection is then dropped."""
    return Respond(200, _completion_body("this reply is cut short"), truncate=True)


def raw(
    body: bytes | str,
    *,
    content_type: str = "application/json",
    status: int = 200,
    chunked: bool = False,
) -> Respond:
    """Any body with any content type (malformed JSON, HTML from a proxy...)."""
    data = body.encode() if isinstance(body, str) else body
    return Respond(status, data, content_type=content_type, chunked=chunked)


class FakeOpenAI(LoopbackFake):
    """The server. ``await start()`` binds 127.0.0.1 on a free port (or use ``async with``);
    :attr:`base_url` is then ``http://127.0.0.1:<port>/v1``. ``await stop()`` ends it, hung
    requests included. ``now`` stamps each request's ``received_at`` (pass a ``FakeClock``'s
    ``now`` to see when, in fake time, each attempt arrived)."""

    def __init__(self, *, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._now = now
        self.requests: list[RecordedRequest] = []
        self._script: deque[Respond] = deque()
        self._arrived = asyncio.Condition()

    # -- script ------------------------------------------------------------------------------

    def script(self, *responses: Respond) -> None:
        """Answer the next requests with ``responses``, in order (after those already queued)."""
        self._script.extend(responses)

    @property
    def pending(self) -> int:
        """Scripted responses not used yet."""
        return len(self._script)

    @staticmethod
    def default(request_json: Any) -> Respond:
        """The answer once the script is spent: ``"echo: <last user message>"``."""
        text = ""
        messages = request_json.get("messages") if isinstance(request_json, dict) else None
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    text = str(message.get("content"))
                    break
        return completion(f"echo: {text}")

    # -- what was received ---------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Distinct client connections (by peer address) that sent a request."""
        return len({request.peer for request in self.requests})

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        """Return once ``count`` requests have arrived; ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    # -- lifecycle -----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> str:
        """Bind a free port on 127.0.0.1 and serve; returns :attr:`base_url`."""
        return await self.start_on(0)

    async def start_on(self, port: int) -> str:
        """Bind ``port`` on 127.0.0.1 (0: a free one) and serve; returns :attr:`base_url`."""
        await self.serve(port)
        return self.base_url

    # -- the handler -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers={key.lower(): value for key, value in request.headers.items()},
                body=body,
                json=parsed,
                peer=(str(peer[0]), int(peer[1])) if peer else ("?", 0),
                received_at=self._now(),
            )
        )
        async with self._arrived:
            self._arrived.notify_all()
        respond = self._script.popleft() if self._script else self.default(parsed)
        if respond.hang:
            await self._stopping.wait()
            return web.json_response({"error": {"message": "server stopping"}}, status=503)
        if respond.chunked:
            response = web.StreamResponse(status=respond.status, headers=respond.headers)
            response.content_type = respond.content_type
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(respond.body), 1024):
                await response.write(respond.body[start : start + 1024])
            await response.write_eof()
            return response
        if respond.truncate:
            response = web.StreamResponse(status=respond.status, headers=respond.headers)
            response.content_type = respond.content_type
            response.content_length = len(respond.body)
            await response.prepare(request)
            await response.write(respond.body[: len(respond.body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        return web.Response(
            status=respond.status,
            body=respond.body,
            content_type=respond.content_type,
            headers=respond.headers,
        )


async def _serve_forever(host_port: int) -> None:
    import signal

    server = FakeOpenAI()
    app_url = await server.start_on(host_port)
    print(app_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fakes.openai_server [--port N]``: serve the fake (every request gets the
    default echo completion), print its base URL, run until SIGINT/SIGTERM. For trying a gateway
    by hand against an OpenAI-compatible endpoint without a network."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.fakes.openai_server")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
