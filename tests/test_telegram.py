"""The Telegram channel against a fake Bot API server (tests.fakes.telegram_api), over loopback.

A real ``ConcurrentMessageProcessor`` (with a handler hook instead of an LLM) admits the updates
through the gateway's intake; webhook mode is served by the gateway's aiohttp server and posted
to with a real aiohttp client. The pure parts (splitting, parsing, the limiter map, the retry
waits) are tested in process with a FakeClock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.telegram_api import (
    BOT_ID,
    BOT_USERNAME,
    FakeTelegram,
    conflict,
    flood,
    message_update,
    server_error,
)
from tests.gateway_process import until
from tests.helpers import Script, UnusedProvider
from zeroclaw.channels import CHANNEL_KINDS
from zeroclaw.channels.telegram import (
    ChatLimiters,
    TelegramChannel,
    TelegramError,
    parse_update,
    split_text,
)
from zeroclaw.concurrency.channel_integration import (
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
)
from zeroclaw.gateway.app import serve
from zeroclaw.gateway.config import load_config
from zeroclaw.gateway.intake import GatewayIntake
from zeroclaw.gateway.metrics import MessageLedger
from zeroclaw.gateway.server import GatewayServer
from zeroclaw.testing import FakeClock, settle

SECRET = "webhook-secret_1"
Handler = Callable[[ChannelMessage], Awaitable[str]]


@dataclass
class Rig:
    fake: FakeTelegram
    channel: TelegramChannel
    cmp: ConcurrentMessageProcessor
    script: Script
    runner: asyncio.Task[None]
    server: GatewayServer | None = None
    session: aiohttp.ClientSession | None = None
    base: str = ""

    async def post(
        self, update: Any, *, secret: str | None = SECRET
    ) -> tuple[int, dict[str, Any], str | None]:
        assert self.session is not None
        assert self.server is not None
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        async with self.session.post(
            self.base + self.channel.path, json=update, headers=headers
        ) as response:
            return response.status, await response.json(), response.headers.get("Retry-After")


async def start_rig(
    fake: FakeTelegram,
    *,
    mode: str = "polling",
    allowed: tuple[str, ...] = ("*",),
    group_reply: str = "mention_only",
    config: MessageProcessorConfig | None = None,
    behaviour: Handler | None = None,
    **options: Any,
) -> Rig:
    script = Script(behaviour=behaviour)
    cmp = ConcurrentMessageProcessor(
        config or MessageProcessorConfig(processing_timeout=10.0),
        handler=script,
        handle_signals=False,
        send_timeout=30.0,
        drain_timeout=5.0,
    )
    intake = GatewayIntake(cmp, MessageLedger())
    options.setdefault("backoff", (0.01, 0.05))
    options.setdefault("per_chat_rate", 100.0)
    options.setdefault("bot_rate", 10_000.0)
    channel = TelegramChannel(
        "tg",
        intake=intake,
        bot_token=fake.token,
        allowed_users=allowed,
        mode=mode,
        secret_token=SECRET if mode == "webhook" else None,
        api_base=fake.base_url,
        group_reply=group_reply,
        poll_timeout=1.0,
        rng=random.Random(1),
        **options,
    )
    runner = asyncio.get_running_loop().create_task(cmp.start([channel], UnusedProvider(), None))
    await asyncio.wait_for(cmp.wait_started(), 10)
    rig = Rig(fake, channel, cmp, script, runner)
    if mode == "webhook":

        async def status() -> dict[str, Any]:
            return {}

        rig.server = GatewayServer(
            host="127.0.0.1",
            port=0,
            channels=[channel],
            metrics=lambda: b"",
            status=status,
            max_body_bytes=65536,
        )
        port = await rig.server.start()
        rig.base = f"http://127.0.0.1:{port}"
        rig.session = aiohttp.ClientSession()
        await until(lambda: channel.bot_username is not None)
    return rig


async def stop_rig(rig: Rig) -> None:
    if rig.session is not None:
        await rig.session.close()
    await rig.cmp.stop()
    await asyncio.wait_for(rig.runner, 15)
    await rig.channel.aclose()
    if rig.server is not None:
        await rig.server.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def bare_channel(fake: FakeTelegram, **options: Any) -> TelegramChannel:
    """A channel with no processor behind it, for its outbound side and health check."""
    return TelegramChannel(
        "tg",
        intake=GatewayIntake(None, MessageLedger()),
        bot_token=fake.token,
        allowed_users=("*",),
        api_base=fake.base_url,
        **options,
    )


def mention(text: str, username: str = BOT_USERNAME) -> list[dict[str, Any]]:
    at = text.index("@" + username)
    return [{"type": "mention", "offset": at, "length": len(username) + 1}]


# ---------------------------------------------------------------------------- pure parts


def test_split_text_keeps_order_limit_and_content() -> None:
    words = " ".join(f"word{i}" for i in range(2000))  # about 17 000 characters
    parts = split_text(words)
    assert "".join(parts) == words
    assert all(0 < len(p) <= 4096 for p in parts)
    assert all(p.endswith(" ") for p in parts[:-1])  # cut at spaces, not inside words
    lines = "\n".join("x" * 100 for _ in range(100))
    assert all(p.endswith("\n") for p in split_text(lines)[:-1])
    solid = "y" * 9000
    assert [len(p) for p in split_text(solid)] == [4096, 4096, 808]
    assert split_text("") == []
    assert split_text("short") == ["short"]


def test_parse_update_rules() -> None:
    def judge(update: dict[str, Any], **kw: Any) -> str | None:
        options: dict[str, Any] = {
            "channel": "tg",
            "allowed_users": ("*",),
            "bot_username": BOT_USERNAME,
            "bot_id": BOT_ID,
        }
        options.update(kw)
        return parse_update(update, **options)[1]

    assert judge(message_update(1, chat_id=5, text="hi")) is None
    assert judge(message_update(1, chat_id=5, text=None)) == "not a text message"
    assert judge(message_update(1, chat_id=5, text="hi", is_bot=True)) == "sent by a bot"
    assert judge(message_update(1, chat_id=5, text="hi", edited=True)).startswith(  # type: ignore[union-attr]
        "not a message update"
    )
    assert judge(message_update(1, chat_id=5, text="hi"), allowed_users=("bob",)) == (
        "sender not allowed"
    )
    assert judge(message_update(1, chat_id=5, text="hi"), allowed_users=("alice",)) is None
    assert judge(message_update(1, chat_id=5, text="hi"), allowed_users=("5",)) is None
    group: dict[str, Any] = {"chat_id": -100, "user_id": 7, "chat_type": "supergroup"}
    assert judge(message_update(1, text="hello all", **group)) == (
        "a group message that does not mention the bot"
    )
    text = f"hey @{BOT_USERNAME} how"
    assert judge(message_update(1, text=text, entities=mention(text), **group)) is None
    other = "hey @someone_else how"
    assert judge(message_update(1, text=other, entities=mention(other, "someone_else"), **group))
    assert judge(message_update(1, text="yes", reply_to_bot=True, **group)) is None
    assert judge(message_update(1, text="hello", **group), group_reply="all_messages") is None
    assert judge(message_update(1, text="hello", **group), bot_username=None, bot_id=None) == (
        "bot username unknown"
    )
    message, _ = parse_update(
        message_update(9, chat_id=-100, user_id=7, text="t", thread_id=33),
        channel="tg",
        allowed_users=None,
        bot_username=None,
        bot_id=None,
        group_reply="all_messages",
    )
    assert (message.id, message.sender, message.reply_to, message.thread_id) == (
        "9",
        "7",
        "-100:33",
        "33",
    )


def test_mention_offsets_count_utf16_units() -> None:
    text = f"😀 @{BOT_USERNAME}"  # the emoji is two UTF-16 code units
    update = message_update(
        1,
        chat_id=-1,
        user_id=2,
        chat_type="group",
        text=text,
        entities=[{"type": "mention", "offset": 3, "length": len(BOT_USERNAME) + 1}],
    )
    _, reason = parse_update(
        update, channel="tg", allowed_users=None, bot_username=BOT_USERNAME, bot_id=BOT_ID
    )
    assert reason is None


async def test_idle_chat_limiters_are_dropped() -> None:
    clock = FakeClock()
    chats = ChatLimiters(1.0, 3.0, clock=clock)
    for chat in range(1000):
        limiter = chats.get(str(chat))
        assert limiter.try_acquire()
        clock.advance(0.01)
    assert len(chats) <= 400  # those not yet full again (3 s of refill)
    clock.advance(10)
    chats.get("new")
    assert len(chats) == 1


async def test_outbound_429_pauses_the_chat_and_retries_after_the_wait(
    fake: FakeTelegram,
) -> None:
    clock = FakeClock()
    channel = bare_channel(fake, clock=clock)
    fake.fail("sendMessage", flood(retry_after=7))
    sending = asyncio.ensure_future(channel.send("hello", "55"))
    await until(lambda: fake.calls.count("sendMessage") == 1)
    await settle()
    clock.advance(6.5)
    await settle()
    assert fake.sent == []
    assert not sending.done()
    clock.advance(1.0)
    await asyncio.wait_for(sending, 10)
    assert fake.sent == [{"chat_id": 55, "text": "hello"}]
    await channel.aclose()


async def test_per_chat_pace_is_one_a_second_after_a_burst(fake: FakeTelegram) -> None:
    clock = FakeClock()
    channel = bare_channel(fake, clock=clock)
    sending = asyncio.ensure_future(channel.send("z" * (4096 * 5), "8"))
    await until(lambda: len(fake.sent) == 3)  # the burst
    await settle()
    assert len(fake.sent) == 3
    clock.advance(1.0)
    await until(lambda: len(fake.sent) == 4)
    clock.advance(1.0)
    await asyncio.wait_for(sending, 10)
    assert len(fake.sent) == 5
    await channel.aclose()


async def test_a_send_that_keeps_failing_ends_after_bounded_retries(fake: FakeTelegram) -> None:
    channel = bare_channel(fake, send_retries=2, backoff=(0.001, 0.002))
    fake.fail("sendMessage", *[server_error()] * 3)
    with pytest.raises(TelegramError, match="502"):
        await channel.send("hi", "3")
    assert fake.calls.count("sendMessage") == 3
    fake.fail("sendMessage", flood(retry_after=3600))  # longer than max_retry_wait
    with pytest.raises(TelegramError, match="429"):
        await channel.send("hi", "3")
    await channel.aclose()


# ---------------------------------------------------------------------------- webhook mode


async def test_webhook_three_deliveries_give_one_reply(fake: FakeTelegram) -> None:
    rig = await start_rig(fake, mode="webhook")
    try:
        update = message_update(100, chat_id=77, text="ping")
        for _ in range(3):
            status, body, _ = await rig.post(update)
            assert status == 200
            assert body["ok"] is True
        await until(lambda: len(fake.sent) >= 1)
        await settle()
        await asyncio.sleep(0.1)  # a wrong second reply would have had time to go out
        assert fake.sent == [{"chat_id": 77, "text": "echo: ping"}]
        assert len(rig.script.calls) == 1
    finally:
        await stop_rig(rig)


async def test_webhook_wrong_secret_is_401_and_nothing_processed(fake: FakeTelegram) -> None:
    rig = await start_rig(fake, mode="webhook")
    try:
        update = message_update(1, chat_id=7, text="x")
        assert (await rig.post(update, secret=None))[0] == 401
        assert (await rig.post(update, secret="wrong"))[0] == 401
        assert (await rig.post({"no": "id"}))[0] == 400
        assert (await rig.post({"update_id": "1"}))[0] == 400
        assert rig.script.calls == []
        assert fake.sent == []
    finally:
        await stop_rig(rig)


async def test_webhook_ignored_updates_are_200_and_not_processed(fake: FakeTelegram) -> None:
    rig = await start_rig(fake, mode="webhook", allowed=("@ALICE", "12"))
    try:
        assert (await rig.post(message_update(50, chat_id=5, username="Alice", text="a")))[1][
            "status"
        ] == "accepted"  # usernames match whatever their case
        ignored = [
            message_update(1, chat_id=5, user_id=99, username="mallory", text="hi"),
            message_update(2, chat_id=5, text="hi", is_bot=True),
            message_update(3, chat_id=5, text="hi", edited=True),
            message_update(4, chat_id=5, text=None),
            {"update_id": 5, "callback_query": {"id": "q"}},
            message_update(6, chat_id=-9, user_id=12, chat_type="group", text="no mention"),
        ]
        for update in ignored:
            status, body, _ = await rig.post(update)
            assert (status, body["status"]) == (200, "ignored")
        text = f"@{BOT_USERNAME} hi"
        mentioned = message_update(
            7, chat_id=-9, user_id=12, chat_type="group", text=text, entities=mention(text)
        )
        assert (await rig.post(mentioned))[1]["status"] == "accepted"
        await until(lambda: len(fake.sent) == 2)
        assert [m.id for m in rig.script.calls] == ["50", "7"]
        assert fake.texts_to(-9) == ["echo: @zeroclaw_bot hi"]
    finally:
        await stop_rig(rig)


async def test_webhook_refusal_is_429_with_retry_after(fake: FakeTelegram) -> None:
    gate = asyncio.Event()

    async def slow(message: ChannelMessage) -> str:
        await gate.wait()
        return "done"

    config = MessageProcessorConfig(
        max_concurrent_requests=1, processing_timeout=10.0, admission="reject"
    )
    rig = await start_rig(fake, mode="webhook", config=config, behaviour=slow)
    try:
        statuses = []
        for n in range(1, 6):
            status, _, retry_after = await rig.post(message_update(n, chat_id=n, text="q"))
            statuses.append((status, retry_after))
        refused = [s for s in statuses if s[0] in (429, 503)]
        assert refused
        assert all(r is not None and int(r) >= 1 for _, r in refused)
        gate.set()
    finally:
        gate.set()
        await stop_rig(rig)


async def test_forum_topic_reply_goes_to_its_thread(fake: FakeTelegram) -> None:
    rig = await start_rig(fake, mode="webhook", group_reply="all_messages")
    try:
        update = message_update(
            3, chat_id=-1001, user_id=4, chat_type="supergroup", thread_id=17, text="topic"
        )
        assert (await rig.post(update))[0] == 200
        await until(lambda: len(fake.sent) == 1)
        assert fake.sent[0] == {"chat_id": -1001, "text": "echo: topic", "message_thread_id": 17}
        assert rig.script.calls[0].reply_to == "-1001:17"
    finally:
        await stop_rig(rig)


# ---------------------------------------------------------------------------- polling mode


async def test_polling_answers_each_update_once_and_confirms_it(fake: FakeTelegram) -> None:
    fake.queue_update(*(message_update(n, chat_id=10 + n, text=f"m{n}") for n in range(1, 6)))
    rig = await start_rig(fake)
    try:
        await until(lambda: len(fake.sent) == 5)
        await until(lambda: fake.pending == [])
        polls_before = len(fake.polls)
        await until(lambda: len(fake.polls) >= polls_before + 2)
        assert sorted(m["chat_id"] for m in fake.sent) == [11, 12, 13, 14, 15]
        assert len(rig.script.calls) == 5
        assert all(p["allowed_updates"] == ["message"] for p in fake.polls)
        assert fake.polls[-1]["offset"] == 6  # never re-reads a confirmed one
    finally:
        await stop_rig(rig)


async def test_polling_refetches_a_refused_update(fake: FakeTelegram) -> None:
    gate = asyncio.Event()

    async def held(message: ChannelMessage) -> str:
        if message.id == "1":
            await gate.wait()
        return f"r{message.id}"

    config = MessageProcessorConfig(
        max_concurrent_requests=1, processing_timeout=10.0, admission="reject"
    )
    fake.queue_update(
        message_update(1, chat_id=1, text="a"), message_update(2, chat_id=2, text="b")
    )
    rig = await start_rig(fake, config=config, behaviour=held)
    try:
        # Update 2 is refused while 1 runs: the offset stays at 2 and it is fetched again.
        await until(lambda: sum(1 for p in fake.polls if p.get("offset") == 2) >= 2)
        assert 2 in fake.pending
        assert fake.texts_to(2) == []
        gate.set()
        await until(lambda: fake.texts_to(2) == ["r2"])
        assert fake.texts_to(1) == ["r1"]
        await until(lambda: fake.pending == [])
    finally:
        gate.set()
        await stop_rig(rig)


async def test_polling_ignores_what_it_must_and_moves_past_it(fake: FakeTelegram) -> None:
    fake.queue_update(
        message_update(1, chat_id=5, text="hi", is_bot=True),
        message_update(2, chat_id=5, text=None),
        message_update(3, chat_id=5, text="hi", edited=True),
        message_update(4, chat_id=5, user_id=6, username="eve", text="hi"),
        message_update(5, chat_id=5, text="ok"),
    )
    rig = await start_rig(fake, allowed=("alice",))
    try:
        await until(lambda: len(fake.sent) == 1 and fake.pending == [])
        assert [m.id for m in rig.script.calls] == ["5"]
    finally:
        await stop_rig(rig)


async def test_polling_409_is_logged_with_the_fix_then_recovers(
    fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail("getUpdates", conflict(), server_error())
    fake.queue_update(message_update(1, chat_id=3, text="after"))
    with caplog.at_level("WARNING", logger="zeroclaw.channels.telegram"):
        rig = await start_rig(fake)
        try:
            await until(lambda: fake.texts_to(3) == ["echo: after"])
        finally:
            await stop_rig(rig)
    assert any("409" in r.message and "deleteWebhook" in r.message for r in caplog.records)


async def test_polling_9000_character_reply_arrives_in_order(fake: FakeTelegram) -> None:
    reply = "".join(f"{i:05d} " for i in range(1500))  # 9 000 characters

    async def long(message: ChannelMessage) -> str:
        return reply

    fake.queue_update(message_update(1, chat_id=9, text="long please"))
    rig = await start_rig(fake, behaviour=long)
    try:
        await until(lambda: len(fake.sent) == 3)
        texts = fake.texts_to(9)
        assert "".join(texts) == reply
        assert all(len(t) <= 4096 for t in texts)
    finally:
        await stop_rig(rig)


async def test_failing_sends_are_counted_and_block_no_other_chat(fake: FakeTelegram) -> None:
    fake.queue_update(message_update(1, chat_id=1, text="a"))
    fake.fail("sendMessage", *[server_error()] * 3)
    rig = await start_rig(fake, send_retries=2)
    try:
        await until(lambda: rig.cmp.channel_stats()["tg"].send_failures == 1)
        fake.queue_update(message_update(2, chat_id=2, text="b"))
        await until(lambda: fake.texts_to(2) == ["echo: b"])
        assert fake.texts_to(1) == []
    finally:
        await stop_rig(rig)


async def test_200_chats_of_5_answered_in_order_without_waiting_on_each_other(
    fake: FakeTelegram,
) -> None:
    rng = random.Random(7)
    slow_chat = 1
    # The slow chat's replies are held until every other chat has been answered: if any chat
    # waited on another's reply, the others could never all be answered and `until` would fail.
    others_answered = asyncio.Event()

    async def random_latency(message: ChannelMessage) -> str:
        if message.reply_to == str(slow_chat):
            await others_answered.wait()
        else:
            for _ in range(rng.randrange(4)):  # finish in a shuffled order
                await asyncio.sleep(0)
        return f"re {message.content}"

    updates = []
    update_id = 0
    for turn in range(5):
        for chat in range(1, 201):
            update_id += 1
            updates.append(message_update(update_id, chat_id=chat, text=f"{chat}/{turn}"))
    fake.queue_update(*updates)
    config = MessageProcessorConfig(max_concurrent_requests=64, processing_timeout=60.0)
    rig = await start_rig(fake, config=config, behaviour=random_latency)
    try:
        await until(lambda: sum(len(fake.texts_to(c)) for c in range(2, 201)) == 199 * 5, 30)
        assert fake.texts_to(slow_chat) == []
        others_answered.set()
        await until(lambda: len(fake.texts_to(slow_chat)) == 5, 30)
        for chat in range(1, 201):
            assert fake.texts_to(chat) == [f"re {chat}/{turn}" for turn in range(5)]
        assert len(fake.sent) == 1000
        assert fake.pending == []
    finally:
        await stop_rig(rig)


async def test_health_check_follows_get_me(fake: FakeTelegram) -> None:
    channel = bare_channel(fake)
    assert await channel.health_check() is True
    assert channel.bot_username == BOT_USERNAME
    assert channel.bot_id == BOT_ID
    fake.fail("getMe", server_error())
    assert await channel.health_check() is False
    await channel.aclose()
    assert await channel.health_check() is False


async def test_aclose_ends_a_long_poll_at_once(fake: FakeTelegram) -> None:
    fake.max_poll_wait = 60.0  # the fake holds getUpdates open as Telegram does
    channel = bare_channel(fake, poll_timeout=30.0)
    listening = asyncio.ensure_future(channel.listen(asyncio.Queue()))
    await until(lambda: len(fake.polls) == 1)
    started = time.monotonic()
    await channel.aclose()
    await asyncio.wait_for(listening, 5)
    assert time.monotonic() - started < 5
    assert channel.offset is None


async def test_unreachable_api_backs_off_and_reports_unhealthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeTelegram() as gone:
        base = gone.base_url
    channel = TelegramChannel(
        "tg",
        intake=GatewayIntake(None, MessageLedger()),
        bot_token="1:x",
        allowed_users=("*",),
        api_base=base,
        backoff=(0.01, 0.02),
        request_timeout=1.0,
    )
    assert await channel.health_check() is False
    with caplog.at_level("WARNING", logger="zeroclaw.channels.telegram"):
        listening = asyncio.ensure_future(channel.listen(asyncio.Queue()))
        await until(lambda: sum("getMe failed" in r.message for r in caplog.records) >= 3)
    assert not listening.done()  # it keeps trying, with a backoff
    await channel.aclose()
    await asyncio.wait_for(listening, 5)


def test_serve_exits_2_for_a_kind_with_no_channel_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was an e2e test with kind "telegram" before this channel existed; the path it covers
    # (a configured kind the registry cannot build: exit 2, nothing bound) stays tested here.
    monkeypatch.delitem(CHANNEL_KINDS, "telegram")
    path = tmp_path / "zeroclaw.toml"
    path.write_text(
        '[gateway]\nport = 0\n[provider]\nkind = "echo"\n'
        '[channels.tg]\nkind = "telegram"\nbot_token = "123:abc"\nallowed_users = ["*"]\n'
    )
    assert serve(load_config(path)) == 2
    err = capsys.readouterr().err
    assert "telegram" in err
    assert "listening on" not in err
