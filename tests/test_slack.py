"""The Slack channel in process, over real loopback sockets, against the fake Slack Web API.

A real ``ConcurrentMessageProcessor`` (with the gateway's handler hook) admits the events, the
gateway's aiohttp server routes them to the channel, and the requests are signed by
``tests.fakes.slack_api.signed_headers`` from Slack's documented formula. The wall clock the
channel judges timestamps by is fixed (``NOW``), so the replay window is tested to the second.
The end-to-end test through ``zeroclaw serve`` is tests/test_slack_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.slack_api import (
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    FakeSlack,
    dm_event,
    hang,
    mention_event,
    rate_limited,
    server_error,
    signed_headers,
    slack_error,
)
from tests.helpers import Script, UnusedProvider
from zeroclaw.channels import ChannelContext, build_channel
from zeroclaw.channels.slack import (
    SlackApiError,
    SlackChannel,
    parse_retry_after,
    parse_target,
    reply_target,
    request_signature,
    verify_request,
)
from zeroclaw.channels.text import split_text
from zeroclaw.concurrency.channel_integration import (
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
)
from zeroclaw.gateway.config import parse_config
from zeroclaw.gateway.intake import GatewayIntake
from zeroclaw.gateway.metrics import MessageLedger
from zeroclaw.gateway.server import GatewayServer
from zeroclaw.testing import FakeClock

NOW = 1_800_000_000


@dataclass
class Rig:
    base: str
    session: aiohttp.ClientSession
    slack: FakeSlack
    script: Script
    cmp: ConcurrentMessageProcessor
    ledger: MessageLedger
    intake: GatewayIntake
    server: GatewayServer
    channel: SlackChannel
    runner: asyncio.Task[None]

    async def deliver(
        self,
        envelope: dict[str, Any],
        *,
        retry_num: int | None = None,
        timestamp: int = NOW,
        secret: str = SIGNING_SECRET,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """POST ``envelope`` to the channel as Slack would (signed), return the answer."""
        body = json.dumps(envelope).encode()
        sent = (
            headers
            if headers is not None
            else signed_headers(body, secret=secret, timestamp=timestamp, retry_num=retry_num)
        )
        async with self.session.post(
            self.base + self.channel.path, data=body, headers=sent
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None, dict(response.headers)

    def sends(self) -> tuple[int, int]:
        counts = self.cmp.channel_stats().get(self.channel.name)
        return (counts.sent, counts.send_failures) if counts else (0, 0)

    async def settled(self, sent: int = 0, failures: int = 0) -> None:
        """Wait until the channel's deliveries reached these counts (generous bound)."""
        deadline = time.monotonic() + 10.0
        while self.sends() < (sent, failures):
            assert time.monotonic() < deadline, f"sends {self.sends()} never reached"
            await asyncio.sleep(0.01)


async def start_rig(config: MessageProcessorConfig | None = None, **channel_options: Any) -> Rig:
    slack = FakeSlack()
    await slack.start()
    script = Script()
    cmp = ConcurrentMessageProcessor(
        config or MessageProcessorConfig(processing_timeout=5.0),
        handler=script,
        handle_signals=False,
        send_timeout=10.0,
        drain_timeout=5.0,
    )
    ledger = MessageLedger()
    intake = GatewayIntake(cmp, ledger)
    options: dict[str, Any] = {
        "allowed_users": ("U0ALICE", "U0BOB"),
        "retry_backoff": (0.001, 0.002),
        "wall_clock": lambda: float(NOW),
        **channel_options,
    }
    channel = SlackChannel(
        "slack",
        intake=intake,
        bot_token=BOT_TOKEN,
        signing_secret=SIGNING_SECRET,
        api_base=slack.base_url,
        **options,
    )
    runner = asyncio.get_running_loop().create_task(cmp.start([channel], UnusedProvider(), None))
    await asyncio.wait_for(cmp.wait_started(), 10)
    server = GatewayServer(
        host="127.0.0.1",
        port=0,
        channels=[channel],
        metrics=lambda: b"",
        status=_no_status,
        max_body_bytes=1 << 20,
    )
    port = await server.start()
    return Rig(
        f"http://127.0.0.1:{port}",
        aiohttp.ClientSession(),
        slack,
        script,
        cmp,
        ledger,
        intake,
        server,
        channel,
        runner,
    )


async def _no_status() -> dict[str, Any]:
    return {}


async def stop_rig(rig: Rig) -> None:
    await rig.session.close()
    await rig.cmp.stop()
    await asyncio.wait_for(rig.runner, 10)
    await rig.channel.aclose()
    await rig.server.stop()
    await rig.slack.stop()


def single_slot(admission: Literal["wait", "reject"]) -> MessageProcessorConfig:
    """One message at a time: the next one waits for room or is refused."""
    return MessageProcessorConfig(
        max_concurrent_requests=1, worker_pool_size=1, admission=admission, processing_timeout=5.0
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = await start_rig()
    try:
        yield rig
    finally:
        await stop_rig(rig)


def outcomes(rig: Rig) -> dict[str, int]:
    entry = rig.ledger.snapshot().get("slack")
    return {k: v for k, v in entry.outcomes.items() if v} if entry else {}


# ---------------------------------------------------------------------------- events in


async def test_dm_is_answered_once_in_the_dm_even_when_delivered_three_times(rig: Rig) -> None:
    event = dm_event("hello there")
    answers = [await rig.deliver(event)]
    answers += [await rig.deliver(event, retry_num=n) for n in (1, 2)]
    assert [(status, body["status"]) for status, body, _ in answers] == [
        (200, "accepted"),
        (200, "duplicate"),
        (200, "duplicate"),
    ]
    await rig.slack.wait_for_posts(1)
    await rig.settled(sent=1)
    (seen,) = rig.script.calls
    assert (seen.id, seen.sender, seen.content) == ("Ev0DM1", "U0ALICE", "hello there")
    assert seen.thread_id is None  # a top-level DM is answered in the DM itself
    (post,) = rig.slack.posts
    assert post == {"channel": "D0DM", "text": "echo: hello there"}
    (call,) = rig.slack.calls("chat.postMessage")
    assert call.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    assert outcomes(rig) == {"accepted": 1, "duplicate": 2, "success": 1}


async def test_mention_is_answered_once_in_a_thread_started_from_it(rig: Rig) -> None:
    event = mention_event("what is 2+2?", ts="1700000002.000200")
    statuses = [(await rig.deliver(event, retry_num=n or None))[0] for n in range(3)]
    assert statuses == [200, 200, 200]
    await rig.slack.wait_for_posts(1)
    await rig.settled(sent=1)
    (seen,) = rig.script.calls
    assert seen.content == "what is 2+2?"  # the leading <@BOT> mention is not the question
    assert rig.slack.posts == [
        {"channel": "C0GENERAL", "text": "echo: what is 2+2?", "thread_ts": "1700000002.000200"}
    ]


async def test_three_concurrent_deliveries_are_admitted_once(rig: Rig) -> None:
    release = rig.script.hold()
    event = mention_event("hi", event_id="Ev0CONC")
    answers = await asyncio.gather(*(rig.deliver(event, retry_num=n or None) for n in range(3)))
    statuses = sorted(body["status"] for _, body, _ in answers)
    assert statuses == ["accepted", "duplicate", "duplicate"]
    release.set()
    await rig.slack.wait_for_posts(1)
    await rig.settled(sent=1)
    assert len(rig.script.calls) == 1
    assert len(rig.slack.posts) == 1


async def test_the_im_and_mention_events_of_one_dm_message_are_processed_once(rig: Rig) -> None:
    dm = dm_event("<@U0BOTUSER> hi", event_id="Ev0A", channel="D0DM", ts="1700000005.000001")
    mention = mention_event("hi", event_id="Ev0B", channel="D0DM", ts="1700000005.000001")
    first, second = await rig.deliver(dm), await rig.deliver(mention)
    assert (first[1]["status"], second[1]["status"]) == ("accepted", "duplicate")
    await rig.settled(sent=1)
    assert len(rig.script.calls) == 1


async def test_messages_in_threads_are_answered_in_their_thread(rig: Rig) -> None:
    await rig.deliver(
        mention_event("follow-up", event_id="Ev1", ts="1700000010.1", thread_ts="1700000002.2")
    )
    await rig.deliver(
        dm_event("in a dm thread", event_id="Ev2", ts="1700000011.1", thread_ts="9.9")
    )
    await rig.slack.wait_for_posts(2)
    posts = sorted(rig.slack.posts, key=lambda post: post["channel"])
    assert posts == [
        {"channel": "C0GENERAL", "text": "echo: follow-up", "thread_ts": "1700000002.2"},
        {"channel": "D0DM", "text": "echo: in a dm thread", "thread_ts": "9.9"},
    ]
    threads = {m.id: (m.reply_target, m.thread_id) for m in rig.script.calls}
    assert threads == {
        "Ev1": ("C0GENERAL:1700000002.2", "1700000002.2"),
        "Ev2": ("D0DM:9.9", "9.9"),
    }


async def test_url_verification_echoes_the_challenge(rig: Rig) -> None:
    status, body, _ = await rig.deliver(
        {
            "token": "x",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    )
    assert (status, body) == (
        200,
        {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"},
    )


# ---------------------------------------------------------------------------- refused requests


def _unsigned(body: bytes, **changes: str | None) -> dict[str, str]:
    headers = signed_headers(body, timestamp=NOW)
    for name, value in changes.items():
        header = {"timestamp": "X-Slack-Request-Timestamp", "signature": "X-Slack-Signature"}[name]
        if value is None:
            del headers[header]
        else:
            headers[header] = value
    return headers


@pytest.mark.parametrize(
    "case",
    [
        "wrong secret",
        "stale timestamp",
        "future timestamp",
        "no timestamp",
        "no signature",
        "no headers",
        "timestamp not a number",
        "signature of another body",
        "signature of another timestamp",
    ],
)
async def test_requests_not_from_slack_get_401_and_nothing_is_processed(
    rig: Rig, case: str
) -> None:
    event = dm_event("do not process me")
    body = json.dumps(event).encode()
    other = json.dumps(dm_event("something else")).encode()
    headers = {
        "wrong secret": signed_headers(body, secret="not-the-secret", timestamp=NOW),
        "stale timestamp": signed_headers(body, timestamp=NOW - 301),
        "future timestamp": signed_headers(body, timestamp=NOW + 301),
        "no timestamp": _unsigned(body, timestamp=None),
        "no signature": _unsigned(body, signature=None),
        "no headers": {"Content-Type": "application/json"},
        "timestamp not a number": _unsigned(body, timestamp="yesterday"),
        "signature of another body": {
            **signed_headers(other, timestamp=NOW),
            "X-Slack-Request-Timestamp": str(NOW),
        },
        "signature of another timestamp": {
            **signed_headers(body, timestamp=NOW - 1),
            "X-Slack-Request-Timestamp": str(NOW),
        },
    }[case]
    status, answer, _ = await rig.deliver(event, headers=headers)
    assert status == 401
    assert "error" in answer
    assert rig.script.calls == []
    assert outcomes(rig) == {}
    # The same event, signed, at the edge of the window, goes through.
    status, answer, _ = await rig.deliver(event, timestamp=NOW - 300)
    assert (status, answer["status"]) == (200, "accepted")


async def test_unsigned_url_verification_is_refused(rig: Rig) -> None:
    status, _, _ = await rig.deliver(
        {"challenge": "c", "type": "url_verification"}, headers={"Content-Type": "application/json"}
    )
    assert status == 401


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (dm_event("hi", user="U0MALLORY"), "sender not allowed"),
        (dm_event("hi", bot_id="B0OTHER"), "message from a bot"),
        (dm_event("hi", subtype="message_changed"), "message subtype 'message_changed'"),
        (dm_event("bye", subtype="bot_message"), "message subtype 'bot_message'"),
        (dm_event("hi", channel_type="channel"), "message in a 'channel' channel, not a DM"),
        (dm_event("mine", user=BOT_USER_ID), "the bot's own message"),
        (mention_event(""), "message without text"),
        (
            {**dm_event("x"), "event": {"type": "reaction_added", "user": "U0ALICE"}},
            "event type 'reaction_added'",
        ),
        ({"type": "app_rate_limited", "team_id": "T0"}, "request type 'app_rate_limited'"),
    ],
)
async def test_events_not_for_the_bot_get_200_and_are_not_processed(
    rig: Rig, event: dict[str, Any], why: str
) -> None:
    await until_bot_known(rig.channel)
    status, body, _ = await rig.deliver(event)
    assert (status, body) == (200, {"status": "ignored", "reason": why})
    assert rig.script.calls == []
    assert rig.slack.calls("chat.postMessage") == []
    expected = {"ignored": 1} if why == "sender not allowed" else {}
    assert outcomes(rig) == expected


async def until_bot_known(channel: SlackChannel) -> None:
    deadline = time.monotonic() + 10.0
    while channel.bot_user_id is None:  # learnt from auth.test when the channel starts
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert channel.bot_user_id == BOT_USER_ID


async def test_malformed_json_with_a_good_signature_is_400(rig: Rig) -> None:
    body = b'{"type": "event_callback", '
    async with rig.session.post(
        rig.base + "/channels/slack", data=body, headers=signed_headers(body, timestamp=NOW)
    ) as response:
        assert response.status == 400
    assert rig.script.calls == []


# ---------------------------------------------------------------------------- the 3 s budget


async def test_a_refused_event_gets_429_and_is_processed_when_redelivered() -> None:
    rig = await start_rig(single_slot("reject"))
    try:
        release = rig.script.hold()
        first = await rig.deliver(dm_event("one", event_id="Ev1", ts="1.1"))
        refused = await rig.deliver(dm_event("two", event_id="Ev2", ts="2.2"))
        assert first[1]["status"] == "accepted"
        status, body, headers = refused
        assert (status, body["status"]) == (429, "rejected")
        assert int(headers["Retry-After"]) >= 1
        release.set()
        await rig.settled(sent=1)
        again = await rig.deliver(dm_event("two", event_id="Ev2", ts="2.2"), retry_num=1)
        assert again[1]["status"] == "accepted"
        await rig.settled(sent=2)
        assert [m.content for m in rig.script.calls] == ["one", "two"]
    finally:
        await stop_rig(rig)


async def test_admission_waits_at_most_the_admission_timeout() -> None:
    rig = await start_rig(
        single_slot("wait"),
        admission_timeout=0.3,
    )
    try:
        release = rig.script.hold()
        assert (await rig.deliver(dm_event("one", event_id="Ev1", ts="1.1")))[0] == 200
        started = time.monotonic()
        status, body, headers = await rig.deliver(dm_event("two", event_id="Ev2", ts="2.2"))
        waited = time.monotonic() - started
        assert (status, body["reason"]) == (429, "admission timed out")
        assert "Retry-After" in headers
        assert 0.25 <= waited < 2.5
        release.set()
        await rig.settled(sent=1)
        assert [m.content for m in rig.script.calls] == ["one"]
    finally:
        await stop_rig(rig)


async def test_the_ack_does_not_wait_for_the_reply(rig: Rig) -> None:
    # The provider is held until after the ack (longer than any LLM call: as long as the test
    # wants); Slack retries an event it has not had a 2xx for within 3 s.
    release = rig.script.hold()
    started = time.monotonic()
    status, body, _ = await asyncio.wait_for(rig.deliver(dm_event("hi")), 5.0)
    assert time.monotonic() - started < 1.0
    assert (status, body["status"]) == (200, "accepted")
    assert rig.slack.posts == []
    release.set()
    await rig.slack.wait_for_posts(1)


# ---------------------------------------------------------------------------- replies out


async def test_outbound_429_waits_retry_after_then_delivers_once() -> None:
    clock = FakeClock()
    rig = await start_rig(clock=clock)
    try:
        rig.slack.script("chat.postMessage", rate_limited(retry_after="2"))
        await rig.deliver(dm_event("hi"))
        await rig.slack.wait_for("chat.postMessage", 1)
        deadline = time.monotonic() + 10.0
        while clock.next_deadline != pytest.approx(clock.now() + 2.0):
            assert time.monotonic() < deadline, "the channel never waited Retry-After"
            await asyncio.sleep(0.01)
        clock.advance(1.9)
        assert len(rig.slack.calls("chat.postMessage")) == 1  # still waiting
        clock.advance(0.2)
        await rig.slack.wait_for_posts(1)
        await rig.settled(sent=1)
        assert rig.slack.posts == [{"channel": "D0DM", "text": "echo: hi"}]
        assert len(rig.slack.calls("chat.postMessage")) == 2
        assert rig.channel.rate_limited == 1
    finally:
        await stop_rig(rig)


async def test_ok_false_is_a_send_failure_and_not_retried(rig: Rig) -> None:
    rig.slack.script("chat.postMessage", slack_error("channel_not_found"))
    await rig.deliver(dm_event("hi"))
    await rig.settled(failures=1)
    assert rig.sends() == (0, 1)
    assert rig.channel.send_failures == 1
    assert len(rig.slack.calls("chat.postMessage")) == 1
    assert rig.slack.posts == []
    # The next conversation is answered as usual.
    await rig.deliver(dm_event("again", event_id="Ev2", channel="D0OTHER", ts="3.3"))
    await rig.settled(sent=1, failures=1)


async def test_a_send_that_keeps_failing_ends_after_bounded_retries() -> None:
    rig = await start_rig(send_retries=2)
    try:
        rig.slack.script("chat.postMessage", *(server_error() for _ in range(5)))
        await rig.deliver(dm_event("hi"))
        await rig.settled(failures=1)
        assert len(rig.slack.calls("chat.postMessage")) == 3
        assert rig.channel.retried == 2
        assert rig.slack.posts == []
    finally:
        await stop_rig(rig)


async def test_a_stuck_conversation_does_not_hold_up_another() -> None:
    rig = await start_rig(request_timeout=1.0, send_retries=0)
    try:
        rig.slack.script("chat.postMessage", hang())
        await rig.deliver(mention_event("stuck", event_id="Ev1", ts="1.1"))
        await rig.slack.wait_for("chat.postMessage", 1)
        # Another thread of the same Slack channel: its own conversation.
        await rig.deliver(mention_event("free", event_id="Ev2", ts="2.2"))
        await rig.slack.wait_for_posts(1)
        free = {"channel": "C0GENERAL", "text": "echo: free", "thread_ts": "2.2"}
        assert rig.slack.posts == [free]
        assert rig.sends()[1] == 0  # the stuck one is still waiting for its answer
        await rig.settled(sent=1, failures=1)
    finally:
        await stop_rig(rig)


async def test_a_long_reply_goes_as_ordered_parts_in_the_thread(rig: Rig) -> None:
    reply = "".join(f"line {n:04d} " + "x" * 80 + "\n" for n in range(100))  # 9 000+ chars

    async def long(message: ChannelMessage) -> str:
        return reply

    rig.script.behaviour = long
    await rig.deliver(mention_event("essay please", ts="5.5"))
    await rig.settled(sent=1)
    posts = rig.slack.posts
    assert len(posts) == 3
    assert all(len(post["text"]) <= 4000 and post["thread_ts"] == "5.5" for post in posts)
    assert "".join(post["text"] for post in posts) == reply
    assert all(post["text"].endswith("\n") for post in posts)  # cut at line breaks


# ---------------------------------------------------------------------------- health, building


async def test_health_check_follows_auth_test() -> None:
    async with FakeSlack() as slack:
        intake = GatewayIntake(None, MessageLedger())
        clock = FakeClock()
        good = SlackChannel(
            "s",
            intake=intake,
            bot_token=BOT_TOKEN,
            signing_secret="x",
            api_base=slack.base_url,
            clock=clock,
        )
        bad = SlackChannel(
            "b",
            intake=intake,
            bot_token="xoxb-wrong",
            signing_secret="x",
            api_base=slack.base_url,
            clock=clock,
        )
        try:
            assert await good.health_check() is True
            assert await bad.health_check() is False
            assert len(slack.calls("auth.test")) == 2
            slack.script("auth.test", slack_error("account_inactive"))
            assert await good.health_check() is True  # the answer is kept health_ttl
            clock.advance(31.0)
            assert await good.health_check() is False
            assert len(slack.calls("auth.test")) == 3
        finally:
            await good.aclose()
            await bad.aclose()
        assert await good.health_check() is False  # closed


async def test_health_check_is_false_when_slack_is_unreachable() -> None:
    async with FakeSlack() as slack:
        base = slack.base_url
    channel = SlackChannel(
        "s",
        intake=GatewayIntake(None, MessageLedger()),
        bot_token=BOT_TOKEN,
        signing_secret="x",
        api_base=base,
    )
    try:
        assert await channel.health_check() is False
        with pytest.raises(SlackApiError, match="unreachable"):
            await channel.post_message("C1", "hi")
    finally:
        await channel.aclose()


def test_the_registry_builds_a_slack_channel_from_the_config() -> None:
    config = parse_config(
        {
            "provider": {"kind": "echo"},
            "channels": {
                "slack": {
                    "bot_token": "${SLACK_BOT_TOKEN}",
                    "signing_secret": "${SLACK_SIGNING_SECRET}",
                    "api_base": "http://127.0.0.1:9/api/",
                    "allowed_users": ["U0ALICE"],
                }
            },
        },
        source="test.toml",
        environ={"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "sec"},
    )
    (spec,) = config.channels
    channel = build_channel(spec, ChannelContext(intake=GatewayIntake(None, MessageLedger())))
    assert isinstance(channel, SlackChannel)
    assert (channel.name, channel.path, channel.api_base) == (
        "slack",
        "/channels/slack",
        "http://127.0.0.1:9/api",
    )


@pytest.mark.parametrize("missing", ["bot_token", "signing_secret"])
def test_an_empty_token_or_secret_is_refused(missing: str) -> None:
    options = {"bot_token": "xoxb-1", "signing_secret": "s", missing: ""}
    with pytest.raises(ValueError, match=f"{missing} is required"):
        SlackChannel(
            "s",
            intake=GatewayIntake(None, MessageLedger()),
            bot_token=options["bot_token"],
            signing_secret=options["signing_secret"],
        )


# ---------------------------------------------------------------------------- pure pieces


def test_signature_matches_slacks_documented_example() -> None:
    # The worked example of Slack's "Verifying requests from Slack".
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id="
        b"G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook"
        b"-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F3977"
        b"00885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d1"
        b"0d2c447fce8b6703c"
    )
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert request_signature(secret, "1531420618", body) == expected
    assert verify_request(secret, "1531420618", expected, body, now=1531420618 + 299) is None
    assert verify_request(secret, "1531420618", expected, body, now=1531420618 + 301) is not None


def test_targets_and_retry_after() -> None:
    assert parse_target(reply_target("C1", "17.5")) == ("C1", "17.5")
    assert parse_target(reply_target("D1", None)) == ("D1", None)
    assert [parse_retry_after(v) for v in ("3", " 30 ", None, "soon", "nan", "-1")] == [
        3.0,
        30.0,
        1.0,
        1.0,
        1.0,
        0.0,
    ]


@given(st.text(alphabet="ab \n", max_size=300), st.integers(1, 40))
def test_split_text_keeps_everything_in_bounded_parts(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert "".join(parts) == text
    assert all(0 < len(part) <= limit for part in parts)


def test_split_text_prefers_line_breaks_then_spaces() -> None:
    assert split_text("aaaaaa\nbbb cccc", 10) == ["aaaaaa\n", "bbb cccc"]
    assert split_text("aaaa bbbb cccc", 10) == ["aaaa bbbb ", "cccc"]
    assert split_text("abcdefghijkl", 5) == ["abcde", "fghij", "kl"]
    assert split_text("", 5) == []
    with pytest.raises(ValueError, match="limit"):
        split_text("x", 0)
    with pytest.raises(TypeError):
        split_text("x", True)


async def test_retries_are_remembered_by_the_channel_for_seen_ttl() -> None:
    # The processor's own dedup is off: only the channel's memory keeps the retries out, as it
    # must after the processor's dedup_ttl (60 s) when Slack's last retry comes ~5 min later.
    clock = FakeClock()
    rig = await start_rig(
        MessageProcessorConfig(enable_dedup=False, processing_timeout=5.0),
        clock=clock,
        seen_ttl=900.0,
    )
    try:
        event = dm_event("once")
        assert (await rig.deliver(event))[1]["status"] == "accepted"
        await rig.settled(sent=1)
        clock.advance(299.0)
        assert (await rig.deliver(event, retry_num=1))[1]["status"] == "duplicate"
        clock.advance(600.0)  # 899 s after the first delivery
        assert (await rig.deliver(event, retry_num=2))[1]["status"] == "duplicate"
        assert len(rig.script.calls) == 1
        assert outcomes(rig)["duplicate"] == 2  # counted though the processor never saw them
        clock.advance(2.0)  # past seen_ttl: forgotten, the memory is bounded in time
        assert (await rig.deliver(event, retry_num=3))[1]["status"] == "accepted"
        await rig.settled(sent=2)
    finally:
        await stop_rig(rig)


async def test_a_retry_after_longer_than_max_retry_wait_fails_the_send_at_once() -> None:
    rig = await start_rig(max_retry_wait=10.0)
    try:
        rig.slack.script("chat.postMessage", rate_limited(retry_after="120"))
        await rig.deliver(dm_event("hi"))
        await rig.settled(failures=1)
        assert len(rig.slack.calls("chat.postMessage")) == 1
        assert (rig.channel.rate_limited, rig.channel.send_failures) == (1, 1)
    finally:
        await stop_rig(rig)


def test_the_delivery_budget_covers_every_attempt_and_wait() -> None:
    channel = SlackChannel(
        "s",
        intake=GatewayIntake(None, MessageLedger()),
        bot_token=BOT_TOKEN,
        signing_secret="x",
        request_timeout=5.0,
        send_retries=3,
        max_retry_wait=10.0,
    )
    assert channel.delivery_budget == 4 * 5.0 + 3 * 10.0


async def test_while_draining_events_get_503_with_retry_after(
    rig: Rig,
) -> None:
    rig.intake.begin_draining(7.5)
    status, body, headers = await rig.deliver(dm_event("late"))
    assert (status, body["reason"]) == (503, "shutting down")
    assert int(headers["Retry-After"]) >= 7
    assert rig.script.calls == []
    assert outcomes(rig) == {"rejected": 1}
