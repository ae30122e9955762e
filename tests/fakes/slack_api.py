"""A fake Slack Web API for tests (aiohttp on 127.0.0.1, a free port), and signed Events API
requests like the ones Slack sends.

The server answers ``POST /api/chat.postMessage`` and ``POST /api/auth.test`` in Slack's shapes:
``{"ok": true, "channel", "ts", "message"}``; ``{"ok": false, "error": "channel_not_found"}``
(HTTP 200, as Slack does); HTTP 429 with ``Retry-After`` and ``{"ok": false, "error":
"ratelimited"}``; ``not_authed`` / ``invalid_auth`` for a missing or wrong bearer token. Scripted
answers are used in order, per method; once a method's script is spent it answers normally::

    async with FakeSlack() as slack:
        slack.script("chat.postMessage", rate_limited(retry_after="1"))
        channel = SlackChannel(..., api_base=slack.base_url)
        ...
        assert [post["text"] for post in slack.posts] == ["echo: hi"]

The request side: :func:`signed_headers` signs a body exactly as Slack documents ("Verifying
requests from Slack"), computed here from the formula, not with the code under test;
:func:`dm_event` and :func:`mention_event` build ``event_callback`` envelopes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackFake

__all__ = [
    "BOT_TOKEN",
    "BOT_USER_ID",
    "SIGNING_SECRET",
    "FakeSlack",
    "Recorded",
    "Reply",
    "dm_event",
    "hang",
    "mention_event",
    "rate_limited",
    "server_error",
    "signed_headers",
    "slack_error",
]

BOT_TOKEN = "xoxb-test-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_USER_ID = "U0BOTUSER"
TEAM_ID = "T0TEAM"


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer: ``status`` with ``body`` as JSON, or never (``hang``)."""

    status: int = 200
    body: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False


def slack_error(error: str) -> Reply:
    """Slack's failure shape: HTTP 200 ``{"ok": false, "error": error}``."""
    return Reply(200, {"ok": False, "error": error})


def rate_limited(retry_after: str = "1") -> Reply:
    """HTTP 429 with ``Retry-After`` (seconds), as the Web API answers a rate-limited call."""
    return Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": retry_after})


def server_error(status: int = 503) -> Reply:
    return Reply(status, {"ok": False, "error": "service_unavailable"})


def hang() -> Reply:
    """Never answer (until the server stops): the client's timeout ends it."""
    return Reply(hang=True)


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    headers: Mapping[str, str]
    json: Any
    received_at: float


class FakeSlack(LoopbackFake):
    """The fake Web API. ``await start()`` (or ``async with``) binds 127.0.0.1 on a free port;
    :attr:`base_url` is then ``http://127.0.0.1:<port>/api``. ``now`` stamps each request."""

    def __init__(self, *, token: str = BOT_TOKEN, now: Callable[[], float] = time.monotonic):
        super().__init__()
        self.token = token
        self._now = now
        self.requests: list[Recorded] = []
        self._posted: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._ts = itertools.count(1)
        self._arrived = asyncio.Condition()

    def script(self, method: str, *replies: Reply) -> None:
        """Answer the next calls of ``method`` with ``replies``, in order."""
        self._scripts[method].extend(replies)

    def calls(self, method: str) -> list[Recorded]:
        return [request for request in self.requests if request.method == method]

    @property
    def posts(self) -> list[dict[str, Any]]:
        """The bodies of the ``chat.postMessage`` calls answered ``ok: true``, in order."""
        return [request.json for request in self._posted]

    async def wait_for(self, method: str, count: int, timeout: float = 10.0) -> None:
        """Return once ``count`` calls of ``method`` arrived; ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.calls(method)) >= count)

    async def wait_for_posts(self, count: int, timeout: float = 10.0) -> None:
        """Return once ``count`` messages were posted (answered ``ok: true``)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self._posted) >= count)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/{method}", self._handle)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/api``."""
        return f"http://127.0.0.1:{self.port}/api"

    async def start(self) -> str:
        """Bind a free port on 127.0.0.1 and serve; returns :attr:`base_url`."""
        await self.serve()
        return self.base_url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        raw = await request.read()
        try:
            parsed: Any = json.loads(raw) if raw else {}
        except ValueError:
            parsed = None
        recorded = Recorded(method, dict(request.headers), parsed, self._now())
        self.requests.append(recorded)
        async with self._arrived:
            self._arrived.notify_all()
        script = self._scripts.get(method)
        reply = script.popleft() if script else self._answer(method, request, parsed)
        if reply.hang:
            await self._stopping.wait()
            reply = server_error()
        if method == "chat.postMessage" and reply.status == 200 and reply.body.get("ok"):
            self._posted.append(recorded)
        async with self._arrived:
            self._arrived.notify_all()
        return web.json_response(dict(reply.body), status=reply.status, headers=reply.headers)

    def _answer(self, method: str, request: web.Request, body: Any) -> Reply:
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return slack_error("not_authed")
        if authorization != f"Bearer {self.token}":
            return slack_error("invalid_auth")
        if method == "auth.test":
            return Reply(
                200,
                {
                    "ok": True,
                    "url": "https://zeroclaw-test.slack.com/",
                    "team": "zeroclaw test",
                    "user": "zeroclaw",
                    "team_id": TEAM_ID,
                    "user_id": BOT_USER_ID,
                    "bot_id": "B0BOT",
                },
            )
        if method != "chat.postMessage":
            return slack_error("unknown_method")
        if not isinstance(body, dict) or not body.get("channel"):
            return slack_error("channel_not_found")
        if not body.get("text"):
            return slack_error("no_text")
        ts = f"1700000000.{next(self._ts):06d}"
        message: dict[str, Any] = {
            "type": "message",
            "text": body["text"],
            "user": BOT_USER_ID,
            "bot_id": "B0BOT",
            "ts": ts,
        }
        if "thread_ts" in body:
            message["thread_ts"] = body["thread_ts"]
        return Reply(200, {"ok": True, "channel": body["channel"], "ts": ts, "message": message})


# ---------------------------------------------------------------------------- the request side


def signed_headers(
    body: bytes,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    retry_num: int | None = None,
) -> dict[str, str]:
    """The headers Slack sends with ``body``: timestamp, ``v0`` signature, content type, and
    ``X-Slack-Retry-Num``/``-Reason`` for a retry."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    base = f"v0:{stamp}:".encode() + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return headers


def _envelope(event_id: str, fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    event = {**fields, "event_ts": fields["ts"], **extra}
    return {
        "token": "deprecated-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": "A0APP",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1700000000,
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    }


def dm_event(
    text: str,
    *,
    event_id: str = "Ev0DM1",
    user: str = "U0ALICE",
    channel: str = "D0DM",
    ts: str = "1700000001.000100",
    **extra: Any,
) -> dict[str, Any]:
    """A ``message.im`` event: a user's message in a DM with the bot (``extra`` adds fields:
    ``thread_ts``, ``subtype``, ``bot_id``...)."""
    fields = {"type": "message", "channel_type": "im", "user": user, "text": text}
    return _envelope(event_id, {**fields, "channel": channel, "ts": ts}, extra)


def mention_event(
    text: str,
    *,
    event_id: str = "Ev0MENTION1",
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    ts: str = "1700000002.000200",
    **extra: Any,
) -> dict[str, Any]:
    """An ``app_mention`` event in a channel; ``text`` follows the bot's ``<@U...>`` mention."""
    fields = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER_ID}> {text}"}
    return _envelope(event_id, {**fields, "channel": channel, "ts": ts}, extra)
