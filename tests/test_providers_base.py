"""The provider vocabulary: ChatMessage, ProviderError and its classes, the retry rule, Retry-After
parsing, the echo backend, and build_backend's errors."""

from __future__ import annotations

import email.utils
import pickle

import pytest

from zeroclaw.providers import (
    BACKEND_KINDS,
    ChatMessage,
    EchoBackend,
    ErrorClass,
    ProviderError,
    SimulatedBackend,
    backend_options,
    build_backend,
)
from zeroclaw.providers.base import is_retryable, last_user_text, parse_retry_after
from zeroclaw.providers.openai import OpenAIBackend


def test_chat_message_checks_its_fields() -> None:
    message = ChatMessage("user", "hi")
    assert (message.role, message.content) == ("user", "hi")
    with pytest.raises(ValueError, match="role"):
        ChatMessage("tool", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="content"):
        ChatMessage("user", None)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        message.content = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (408, None, True),
        (409, None, True),
        (429, "rate_limit_exceeded", True),
        (429, "insufficient_quota", False),
        (500, None, True),
        (503, "server_error", True),
        (599, None, True),
        (400, None, False),
        (401, "invalid_api_key", False),
        (403, None, False),
        (404, "model_not_found", False),
        (422, None, False),
        (None, "timeout", True),
        (None, "connection_error", True),
        (None, None, True),
        (200, "invalid_response", False),
    ],
)
def test_the_retry_rule(status: int | None, code: str | None, retryable: bool) -> None:
    assert is_retryable(status, code) is retryable
    assert ProviderError(status, code, "m").retryable is retryable


def test_provider_error_fields_and_text() -> None:
    error = ProviderError(429, "rate_limit_exceeded", "slow down", retry_after=1.5)
    assert (error.status, error.code, error.message, error.retry_after) == (
        429,
        "rate_limit_exceeded",
        "slow down",
        1.5,
    )
    assert str(error) == "HTTP 429 (rate_limit_exceeded): slow down"
    assert "retry_after=1.5" in repr(error)
    assert (
        str(ProviderError(None, "timeout", "took too long"))
        == "no response (timeout): took too long"
    )
    # An explicit retryable wins over the rule (a backend that knows better).
    assert ProviderError(500, None, "x", retryable=False).retryable is False


def test_provider_error_pickles_with_every_field() -> None:
    error = ProviderError(503, "server_error", "busy", False, 2.5)
    copy = pickle.loads(pickle.dumps(error))
    assert repr(copy) == repr(error)


@pytest.mark.parametrize(
    ("status", "code", "error_class"),
    [
        (None, "timeout", ErrorClass.TIMEOUT),
        (None, "connection_error", ErrorClass.CONNECTION),
        (None, "invalid_response", ErrorClass.INVALID_RESPONSE),
        (200, "invalid_response", ErrorClass.INVALID_RESPONSE),
        (429, "rate_limit_exceeded", ErrorClass.RATE_LIMITED),
        (429, "insufficient_quota", ErrorClass.QUOTA),
        (401, None, ErrorClass.AUTH),
        (403, None, ErrorClass.AUTH),
        (408, None, ErrorClass.TIMEOUT),
        (400, None, ErrorClass.BAD_REQUEST),
        (404, None, ErrorClass.BAD_REQUEST),
        (500, None, ErrorClass.SERVER),
    ],
)
def test_error_classes(status: int | None, code: str | None, error_class: ErrorClass) -> None:
    assert ProviderError(status, code, "m").error_class is error_class


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({}, now) is None
    assert parse_retry_after({"retry-after": "2"}, now) == 2.0
    assert parse_retry_after({"retry-after": " 0.5 "}, now) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    assert parse_retry_after({"retry-after-ms": "junk", "retry-after": "9"}, now) == 9.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now) == 12.0
    past = email.utils.formatdate(now - 12, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now) == 0.0
    for bad in ("-1", "nan", "inf", "soon", "Wed, 21 Oct 2015 07:28:00 -0000"):
        assert parse_retry_after({"retry-after": bad}, now) is None, bad
    assert parse_retry_after({"retry-after-ms": "-5"}, now) is None


def test_last_user_text() -> None:
    messages = [ChatMessage("user", "a"), ChatMessage("assistant", "b"), ChatMessage("user", "c")]
    assert last_user_text(messages) == "c"
    assert last_user_text(messages[:2]) == "a"
    with pytest.raises(ValueError, match="no user message"):
        last_user_text([ChatMessage("system", "s")])


async def test_echo_replies_with_the_last_user_message() -> None:
    echo = EchoBackend()
    assert echo.name == "echo"
    messages = [
        ChatMessage("system", "sys"),
        ChatMessage("user", "first"),
        ChatMessage("assistant", "reply"),
        ChatMessage("user", "second"),
    ]
    assert await echo.complete(messages, model="m", temperature=0.0) == "second"
    with pytest.raises(ValueError, match="no user message"):
        await echo.complete([ChatMessage("system", "s")], model="m", temperature=0.0)
    await echo.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await echo.complete(messages, model="m", temperature=0.0)


def test_build_backend_makes_each_kind() -> None:
    assert BACKEND_KINDS == ("echo", "openai", "simulated")
    assert isinstance(build_backend("echo"), EchoBackend)
    simulated = build_backend("simulated", seed=3, capacity=2, outages=[[1, 2]])
    assert isinstance(simulated, SimulatedBackend)
    assert (simulated.seed, simulated.capacity, simulated.outages) == (3, 2, ((1.0, 2.0),))
    openai = build_backend(
        "openai", base_url="http://127.0.0.1:11434/v1", api_key="", request_timeout=5.0
    )
    assert isinstance(openai, OpenAIBackend)
    assert (openai.base_url, openai.request_timeout) == ("http://127.0.0.1:11434/v1", 5.0)


def test_build_backend_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown provider kind 'anthropic'; expected one of: "):
        build_backend("anthropic")
    with pytest.raises(TypeError, match="provider kind must be a str"):
        build_backend(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'echo' does not take option\(s\) 'base_url'"):
        build_backend("echo", base_url="http://x")
    with pytest.raises(TypeError, match=r"'simulated' does not take option\(s\) 'capcity'"):
        build_backend("simulated", capcity=3)
    with pytest.raises(TypeError, match=r"'openai' needs option\(s\) 'base_url'"):
        build_backend("openai", api_key="k")
    with pytest.raises(ValueError, match="error_rate"):
        build_backend("simulated", error_rate=2)
    with pytest.raises(TypeError, match="request_timeout"):
        build_backend("openai", base_url="http://x", request_timeout="60")


def test_backend_options() -> None:
    assert backend_options("echo") == {}
    options = backend_options("openai")
    assert options["base_url"] is True
    assert options["api_key"] is False
    assert "request_timeout" in options
    assert {"seed", "base_latency", "capacity", "error_rate", "outages"} <= set(
        backend_options("simulated")
    )
    with pytest.raises(ValueError, match="unknown provider kind"):
        backend_options("x")
