"""The generic JSON webhook channel (docs/gateway.md).

``POST`` a JSON object ``{"sender", "content", "id"?, "reply_target"?, "thread_id"?, "metadata"?}``
to the channel's path. Checks, in order: bearer token (401), ``Content-Type: application/json``
(415), body size (413, enforced while reading), well-formed JSON and fields (400), ``allowed_users``
(403). The idempotency key is ``id``, else the ``Idempotency-Key`` header, else a fresh id.

- Sync mode (no ``callback_url``): the answer waits for the result: 200 success with the reply,
  502 failed, 504 timeout; a duplicate is answered 200 ``duplicate`` at once.
- Async mode (``callback_url``): 202 once admitted; each reply or notice is then POSTed to the
  callback as ``{"id", "channel", "recipient", "text", "kind": "reply" | "notice"}`` (plus
  ``thread_id`` when the request named one) with an ``Idempotency-Key: <channel>:<id>`` header
  (every attempt of one answer carries the same key), retried with
  a capped, fully jittered exponential backoff on 5xx, 429 and connection errors, each attempt under
  a timeout, a bounded number of times. Each conversation's callbacks go out in order; other
  conversations' callbacks never wait for them (the processor runs each conversation's deliveries
  on its own).
- Refused admissions: 429/503 ``{"status": "rejected", "reason"}`` with ``Retry-After``.

Admission itself waits at most ``admission_timeout`` (then 429), so a client is answered promptly
even when the processor's ``admission="wait"`` would park it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Mapping
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
    retry_after_header,
)
from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._validate import to_count, to_seconds
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    MessageResult,
    MessageResultKind,
)

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the webhook channel needs aiohttp: pip install 'zeroclaw[gateway]'") from exc

__all__ = ["CallbackError", "WebhookChannel"]

_logger = logging.getLogger("zeroclaw.channels.webhook")

_MAX_ERROR_TEXT = 500
_OPTIONAL_STRINGS = ("reply_target", "thread_id")

_Waiter = asyncio.Future[tuple[MessageResult, str | None]]


class CallbackError(Exception):
    """A reply could not be POSTed to the callback URL after every attempt."""


class WebhookChannel:
    """A generic JSON webhook: an HTTP push channel served by the gateway's server.

    Args:
        name: the channel's name (``ChannelMessage.channel``).
        intake: where admitted messages go (the gateway's intake).
        allowed_users: senders allowed; ``"*"`` allows all, ``()`` denies all, ``None`` allows all.
        token: when set, requests need ``Authorization: Bearer <token>`` (compared in constant
            time).
        callback_url: async mode: replies are POSTed there; ``None``: sync mode.
        path: the URL path; default ``/channels/<name>``.
        max_body_bytes: larger bodies get 413.
        admission_timeout: the longest an HTTP request waits to be admitted (then 429).
        callback_timeout: the longest one callback attempt may take.
        callback_retries: attempts after the first one, on 5xx, 429 and connection errors.
        callback_backoff: first and longest wait between attempts (full jitter), in seconds.
        rng: randomness of the jitter (seed it in tests).
        clock: time source of the backoff.

    Raises:
        ValueError, TypeError: a bad argument.
    """

    kind = "webhook"

    def __init__(
        self,
        name: str,
        *,
        intake: Intake,
        allowed_users: tuple[str, ...] | None = None,
        token: str | None = None,
        callback_url: str | None = None,
        path: str | None = None,
        max_body_bytes: int = 1_048_576,
        admission_timeout: float = 10.0,
        callback_timeout: float = 10.0,
        callback_retries: int = 3,
        callback_backoff: tuple[float, float] = (0.5, 4.0),
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.path = channel_path(name, path)
        self._name = name
        self._intake = intake
        self._allowed = allowed_users
        self._token = token.encode() if token else None
        self.callback_url = callback_url or None
        self._max_body = to_count(max_body_bytes, what="max_body_bytes", minimum=1)
        self._admission_timeout = to_seconds(admission_timeout, what="admission_timeout")
        self._sender = HttpSender(
            f"webhook {name!r}",
            timeout=to_seconds(callback_timeout, what="callback_timeout"),
            retries=to_count(callback_retries, what="callback_retries"),
            backoff=backoff_seconds(callback_backoff, what="callback_backoff"),
            rng=rng,
            clock=resolve_clock(clock),
            logger=_logger,
        )
        # Sync mode: the HTTP requests waiting for their message's result, oldest first.
        self._waiting: dict[tuple[str, str], deque[_Waiter]] = {}
        self._closed: asyncio.Event | None = None
        self.callbacks_sent = 0
        self.callback_failures = 0

    # ------------------------------------------------------------------ Channel protocol

    @property
    def name(self) -> str:
        return self._name

    @property
    def delivery_budget(self) -> float:
        """The longest one delivery can take: every callback attempt and the waits between."""
        if self.callback_url is None:
            return 0.0
        sender = self._sender
        waits = sum(
            min(sender.backoff_max, sender.backoff_first * 2.0**n) for n in range(sender.retries)
        )
        return (sender.retries + 1) * sender.timeout + waits

    @property
    def callback_retried(self) -> int:
        """Callback attempts retried (after a 5xx, a 429, a timeout or a connection error)."""
        return self._sender.retried

    @property
    def admission_timeout(self) -> float:
        """The longest one incoming message waits to be admitted before it is refused."""
        return self._admission_timeout

    @property
    def sync(self) -> bool:
        """``True`` in sync mode (no callback URL): HTTP answers carry the reply."""
        return self.callback_url is None

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        """Wait until :meth:`aclose`: messages arrive through :meth:`handle`, not a listener."""
        await self._closed_event().wait()

    async def send(self, message: str, recipient: str) -> None:
        """POST an unsolicited ``message`` to the callback (``id`` null, kind ``notice``).

        Raises:
            CallbackError: sync mode (there is no one to send to), or every attempt failed.
        """
        if self.callback_url is None:
            raise CallbackError(
                f"webhook channel {self._name!r} is in sync mode: no callback to send to"
            )
        await self._post_callback(
            {
                "id": None,
                "channel": self._name,
                "recipient": recipient,
                "text": message,
                "kind": "notice",
            }
        )

    async def health_check(self) -> bool:
        """``True`` until the channel is closed."""
        return not self._closed_event().is_set()

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Hand ``message``'s result to its HTTP request (sync) or POST it to the callback (async).

        Called by the processor, in each conversation's order, under its send timeout. In async
        mode this waits for the callback (every attempt); a ``text`` of ``None`` posts nothing.

        Raises:
            CallbackError: async mode, and every callback attempt failed.
        """
        try:
            if self.callback_url is None:
                self._resolve(message, result, text)
            elif text is not None:
                payload: dict[str, Any] = {
                    "id": message.id,
                    "channel": self._name,
                    "recipient": message.reply_to,
                    "text": text,
                    "kind": "reply" if result.kind is MessageResultKind.SUCCESS else "notice",
                }
                # Only when the request named a thread: a receiver that compares the documented
                # five keys keeps working, and one that threads replies can route this one.
                if message.thread_id is not None:
                    payload["thread_id"] = message.thread_id
                await self._post_callback(payload)
        finally:
            self._intake.finished(message, result)

    async def aclose(self) -> None:
        """Stop: :meth:`listen` returns, the callback session closes, and requests still
        waiting for a result (their delivery was given up) are answered ``cancelled`` (503)."""
        self._closed_event().set()
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result((MessageResult(MessageResultKind.CANCELLED), None))
        await self._sender.aclose()

    # ------------------------------------------------------------------ HTTP

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one webhook request (see the module docstring for the statuses).

        Waits for admission (at most ``admission_timeout``) and, in sync mode, for the result.

        Raises:
            BodyTooLarge: the body passes ``max_body_bytes`` (the server answers 413).
        """
        if self._token is not None and not self._authorized(request):
            return error_response(
                401,
                "missing or wrong bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="zeroclaw"'},
            )
        if request.content_type != "application/json":
            return error_response(415, "Content-Type must be application/json")
        body = await read_limited_body(request, self._max_body)
        parsed = self._parse(body, request.headers.get("Idempotency-Key"))
        if isinstance(parsed, str):
            return error_response(400, parsed)
        message = parsed
        if not allows(self._allowed, message.sender):
            self._intake.ignored(self._name, message, "sender not allowed")
            return error_response(403, "sender not allowed")
        return await self._admit(message)

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def _parse(self, body: bytes, idempotency_key: str | None) -> ChannelMessage | str:
        """The message in ``body``, or the reason it is malformed (answered 400)."""
        try:
            data = wire_json.loads(body)
        except ValueError as exc:
            return f"malformed JSON: {exc}"
        if not isinstance(data, dict):
            return "the body must be a JSON object"
        fields: dict[str, str] = {}
        for key in ("sender", "content"):
            value = data.get(key)
            if not isinstance(value, str):
                return f"{key!r} is required and must be a string"
            if not value.strip():
                return f"{key!r} must not be empty"
            fields[key] = value
        optional: dict[str, str | None] = {}
        for key in ("id", *_OPTIONAL_STRINGS):
            value = data.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                return f"{key!r} must be a non-empty string when given"
            optional[key] = value
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            return "'metadata' must be a JSON object when given"
        message_id = optional["id"] or idempotency_key or uuid.uuid4().hex
        return ChannelMessage(
            id=message_id,
            sender=fields["sender"],
            content=fields["content"],
            channel=self._name,
            timestamp=time.time(),
            reply_target=optional["reply_target"],
            thread_id=optional["thread_id"],
            metadata=metadata,
        )

    async def _admit(self, message: ChannelMessage) -> web.Response:
        key = (message.sender, message.id)
        waiter: _Waiter | None = None
        if self.callback_url is None:
            # Registered before admission: a fast handler may deliver before submit returns.
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(waiter)
        try:
            admission = await submit_within(self._intake, self, message, self._admission_timeout)
            if admission.kind is AdmissionKind.DUPLICATE:
                return web.json_response({"id": message.id, "status": "duplicate"})
            if admission.kind is AdmissionKind.REJECTED:
                return refusal_response(admission.reason, admission.retry_after, id=message.id)
            if waiter is None:
                return web.json_response({"id": message.id, "status": "accepted"}, status=202)
            result, text = await waiter
            return self._result_response(message, result, text)
        finally:
            if waiter is not None:
                self._forget(key, waiter)

    def _forget(self, key: tuple[str, str], waiter: _Waiter) -> None:
        waiters = self._waiting.get(key)
        if waiters is None:
            return
        if waiter in waiters:  # still there when no result came (refused, gone, closed)
            waiters.remove(waiter)
        if not waiters:
            del self._waiting[key]

    def _resolve(self, message: ChannelMessage, result: MessageResult, text: str | None) -> None:
        waiters = self._waiting.get((message.sender, message.id))
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result((result, text))
                return
        # The client went away (its request was cancelled): nobody to answer, nothing lost but
        # the answer itself, which the ledger still counts.
        _logger.info(
            "webhook %r: message %r ended %s after its request was gone",
            self._name,
            message.id,
            result.kind.value,
        )

    @staticmethod
    def _result_response(
        message: ChannelMessage, result: MessageResult, text: str | None
    ) -> web.Response:
        kind = result.kind
        if kind is MessageResultKind.SUCCESS:
            return web.json_response({"id": message.id, "status": "success", "reply": text})
        if kind is MessageResultKind.FAILED:
            error = result.error
            description = f"{type(error).__name__}: {error}" if error is not None else "failed"
            return web.json_response(
                {"id": message.id, "status": "failed", "error": description[:_MAX_ERROR_TEXT]},
                status=502,
            )
        if kind is MessageResultKind.TIMEOUT:
            return web.json_response({"id": message.id, "status": "timeout"}, status=504)
        if kind is MessageResultKind.REJECTED:
            # Accepted, then refused before it ran (the breaker opened while it waited).
            retry_after = getattr(result.error, "retry_after", None)
            return refusal_response("circuit open", retry_after, id=message.id)
        # CANCELLED (a shutdown that could not wait for it): 503, try again. The queue modes'
        # kinds (merged into a later message, interrupted by one) were answered elsewhere: 200.
        body: dict[str, Any] = {"id": message.id, "status": kind.value}
        merged_into = getattr(result, "merged_into", None)
        if merged_into is not None:
            body["merged_into"] = merged_into
        cancelled = kind is MessageResultKind.CANCELLED
        return web.json_response(
            body,
            status=503 if cancelled else 200,
            headers=retry_after_header(None) if cancelled else None,
        )

    # ------------------------------------------------------------------ callbacks

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    async def _post_callback(self, payload: Mapping[str, Any]) -> None:
        """POST ``payload`` to the callback; retry 5xx/429/connection errors/timeouts.

        Raises:
            CallbackError: every attempt failed, the callback answered another 4xx, or the
                channel was closed.
        """
        assert self.callback_url is not None
        url = self.callback_url

        # A repeat of the same answer (a retry, or a scale-out takeover resending a reply whose
        # owner died sending it) carries the same key: a receiver can drop it.
        message_id = payload.get("id")
        headers = None if message_id is None else {"Idempotency-Key": f"{self._name}:{message_id}"}

        async def attempt() -> None:
            answer = await self._sender.post(url, json=payload, headers=headers)
            status = answer.status
            if status >= 300:
                raise AttemptFailed(f"HTTP {status}", retryable=status >= 500 or status == 429)

        try:
            await self._sender.send(attempt, what=f"webhook {self._name!r}: callback {url}")
        except GaveUp as failed:
            self.callback_failures += 1
            raise CallbackError(
                f"callback {url} for message {payload.get('id')!r} failed after "
                f"{failed.attempts} attempt(s): {failed.problem}"
            ) from None
        self.callbacks_sent += 1

    def __repr__(self) -> str:
        mode = "sync" if self.callback_url is None else f"async -> {self.callback_url}"
        return f"<WebhookChannel {self._name!r} {self.path} {mode}>"


def build(spec: ChannelSpec, context: ChannelContext) -> WebhookChannel:
    """Build a webhook channel from its settings (the channel registry calls this)."""
    options = spec.options
    return WebhookChannel(
        spec.name,
        intake=context.intake,
        allowed_users=spec.allowed_users,
        token=options.get("token") or None,
        callback_url=options.get("callback_url") or None,
        path=spec.path,
        max_body_bytes=context.max_body_bytes,
        **{
            key: options[key]
            for key in ("callback_timeout", "callback_retries", "admission_timeout")
            if options.get(key) is not None
        },
    )
