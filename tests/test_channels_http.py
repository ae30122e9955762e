"""The channels' shared sender (zeroclaw.channels.http.HttpSender): its retry loop and its session.

The loop's rules are checked with attempts that are plain coroutines on a fake clock; the session
and the "closed" guard over a real loopback server, and through each channel that sends with it
(Slack's Web API calls, Telegram's Bot API calls, the webhook's callbacks).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.fakes.loopback import LoopbackFake
from tests.helpers import RecordingIntake
from zeroclaw.channels.http import (
    AttemptFailed,
    GaveUp,
    HttpSender,
    SenderClosed,
    backoff_delay,
)
from zeroclaw.channels.slack import SlackApiError, SlackChannel
from zeroclaw.channels.telegram import TelegramChannel, TelegramError
from zeroclaw.channels.webhook import CallbackError, WebhookChannel
from zeroclaw.testing import FakeClock


class Echo(LoopbackFake):
    """Answers every POST with ``status`` (200 by default) and counts the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []
        self.requests = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": True, "result": {}}, status=status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    async with Echo() as server:
        yield server


def sender(clock: FakeClock | None = None, **options: object) -> HttpSender:
    settings: dict[str, object] = {"timeout": 5.0, "retries": 3, "backoff": (0.5, 4.0)}
    settings.update(options)
    return HttpSender(
        "test 'x'",
        rng=random.Random(1),
        clock=clock,
        **settings,  # type: ignore[arg-type]
    )


class Script:
    """An attempt that fails with the given failures in turn, then returns ``"done"``."""

    def __init__(self, *failures: AttemptFailed) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


# ---------------------------------------------------------------------------- the retry loop


async def test_a_retryable_failure_is_retried_after_the_backoff() -> None:
    clock = FakeClock()
    send = sender(clock)
    attempt = Script(AttemptFailed("HTTP 503"), AttemptFailed("HTTP 502"))
    running = asyncio.create_task(send.send(attempt, what="post"))
    rng = random.Random(1)  # the sender's jitter, drawn again
    first, second = backoff_delay(0, 0.5, 4.0, rng), backoff_delay(1, 0.5, 4.0, rng)
    await clock.run_for(first + second + 0.001)
    assert await running == "done"
    assert (attempt.calls, send.retried) == (3, 2)


async def test_the_wait_the_server_asks_for_is_waited_exactly() -> None:
    clock = FakeClock()
    send = sender(clock, max_retry_wait=10.0)
    attempt = Script(AttemptFailed("HTTP 429", retry_after=7.0))
    running = asyncio.create_task(send.send(attempt, what="post"))
    await clock.run_for(6.999)
    assert attempt.calls == 1
    await clock.run_for(0.001)
    assert await running == "done"
    assert attempt.calls == 2


async def test_a_wait_over_max_retry_wait_gives_up_at_once() -> None:
    clock = FakeClock()
    send = sender(clock, max_retry_wait=10.0)
    attempt = Script(AttemptFailed("HTTP 429", retry_after=11.0))
    with pytest.raises(GaveUp) as failed:
        await send.send(attempt, what="post")
    assert (failed.value.attempts, failed.value.too_long, clock.now()) == (1, True, 0.0)
    assert failed.value.problem == "HTTP 429"


async def test_a_failure_that_is_not_retryable_gives_up_at_once() -> None:
    send = sender(FakeClock())
    attempt = Script(AttemptFailed("HTTP 404", retryable=False))
    with pytest.raises(GaveUp) as failed:
        await send.send(attempt, what="post")
    assert (failed.value.attempts, failed.value.too_long, attempt.calls) == (1, False, 1)
    assert "post: gave up after 1 attempt(s), last: HTTP 404" in str(failed.value)


async def test_retries_are_bounded_and_each_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    send = sender(FakeClock(), retries=2, backoff=(0.0, 0.0))
    attempt = Script(*(AttemptFailed(f"HTTP 50{n}") for n in range(10)))
    with (
        caplog.at_level(logging.WARNING, logger="zeroclaw.channels.http"),
        pytest.raises(GaveUp) as failed,
    ):
        await send.send(attempt, what="post")
    assert (failed.value.attempts, attempt.calls, send.retried) == (3, 3, 2)
    assert failed.value.problem == "HTTP 502"
    assert [r.getMessage() for r in caplog.records] == [
        "post: HTTP 500; retrying in 0.00s",
        "post: HTTP 501; retrying in 0.00s",
    ]


async def test_other_exceptions_of_an_attempt_propagate_unchanged() -> None:
    send = sender(FakeClock())

    async def attempt() -> None:
        raise KeyError("mine")

    with pytest.raises(KeyError):
        await send.send(attempt, what="post")
    assert send.retried == 0


# ---------------------------------------------------------------------------- the session


async def test_post_reads_any_status_and_reuses_its_session(echo: Echo) -> None:
    send = sender()
    try:
        echo.statuses = [503]
        answer = await send.post(echo.url + "/a", json={"x": 1})
        assert answer.status == 503
        assert answer.json() == {"ok": True, "result": {}}
        session = send.client()
        assert (await send.post(echo.url + "/b", data=b"{}")).status == 200
        assert send.client() is session
    finally:
        await send.aclose()


async def test_after_aclose_a_call_fails_and_opens_no_session(echo: Echo) -> None:
    send = sender()
    await send.post(echo.url)
    await send.aclose()
    with pytest.raises(SenderClosed):
        send.client()
    with pytest.raises(AttemptFailed) as failed:
        await send.post(echo.url)
    assert not failed.value.retryable
    assert send._session is None
    assert echo.requests == 1


async def test_a_send_waiting_to_retry_when_closed_gives_up_without_another_request(
    echo: Echo,
) -> None:
    clock = FakeClock()
    send = sender(clock, backoff=(1.0, 1.0))
    echo.statuses = [503]

    async def attempt() -> None:
        answer = await send.post(echo.url)
        if answer.status >= 500:
            raise AttemptFailed(f"HTTP {answer.status}")

    running = asyncio.create_task(send.send(attempt, what="post"))
    for _ in range(200):  # the first answer comes over a real socket
        if send.retried:
            break
        await asyncio.sleep(0.01)
    assert send.retried == 1
    await send.aclose()
    await clock.run_for(1.0)
    with pytest.raises(GaveUp) as failed:
        await running
    assert not failed.value.last.retryable
    assert (echo.requests, send._session) == (1, None)


# ---------------------------------------------------------------------------- each channel


async def test_slack_after_aclose_fails_instead_of_opening_a_session(echo: Echo) -> None:
    channel = SlackChannel(
        "team", intake=RecordingIntake(), bot_token="xoxb-1", signing_secret="s", api_base=echo.url
    )
    await channel.post_message("C1", "before")
    await channel.aclose()
    with pytest.raises(SlackApiError, match="closed"):
        await channel.post_message("C1", "after")
    assert (echo.requests, channel._sender._session) == (1, None)


async def test_webhook_after_aclose_fails_instead_of_opening_a_session(echo: Echo) -> None:
    channel = WebhookChannel("hook", intake=RecordingIntake(), callback_url=echo.url + "/cb")
    await channel.send("before", "bob")
    await channel.aclose()
    with pytest.raises(CallbackError, match="closed"):
        await channel.send("after", "bob")
    assert (echo.requests, channel._sender._session, channel.callback_failures) == (1, None, 1)


async def test_telegram_after_aclose_fails_instead_of_opening_a_session(echo: Echo) -> None:
    channel = TelegramChannel(
        "bot", intake=RecordingIntake(), bot_token="1:x", allowed_users=None, api_base=echo.url
    )
    await channel.send("before", "42")
    await channel.aclose()
    with pytest.raises(TelegramError, match="closed"):
        await channel.send("after", "42")
    assert (echo.requests, channel._sender._session, channel.send_retried) == (1, None, 0)
