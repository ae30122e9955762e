"""The Slack channel: the Events API in, ``chat.postMessage`` out (docs/channels.md).

Slack POSTs each event to the channel's path (the app's Event Subscriptions *Request URL*,
``https://HOST/channels/NAME``). Every request is checked before anything is parsed:
``X-Slack-Request-Timestamp`` within ``replay_window`` (300 s) of the wall clock, and
``X-Slack-Signature`` = ``v0=`` + hex HMAC-SHA256(signing secret, ``v0:{timestamp}:{raw body}``),
compared in constant time; a request missing either, stale or wrongly signed gets 401 and is not
processed (Slack's "Verifying requests from Slack").

- ``url_verification`` → 200 ``{"challenge": <challenge>}``.
- ``event_callback`` with an ``app_mention``, or a ``message`` in a DM (``channel_type: "im"``),
  becomes a :class:`ChannelMessage`: id ``event_id``, sender ``event.user``, text ``event.text``
  (an ``app_mention``'s leading ``<@BOT>`` removed). Events with a ``bot_id`` or a ``subtype``
  (edits, deletions, the bot's own posts, joins), messages elsewhere, from the bot user itself,
  or without text, and every other event type, get 200 and are ignored; a sender not in
  ``allowed_users`` gets 200 and is logged and counted as ignored.
- Threads: a message in a thread (``thread_ts``) is answered in that thread; a top-level
  ``app_mention`` is answered in a thread started from the mention (``thread_ts`` = its ``ts``),
  as Slack bots usually do, so a busy channel is not flooded and the follow-ups in that thread are
  the same conversation; a top-level DM is answered in the DM itself. The conversation is the
  channel plus that thread: ``reply_target`` is ``"CHANNEL"`` or ``"CHANNEL:THREAD_TS"``, so each
  thread is processed, and answered, independently of the channel's other threads.
- The answer is sent once the message is admitted, never after the LLM call: admission waits at
  most ``admission_timeout`` (2.5 s, inside Slack's 3 s), then the request is refused 429 (503 for
  a breaker open or a drain) with ``Retry-After``; Slack retries a non-2xx, so a refused event
  comes back later. An admitted event is remembered for ``seen_ttl`` (15 min; Slack's last retry
  comes about 5 minutes after the first delivery) by its channel and ``ts``, so a retry
  (``X-Slack-Retry-Num``), or the ``message.im`` and ``app_mention`` events of one DM message, get
  200 and are processed once. A redelivery that arrives while the first delivery is still being
  admitted is answered as that one is.

Replies: ``POST {api_base}/chat.postMessage`` with ``Authorization: Bearer <bot_token>`` and JSON
``{"channel", "text", "thread_ts"?}``. A reply longer than ``max_text_chars`` (4 000: Slack asks
clients to keep messages to 4 000 characters and truncates the text beyond 40 000) goes as several
messages, in order. HTTP 429 → wait ``Retry-After`` and retry (a wait over ``max_retry_wait`` is
not waited: a failure); 5xx, timeouts and connection errors → retried after a capped, fully
jittered exponential backoff; at most ``send_retries`` retries per message. ``{"ok": false,
"error"}`` is a send failure at once (``channel_not_found``, ``not_in_channel``,
``invalid_auth``...). A failure raises :class:`SlackApiError` from :meth:`SlackChannel.deliver`,
which the processor logs and counts (``zeroclaw_channel_send_failures_total``); each conversation's
replies go out in order, other conversations' never wait for them.

``health_check`` calls ``auth.test`` (its answer is kept ``health_ttl`` seconds); the first call
also learns the bot's own user id, whose messages are then ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from zeroclaw import wire_json
from zeroclaw.channels.base import ChannelContext, ChannelSpec, Intake, allows, submit_within
from zeroclaw.channels.http import (
    AttemptFailed,
    GaveUp,
    HttpSender,
    backoff_seconds,
    channel_path,
    error_response,
    read_limited_body,
    refusal_response,
)
from zeroclaw.channels.text import split_text
from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._validate import to_count, to_seconds
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    MessageResult,
)
from zeroclaw.concurrency.deduplicator import DedupKey, Deduplicator

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the Slack channel needs aiohttp: pip install 'zeroclaw[gateway]'") from exc

__all__ = [
    "DEFAULT_API_BASE",
    "SLACK_TEXT_LIMIT",
    "SlackApiError",
    "SlackChannel",
    "build",
    "parse_retry_after",
    "parse_target",
    "reply_target",
    "request_signature",
    "verify_request",
]

_logger = logging.getLogger("zeroclaw.channels.slack")

DEFAULT_API_BASE = "https://slack.com/api"
# Slack's chat.postMessage guidance: keep text to 4,000 characters; beyond 40,000 it truncates.
SLACK_TEXT_LIMIT = 4000
_VERSION = "v0"
# Leading mentions of an app_mention's text: "<@U0BOT> hi" and "<@U0BOT|zeroclaw> hi".
_LEADING_MENTIONS = re.compile(r"^\s*(?:<@[A-Z0-9]+(?:\|[^>]*)?>\s*)+")
_TARGET_SEPARATOR = ":"


class SlackApiError(Exception):
    """A Slack Web API call failed: ``error`` is Slack's error code (``channel_not_found``) or
    ours (``ratelimited``, ``http_403``, ``invalid_response``, ``unreachable``)."""

    def __init__(self, method: str, error: str, *, status: int | None = None, detail: str = ""):
        text = f"{method}: {error}" + (f" ({detail})" if detail else "")
        super().__init__(text)
        self.method = method
        self.error = error
        self.status = status


# ---------------------------------------------------------------------------- pure pieces


def request_signature(signing_secret: str | bytes, timestamp: str, body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256(secret, ``v0:{timestamp}:{body}``): Slack's request signature.

    Does not block.
    """
    secret = signing_secret.encode() if isinstance(signing_secret, str) else signing_secret
    base = b"%s:%s:%s" % (_VERSION.encode(), timestamp.encode(), body)
    return f"{_VERSION}=" + hmac.new(secret, base, hashlib.sha256).hexdigest()


def verify_request(
    signing_secret: str | bytes,
    timestamp: str | None,
    signature: str | None,
    body: bytes | None,
    *,
    now: float,
    window: float = 300.0,
) -> str | None:
    """Why a request is not from Slack, or ``None`` when it is. Does not block.

    ``timestamp`` must be an integer within ``window`` seconds of ``now`` (wall time, either
    side), ``signature`` equal (constant-time) to :func:`request_signature` of ``body``.
    ``body`` ``None`` checks the headers only (before the body is read).
    """
    if timestamp is None or signature is None:
        return "missing X-Slack-Request-Timestamp or X-Slack-Signature"
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        return "X-Slack-Request-Timestamp is not an integer"
    if not math.isfinite(now) or abs(now - sent_at) > window:
        return f"X-Slack-Request-Timestamp is more than {window:g}s from now"
    if body is None:
        return None
    expected = request_signature(signing_secret, timestamp.strip(), body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        return "X-Slack-Signature does not match"
    return None


def reply_target(channel: str, thread_ts: str | None) -> str:
    """The ``reply_target`` of a conversation: ``"CHANNEL"`` or ``"CHANNEL:THREAD_TS"``."""
    return channel if not thread_ts else f"{channel}{_TARGET_SEPARATOR}{thread_ts}"


def parse_target(target: str) -> tuple[str, str | None]:
    """``(channel, thread_ts)`` of a :func:`reply_target` (a bare channel id has no thread)."""
    channel, _, thread_ts = target.partition(_TARGET_SEPARATOR)
    return channel, thread_ts or None


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    """A ``Retry-After`` header's seconds (Slack sends an integer); ``default`` when missing or
    unreadable, never below 0."""
    if value is None:
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        return default
    if not math.isfinite(seconds):
        return default
    return max(0.0, seconds)


def _text_field(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------- the channel


class SlackChannel:
    """A Slack app's Events API endpoint and its replies. See the module docstring.

    Args:
        name: the channel's name (``ChannelMessage.channel``).
        intake: where admitted messages go (the gateway's intake).
        bot_token: the bot token (``xoxb-...``), sent as ``Authorization: Bearer``.
        signing_secret: the app's signing secret (every request's signature is checked with it).
        api_base: the Web API base URL.
        allowed_users: Slack user ids allowed; ``"*"`` allows all, ``()`` denies all, ``None``
            allows all.
        path: the URL path; default ``/channels/<name>``.
        max_body_bytes: larger bodies get 413.
        admission_timeout: the longest a request waits to be admitted (then 429), under Slack's
            3 s.
        replay_window: how far ``X-Slack-Request-Timestamp`` may be from now, in seconds.
        seen_ttl: how long an admitted event is remembered, so its retries are not processed.
        seen_max: the most events remembered (the oldest are forgotten first).
        request_timeout: the longest one Web API call may take.
        send_retries: retries of one message after a 429, a 5xx, a timeout or a connection error.
        max_retry_wait: the longest ``Retry-After`` waited; a longer one fails the send.
        retry_backoff: first and longest wait between retries of a 5xx/timeout/connection error
            (full jitter), in seconds.
        max_text_chars: replies longer than this go as several messages.
        health_ttl: how long an ``auth.test`` answer is reused by :meth:`health_check`.
        rng: randomness of the jitter (seed it in tests).
        clock: time source of the waits and TTLs (monotonic).
        wall_clock: wall time in seconds (``time.time``): what request timestamps are judged by.

    Raises:
        ValueError, TypeError: a bad argument (an empty ``bot_token`` or ``signing_secret``).
    """

    kind = "slack"

    def __init__(
        self,
        name: str,
        *,
        intake: Intake,
        bot_token: str,
        signing_secret: str,
        api_base: str = DEFAULT_API_BASE,
        allowed_users: tuple[str, ...] | None = None,
        path: str | None = None,
        max_body_bytes: int = 1_048_576,
        admission_timeout: float = 2.5,
        replay_window: float = 300.0,
        seen_ttl: float = 900.0,
        seen_max: int = 100_000,
        request_timeout: float = 5.0,
        send_retries: int = 3,
        max_retry_wait: float = 10.0,
        retry_backoff: tuple[float, float] = (0.5, 4.0),
        max_text_chars: int = SLACK_TEXT_LIMIT,
        health_ttl: float = 30.0,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = channel_path(name, path)
        if not isinstance(bot_token, str) or not bot_token:
            raise ValueError(f"Slack channel {name!r}: bot_token is required")
        if not isinstance(signing_secret, str) or not signing_secret:
            raise ValueError(f"Slack channel {name!r}: signing_secret is required")
        if not api_base.startswith(("http://", "https://")):
            raise ValueError(f"api_base must be an http(s) URL, got {api_base!r}")
        self._name = name
        self._intake = intake
        self._token = bot_token
        self._secret = signing_secret.encode()
        self.api_base = api_base.rstrip("/")
        self._allowed = allowed_users
        self._max_body = to_count(max_body_bytes, what="max_body_bytes", minimum=1)
        self._admission_timeout = to_seconds(admission_timeout, what="admission_timeout")
        self._replay_window = to_seconds(replay_window, what="replay_window")
        self._clock = resolve_clock(clock)
        self._sender = HttpSender(
            f"slack {name!r}",
            timeout=to_seconds(request_timeout, what="request_timeout"),
            retries=to_count(send_retries, what="send_retries"),
            backoff=backoff_seconds(retry_backoff, what="retry_backoff"),
            max_retry_wait=to_seconds(max_retry_wait, what="max_retry_wait"),
            headers={
                "Authorization": f"Bearer {bot_token}",
                "Content-Type": "application/json; charset=utf-8",
            },
            rng=rng,
            clock=self._clock,
            logger=_logger,
        )
        self._max_text = to_count(max_text_chars, what="max_text_chars", minimum=1)
        self._health_ttl = to_seconds(health_ttl, what="health_ttl")
        self._wall = wall_clock
        self._seen = Deduplicator(
            to_seconds(seen_ttl, what="seen_ttl"),
            max_entries=to_count(seen_max, what="seen_max", minimum=1),
            clock=self._clock,
            name=f"slack:{name}",
        )
        # Messages being admitted now, by message key: a concurrent redelivery waits for them.
        self._admitting: dict[DedupKey, asyncio.Future[bool]] = {}
        self._closed: asyncio.Event | None = None
        self._health: tuple[float, bool] | None = None
        self.bot_user_id: str | None = None
        self.refused_requests = 0
        self.messages_posted = 0
        self.send_failures = 0
        self.rate_limited = 0

    # ------------------------------------------------------------------ Channel protocol

    @property
    def name(self) -> str:
        return self._name

    @property
    def delivery_budget(self) -> float:
        """The longest one message part can take: every attempt and the longest waits between."""
        sender = self._sender
        longest_wait = max(sender.max_retry_wait, sender.backoff_max)
        return (sender.retries + 1) * sender.timeout + sender.retries * longest_wait

    @property
    def retried(self) -> int:
        """Web API calls retried (after a 429, a 5xx, a timeout or a connection error)."""
        return self._sender.retried

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        """Check the token once (``auth.test``, a failure is logged), then wait until
        :meth:`aclose`: messages arrive through :meth:`handle`. Never raises for Slack's sake."""
        if not await self.health_check():
            _logger.warning(
                "slack %r: auth.test failed at start (%s): replies will fail until the bot "
                "token works",
                self._name,
                self.api_base,
            )
        await self._closed_event().wait()

    async def send(self, message: str, recipient: str) -> None:
        """Post ``message`` to ``recipient`` (``"CHANNEL"`` or ``"CHANNEL:THREAD_TS"``).

        Waits for every part (and the retries).

        Raises:
            SlackApiError: a part could not be posted.
        """
        channel, thread_ts = parse_target(recipient)
        await self.post_message(channel, message, thread_ts)

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Post the reply (or notice) of ``message`` to its channel and thread.

        Called by the processor, in each conversation's order, under its send timeout. A
        ``text`` of ``None`` posts nothing.

        Raises:
            SlackApiError: a part could not be posted (the processor logs and counts it).
        """
        try:
            if text is not None:
                await self.send(text, message.reply_to)
        except SlackApiError:
            self.send_failures += 1
            raise
        finally:
            self._intake.finished(message, result)

    async def health_check(self) -> bool:
        """``True`` when ``auth.test`` accepts the token (asked at most every ``health_ttl``).

        Waits for the call (one attempt); ``False`` once closed or when Slack cannot be reached.
        """
        if self._closed_event().is_set():
            return False
        now = self._clock.now()
        if self._health is not None and now - self._health[0] < self._health_ttl:
            return self._health[1]
        try:
            answer = await self._call("auth.test", {}, retries=0)
        except SlackApiError as exc:
            healthy = False
            _logger.info("slack %r: auth.test: %s", self._name, exc)
        else:
            healthy = True
            user_id = answer.get("user_id")
            if isinstance(user_id, str) and user_id:
                self.bot_user_id = user_id
        self._health = (self._clock.now(), healthy)
        return healthy

    async def aclose(self) -> None:
        """Stop: :meth:`listen` returns and the Web API session closes; a reply still being
        posted fails (and is counted). Idempotent."""
        self._closed_event().set()
        await self._sender.aclose()

    # ------------------------------------------------------------------ HTTP in

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one Events API request (see the module docstring for the statuses).

        Waits for admission, at most ``admission_timeout``; never for the reply.

        Raises:
            BodyTooLarge: the body passes ``max_body_bytes`` (the server answers 413).
        """
        headers = request.headers
        timestamp = headers.get("X-Slack-Request-Timestamp")
        signature = headers.get("X-Slack-Signature")
        # The headers first: a stale or unsigned request is refused before its body is read.
        body: bytes | None = None
        problem = self._unverified(timestamp, signature, body)
        if problem is None:
            body = await read_limited_body(request, self._max_body)
            problem = self._unverified(timestamp, signature, body)
        if problem is not None or body is None:
            self.refused_requests += 1
            # Loud once (a wrong signing secret shows at the first event), then quieter: anyone
            # can send unsigned requests, and the log must not be theirs to fill.
            log = _logger.warning if self.refused_requests == 1 else _logger.info
            log("slack %r: request refused (401): %s", self._name, problem)
            return error_response(401, problem or "unsigned")
        try:
            envelope = wire_json.loads(body)
        except ValueError as exc:
            return error_response(400, f"malformed JSON: {exc}")
        if not isinstance(envelope, dict):
            return error_response(400, "the body must be a JSON object")
        kind = envelope.get("type")
        if kind == "url_verification":
            challenge = envelope.get("challenge")
            if not isinstance(challenge, str):
                return error_response(400, "url_verification without a challenge string")
            return web.json_response({"challenge": challenge})
        if kind != "event_callback":
            _logger.info("slack %r: %r request ignored", self._name, kind)
            return _ignored(f"request type {kind!r}")
        parsed = self._message_of(envelope)
        if isinstance(parsed, str):
            _logger.debug("slack %r: event ignored: %s", self._name, parsed)
            return _ignored(parsed)
        message = parsed
        if not allows(self._allowed, message.sender):
            self._intake.ignored(self._name, message, "sender not allowed")
            return _ignored("sender not allowed")
        retry = headers.get("X-Slack-Retry-Num")
        if retry is not None:
            _logger.info(
                "slack %r: event %r delivered again (retry %s, %s)",
                self._name,
                message.id,
                retry,
                headers.get("X-Slack-Retry-Reason", "no reason given"),
            )
        return await self._admit(message)

    def _unverified(
        self, timestamp: str | None, signature: str | None, body: bytes | None
    ) -> str | None:
        return verify_request(
            self._secret, timestamp, signature, body, now=self._wall(), window=self._replay_window
        )

    def _message_of(self, envelope: Mapping[str, Any]) -> ChannelMessage | str:
        """The message an ``event_callback`` carries, or why it is ignored. Does not block."""
        event = envelope.get("event")
        if not isinstance(event, dict):
            return "no event object"
        event_type = event.get("type")
        if event_type == "message":
            if event.get("channel_type") != "im":
                return f"message in a {event.get('channel_type')!r} channel, not a DM"
        elif event_type != "app_mention":
            return f"event type {event_type!r}"
        if "subtype" in event:
            return f"message subtype {event.get('subtype')!r}"
        if "bot_id" in event or "bot_profile" in event:
            return "message from a bot"
        event_id = _text_field(envelope, "event_id")
        user = _text_field(event, "user")
        channel = _text_field(event, "channel")
        ts = _text_field(event, "ts")
        if event_id is None or user is None or channel is None or ts is None:
            return "event without event_id, user, channel or ts"
        if user == self.bot_user_id:
            return "the bot's own message"
        text = event.get("text")
        if not isinstance(text, str):
            return "message without text"
        if event_type == "app_mention":
            text = _LEADING_MENTIONS.sub("", text, count=1)
        if not text.strip():
            return "message without text"
        thread_ts = _text_field(event, "thread_ts")
        if thread_ts is None and event_type == "app_mention":
            thread_ts = ts  # answer in a thread started from the mention
        return ChannelMessage(
            id=event_id,
            sender=user,
            content=text,
            channel=self._name,
            timestamp=self._wall(),
            reply_target=reply_target(channel, thread_ts),
            thread_id=thread_ts,
            metadata={
                "slack_channel": channel,
                "ts": ts,
                "event_type": event_type,
                "team_id": envelope.get("team_id"),
            },
        )

    async def _admit(self, message: ChannelMessage) -> web.Response:
        key = DedupKey.combine([message.metadata["slack_channel"], message.metadata["ts"]])
        if self._seen.contains(key):
            self._count_duplicate(message)
            return _duplicate(message)
        pending = self._admitting.get(key)
        if pending is not None:
            # The same message is being admitted by another request: answer as it is answered.
            try:
                async with asyncio.timeout(self._admission_timeout):
                    accepted = await asyncio.shield(pending)
            except TimeoutError:
                accepted = False
            if accepted:
                self._count_duplicate(message)
                return _duplicate(message)
            return refusal_response("admission in progress", None, id=message.id)
        pending = asyncio.get_running_loop().create_future()
        self._admitting[key] = pending
        accepted = False
        try:
            admission = await submit_within(self._intake, self, message, self._admission_timeout)
            accepted = admission.kind is not AdmissionKind.REJECTED
            if accepted:
                self._seen.check_and_update(key)
        finally:
            del self._admitting[key]
            pending.set_result(accepted)
        if admission.kind is AdmissionKind.DUPLICATE:
            return _duplicate(message)
        if admission.kind is AdmissionKind.REJECTED:
            return refusal_response(admission.reason, admission.retry_after, id=message.id)
        return web.json_response({"id": message.id, "status": "accepted"})

    def _count_duplicate(self, message: ChannelMessage) -> None:
        count = getattr(self._intake, "duplicate", None)
        if count is not None:
            count(self._name, message)

    # ------------------------------------------------------------------ Web API out

    async def post_message(self, channel: str, text: str, thread_ts: str | None = None) -> None:
        """Post ``text`` to ``channel`` (in ``thread_ts``), in parts of ``max_text_chars``.

        Waits for each part in turn (and its retries). An empty ``text`` posts nothing (logged).

        Raises:
            SlackApiError: a part could not be posted; the parts after it are not sent.
        """
        parts = split_text(text, self._max_text)
        if not parts:
            _logger.warning("slack %r: empty reply to %s not posted", self._name, channel)
            return
        for part in parts:
            payload: dict[str, Any] = {"channel": channel, "text": part}
            if thread_ts is not None:
                payload["thread_ts"] = thread_ts
            await self._call("chat.postMessage", payload)
            self.messages_posted += 1

    async def _call(
        self, method: str, payload: Mapping[str, Any], *, retries: int | None = None
    ) -> dict[str, Any]:
        """POST ``payload`` to ``{api_base}/{method}``; the answer's JSON when ``ok`` is true.

        Retries a 429 after its ``Retry-After``, a 5xx, a timeout or a connection error after a
        jittered backoff, ``retries`` times at most (``send_retries`` by default). Waits for it.

        Raises:
            SlackApiError: ``ok: false``, another HTTP status, a body that is not JSON, a
                ``Retry-After`` over ``max_retry_wait``, or every attempt failed.
        """
        url = f"{self.api_base}/{method}"
        data = json.dumps(payload).encode()

        async def attempt() -> dict[str, Any]:
            answer = await self._sender.post(url, data=data)
            status = answer.status
            if status == 200:
                return _ok_answer(method, answer.body)
            if status == 429:
                self.rate_limited += 1
                wait = parse_retry_after(answer.headers.get("Retry-After"))
                raise AttemptFailed(f"HTTP 429, Retry-After {wait:g}s", retry_after=wait)
            if status >= 500:
                raise AttemptFailed(f"HTTP {status}")
            raise SlackApiError(method, f"http_{status}", status=status)

        try:
            return await self._sender.send(
                attempt, what=f"slack {self._name!r}: {method}", retries=retries
            )
        except GaveUp as failed:
            if failed.too_long:
                raise SlackApiError(
                    method, "ratelimited", status=429, detail=failed.problem
                ) from None
            raise SlackApiError(
                method,
                "unreachable",
                detail=f"{failed.attempts} attempt(s), last: {failed.problem}",
            ) from None

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    def __repr__(self) -> str:
        return f"<SlackChannel {self._name!r} {self.path} -> {self.api_base}>"


def _ok_answer(method: str, body: bytes) -> dict[str, Any]:
    try:
        answer = wire_json.loads(body)
    except ValueError:
        raise SlackApiError(method, "invalid_response", status=200) from None
    if not isinstance(answer, dict):
        raise SlackApiError(method, "invalid_response", status=200)
    if answer.get("ok") is not True:
        raise SlackApiError(method, str(answer.get("error") or "unknown_error"), status=200)
    return answer


def _ignored(reason: str) -> web.Response:
    return web.json_response({"status": "ignored", "reason": reason})


def _duplicate(message: ChannelMessage) -> web.Response:
    return web.json_response({"id": message.id, "status": "duplicate"})


def build(spec: ChannelSpec, context: ChannelContext) -> SlackChannel:
    """Build a Slack channel from its settings (the channel registry calls this).

    Raises:
        ValueError: ``bot_token`` or ``signing_secret`` is missing or empty.
    """
    options = spec.options
    return SlackChannel(
        spec.name,
        intake=context.intake,
        bot_token=options.get("bot_token") or "",
        signing_secret=options.get("signing_secret") or "",
        api_base=options.get("api_base") or DEFAULT_API_BASE,
        allowed_users=spec.allowed_users,
        path=spec.path,
        max_body_bytes=context.max_body_bytes,
    )
