"""The terminal channel: each line of stdin is a message from ``terminal``; replies go to stdout.

``zeroclaw serve`` with only ``[channels.terminal]`` is a chat in the terminal against the
configured provider. Stdin is read by a daemon thread with ``os.read`` on the raw descriptor, so
the event loop never blocks on it, the descriptor's blocking mode is left alone (a terminal shares
it with stdout), and a thread still parked in ``read`` neither holds a buffer lock nor keeps the
process from exiting. End of input ends :meth:`TerminalChannel.listen`; the gateway then answers
what it has and exits once every channel has ended.

Empty lines are skipped. Refusals are printed as a notice (``busy, try again in N s``). Every
line's sender is ``terminal``: an ``allowed_users`` that leaves it out (``[]``) is honoured like
any channel's (each line is logged as ignored and a notice says why), never silently dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import sys
import threading
import time
from typing import TextIO

from zeroclaw.channels.base import ChannelContext, ChannelSpec, Intake, allows
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    MessageResult,
)

__all__ = ["TerminalChannel"]

_logger = logging.getLogger("zeroclaw.channels.terminal")

SENDER = "terminal"
_READ_SIZE = 65536


class TerminalChannel:
    """Chat over stdin/stdout.

    Args:
        name: the channel's name.
        intake: when given, messages are admitted through it (refusals are printed); when
            ``None``, :meth:`listen` puts them on the listener queue like any pull channel.
        stdin_fd: the descriptor lines are read from.
        stdout: where replies are written.
        encoding: of the input bytes (undecodable bytes are replaced).
        allowed_users: senders allowed (the sender is always ``terminal``); ``None`` or ``"*"``
            allows it, ``()`` denies it: then no line is processed.
    """

    kind = "terminal"

    def __init__(
        self,
        name: str = "terminal",
        *,
        intake: Intake | None = None,
        stdin_fd: int = 0,
        stdout: TextIO | None = None,
        encoding: str = "utf-8",
        allowed_users: tuple[str, ...] | None = None,
    ) -> None:
        self._name = name
        self._allowed = allowed_users
        self._intake = intake
        self._fd = stdin_fd
        self._out = stdout if stdout is not None else sys.stdout
        self._encoding = encoding
        self._ids = itertools.count(1)
        self._session = f"{os.getpid()}-{int(time.time())}"
        self._ended = False

    @property
    def name(self) -> str:
        return self._name

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        """Read lines until end of input; each non-empty one becomes a message. Blocks until EOF.

        Lines are admitted one at a time, in order: with a gateway intake, the next line waits
        for the previous one's admission (not its answer).
        """
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        reader = threading.Thread(
            target=self._read_lines,
            args=(loop, lines),
            name=f"stdin:{self._name}",
            daemon=True,
        )
        reader.start()
        while True:
            line = await lines.get()
            if line is None:
                self._ended = True
                _logger.info("terminal %r: end of input", self._name)
                return
            text = line.strip()
            if not text:
                continue
            message = ChannelMessage(
                id=f"{self._session}-{next(self._ids)}",
                sender=SENDER,
                content=text,
                channel=self._name,
                timestamp=time.time(),
            )
            if not allows(self._allowed, SENDER):
                if self._intake is not None:
                    self._intake.ignored(self._name, message, "sender not allowed")
                else:
                    _logger.info("terminal %r: line ignored: sender not allowed", self._name)
                self._print(f"[not processed: sender {SENDER!r} is not in allowed_users]")
                continue
            if self._intake is None:
                await queue.put(message)
                continue
            try:
                admission = await self._intake.submit(self, message)
            except RuntimeError as exc:
                self._print(f"[not running: {exc}]")
                continue
            if admission.kind is AdmissionKind.REJECTED:
                wait = admission.retry_after
                after = f"; try again in {math.ceil(wait)} s" if wait else ""
                self._print(f"[busy: {admission.reason or 'refused'}{after}]")

    def _read_lines(
        self, loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]
    ) -> None:
        """Thread body: read the descriptor, hand complete lines to the loop, then ``None``."""
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(self._fd, _READ_SIZE)
                except InterruptedError:
                    continue
                if not chunk:
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    text = raw.decode(self._encoding, errors="replace")
                    loop.call_soon_threadsafe(lines.put_nowait, text)
        except OSError as exc:
            _logger.warning("terminal %r: reading input failed: %s", self._name, exc)
        finally:
            try:
                if pending:
                    text = pending.decode(self._encoding, errors="replace")
                    loop.call_soon_threadsafe(lines.put_nowait, text)
                loop.call_soon_threadsafe(lines.put_nowait, None)
            except RuntimeError:
                pass  # the loop is already closed: nobody is listening any more

    async def send(self, message: str, recipient: str) -> None:
        """Print ``message`` to stdout (the recipient is always the terminal's user)."""
        self._print(message)

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Print the reply (or the notice, if any) and record the result with the intake."""
        try:
            if text is not None:
                self._print(text)
        finally:
            if self._intake is not None:
                self._intake.finished(message, result)

    async def health_check(self) -> bool:
        """``True`` until end of input."""
        return not self._ended

    def _print(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def __repr__(self) -> str:
        return f"<TerminalChannel {self._name!r} fd={self._fd}>"


def build(spec: ChannelSpec, context: ChannelContext) -> TerminalChannel:
    """Build a terminal channel from its settings (the channel registry calls this)."""
    return TerminalChannel(
        spec.name,
        intake=context.intake,
        stdin_fd=context.stdin_fd,
        stdout=context.stdout,
        allowed_users=spec.allowed_users,
    )
