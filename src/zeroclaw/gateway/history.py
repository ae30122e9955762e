"""Conversation history: the last exchanges of each conversation, bounded in turns and in
conversations (least recently used dropped first).

The caller records an exchange only when the provider answered (a failed call leaves no
half-exchange behind), and asks :meth:`ConversationHistory.messages_for` for the messages of the
next call: ``[system?, earlier turns..., user]`` (docs/providers.md).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable

from zeroclaw.concurrency._validate import to_count
from zeroclaw.providers.base import ChatMessage

__all__ = ["ConversationHistory"]

_Exchange = tuple[str, str]  # (user text, assistant reply)


class ConversationHistory:
    """Per-conversation history of the last ``turns`` user/assistant exchanges.

    ``ConversationHistory(turns, *, max_conversations=10_000)``. ``turns = 0`` keeps nothing
    (every call is stateless); then :meth:`record` stores nothing, by configuration. Past
    ``max_conversations`` the least recently used conversation (read or written) is dropped
    (counted in :attr:`evicted`). Memory: at most ``max_conversations * turns`` exchanges.
    Not thread-safe; one event loop uses it (no method blocks).

    Raises:
        TypeError, ValueError: unless ``turns >= 0`` and ``max_conversations >= 1`` are ints.
    """

    __slots__ = ("_conversations", "_evicted", "max_conversations", "turns")

    def __init__(self, turns: int, *, max_conversations: int = 10_000) -> None:
        self.turns = to_count(turns, what="turns")
        self.max_conversations = to_count(max_conversations, what="max_conversations", minimum=1)
        self._conversations: OrderedDict[Hashable, deque[_Exchange]] = OrderedDict()
        self._evicted = 0

    @property
    def evicted(self) -> int:
        """Conversations dropped because ``max_conversations`` was reached."""
        return self._evicted

    def messages_for(
        self, conversation: Hashable, system_prompt: str | None, user_text: str
    ) -> list[ChatMessage]:
        """The messages for the next call: the system prompt (when not empty or ``None``), the
        conversation's earlier exchanges, oldest first, then ``user_text``. Marks the
        conversation as recently used."""
        messages: list[ChatMessage] = []
        if system_prompt:
            messages.append(ChatMessage("system", system_prompt))
        exchanges = self._conversations.get(conversation)
        if exchanges is not None:
            self._conversations.move_to_end(conversation)
            for user, reply in exchanges:
                messages.append(ChatMessage("user", user))
                messages.append(ChatMessage("assistant", reply))
        messages.append(ChatMessage("user", user_text))
        return messages

    def record(self, conversation: Hashable, user_text: str, reply: str) -> None:
        """Keep one exchange (call it only for a successful one); the oldest beyond ``turns`` is
        dropped, and past ``max_conversations`` the least recently used conversation."""
        if self.turns == 0:
            return
        conversations = self._conversations
        exchanges = conversations.get(conversation)
        if exchanges is None:
            exchanges = conversations[conversation] = deque(maxlen=self.turns)
            if len(conversations) > self.max_conversations:
                conversations.popitem(last=False)
                self._evicted += 1
        else:
            conversations.move_to_end(conversation)
        exchanges.append((user_text, reply))

    def clear(self, conversation: Hashable) -> bool:
        """Forget a conversation's history (``/new``). Returns whether it had any."""
        return self._conversations.pop(conversation, None) is not None

    def turns_of(self, conversation: Hashable) -> int:
        """How many exchanges are kept for ``conversation`` (does not mark it used)."""
        exchanges = self._conversations.get(conversation)
        return 0 if exchanges is None else len(exchanges)

    def __len__(self) -> int:
        """The number of conversations with history."""
        return len(self._conversations)

    def __contains__(self, conversation: object) -> bool:
        return conversation in self._conversations

    def __repr__(self) -> str:
        return (
            f"ConversationHistory(turns={self.turns}, max_conversations={self.max_conversations}, "
            f"conversations={len(self._conversations)})"
        )
