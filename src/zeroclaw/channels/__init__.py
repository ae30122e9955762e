"""The gateway's chat channels, built by kind from their settings.

Each kind is a module with a ``build(spec, context) -> Channel`` function, imported only when a
channel of that kind is configured (so the terminal loads no HTTP stack). A kind added later
(Telegram, Slack) registers its module in :data:`CHANNEL_KINDS`, or a program registers its own
with :func:`register_channel_kind`.

A channel that serves HTTP (a *push* channel) also has ``path: str`` and
``async handle(request) -> aiohttp.web.StreamResponse``; the server routes ``POST path`` to it.
The ``Channel`` protocol and ``ChannelMessage`` stay in
:mod:`zeroclaw.concurrency.channel_integration`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from zeroclaw.channels.base import ChannelContext, ChannelSpec, Intake, allows
from zeroclaw.concurrency.channel_integration import Channel

__all__ = [
    "CHANNEL_KINDS",
    "ChannelContext",
    "ChannelFactory",
    "ChannelSpec",
    "Intake",
    "allows",
    "build_channel",
    "register_channel_kind",
]

ChannelFactory = Callable[[ChannelSpec, ChannelContext], Channel]

# kind -> "module:function"; imported on first use.
CHANNEL_KINDS: dict[str, str | ChannelFactory] = {
    "webhook": "zeroclaw.channels.webhook:build",
    "terminal": "zeroclaw.channels.terminal:build",
    "slack": "zeroclaw.channels.slack:build",
    "telegram": "zeroclaw.channels.telegram:build",
}


def register_channel_kind(kind: str, factory: str | ChannelFactory) -> None:
    """Make ``kind`` buildable: ``factory`` is a function or a ``"module:function"`` path.

    Raises:
        ValueError: ``kind`` is empty.
    """
    if not kind:
        raise ValueError("a channel kind needs a name")
    CHANNEL_KINDS[kind] = factory


def build_channel(spec: ChannelSpec, context: ChannelContext) -> Channel:
    """Build the channel ``spec`` describes. Does not block.

    Raises:
        ValueError: no channel kind of that name is registered.
        ImportError: the kind's module needs an extra that is not installed (the message names it).
    """
    factory = CHANNEL_KINDS.get(spec.kind)
    if factory is None:
        known = ", ".join(sorted(CHANNEL_KINDS))
        raise ValueError(
            f"channel {spec.name!r}: kind {spec.kind!r} is not available (known: {known})"
        )
    if isinstance(factory, str):
        module_name, _, function = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), function)
        CHANNEL_KINDS[spec.kind] = factory
    return factory(spec, context)
