"""What the fakes of tests/fakes share: an aiohttp application served on 127.0.0.1."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["LoopbackFake"]


class LoopbackFake:
    """A test double served on 127.0.0.1: subclasses add their routes in :meth:`routes`.

    ``async with`` (or :meth:`serve`) binds a port; :meth:`stop` sets :attr:`_stopping` (which
    scripted hangs wait on, so they end) and closes the server, waiting at most 1 s for requests
    still running. Handlers are cancelled when their client goes away.
    """

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = asyncio.Event()

    def routes(self, app: web.Application) -> None:
        """Add the fake's routes to ``app``."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    async def serve(self, port: int = 0) -> int:
        """Bind 127.0.0.1:``port`` (0: a free port) and serve; returns the port."""
        app = web.Application()
        self.routes(app)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self._runner, self._port = runner, server.sockets[0].getsockname()[1]
        return self._port

    async def stop(self) -> None:
        """Release hung requests and close the server. Idempotent."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.serve()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
