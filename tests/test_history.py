"""ConversationHistory: the messages sent with each call, the turn bound, the LRU bound."""

from __future__ import annotations

import pytest

from zeroclaw.gateway.history import ConversationHistory
from zeroclaw.providers import ChatMessage


def pairs(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def test_a_new_conversation_is_system_then_user() -> None:
    history = ConversationHistory(3)
    assert pairs(history.messages_for("c", "be brief", "hi")) == [
        ("system", "be brief"),
        ("user", "hi"),
    ]
    assert pairs(history.messages_for("c", None, "hi")) == [("user", "hi")]
    assert pairs(history.messages_for("c", "", "hi")) == [("user", "hi")]
    assert len(history) == 0  # asking records nothing


def test_earlier_turns_go_between_system_and_user_oldest_first() -> None:
    history = ConversationHistory(3)
    history.record("c", "one", "uno")
    history.record("c", "two", "dos")
    assert pairs(history.messages_for("c", "sys", "three")) == [
        ("system", "sys"),
        ("user", "one"),
        ("assistant", "uno"),
        ("user", "two"),
        ("assistant", "dos"),
        ("user", "three"),
    ]


def test_only_the_last_turns_are_kept() -> None:
    history = ConversationHistory(2)
    for n in range(5):
        history.record("c", f"q{n}", f"a{n}")
    assert history.turns_of("c") == 2
    assert pairs(history.messages_for("c", None, "next")) == [
        ("user", "q3"),
        ("assistant", "a3"),
        ("user", "q4"),
        ("assistant", "a4"),
        ("user", "next"),
    ]


def test_conversations_are_separate() -> None:
    history = ConversationHistory(5)
    history.record(("web", "alice"), "mine", "yours")
    assert pairs(history.messages_for(("web", "bob"), None, "hi")) == [("user", "hi")]
    assert history.turns_of(("web", "alice")) == 1
    assert ("web", "alice") in history


def test_zero_turns_is_stateless() -> None:
    history = ConversationHistory(0)
    history.record("c", "q", "a")
    assert len(history) == 0
    assert pairs(history.messages_for("c", "s", "u")) == [("system", "s"), ("user", "u")]


def test_clear_forgets_one_conversation() -> None:
    history = ConversationHistory(3)
    history.record("a", "q", "r")
    history.record("b", "q", "r")
    assert history.clear("a") is True
    assert history.clear("a") is False
    assert pairs(history.messages_for("a", None, "again")) == [("user", "again")]
    assert history.turns_of("b") == 1
    assert len(history) == 1


def test_the_least_recently_used_conversation_is_dropped() -> None:
    history = ConversationHistory(2, max_conversations=3)
    for name in "abc":
        history.record(name, "q", "r")
    history.messages_for("a", None, "read")  # reading counts as use: "b" is now the oldest
    history.record("d", "q", "r")
    assert "b" not in history
    assert {name for name in "acd" if name in history} == {"a", "c", "d"}
    assert history.evicted == 1
    history.record("c", "q2", "r2")  # writing counts as use too: "a" is the oldest now
    history.record("e", "q", "r")
    assert "a" not in history
    assert len(history) == 3
    assert history.evicted == 2


def test_memory_is_bounded() -> None:
    history = ConversationHistory(4, max_conversations=50)
    for n in range(1000):
        history.record(n % 120, f"q{n}", f"a{n}")
    assert len(history) == 50
    assert all(history.turns_of(c) <= 4 for c in range(120))
    assert sum(history.turns_of(c) for c in range(120)) <= 200


def test_validation() -> None:
    with pytest.raises(ValueError, match="turns"):
        ConversationHistory(-1)
    with pytest.raises(TypeError, match="turns"):
        ConversationHistory(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_conversations"):
        ConversationHistory(2, max_conversations=0)
    assert "turns=2" in repr(ConversationHistory(2))
