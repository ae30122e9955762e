"""A fake Telegram Bot API server for tests: aiohttp on 127.0.0.1, a free port.

It speaks the Bot API's wire format: ``POST /bot<token>/<method>`` with a JSON body, answered
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description", "parameters"?}``.
``getUpdates`` honours ``offset`` like Telegram (updates below it are confirmed and forgotten) and
long-polls up to ``timeout`` seconds (capped by ``max_poll_wait`` to keep tests fast);
``sendMessage`` records each message; ``getMe`` names the bot. Failures are scripted per method::

    async with FakeTelegram() as fake:
        fake.queue_update(message_update(1, chat_id=5, text="hi"))
        fake.fail("sendMessage", flood(retry_after=1))
        channel = TelegramChannel(..., api_base=fake.base_url, bot_token=fake.token)
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "BOT_ID",
    "BOT_USERNAME",
    "TOKEN",
    "ApiError",
    "FakeTelegram",
    "conflict",
    "flood",
    "message_update",
    "server_error",
]

TOKEN = "123456:TEST-token"
BOT_ID = 4242
BOT_USERNAME = "zeroclaw_bot"


@dataclass(frozen=True, slots=True)
class ApiError:
    """One scripted failure: ``{"ok": false, ...}`` with HTTP status ``error_code``."""

    error_code: int
    description: str
    retry_after: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def flood(retry_after: int) -> ApiError:
    """Telegram's flood control answer."""
    return ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)


def conflict() -> ApiError:
    """What getUpdates answers while a webhook is set."""
    return ApiError(
        409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook"
    )


def server_error() -> ApiError:
    return ApiError(502, "Bad Gateway")


_message_ids = itertools.count(1)


def message_update(
    update_id: int,
    *,
    chat_id: int,
    text: str | None,
    user_id: int | None = None,
    username: str | None = "alice",
    chat_type: str = "private",
    is_bot: bool = False,
    thread_id: int | None = None,
    entities: list[dict[str, Any]] | None = None,
    reply_to_bot: bool = False,
    edited: bool = False,
) -> dict[str, Any]:
    """An update as Telegram sends it: a ``message`` (or ``edited_message``) from a user."""
    sender: dict[str, Any] = {
        "id": user_id if user_id is not None else chat_id,
        "is_bot": is_bot,
        "first_name": "Test",
    }
    if username is not None:
        sender["username"] = username
    message: dict[str, Any] = {
        "message_id": next(_message_ids),
        "from": sender,
        "chat": {"id": chat_id, "type": chat_type},
        "date": 1_700_000_000,
    }
    if text is not None:
        message["text"] = text
    if entities is not None:
        message["entities"] = entities
    if thread_id is not None:
        message["message_thread_id"] = thread_id
        message["is_topic_message"] = True
    if reply_to_bot:
        message["reply_to_message"] = {
            "message_id": 1,
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Bot", "username": BOT_USERNAME},
            "chat": {"id": chat_id, "type": chat_type},
            "date": 1_700_000_000,
            "text": "earlier",
        }
    return {"update_id": update_id, "edited_message" if edited else "message": message}


@dataclass
class FakeTelegram:
    """The fake server. See the module docstring."""

    token: str = TOKEN
    max_poll_wait: float = 0.5
    base_url: str = ""
    sent: list[dict[str, Any]] = field(default_factory=list)
    polls: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _failures: dict[str, deque[ApiError]] = field(default_factory=dict)
    _confirmed: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def queue_update(self, *updates: dict[str, Any]) -> None:
        """Make ``updates`` available to getUpdates (in update_id order)."""
        self._updates.extend(updates)
        self._updates.sort(key=lambda u: u["update_id"])
        self._arrived.set()

    def fail(self, method: str, *errors: ApiError) -> None:
        """The next calls of ``method`` get ``errors``, one each, in order."""
        self._failures.setdefault(method, deque()).extend(errors)

    @property
    def pending(self) -> list[int]:
        """update_ids not yet confirmed by an offset."""
        return [u["update_id"] for u in self._updates]

    def texts_to(self, chat_id: int) -> list[str]:
        return [m["text"] for m in self.sent if m["chat_id"] == chat_id]

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._runner is not None
        self._arrived.set()  # a long poll still open answers now, so the server can stop
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        body = await request.json() if request.can_read_body else {}
        self.calls.append(method)
        failures = self._failures.get(method)
        if failures:
            failure = failures.popleft()
            return web.json_response(failure.body(), status=failure.error_code)
        if method == "getMe":
            return _ok(
                {"id": BOT_ID, "is_bot": True, "first_name": "Bot", "username": BOT_USERNAME}
            )
        if method == "getUpdates":
            return _ok(await self._get_updates(body))
        if method == "sendMessage":
            if not isinstance(body.get("chat_id"), int | str) or not body.get("text"):
                return web.json_response(
                    {"ok": False, "error_code": 400, "description": "Bad Request: text is empty"},
                    status=400,
                )
            if len(body["text"]) > 4096:
                return web.json_response(
                    {
                        "ok": False,
                        "error_code": 400,
                        "description": "Bad Request: message is too long",
                    },
                    status=400,
                )
            self.sent.append(body)
            return _ok({"message_id": len(self.sent), "chat": {"id": body["chat_id"]}})
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _get_updates(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.polls.append(body)
        offset = body.get("offset")
        if isinstance(offset, int) and offset > self._confirmed:
            self._confirmed = offset
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates:
            self._arrived.clear()
            wait = min(float(body.get("timeout", 0)), self.max_poll_wait)
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                return []
        limit = int(body.get("limit", 100))
        return list(self._updates[:limit])


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})
