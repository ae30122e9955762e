"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint, over aiohttp.

OpenAI, Ollama (``http://127.0.0.1:11434/v1``), vLLM, OpenRouter, LM Studio... all speak
``POST {base_url}/chat/completions``. One pooled :class:`aiohttp.ClientSession` is created on the
first call, inside the running event loop, and reused by every later call, so connections (and
TLS handshakes) are kept alive between requests; :meth:`OpenAIBackend.aclose` closes it.

aiohttp is the gateway's one HTTP stack (client here, server in ``zeroclaw.gateway``): it does
both, is well kept, and costs one dependency instead of two. It comes with the ``gateway`` extra.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    import aiohttp
except ImportError as exc:  # exercised in a subprocess by the tests
    raise ImportError(
        "zeroclaw.providers.openai needs aiohttp: pip install 'zeroclaw[gateway]'"
    ) from exc

from zeroclaw import __version__, wire_json
from zeroclaw.concurrency._validate import to_count, to_seconds
from zeroclaw.providers.base import (
    ChatMessage,
    ErrorCode,
    ProviderError,
    parse_retry_after,
)

__all__ = ["OpenAIBackend"]

# Error bodies are read for their message only; a long one is cut (it is logged, not shown whole).
_MAX_ERROR_TEXT = 500
#: The largest response body read, by default: a chat reply is kilobytes; this bounds the memory
#: one misbehaving endpoint can take.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class OpenAIBackend:
    """An OpenAI-compatible chat-completions client.

    ``OpenAIBackend(base_url, api_key="", *, request_timeout=60.0, headers=None,
    trust_env=False, max_response_bytes=8 MiB, wall_clock=time.time)``. ``base_url`` is the API root
    (``https://api.openai.com/v1``); the request goes to ``{base_url}/chat/completions``.
    ``Authorization: Bearer <api_key>`` is sent only when ``api_key`` is not empty (Ollama and a
    local vLLM need none). ``headers`` are extra request headers (OpenRouter's
    ``HTTP-Referer``/``X-Title``). ``request_timeout`` bounds each request as a whole, connect to
    last byte. ``trust_env=True`` makes aiohttp use the ``HTTP(S)_PROXY``/``NO_PROXY``
    environment variables (and ``~/.netrc`` credentials); off by default, as in aiohttp.
    A response body longer than ``max_response_bytes`` is not read further (an
    ``invalid_response`` error).
    ``wall_clock`` (Unix seconds) is what an HTTP-date ``Retry-After`` is compared with.

    The session's connection pool is not limited here: the concurrency limit is the
    :class:`~zeroclaw.providers.managed.ManagedProvider`'s ``AdaptiveLimiter``. Like asyncio's
    primitives, an instance belongs to the event loop it first ran in.

    Raises:
        TypeError, ValueError: for a bad argument (an empty or non-http ``base_url``, a negative
            or NaN ``request_timeout``...).
    """

    __slots__ = (
        "_closed",
        "_headers",
        "_loop",
        "_session",
        "_timeout",
        "_trust_env",
        "_url",
        "_wall_clock",
        "base_url",
        "max_response_bytes",
        "request_timeout",
    )

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        *,
        request_timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        trust_env: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(base_url, str):
            raise TypeError(f"base_url must be a str, not {type(base_url).__name__}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        if not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be a bool, not {type(trust_env).__name__}")
        timeout = to_seconds(request_timeout, what="request_timeout", allow_infinite=False)
        if timeout == 0:
            raise ValueError("request_timeout must be > 0 seconds, got 0")
        self.base_url = base_url.rstrip("/")
        self.request_timeout = timeout
        self._url = f"{self.base_url}/chat/completions"
        self._headers: dict[str, str] = {
            "Accept": "application/json",
            "User-Agent": f"zeroclaw/{__version__} aiohttp/{aiohttp.__version__}",
        }
        for key, value in (headers or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("headers must map str to str")
            self._headers[key] = value
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._wall_clock = wall_clock
        self._trust_env = trust_env
        self.max_response_bytes = to_count(max_response_bytes, what="max_response_bytes", minimum=1)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def name(self) -> str:
        """``"openai"``."""
        return "openai"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None:
            # limit=0: the ManagedProvider's limiter bounds concurrency; a second bound here
            # would queue requests inside aiohttp, where the request timeout already runs.
            connector = aiohttp.TCPConnector(limit=0)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                trust_env=self._trust_env,
            )
            self._session, self._loop = session, loop
        elif self._loop is not loop:
            raise RuntimeError("OpenAIBackend is used from an event loop other than its own")
        return session

    async def complete(
        self, messages: Sequence[ChatMessage], *, model: str, temperature: float
    ) -> str:
        """POST the messages and return ``choices[0].message.content``.

        Blocks for one HTTP request, at most ``request_timeout``. Does not retry.

        Raises:
            ProviderError: for a non-2xx answer (with the OpenAI error body's code and message,
                and ``Retry-After``), a timeout (code ``timeout``), a connection error or a body
                cut short (``connection_error``; all three retryable), or a 2xx that is not a
                chat completion (``invalid_response``, not retryable).
            RuntimeError: after :meth:`aclose`, or from another event loop.
        """
        session = self._get_session()
        body = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": temperature,
        }
        try:
            async with session.post(self._url, json=body) as response:
                raw, cut = await self._read_body(response)
                status = response.status
                content_type = response.content_type
                headers = response.headers
        except TimeoutError as exc:
            raise ProviderError(
                None,
                ErrorCode.TIMEOUT,
                f"no complete answer from {self._url} within {self.request_timeout:g}s",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            # Refused, reset, cut short (ClientPayloadError), or not HTTP at all.
            reason = str(exc) or type(exc).__name__
            raise ProviderError(None, ErrorCode.CONNECTION, f"{self._url}: {reason}") from exc
        if 200 <= status < 300:
            if cut:
                raise _too_large(status, self.max_response_bytes)
            return _reply_content(status, content_type, raw)
        # An error's status decides the retry; a long error body is only cut.
        code, message = _error_details(raw)
        raise ProviderError(
            status,
            code,
            message or f"HTTP {status} from {self._url}",
            retry_after=parse_retry_after(headers, self._wall_clock()),
        )

    async def _read_body(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """The body, at most ``max_response_bytes`` of it, and whether there was more."""
        limit = self.max_response_bytes
        if response.content_length is not None and response.content_length > limit:
            return b"", True
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[:limit], True
        return b"".join(chunks), False

    async def aclose(self) -> None:
        """Close the pooled session (its connections). Idempotent; later calls raise."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, request_timeout={self.request_timeout:g})"


def _invalid(status: int, reason: str) -> ProviderError:
    return ProviderError(status, ErrorCode.INVALID_RESPONSE, reason, retryable=False)


def _too_large(status: int, limit: int) -> ProviderError:
    return ProviderError(
        status,
        ErrorCode.INVALID_RESPONSE,
        f"the response body is larger than max_response_bytes={limit}",
        retryable=False,
    )


def _reply_content(status: int, content_type: str, raw: bytes) -> str:
    """``choices[0].message.content`` of a 2xx body, else an ``invalid_response`` error.

    A 2xx that is not a completion is not retried: the server answered, and the same request
    would most likely get the same answer.
    """
    if content_type != "application/json":
        raise _invalid(status, f"expected application/json, got {content_type or 'no type'!r}")
    try:
        data: Any = wire_json.loads(raw)
    except ValueError as exc:
        raise _invalid(status, f"malformed JSON in the reply: {exc}") from exc
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _invalid(status, "the reply has no choices[0].message.content") from exc
    if not isinstance(content, str):
        raise _invalid(
            status, f"choices[0].message.content is {type(content).__name__}, not a string"
        )
    return content


def _error_details(raw: bytes) -> tuple[str | None, str]:
    """``(code, message)`` from an error body: OpenAI's ``{"error": {"code", "type", "message"}}``
    (``code`` falls back to ``type``), ``{"error": "text"}`` (Ollama, some proxies), or the text."""
    text = raw.decode("utf-8", "replace")
    try:
        data: Any = wire_json.loads(text)
    except ValueError:
        return None, text.strip()[:_MAX_ERROR_TEXT]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return None, error[:_MAX_ERROR_TEXT]
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            code = str(code)  # OpenRouter sends the HTTP status as a number
        kind = error.get("type")
        # Some proxies put OpenAI's quota code in ``type`` only; it decides the retry, so keep it.
        if not isinstance(code, str) or not code or kind == ErrorCode.INSUFFICIENT_QUOTA:
            code = kind
        message = error.get("message")
        return (
            code if isinstance(code, str) and code else None,
            message[:_MAX_ERROR_TEXT] if isinstance(message, str) else "",
        )
    return None, text.strip()[:_MAX_ERROR_TEXT]
