"""The gateway's HTTP server (docs/gateway.md), on aiohttp.

Routes: ``POST <path>`` for every push channel (default ``/channels/<name>``), ``GET /healthz``
(200 ``ok`` while serving, 503 ``draining`` once a drain began), ``GET /metrics`` (Prometheus text
format 0.0.4), ``GET /status`` (JSON). An unknown path is 404 and a wrong method 405, both with a
JSON ``{"error": ...}`` body; a body over ``max_body_bytes`` is 413 — refused from its declared
``Content-Length`` before it is read, or while it is read in chunks when it declares none — and
the connection is closed instead of draining the rest of the body.

aiohttp serves both sides of the gateway's HTTP (this server; the OpenAI client and the webhook
callbacks), so one well-kept asyncio stack is installed, not two.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from zeroclaw.channels.http import CLIENT_TIMEOUT_KEY, BodyTooLarge, BodyTooSlow, error_response
from zeroclaw.concurrency._validate import to_count, to_seconds
from zeroclaw.gateway.metrics import CONTENT_TYPE

try:
    from aiohttp import HttpVersion11, web
    from aiohttp.http_exceptions import HttpProcessingError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "zeroclaw's HTTP server needs aiohttp: pip install 'zeroclaw[gateway]'"
    ) from exc

__all__ = ["GatewayServer", "HttpChannel", "jsonable"]

_LINGER_AFTER_REFUSAL = 2.0
_logger = logging.getLogger("zeroclaw.gateway.server")


class HttpChannel(Protocol):
    """A channel the server routes requests to (a push channel)."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...

    async def handle(self, request: web.Request) -> web.StreamResponse: ...


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses as dicts, enums as lower-case names.

    Mappings become dicts (keys as strings), sequences lists, non-finite floats ``None`` (JSON
    has no infinity). Like ``dataclasses.asdict``, but read-only mappings (``MappingProxyType``)
    and NamedTuples come out as plain JSON too.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _NoBadRequestTracebacks(logging.Filter):
    """Drops aiohttp's "Error handling request" record (with a traceback) for a request it could
    not parse (a header too long, a malformed request line): the client is answered 400 and the
    fault is its own; logged per request, anyone could fill the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


logging.getLogger("aiohttp.server").addFilter(_NoBadRequestTracebacks())


class GatewayServer:
    """The aiohttp application and its listener.

    Args:
        host: the address to bind.
        port: the port; 0 binds any free port (:attr:`port` then says which).
        channels: the push channels, each routed at its ``path`` for ``POST``.
        metrics: renders the ``/metrics`` body.
        status: builds the ``/status`` document.
        max_body_bytes: larger request bodies get 413.
        shutdown_timeout: how long :meth:`stop` lets requests still running finish.
        client_timeout: how long a client may take to send a request's headers (else the
            connection is closed: a slowloris holds nothing for long) and its body (else 408);
            also how long an idle keep-alive connection stays open.

    Raises:
        ValueError: two channels share a path, or a path collides with a built-in route.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        channels: Sequence[HttpChannel] = (),
        metrics: Callable[[], bytes],
        status: Callable[[], Awaitable[Mapping[str, Any]]],
        max_body_bytes: int = 1_048_576,
        shutdown_timeout: float = 25.0,
        client_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self._port = to_count(port, what="port")
        self._max_body = to_count(max_body_bytes, what="max_body_bytes", minimum=1)
        self._shutdown_timeout = to_seconds(shutdown_timeout, what="shutdown_timeout")
        self._client_timeout = to_seconds(
            client_timeout, what="client_timeout", allow_infinite=False
        )
        self._metrics = metrics
        self._status = status
        self._draining = False
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._guard], client_max_size=self._max_body)
        self.app[CLIENT_TIMEOUT_KEY] = self._client_timeout
        router = self.app.router
        builtin = {"/healthz", "/metrics", "/status"}
        seen: dict[str, str] = {}
        for channel in channels:
            path = channel.path
            if path in builtin or path in seen:
                other = seen.get(path, "a built-in route")
                raise ValueError(f"channel {channel.name!r}: path {path} is taken by {other}")
            seen[path] = f"channel {channel.name!r}"
            router.add_post(path, channel.handle, expect_handler=self._expect)
        router.add_get("/healthz", self._healthz, allow_head=True)
        router.add_get("/metrics", self._metrics_page)
        router.add_get("/status", self._status_page)

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound port (the configured one before :meth:`start`)."""
        if self._runner is not None:
            for address in self._runner.addresses:
                if isinstance(address, tuple) and len(address) >= 2:
                    return int(address[1])
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def draining(self) -> bool:
        """``True`` once :meth:`begin_draining` was called: ``/healthz`` answers 503."""
        return self._draining

    def begin_draining(self) -> None:
        """Answer ``/healthz`` 503 from now on (the channels refuse new messages themselves)."""
        self._draining = True

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Waits for the bind only.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        if self._runner is not None:
            raise RuntimeError("the server is already started")
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
            # After a 413 the rest of an upload is read and thrown away for at most this long, so
            # the client sees the answer instead of a reset (nginx's lingering_time, shorter).
            lingering_time=_LINGER_AFTER_REFUSAL,
            # aiohttp closes a connection still without a whole request this long after it
            # opened (and an idle keep-alive one): the bound on slow headers.
            keepalive_timeout=self._client_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self.port

    async def stop(self) -> None:
        """Stop listening; requests still running get ``shutdown_timeout`` to finish. Waits."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ handlers

    @web.middleware
    async def _guard(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """JSON errors for 404/405/413/500; bodies declared too large refused before reading."""
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            return self._too_large(BodyTooLarge(self._max_body))
        try:
            return await handler(request)
        except BodyTooLarge as exc:
            return self._too_large(exc)
        except BodyTooSlow as exc:
            response = error_response(408, str(exc))
            response.force_close()
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            if exc.status == 404:
                error = f"no such path: {request.path}"
            elif exc.status == 405:
                error = f"method {request.method} not allowed on {request.path}"
            else:
                error = exc.reason
            return error_response(exc.status, error, headers=headers)
        except Exception:
            _logger.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal error")

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a body declared too large before the client sends it."""
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            return self._too_large(BodyTooLarge(self._max_body))
        expect = request.headers.get("Expect", "")
        if request.version != HttpVersion11:
            return None
        if expect.lower() != "100-continue":
            return error_response(417, f"unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the answer's size
        return None

    @staticmethod
    def _too_large(exc: BodyTooLarge) -> web.Response:
        response = error_response(413, str(exc))
        # Close rather than read the rest: a client sending 100 MB gets its answer at once.
        response.force_close()
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._draining:
            return web.Response(status=503, text="draining")
        return web.Response(text="ok")

    async def _metrics_page(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._metrics())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def _status_page(self, request: web.Request) -> web.Response:
        document = jsonable(await self._status())
        return web.Response(
            text=json.dumps(document, indent=2, sort_keys=False), content_type="application/json"
        )

    def __repr__(self) -> str:
        state = "draining" if self._draining else "serving"
        return f"<GatewayServer {self.url} {state}>"
