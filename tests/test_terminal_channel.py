"""The terminal channel over a real pipe, the channel registry, and /status's JSON encoding."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest

from tests.helpers import RecordingIntake
from zeroclaw.channels import CHANNEL_KINDS, ChannelContext, build_channel, register_channel_kind
from zeroclaw.channels.base import allows
from zeroclaw.channels.terminal import SENDER, TerminalChannel
from zeroclaw.channels.webhook import WebhookChannel
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    Channel,
    ChannelMessage,
    MessageResult,
    MessageResultKind,
)
from zeroclaw.gateway.server import jsonable


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


async def test_each_line_is_a_message_and_eof_ends_listen(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    intake = RecordingIntake()
    channel = TerminalChannel("term", intake=intake, stdin_fd=read_fd, stdout=io.StringIO())
    listening = asyncio.ensure_future(channel.listen(asyncio.Queue()))
    os.write(write_fd, b"first line\n\n   \nsec")
    os.write(write_fd, "ond \u00e9\nno newline at the end".encode())
    os.close(write_fd)
    await asyncio.wait_for(listening, 10)
    assert [m.content for m in intake.submitted] == [
        "first line",
        "second é",
        "no newline at the end",
    ]
    assert {m.sender for m in intake.submitted} == {SENDER}
    assert {m.channel for m in intake.submitted} == {"term"}
    assert len({m.id for m in intake.submitted}) == 3
    assert intake.ignored_messages == []
    assert await channel.health_check() is False


async def test_the_loop_keeps_running_while_stdin_is_silent(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    intake = RecordingIntake()
    channel = TerminalChannel(intake=intake, stdin_fd=read_fd, stdout=io.StringIO())
    listening = asyncio.ensure_future(channel.listen(asyncio.Queue()))
    ticks = 0
    for _ in range(20):  # the loop runs other work while nothing is typed
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 20
    assert not listening.done()
    assert await channel.health_check() is True
    os.close(write_fd)
    await asyncio.wait_for(listening, 10)


async def test_without_an_intake_lines_go_on_the_listener_queue(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    queue: asyncio.Queue[ChannelMessage] = asyncio.Queue()
    channel = TerminalChannel(stdin_fd=read_fd, stdout=io.StringIO())
    os.write(write_fd, b"a\nb\n")
    os.close(write_fd)
    await asyncio.wait_for(channel.listen(queue), 10)
    assert [queue.get_nowait().content, queue.get_nowait().content] == ["a", "b"]


async def test_replies_and_refusals_are_printed(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    out = io.StringIO()
    intake = RecordingIntake(Admission(AdmissionKind.REJECTED, "overloaded", 2.2))
    channel = TerminalChannel(intake=intake, stdin_fd=read_fd, stdout=out)
    os.write(write_fd, b"hi\n")
    os.close(write_fd)
    await asyncio.wait_for(channel.listen(asyncio.Queue()), 10)
    message = intake.submitted[0]
    await channel.deliver(
        message, MessageResult(MessageResultKind.SUCCESS, "hello back"), "hello back"
    )
    await channel.deliver(message, MessageResult(MessageResultKind.CANCELLED), None)
    assert out.getvalue().splitlines() == ["[busy: overloaded; try again in 3 s]", "hello back"]
    assert intake.finished_results == [
        (message.id, MessageResultKind.SUCCESS),
        (message.id, MessageResultKind.CANCELLED),
    ]


async def test_allowed_users_that_leave_out_the_terminal_are_honoured(
    pipe: tuple[int, int],
) -> None:
    # `allowed_users = []` on [channels.terminal] was accepted (check showed "(none)") and then
    # every line was answered anyway: a setting silently ignored.
    read_fd, write_fd = pipe
    out = io.StringIO()
    intake = RecordingIntake()
    context = ChannelContext(intake=intake, stdin_fd=read_fd, stdout=out)
    channel = build_channel(Spec("terminal", "terminal", allowed_users=()), context)
    os.write(write_fd, b"hello\n")
    os.close(write_fd)
    await asyncio.wait_for(channel.listen(asyncio.Queue()), 10)
    assert intake.submitted == []
    assert intake.ignored_messages == [("terminal", "hello", "sender not allowed")]
    assert out.getvalue() == "[not processed: sender 'terminal' is not in allowed_users]\n"


async def test_allowed_users_naming_the_terminal_let_it_through(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    intake = RecordingIntake()
    channel = TerminalChannel(
        intake=intake, stdin_fd=read_fd, stdout=io.StringIO(), allowed_users=(SENDER,)
    )
    os.write(write_fd, b"hello\n")
    os.close(write_fd)
    await asyncio.wait_for(channel.listen(asyncio.Queue()), 10)
    assert [m.content for m in intake.submitted] == ["hello"]
    assert intake.ignored_messages == []


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    allowed_users: tuple[str, ...] | None = ("*",)
    path: str | None = None
    options: Any = field(default_factory=lambda: MappingProxyType({}))


def test_registry_builds_each_kind_from_its_settings() -> None:
    context = ChannelContext(intake=RecordingIntake(), max_body_bytes=1234)
    web = build_channel(
        Spec("web", "webhook", options=MappingProxyType({"token": "t", "callback_url": None})),
        context,
    )
    assert isinstance(web, WebhookChannel)
    assert (web.name, web.path, web.sync) == ("web", "/channels/web", True)
    hooked = build_channel(
        Spec(
            "cb",
            "webhook",
            path="/in",
            options={"callback_url": "http://127.0.0.1:9/r", "callback_retries": 1},
        ),
        context,
    )
    assert isinstance(hooked, WebhookChannel)
    assert (hooked.path, hooked.sync) == ("/in", False)
    assert hooked.delivery_budget == pytest.approx(2 * 10.0 + 0.5)
    term = build_channel(Spec("terminal", "terminal", allowed_users=None), context)
    assert isinstance(term, TerminalChannel)


def test_unknown_kind_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"kind 'carrier-pigeon'.*terminal, webhook"):
        build_channel(Spec("p", "carrier-pigeon"), ChannelContext(intake=RecordingIntake()))


def test_a_new_kind_slots_in() -> None:
    built: list[str] = []

    def factory(spec: Any, context: ChannelContext) -> Channel:
        built.append(spec.name)
        return TerminalChannel(spec.name, intake=context.intake)

    register_channel_kind("test-kind", factory)
    try:
        channel = build_channel(Spec("x", "test-kind"), ChannelContext(intake=RecordingIntake()))
        assert (channel.name, built) == ("x", ["x"])
    finally:
        del CHANNEL_KINDS["test-kind"]


def test_allowed_users() -> None:
    assert allows(("*",), "anyone")
    assert allows(None, "anyone")
    assert not allows((), "anyone")
    assert allows(("alice", "123"), "123", "bob")
    assert not allows(("alice",), "bob", None)


# ---------------------------------------------------------------------------- /status JSON


class Colour(enum.Enum):
    HALF_OPEN = "HalfOpen"


@dataclass(frozen=True, slots=True)
class Inner:
    state: Colour
    ratio: float


@dataclass(frozen=True)
class Outer:
    inner: Inner
    counts: Any
    items: tuple[int, ...]


def test_jsonable_turns_snapshots_into_plain_json() -> None:
    value = Outer(Inner(Colour.HALF_OPEN, float("inf")), MappingProxyType({1: 2}), (1, 2))
    assert jsonable(value) == {
        "inner": {"state": "half_open", "ratio": None},
        "counts": {"1": 2},
        "items": [1, 2],
    }
