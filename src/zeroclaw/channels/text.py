"""Reply text cut to a platform's message size (Slack, Telegram): parts in order, nothing lost.

A platform that refuses or truncates a long message would lose the end of a reply, so a channel
sends it as several messages instead. Cuts fall at the last line break of a part if there is one
in its second half, else at the last space there, else exactly at the limit; the separator stays
at the end of the part before the cut, so joining the parts gives the reply back unchanged.
"""

from __future__ import annotations

from zeroclaw.concurrency._validate import to_count

__all__ = ["split_text"]


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, in order; ``[]`` for ``""``.

    ``"".join(split_text(text, limit)) == text``. Does not block.

    Raises:
        TypeError, ValueError: ``limit`` is not an integer >= 1.
    """
    limit = to_count(limit, what="limit", minimum=1)
    parts: list[str] = []
    start = 0
    end_of_text = len(text)
    while end_of_text - start > limit:
        window_end = start + limit
        # A cut in the first half would make many short parts: only the second half is searched.
        floor = start + limit // 2
        cut = text.rfind("\n", floor, window_end)
        if cut < 0:
            cut = text.rfind(" ", floor, window_end)
        end = cut + 1 if cut >= 0 else window_end
        parts.append(text[start:end])
        start = end
    if start < end_of_text:
        parts.append(text[start:])
    return parts
