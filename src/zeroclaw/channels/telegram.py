"""The Telegram Bot API channel (docs/channels.md), by long polling (default) or by webhook.

An update becomes a :class:`ChannelMessage` with ``id`` = ``update_id``, ``sender`` =
``message.from.id`` (allowed by id or by ``username``) and ``reply_target`` = ``message.chat.id``
(``"<chat id>:<message_thread_id>"`` in a forum topic, so a topic is a conversation of its own:
its own history and its own reply order). Only ``message`` updates with ``text`` are processed;
messages from bots, edits and others are ignored (logged, counted). In groups, with
``group_reply = "mention_only"``, only messages mentioning the bot (an ``@username`` entity, the
username learnt from ``getMe``) or replying to it are processed; private chats always are.

- Polling (``getUpdates`` long poll): updates are admitted one after the other, in order; the
  offset moves past an update only once it was admitted, found a duplicate or ignored. At the
  first refused one the batch stops, and after its ``Retry-After`` (or a backoff) it is fetched
  again with everything after it: nothing refused is lost, and a chat's order is kept. A 409
  (a webhook is set for the bot) is logged with the fix; network errors back off (capped,
  jittered exponential).
- Webhook: ``X-Telegram-Bot-Api-Secret-Token`` checked in constant time (401), then 400 without an
  integer ``update_id``, else 200 (accepted, duplicate, ignored) or 429/503 + ``Retry-After`` so
  Telegram redelivers it later.

Replies go through ``sendMessage`` (``message_thread_id`` in a topic), split at 4096 characters
(at a newline, else a space, where one is near) and sent in order. Outbound pace: a
:class:`~zeroclaw.concurrency.RateLimiter` per chat (1 message/s, short bursts) and one per bot
(30/s), as Telegram's limits ask; a chat's limiter is dropped once it is idle (full again), so
memory stays bounded by the chats recently answered. A ``429`` with ``parameters.retry_after``
is waited out, then the part is sent again; 5xx and network errors are retried with a
backoff; after ``send_retries`` retries (or a 4xx such as "chat not found") the delivery raises,
which the processor logs and counts in ``zeroclaw_channel_send_failures_total``. Each chat's
replies wait only for that chat (the processor runs each conversation's deliveries on their
own). The per-chat and per-bot limits follow python-telegram-bot's AIORateLimiter defaults
(research: processing.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from zeroclaw import wire_json
from zeroclaw.channels.base import ChannelContext, ChannelSpec, Intake, allows, submit_within
from zeroclaw.channels.http import (
    AttemptFailed,
    GaveUp,
    HttpSender,
    backoff_delay,
    backoff_seconds,
    channel_path,
    error_response,
    read_limited_body,
    refusal_response,
)
from zeroclaw.channels.text import split_text as _split_text
from zeroclaw.concurrency import RateLimiter
from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._validate import to_count, to_positive_number, to_seconds
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    ChannelMessage,
    MessageResult,
)

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the telegram channel needs aiohttp: pip install 'zeroclaw[gateway]'"
    ) from exc

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "ChatLimiters",
    "TelegramChannel",
    "TelegramError",
    "build",
    "parse_update",
    "split_text",
]

_logger = logging.getLogger("zeroclaw.channels.telegram")

MAX_MESSAGE_LENGTH = 4096
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# The long-poll request may take this much longer than the poll timeout before it is abandoned.
_POLL_GRACE = 10.0


class TelegramError(Exception):
    """A Bot API call failed: ``status`` (HTTP or ``error_code``), ``description``,
    ``retry_after`` (seconds, from ``parameters.retry_after``) and whether it is worth retrying."""

    def __init__(
        self,
        method: str,
        status: int | None,
        description: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{method}: {status if status is not None else 'error'}: {description}")
        self.method = method
        self.status = status
        self.description = description
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """429, 5xx and network errors (``status`` ``None``) are worth another attempt."""
        return self.status is None or self.status == 429 or self.status >= 500


# ---------------------------------------------------------------------------- pure decisions


def split_text(text: str, limit: int = MAX_MESSAGE_LENGTH) -> list[str]:
    """``text`` in parts of at most ``limit`` characters (Telegram's 4096 by default), in order,
    joined back losslessly: :func:`zeroclaw.channels.text.split_text`, which says where the cuts
    fall. Empty text gives no part. Does not block."""
    return _split_text(text, limit)


def _mentions(message: Mapping[str, Any], username: str) -> bool:
    text = message.get("text")
    if not isinstance(text, str):
        return False
    wanted = "@" + username.lower()
    for entity in message.get("entities") or ():
        if not isinstance(entity, Mapping) or entity.get("type") != "mention":
            continue
        offset, length = entity.get("offset"), entity.get("length")
        if isinstance(offset, int) and isinstance(length, int):
            # Offsets count UTF-16 code units.
            encoded = text.encode("utf-16-le")
            mention = encoded[offset * 2 : (offset + length) * 2].decode("utf-16-le", "replace")
            if mention.lower() == wanted:
                return True
    return False


def parse_update(
    update: Mapping[str, Any],
    *,
    channel: str,
    allowed_users: tuple[str, ...] | None,
    bot_username: str | None,
    bot_id: int | None,
    group_reply: str = "mention_only",
    now: float | None = None,
) -> tuple[ChannelMessage, str | None]:
    """The message of ``update`` and, when it is not to be processed, the reason why.

    ``update`` must have an integer ``update_id`` (the caller checks it). ``bot_username`` of
    ``None`` (``getMe`` not answered yet) makes a group message under ``mention_only`` undecidable:
    the reason is then ``"bot username unknown"`` and the caller must retry it later, not drop it.
    Does not block.
    """
    update_id = update["update_id"]
    message = update.get("message")
    timestamp = time.time() if now is None else now
    if not isinstance(message, Mapping):
        kinds = [key for key in update if key != "update_id"]
        placeholder = ChannelMessage(str(update_id), "", "", channel, timestamp)
        return placeholder, f"not a message update ({', '.join(kinds) or 'empty'})"
    sender = message.get("from") if isinstance(message.get("from"), Mapping) else {}
    chat = message.get("chat") if isinstance(message.get("chat"), Mapping) else {}
    assert isinstance(sender, Mapping)
    assert isinstance(chat, Mapping)
    sender_id = sender.get("id")
    chat_id = chat.get("id")
    thread = message.get("message_thread_id") if message.get("is_topic_message") else None
    if not isinstance(thread, int) or isinstance(thread, bool):
        thread = None
    text = message.get("text")
    reply_target = None
    if isinstance(chat_id, int):
        reply_target = str(chat_id) if thread is None else f"{chat_id}:{thread}"
    username = sender.get("username") if isinstance(sender.get("username"), str) else None
    parsed = ChannelMessage(
        id=str(update_id),
        sender=str(sender_id) if sender_id is not None else "",
        content=text if isinstance(text, str) else "",
        channel=channel,
        timestamp=timestamp,
        reply_target=reply_target,
        thread_id=str(thread) if thread is not None else None,
        metadata={
            "chat_id": chat_id,
            "message_thread_id": thread,
            "chat_type": chat.get("type"),
            "username": username,
            "message_id": message.get("message_id"),
        },
    )
    if not isinstance(text, str) or not text.strip():
        return parsed, "not a text message"
    if not isinstance(sender_id, int) or not isinstance(chat_id, int):
        return parsed, "no sender or chat id"
    if sender.get("is_bot"):
        return parsed, "sent by a bot"
    # Usernames are case-insensitive on Telegram; the channel lowers its list (and drops "@").
    lowered = username.lower() if username else None
    if not allows(allowed_users, str(sender_id), username, lowered):
        return parsed, "sender not allowed"
    if chat.get("type") != "private" and group_reply == "mention_only":
        replied = message.get("reply_to_message")
        replied_from = replied.get("from") if isinstance(replied, Mapping) else None
        if (
            bot_id is not None
            and isinstance(replied_from, Mapping)
            and replied_from.get("id") == bot_id
        ):
            return parsed, None
        if bot_username is None:
            return parsed, "bot username unknown"
        if not _mentions(message, bot_username):
            return parsed, "a group message that does not mention the bot"
    return parsed, None


class ChatLimiters:
    """A :class:`RateLimiter` per chat, created on first use, dropped once idle. Not thread-safe.

    A limiter is idle when its bucket is full again: a fresh one would behave the same, so dropping
    it changes nothing. Each lookup drops the idle limiters least recently used first (stopping at
    the first busy one), so the map holds about the chats answered in the last ``burst / rate``
    seconds, whatever the number of chats seen.
    """

    def __init__(self, rate: float, burst: float, *, clock: Clock | None = None) -> None:
        self._rate = to_positive_number(rate, what="per_chat_rate")
        self._burst = to_positive_number(burst, what="per_chat_burst")
        self._clock = resolve_clock(clock)
        self._limiters: OrderedDict[str, RateLimiter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._limiters)

    def get(self, chat: str) -> RateLimiter:
        """The limiter of ``chat`` (a new, full one when it had none). Does not block."""
        limiters = self._limiters
        limiter = limiters.get(chat)
        if limiter is None:
            limiter = RateLimiter(
                self._rate, self._burst, clock=self._clock, name=f"telegram chat {chat}"
            )
            limiters[chat] = limiter
        limiters.move_to_end(chat)
        self.prune()
        return limiter

    def prune(self) -> None:
        """Drop idle limiters, least recently used first, up to the first busy one."""
        limiters = self._limiters
        while len(limiters) > 1:
            oldest, limiter = next(iter(limiters.items()))
            if limiter.available_tokens < limiter.burst:
                return
            del limiters[oldest]


# ---------------------------------------------------------------------------- the channel


class TelegramChannel:
    """A Telegram bot. See the module docstring for what it does on the wire.

    Args:
        name: the channel's name.
        intake: where messages are admitted (the gateway's intake).
        bot_token: the bot's token (BotFather).
        allowed_users: user ids or usernames (any case, ``@`` optional); ``"*"`` everyone,
            ``()`` nobody.
        mode: ``"polling"`` or ``"webhook"``.
        secret_token: webhook mode: the ``secret_token`` given to ``setWebhook`` (required there).
        api_base: the Bot API base URL.
        group_reply: ``"mention_only"`` or ``"all_messages"``.
        path: webhook mode: the URL path; default ``/channels/<name>``.
        max_body_bytes: webhook mode: larger bodies get 413.
        admission_timeout: the longest one update waits to be admitted (then it is refused).
        poll_timeout: the ``timeout`` of each ``getUpdates`` long poll, seconds.
        request_timeout: the longest any other Bot API call may take.
        send_retries: attempts after the first one for each part of a reply.
        max_retry_wait: a ``retry_after`` longer than this is not waited for (the send fails).
        per_chat_rate, per_chat_burst: outbound messages per second per chat, and the burst.
        bot_rate: outbound messages per second for the whole bot.
        backoff: first and longest wait between failed calls (full jitter), seconds.
        rng: randomness of the jitter. clock: time source of waits and rate limits.

    Raises:
        ValueError, TypeError: a bad argument.
    """

    kind = "telegram"

    def __init__(
        self,
        name: str,
        *,
        intake: Intake,
        bot_token: str,
        allowed_users: tuple[str, ...] | None,
        mode: str = "polling",
        secret_token: str | None = None,
        api_base: str = "https://api.telegram.org",
        group_reply: str = "mention_only",
        path: str | None = None,
        max_body_bytes: int = 1_048_576,
        admission_timeout: float = 10.0,
        poll_timeout: float = 30.0,
        request_timeout: float = 10.0,
        send_retries: int = 4,
        max_retry_wait: float = 60.0,
        per_chat_rate: float = 1.0,
        per_chat_burst: float = 3.0,
        bot_rate: float = 30.0,
        backoff: tuple[float, float] = (1.0, 30.0),
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        served_at = channel_path(name, path)
        if not bot_token:
            raise ValueError(f"telegram channel {name!r}: bot_token is required")
        if mode not in ("polling", "webhook"):
            raise ValueError(f"mode must be 'polling' or 'webhook', got {mode!r}")
        if mode == "webhook" and not secret_token:
            raise ValueError(f"telegram channel {name!r}: mode 'webhook' needs a secret_token")
        if group_reply not in ("mention_only", "all_messages"):
            raise ValueError(
                f"group_reply must be 'mention_only' or 'all_messages', got {group_reply!r}"
            )
        self._name = name
        self._intake = intake
        self._token = bot_token
        self._allowed = (
            None
            if allowed_users is None
            else tuple(user.removeprefix("@").lower() for user in allowed_users)
        )
        self.mode = mode
        self._secret = secret_token.encode() if secret_token else None
        self.api_base = api_base.rstrip("/")
        self.group_reply = group_reply
        if mode == "webhook":
            # Only a webhook-mode channel is served over HTTP (the gateway routes by `path`).
            self.path = served_at
        self._max_body = to_count(max_body_bytes, what="max_body_bytes", minimum=1)
        self._admission_timeout = to_seconds(admission_timeout, what="admission_timeout")
        self._poll_timeout = to_seconds(poll_timeout, what="poll_timeout")
        self._request_timeout = to_positive_number(request_timeout, what="request_timeout")
        self._backoff_first, self._backoff_max = backoff_seconds(backoff, what="backoff")
        self._rng = rng if rng is not None else random.Random()
        self._clock = resolve_clock(clock)
        self._sender = HttpSender(
            f"telegram {name!r}",
            timeout=self._request_timeout,
            retries=to_count(send_retries, what="send_retries"),
            backoff=(self._backoff_first, self._backoff_max),
            max_retry_wait=to_seconds(max_retry_wait, what="max_retry_wait"),
            rng=self._rng,
            clock=self._clock,
            logger=_logger,
            level=logging.INFO,
        )
        self._chats = ChatLimiters(per_chat_rate, per_chat_burst, clock=self._clock)
        self._bot_rate = RateLimiter(
            to_positive_number(bot_rate, what="bot_rate"), clock=self._clock, name=f"bot {name}"
        )
        self._closed: asyncio.Event | None = None
        self._me_lock: asyncio.Lock | None = None
        self.bot_id: int | None = None
        self.bot_username: str | None = None
        self.offset: int | None = None
        self.polls = 0
        self.sent_parts = 0
        self._reachable: bool | None = None

    # ------------------------------------------------------------------ Channel protocol

    @property
    def name(self) -> str:
        return self._name

    @property
    def delivery_budget(self) -> float:
        """A bound on one delivery: each attempt of a few parts, the waits between, one long
        ``retry_after``. The gateway's send timeout covers it."""
        sender = self._sender
        return 2 * (sender.retries + 1) * sender.timeout + sender.max_retry_wait

    @property
    def admission_timeout(self) -> float:
        """The longest one incoming message waits to be admitted before it is refused."""
        return self._admission_timeout

    @property
    def send_retried(self) -> int:
        """``sendMessage`` attempts retried (after a 429, a 5xx or a network error)."""
        return self._sender.retried

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        """Polling mode: long-poll ``getUpdates`` and admit each update, until :meth:`aclose`.

        Webhook mode: learn the bot's username, then wait until :meth:`aclose` (updates arrive
        through :meth:`handle`). Never puts anything on ``queue``: updates are admitted through
        the intake, whose answer decides whether the offset moves past them.
        """
        closed = self._closed_event()
        await self._until_closed(self._learn_me_patiently())
        if self.mode == "webhook":
            await closed.wait()
            return
        attempt = 0
        while not closed.is_set():
            try:
                updates = await self._until_closed(self._get_updates())
            except TelegramError as error:
                self._reachable = False
                delay = backoff_delay(attempt, self._backoff_first, self._backoff_max, self._rng)
                if error.status == 409:
                    _logger.error(
                        "telegram %r: getUpdates answered 409 Conflict (%s): a webhook is set "
                        "for this bot, or another process polls it. Delete the webhook with "
                        'POST %s/bot<token>/deleteWebhook, or use mode = "webhook"; retrying '
                        "in %.1fs",
                        self._name,
                        error.description,
                        self.api_base,
                        delay,
                    )
                else:
                    _logger.warning(
                        "telegram %r: getUpdates failed: %s; retrying in %.1fs",
                        self._name,
                        error,
                        delay,
                    )
                attempt += 1
                await self._until_closed(self._clock.sleep(delay))
                continue
            if updates is None:
                return  # closed
            attempt = 0
            self._reachable = True
            wait = await self._take_batch(updates)
            if wait is not None:
                await self._until_closed(self._clock.sleep(wait))

    async def send(self, message: str, recipient: str) -> None:
        """Send ``message`` to ``recipient`` (``"<chat id>"`` or ``"<chat id>:<thread id>"``).

        Waits for the pace limits and every part. Raises:
            TelegramError: a part could not be sent after every attempt.
            ValueError: ``recipient`` is not a chat id.
        """
        chat, _, thread = recipient.partition(":")
        try:
            chat_id = int(chat)
            thread_id = int(thread) if thread else None
        except ValueError:
            raise ValueError(f"not a Telegram chat id: {recipient!r}") from None
        await self._send_text(chat_id, thread_id, message)

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Send the reply (or notice) to ``message``'s chat and topic; ``None`` sends nothing.

        Called by the processor in each conversation's order. Raises:
            TelegramError: a part could not be sent after every attempt (a send failure).
        """
        try:
            if text:
                await self.send(text, message.reply_to)
        finally:
            self._intake.finished(message, result)

    async def health_check(self) -> bool:
        """``True`` while ``getMe`` answers (asked at most every call; waits for it)."""
        if self._closed_event().is_set():
            return False
        try:
            await self._learn_me()
        except TelegramError:
            self._reachable = False
            return False
        self._reachable = True
        return True

    async def aclose(self) -> None:
        """Stop polling; close the HTTP session. A delivery still running fails (and is counted)."""
        self._closed_event().set()
        await self._sender.aclose()

    # ------------------------------------------------------------------ webhook mode

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one update POSTed by Telegram (webhook mode). Waits for its admission.

        Raises:
            BodyTooLarge: the body passes ``max_body_bytes`` (the server answers 413).
        """
        assert self._secret is not None
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            return error_response(401, f"missing or wrong {SECRET_HEADER}")
        body = await read_limited_body(request, self._max_body)
        try:
            update = wire_json.loads(body)
        except ValueError as exc:
            return error_response(400, f"malformed JSON: {exc}")
        if not isinstance(update, dict) or not _is_int(update.get("update_id")):
            return error_response(400, "an update needs an integer 'update_id'")
        if self.bot_username is None and self.group_reply == "mention_only":
            with contextlib.suppress(TelegramError):
                await self._learn_me()
        admission, retry_after = await self._take(update)
        if admission is None or admission.kind is not AdmissionKind.REJECTED:
            status = "ignored" if admission is None else admission.kind.value
            return web.json_response({"ok": True, "status": status})
        return refusal_response(admission.reason, retry_after)

    # ------------------------------------------------------------------ intake

    async def _take_batch(self, updates: Sequence[Any]) -> float | None:
        """Admit ``updates`` in order, moving the offset past each one taken; at the first
        refused one, stop and return how long to wait before fetching it again."""
        numbered = [u for u in updates if isinstance(u, dict) and _is_int(u.get("update_id"))]
        if len(numbered) != len(updates):
            _logger.warning("telegram %r: getUpdates returned updates without an id", self._name)
        for update in sorted(numbered, key=lambda u: int(u["update_id"])):
            update_id = int(update["update_id"])
            if self.offset is not None and update_id < self.offset:
                continue  # already confirmed (a server that repeats itself)
            admission, retry_after = await self._take(update)
            if admission is not None and admission.kind is AdmissionKind.REJECTED:
                wait = retry_after
                if wait is None:
                    wait = backoff_delay(0, self._backoff_first, self._backoff_max, self._rng)
                _logger.info(
                    "telegram %r: update %d refused (%s); fetching it again in %.1fs",
                    self._name,
                    update_id,
                    admission.reason,
                    wait,
                )
                return wait
            self.offset = update_id + 1
        return None

    async def _take(self, update: Mapping[str, Any]) -> tuple[Admission | None, float | None]:
        """Admit one update: ``(None, None)`` when it is ignored, else its admission and the
        wait a refusal asks for. A message that cannot be judged yet is refused."""
        message, reason = parse_update(
            update,
            channel=self._name,
            allowed_users=self._allowed,
            bot_username=self.bot_username,
            bot_id=self.bot_id,
            group_reply=self.group_reply,
        )
        if reason == "bot username unknown":
            refused = Admission(AdmissionKind.REJECTED, "bot username unknown (getMe failed)")
            return refused, None
        if reason is not None:
            self._intake.ignored(self._name, message, reason)
            return None, None
        admission = await submit_within(self._intake, self, message, self._admission_timeout)
        return admission, admission.retry_after

    # ------------------------------------------------------------------ Bot API

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    async def _until_closed(self, work: Any) -> Any:
        """Await ``work`` unless the channel closes first (then ``None``, ``work`` cancelled)."""
        task = asyncio.ensure_future(work)
        closed = asyncio.ensure_future(self._closed_event().wait())
        try:
            await asyncio.wait([task, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.cancelled():
            return None
        return task.result()

    async def call(self, method: str, payload: Mapping[str, Any], *, timeout: float) -> Any:
        """POST ``payload`` to ``{api_base}/bot{token}/{method}``; returns ``result``.

        Waits for the answer (at most ``timeout`` seconds). Raises:
            TelegramError: ``ok`` false, a non-JSON answer, a timeout or a network error
                (``status`` ``None`` for the last two).
        """
        url = f"{self.api_base}/bot{self._token}/{method}"
        try:
            answer = await self._sender.post(url, json=payload, timeout=timeout)
        except AttemptFailed as failure:  # a timeout, a network error, or closed
            raise TelegramError(method, None, failure.problem) from None
        status = answer.status
        data = answer.json()
        if not isinstance(data, dict):
            raise TelegramError(method, status, "the answer is not a JSON object")
        if data.get("ok") is True:
            return data.get("result")
        parameters = data.get("parameters")
        retry_after = None
        if isinstance(parameters, dict) and isinstance(parameters.get("retry_after"), int | float):
            retry_after = float(parameters["retry_after"])
        code = data.get("error_code")
        raise TelegramError(
            method,
            code if isinstance(code, int) else status,
            str(data.get("description", "no description")),
            retry_after=retry_after,
        )

    async def _get_updates(self) -> list[Any]:
        payload: dict[str, Any] = {
            "timeout": int(self._poll_timeout),
            "allowed_updates": ["message"],
        }
        if self.offset is not None:
            payload["offset"] = self.offset
        self.polls += 1
        result = await self.call("getUpdates", payload, timeout=self._poll_timeout + _POLL_GRACE)
        if not isinstance(result, list):
            raise TelegramError("getUpdates", None, "the result is not a list")
        return result

    async def _learn_me(self) -> None:
        """Ask ``getMe`` for the bot's id and username. Raises TelegramError."""
        if self._me_lock is None:
            self._me_lock = asyncio.Lock()
        async with self._me_lock:
            me = await self.call("getMe", {}, timeout=self._request_timeout)
            if isinstance(me, dict):
                if _is_int(me.get("id")):
                    self.bot_id = int(me["id"])
                if isinstance(me.get("username"), str):
                    self.bot_username = me["username"]

    async def _learn_me_patiently(self) -> None:
        attempt = 0
        while True:
            try:
                await self._learn_me()
                self._reachable = True
                return
            except TelegramError as error:
                self._reachable = False
                delay = backoff_delay(attempt, self._backoff_first, self._backoff_max, self._rng)
                _logger.warning(
                    "telegram %r: getMe failed: %s; retrying in %.1fs", self._name, error, delay
                )
                attempt += 1
                await self._clock.sleep(delay)

    async def _send_text(self, chat_id: int, thread_id: int | None, text: str) -> None:
        for part in split_text(text):
            await self._send_part(chat_id, thread_id, part)

    async def _send_part(self, chat_id: int, thread_id: int | None, text: str) -> None:
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if thread_id is not None:
            payload["message_thread_id"] = thread_id
        chat = self._chats.get(str(chat_id))

        async def attempt() -> None:
            # Each attempt waits for the pace limits again: a retry is a message sent.
            await chat.acquire()
            await self._bot_rate.acquire()
            try:
                await self.call("sendMessage", payload, timeout=self._request_timeout)
            except TelegramError as error:
                # Flood control (429 + retry_after) is waited exactly as long as Telegram asks;
                # this conversation's next replies queue behind this one, other chats go on.
                raise AttemptFailed(
                    str(error),
                    retryable=error.retryable,
                    retry_after=error.retry_after,
                    error=error,
                ) from None

        try:
            await self._sender.send(
                attempt, what=f"telegram {self._name!r}: sendMessage to {chat_id}"
            )
        except GaveUp as failed:
            raise (failed.last.error or failed) from None  # the TelegramError of the last try
        self.sent_parts += 1

    def __repr__(self) -> str:
        where = getattr(self, "path", self.api_base)
        return f"<TelegramChannel {self._name!r} {self.mode} {where}>"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build(spec: ChannelSpec, context: ChannelContext) -> TelegramChannel:
    """Build a Telegram channel from its settings (the channel registry calls this)."""
    options = spec.options
    return TelegramChannel(
        spec.name,
        intake=context.intake,
        bot_token=options.get("bot_token") or "",
        allowed_users=spec.allowed_users,
        mode=options.get("mode") or "polling",
        secret_token=options.get("secret_token") or None,
        api_base=options.get("api_base") or "https://api.telegram.org",
        group_reply=options.get("group_reply") or "mention_only",
        path=spec.path,
        max_body_bytes=context.max_body_bytes,
        **(
            {"admission_timeout": options["admission_timeout"]}
            if options.get("admission_timeout") is not None
            else {}
        ),
    )
