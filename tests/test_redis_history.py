"""RedisHistory against a real Redis (the session's, tests/redis_support.py): exchanges kept
per conversation, trimmed to the last turns, expiring, cleared by /new; Redis unreachable gives
turns without history, counted, never a failed turn."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.redis_support import unused_port
from zeroclaw.backends.redis import Keys, connect
from zeroclaw.backends.redis.history import RedisHistory
from zeroclaw.providers.base import ChatMessage

CONVERSATION = ("web", "alice", None)


async def test_the_last_turns_are_kept_in_order(redis_client: Any, namespace: str) -> None:
    history = RedisHistory(redis_client, Keys(namespace), 2, ttl=60.0)
    for n in range(3):
        await history.record(CONVERSATION, f"q{n}", f"a{n}")
    messages = await history.messages_for(CONVERSATION, "Be brief.", "q3")
    assert messages == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "q1"),
        ChatMessage("assistant", "a1"),
        ChatMessage("user", "q2"),
        ChatMessage("assistant", "a2"),
        ChatMessage("user", "q3"),
    ]
    key = history.key_of(CONVERSATION)
    assert 0 < await redis_client.pttl(key) <= 60_000
    other = await history.messages_for(("web", "bob", None), None, "hi")
    assert other == [ChatMessage("user", "hi")]


async def test_another_process_reads_the_same_history(
    redis_client: Any, namespace: str, redis_url: str
) -> None:
    here = RedisHistory(redis_client, Keys(namespace), 5)
    elsewhere_client = connect(redis_url)
    try:
        there = RedisHistory(elsewhere_client, Keys(namespace), 5)
        await here.record(CONVERSATION, "my name is Ada", "Hello Ada")
        messages = await there.messages_for(CONVERSATION, None, "what is my name?")
        assert [m.content for m in messages] == ["my name is Ada", "Hello Ada", "what is my name?"]
        assert await there.clear(CONVERSATION) is True
        assert await here.messages_for(CONVERSATION, None, "x") == [ChatMessage("user", "x")]
        assert await there.clear(CONVERSATION) is False
    finally:
        await elsewhere_client.aclose()


async def test_no_turns_touch_nothing(redis_client: Any, namespace: str) -> None:
    history = RedisHistory(redis_client, Keys(namespace), 0)
    await history.record(CONVERSATION, "q", "a")
    assert not await redis_client.exists(history.key_of(CONVERSATION))
    assert await history.messages_for(CONVERSATION, None, "q") == [ChatMessage("user", "q")]


async def test_redis_unreachable_answers_without_history_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = connect(f"redis://127.0.0.1:{unused_port()}/0", socket_timeout=1.0)
    try:
        history = RedisHistory(client, Keys("nowhere"), 3)
        assert await history.messages_for(CONVERSATION, None, "q") == [ChatMessage("user", "q")]
        await history.record(CONVERSATION, "q", "a")
        stats = history.stats()
        assert (stats.reads_failed, stats.writes_failed, stats.connected) == (1, 1, False)
        assert caplog.text.count("conversation history: Redis did not answer") == 1
        with pytest.raises(redis.ConnectionError):
            await history.clear(CONVERSATION)  # /new must not claim it cleared anything
    finally:
        await client.aclose()


def test_bad_settings_are_refused(redis_client: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        RedisHistory(redis_client, Keys("x"), 1, ttl=0)
    with pytest.raises((TypeError, ValueError), match="turns"):
        RedisHistory(redis_client, Keys("x"), -1)
