"""The gateway's config file (``zeroclaw.toml``): read it, check every key, build the settings.

:func:`load_config` reads a TOML file (``tomllib``) and returns a :class:`GatewayConfig`, or raises
:class:`ConfigError` listing **every** problem it found, one line each, in the form
``zeroclaw.toml: channels.tg.bot_token: required`` (the file name as the caller gave it). Nothing
in the file is ignored: an unknown key is a problem (with a "did you mean" when a valid key is
close), and so is a key that only applies to another kind of channel or provider.

The accepted keys are data, not code: :data:`SECTIONS` holds one :class:`Section` per table of the
file, each with its :class:`Key` rows (name, type, default, parser). The loader reads them, and
the documentation test compares them with the reference tables of ``docs/gateway.md``, so a key
cannot be accepted without being documented or documented without being accepted.

Values:

- any string may name environment variables as ``${NAME}`` (anywhere in the string); an unset
  variable is a problem naming the key; ``$${`` is a literal ``${``.
- ``[processor]`` starts from ``MessageProcessorConfig`` (or its ``preset``) and each key
  overrides one field; ``[processor.circuit]`` likewise for ``CircuitConfig``. The ranges are the
  core's own: the loader builds the core's config objects and turns their ``ValueError`` into a
  problem on the key that caused it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from zeroclaw.backends.redis.settings import RedisSettings
from zeroclaw.concurrency._validate import to_fraction
from zeroclaw.concurrency.channel_integration import MessageProcessorConfig
from zeroclaw.concurrency.circuit_breaker import COUNT_FIELDS as CIRCUIT_COUNT_FIELDS
from zeroclaw.concurrency.circuit_breaker import CircuitConfig

__all__ = [
    "ChannelSettings",
    "ConfigError",
    "GatewayConfig",
    "Key",
    "ProviderSettings",
    "SECTIONS",
    "Section",
    "RedisSettings",
    "ServerSettings",
    "load_config",
    "parse_config",
    "toml_literal",
]

CHANNEL_KINDS: Final = ("webhook", "telegram", "slack", "terminal")
PROVIDER_KINDS: Final = ("openai", "echo", "simulated")
QUEUE_MODES: Final = ("followup", "collect", "interrupt")
# Paths the server answers itself; a channel cannot take them.
RESERVED_PATHS: Final = ("/healthz", "/metrics", "/status")


# ---------------------------------------------------------------------------- the settings


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The ``[gateway]`` table: where the HTTP server listens and how it stops."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port
    max_body_bytes: int = 1_048_576
    shutdown_timeout: float = 25.0
    client_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """The ``[provider]`` table.

    ``base_url``, ``api_key`` apply to ``kind = "openai"`` only (``None`` for the other kinds);
    ``api_key`` may be empty (a local Ollama): then no ``Authorization`` header is sent.
    ``model`` empty means the kind's name. ``options`` holds the kind's own keyword arguments
    for ``zeroclaw.providers.build_backend`` (the simulated backend's ``seed``, ``outages``...).
    """

    kind: str
    base_url: str | None = None
    api_key: str | None = None
    model: str = ""
    temperature: float = 0.7
    system_prompt: str | None = None
    request_timeout: float = 60.0
    max_retries: int = 2
    requests_per_second: float = 0.0
    max_concurrency: int = 16
    limiter_window: int = 20
    history_turns: int = 10
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.model:
            object.__setattr__(self, "model", self.kind)


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """One ``[channels.NAME]`` table.

    ``allowed_users``: ``None`` allows everyone (``"*"``), ``()`` nobody, else the user ids or
    names allowed. ``path``: the HTTP path the server routes to this channel (``/channels/NAME``
    unless the file says otherwise), ``None`` for a channel that receives nothing over HTTP (the
    terminal, Telegram in polling mode). ``options``: the kind's own keys, every one present
    (``None`` where unset): webhook ``token``, ``callback_url``, ``callback_timeout``,
    ``callback_retries``, ``admission_timeout``; telegram ``bot_token``, ``mode``,
    ``secret_token``, ``api_base``, ``group_reply``, ``admission_timeout``; slack ``bot_token``,
    ``signing_secret``, ``api_base``; terminal none.
    """

    name: str
    kind: str
    allowed_users: tuple[str, ...] | None = None
    path: str | None = None
    queue_mode: str = "followup"
    collect_window: float = 0.5
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def allows(self, user: str) -> bool:
        """Whether messages from ``user`` are processed."""
        return self.allowed_users is None or user in self.allowed_users


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything ``zeroclaw serve`` runs, as read from ``source`` (the file name as given).
    ``redis`` is ``None`` without a ``[redis]`` table (one process on its own)."""

    gateway: ServerSettings
    processor: MessageProcessorConfig
    provider: ProviderSettings
    channels: tuple[ChannelSettings, ...]
    source: str = "<config>"
    redis: RedisSettings | None = None


class ConfigError(Exception):
    """A config file that cannot run. ``problems``: one line per problem,
    ``"<file>: <key.path>: <problem>"``, in the order the loader met them."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------------------- the schema


class _Invalid(Exception):
    """A value's problem, worded for the user; the loader adds the file and the key path."""


class _Marker:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


REQUIRED: Final = _Marker("required")
UNSET: Final = _Marker("unset")  # optional, no value
_FAILED: Final = _Marker("<failed>")  # a value already reported as a problem


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a table: its name, its type as documented, its default, its parser.

    ``parse`` turns the TOML value into the setting's value or raises ``_Invalid``. ``when``
    names a sibling key the key depends on, ``(sibling, values)``: the key may be set only when
    the sibling's value is one of ``values`` (``None``: only when the sibling is set).
    ``default_text`` replaces the rendered default in the docs when it depends on something.
    """

    name: str
    type: str
    parse: Callable[[Any], Any]
    default: Any = UNSET
    default_text: str | None = None
    when: tuple[str, tuple[Any, ...] | None] | None = None

    @property
    def documented_default(self) -> str:
        """The default as ``docs/gateway.md`` writes it: a TOML literal in backticks, or words."""
        if self.default_text is not None:
            return self.default_text
        if self.default is REQUIRED or self.default is UNSET:
            return repr(self.default)
        return f"`{toml_literal(self.default)}`"


@dataclass(frozen=True, slots=True)
class Section:
    """One table of the file as documented: ``title`` is its heading in ``docs/gateway.md``."""

    title: str
    keys: tuple[Key, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self.keys)

    def by_name(self) -> dict[str, Key]:
        return {key.name: key for key in self.keys}


def toml_literal(value: object) -> str:
    """``value`` written as in a TOML file: ``"text"``, ``true``, ``1.5``, ``inf``, ``[1, 2]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    return repr(value)


def _show(value: object) -> str:
    """How a wrong value is named in a problem: a scalar as written, a list or table by kind."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str | bool | int | float):
        return toml_literal(value)
    return f"a {type(value).__name__}"  # TOML dates and times


def _suggest(word: str, candidates: Iterable[str], *, key: bool = False) -> str:
    """`` (did you mean 'name'?)`` for the closest candidate (keys in single quotes, values as
    TOML strings), or nothing when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean '{close[0]}'?)" if key else f" (did you mean {toml_literal(close[0])}?)"


def _one_of(choices: Sequence[str]) -> str:
    """``"a", "b" or "c"``."""
    quoted = [toml_literal(choice) for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


# Parsers: each takes the TOML value (strings already expanded) and returns the setting's value.


def _string(
    *,
    choices: Sequence[str] | None = None,
    empty: bool = False,
    pattern: re.Pattern[str] | None = None,
    pattern_text: str = "",
) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {_show(value)}")
        if choices is not None and value not in choices:
            raise _Invalid(
                f"must be {_one_of(choices)}, got {_show(value)}{_suggest(value, choices)}"
            )
        if not empty and not value:
            raise _Invalid("must not be empty")
        if pattern is not None and not pattern.fullmatch(value):
            raise _Invalid(f"must be {pattern_text}, got {_show(value)}")
        return value

    return parse


def _url(value: Any) -> str:
    text = _string()(value)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Invalid(f"must be an http:// or https:// URL, got {_show(value)}")
    return text.rstrip("/")


def _redis_url(value: Any) -> str:
    text = _string()(value)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise _Invalid(f"must be a redis://, rediss:// or unix:// URL, got {_show(value)}")
    return text


def _integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if type(value) is not int:
            raise _Invalid(f"expected an integer, got {_show(value)}")
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            raise _Invalid(f"must be between {minimum} and {maximum}, got {value}")
        if minimum is not None and value < minimum:
            raise _Invalid(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _number(
    minimum: float | None = None, *, above: bool = False, allow_inf: bool = False
) -> Callable[[Any], float]:
    """A finite int or float (``allow_inf``: ``inf`` too), at least ``minimum`` (or greater than
    it with ``above``)."""

    def parse(value: Any) -> float:
        if type(value) not in (int, float):
            raise _Invalid(f"expected a number, got {_show(value)}")
        number = float(value)
        if math.isnan(number) or (math.isinf(number) and not (allow_inf and number > 0)):
            raise _Invalid(f"must be a finite number, got {_show(value)}")
        if minimum is not None and (number <= minimum if above else number < minimum):
            raise _Invalid(f"must be {'>' if above else '>='} {minimum:g}, got {_show(value)}")
        return number

    return parse


def _fraction(value: Any) -> float:
    number = _number()(value)
    try:
        return to_fraction(number, what="", low=0.0, high=1.0)
    except ValueError as error:
        raise _Invalid(str(error).strip()) from None


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _processing_timeout(value: Any) -> float | None:
    """Seconds > 0, or ``inf``: no limit (``None`` for the core)."""
    seconds = _number(allow_inf=True)(value)
    if seconds <= 0:
        raise _Invalid(f"must be > 0 (inf: no limit), got {_show(value)}")
    return None if math.isinf(seconds) else seconds


def _allowed_users(value: Any) -> tuple[str, ...] | None:
    """``"*"`` or ``["*"]``: everyone (``None``); a list of ids or names (strings, or integers
    taken as their decimal text: Telegram user ids); ``[]``: nobody."""
    if value == "*":
        return None
    if isinstance(value, str):
        raise _Invalid(f'expected a list of user ids or "*", got {_show(value)}')
    if not isinstance(value, list):
        raise _Invalid(f'expected a list of user ids or "*", got {_show(value)}')
    users: list[str] = []
    for index, item in enumerate(value):
        if type(item) is int:
            item = str(item)
        if not isinstance(item, str):
            raise _Invalid(f"item {index}: expected a string, got {_show(item)}")
        if not item:
            raise _Invalid(f"item {index}: must not be empty")
        users.append(item)
    if "*" in users:
        if len(users) > 1:
            raise _Invalid('"*" allows everyone: list no other users with it')
        return None
    return tuple(dict.fromkeys(users))


def _outages(value: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list):
        raise _Invalid(f"expected a list of [start, duration] pairs, got {_show(value)}")
    outages: list[tuple[float, float]] = []
    seconds = _number(0.0)
    for index, item in enumerate(value):
        if not isinstance(item, list) or len(item) != 2:
            raise _Invalid(f"item {index}: expected [start, duration], got {_show(item)}")
        try:
            outages.append((seconds(item[0]), seconds(item[1])))
        except _Invalid as problem:
            raise _Invalid(f"item {index}: {problem}") from None
    return tuple(outages)


def _channel_path(value: Any) -> str:
    path = _string()(value)
    if not _PATH.fullmatch(path):
        raise _Invalid(
            "must start with / and use only letters, digits and - _ . ~ /, got " + _show(value)
        )
    if path in RESERVED_PATHS:
        raise _Invalid(f"{path} is the server's own path")
    return path


def _queue_mode(value: Any) -> str:
    return _string(choices=QUEUE_MODES)(value)


_PATH: Final = re.compile(r"/[A-Za-z0-9_\-.~/]*")
_TELEGRAM_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")
_CHANNEL_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_NAMESPACE: Final = re.compile(r"[A-Za-z0-9_\-.:]+")

_SECONDS: Final = _number(0.0)


def _finite(value: Any) -> float:
    """A finite int or float, as a float (what a compiled core stores in a float field anyway):
    the core's own check judges its range."""
    return _number()(value)


_SECONDS_POSITIVE: Final = _number(0.0, above=True)

_PROCESSOR_DEFAULTS: Final = MessageProcessorConfig()
_CIRCUIT_DEFAULTS: Final = CircuitConfig()


def _core_key(
    name: str,
    type_: str,
    parse: Callable[[Any], Any],
    defaults: object,
    when: tuple[str, tuple[Any, ...]] | None = None,
) -> Key:
    """A key that sets the core config field ``name``; its default is the core's (``None``
    there is "unset" here)."""
    default = getattr(defaults, name)
    return Key(name, type_, parse, UNSET if default is None else default, when=when)


def _processor_key(
    name: str, type_: str, parse: Callable[[Any], Any], when: tuple[str, tuple[Any, ...]] | None
) -> Key:
    return _core_key(name, type_, parse, _PROCESSOR_DEFAULTS, when)


_DEDUP_ON: Final = ("enable_dedup", (True,))

SECTIONS: Final[Mapping[str, Section]] = MappingProxyType(
    {
        "gateway": Section(
            "`[gateway]`",
            (
                Key("host", "string", _string(), "127.0.0.1"),
                Key("port", "integer", _integer(0, 65535), 8080),
                Key("max_body_bytes", "integer", _integer(1), 1_048_576),
                Key("shutdown_timeout", "seconds", _SECONDS, 25.0),
                Key("client_timeout", "seconds", _number(0.0, above=True), 15.0),
            ),
        ),
        "processor": Section(
            "`[processor]`",
            (
                Key("preset", "string", _string(choices=("small", "medium", "large"))),
                _processor_key("worker_pool_size", "integer", _integer(), None),
                _processor_key("task_queue_size", "integer", _integer(), None),
                _processor_key(
                    "max_concurrent_requests",
                    "integer",
                    _integer(),
                    ("enable_backpressure", (True,)),
                ),
                _processor_key("processing_timeout", "seconds", _processing_timeout, None),
                _processor_key("admission", "string", _string(choices=("wait", "reject")), None),
                _processor_key("enable_dedup", "boolean", _boolean, None),
                _processor_key("dedup_ttl", "seconds", _finite, _DEDUP_ON),
                _processor_key(
                    "dedup_key",
                    "string",
                    _string(choices=("message_id", "content")),
                    _DEDUP_ON,
                ),
                _processor_key("dedup_max_entries", "integer", _integer(), _DEDUP_ON),
                _processor_key("enable_circuit_breaker", "boolean", _boolean, None),
                _processor_key("enable_backpressure", "boolean", _boolean, None),
                _processor_key("max_undelivered_results", "integer", _integer(), None),
                _processor_key("max_pending_per_conversation", "integer", _integer(0), None),
            ),
        ),
        "processor.circuit": Section(
            "`[processor.circuit]`",
            (
                Key("preset", "string", _string(choices=("fast_fail", "lenient", "strict"))),
                *(
                    _core_key(name, "integer", _integer(), _CIRCUIT_DEFAULTS)
                    for name in CIRCUIT_COUNT_FIELDS
                ),
                _core_key("timeout_duration", "seconds", _finite, _CIRCUIT_DEFAULTS),
                _core_key("failure_rate_threshold", "number", _finite, _CIRCUIT_DEFAULTS),
                _core_key("slow_call_duration", "seconds", _finite, _CIRCUIT_DEFAULTS),
                _core_key("open_jitter", "number", _finite, _CIRCUIT_DEFAULTS),
                _core_key("probe_timeout", "seconds", _finite, _CIRCUIT_DEFAULTS),
            ),
        ),
        "provider": Section(
            "`[provider]`",
            (
                Key("kind", "string", _string(choices=PROVIDER_KINDS), REQUIRED),
                Key(
                    "model",
                    "string",
                    _string(),
                    default_text='required with `kind = "openai"`, else the kind',
                ),
                Key("temperature", "number", _number(0.0), 0.7),
                Key("system_prompt", "string", _string(empty=True)),
                Key("max_retries", "integer", _integer(0), 2),
                Key("requests_per_second", "number", _number(0.0), 0),
                Key("max_concurrency", "integer", _integer(1), 16),
                Key("limiter_window", "integer", _integer(1), 20),
                Key("history_turns", "integer", _integer(0), 10),
            ),
        ),
        "provider.openai": Section(
            '`[provider]` with `kind = "openai"`',
            (
                Key("base_url", "string", _url, "https://api.openai.com/v1"),
                Key("api_key", "string", _string(empty=True), ""),
                Key("request_timeout", "seconds", _SECONDS_POSITIVE, 60.0),
            ),
        ),
        "provider.simulated": Section(
            '`[provider]` with `kind = "simulated"`',
            (
                Key("seed", "integer", _integer(), 0),
                Key("base_latency", "seconds", _SECONDS, 0.2),
                Key("latency_sigma", "number", _number(0.0), 0.3),
                Key("capacity", "integer", _integer(1), 8),
                Key("error_rate", "number", _fraction, 0.0),
                Key("outages", "list of [start, duration]", _outages, []),
                Key("recovery", "seconds", _SECONDS, 0.0),
            ),
        ),
        "channels": Section(
            "`[channels.NAME]`",
            (
                Key(
                    "kind",
                    "string",
                    _string(choices=CHANNEL_KINDS),
                    default_text="the table's name, when it is a kind",
                ),
                Key(
                    "allowed_users",
                    'list of strings, or `"*"`',
                    _allowed_users,
                    default_text='required (terminal: `"*"`)',
                ),
                Key(
                    "path",
                    "string",
                    _channel_path,
                    default_text="`/channels/NAME` (HTTP channels only)",
                ),
                Key("queue_mode", "string", _queue_mode, "followup"),
                Key("collect_window", "seconds", _SECONDS, 0.5, when=("queue_mode", ("collect",))),
            ),
        ),
        "redis": Section(
            "`[redis]`",
            (
                Key("url", "string", _redis_url, REQUIRED),
                Key(
                    "namespace",
                    "string",
                    _string(pattern=_NAMESPACE, pattern_text="letters, digits, - _ . and :"),
                    "zeroclaw",
                ),
                Key("partitions", "integer", _integer(1, 1024), 32),
                Key("lease_ttl", "seconds", _number(0.5), 15.0),
                Key("max_deliveries", "integer", _integer(1), 5),
                Key("max_backlog", "integer", _integer(1), 1000),
                Key("dedup_ttl", "seconds", _number(1.0), 86_400.0),
                Key("history_ttl", "seconds", _number(1.0), 86_400.0),
                Key("in_doubt", "string", _string(choices=("drop", "resend")), "drop"),
            ),
        ),
        "channels.webhook": Section(
            '`[channels.NAME]` with `kind = "webhook"`',
            (
                Key("token", "string", _string()),
                Key("callback_url", "string", _url),
                Key(
                    "callback_timeout",
                    "seconds",
                    _SECONDS_POSITIVE,
                    10.0,
                    when=("callback_url", None),
                ),
                Key("callback_retries", "integer", _integer(0), 3, when=("callback_url", None)),
                Key("admission_timeout", "seconds", _SECONDS_POSITIVE, 10.0),
            ),
        ),
        "channels.telegram": Section(
            '`[channels.NAME]` with `kind = "telegram"`',
            (
                Key("bot_token", "string", _string(), REQUIRED),
                Key("mode", "string", _string(choices=("polling", "webhook")), "polling"),
                Key(
                    "secret_token",
                    "string",
                    _string(
                        pattern=_TELEGRAM_SECRET,
                        pattern_text="1 to 256 letters, digits, _ or -",
                    ),
                    default_text='required with `mode = "webhook"`',
                    when=("mode", ("webhook",)),
                ),
                Key("api_base", "string", _url, "https://api.telegram.org"),
                Key(
                    "group_reply",
                    "string",
                    _string(choices=("mention_only", "all_messages")),
                    "mention_only",
                ),
                Key("admission_timeout", "seconds", _SECONDS_POSITIVE, 10.0),
            ),
        ),
        "channels.slack": Section(
            '`[channels.NAME]` with `kind = "slack"`',
            (
                Key("bot_token", "string", _string(), REQUIRED),
                Key("signing_secret", "string", _string(), REQUIRED),
                Key("api_base", "string", _url, "https://slack.com/api"),
            ),
        ),
    }
)

# MessageProcessorConfig / CircuitConfig fields a TOML file cannot set (functions), or sets
# through a table of its own.
# queue_mode and collect_window are set per channel ([channels.NAME]), into channel_queue_modes.
PROCESSOR_FIELDS_NOT_IN_TOML: Final = frozenset(
    {
        "circuit_config",
        "conversation_key",
        "priority",
        "queue_mode",
        "collect_window",
        "channel_queue_modes",
    }
)
CIRCUIT_FIELDS_NOT_IN_TOML: Final = frozenset({"is_failure"})
_TOP_LEVEL: Final = ("gateway", "processor", "provider", "channels", "redis")


# ---------------------------------------------------------------------------- the loader


KeyPath = tuple[str | int, ...]


def _render_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part) is not None
            name = part if bare else json.dumps(part, ensure_ascii=False)
            text += f".{name}" if text else name
    return text


_REFERENCE: Final = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")


class _Loader:
    """One pass over a parsed document, collecting every problem before it gives up."""

    def __init__(self, source: str, environ: Mapping[str, str], document: Mapping[str, Any]):
        self.source = source
        self.environ = environ
        self.document = document
        self._problems: list[tuple[tuple[int, ...], int, str]] = []

    def problem(self, path: KeyPath, message: str) -> None:
        where = _render_path(path)
        line = f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}"
        self._problems.append((self._position(path), len(self._problems), line))

    @property
    def problems(self) -> list[str]:
        """The problems in the order of the file (a missing key after its table's keys)."""
        return [line for _, _, line in sorted(self._problems)]

    def _position(self, path: KeyPath) -> tuple[int, ...]:
        position: list[int] = []
        node: Any = self.document
        for part in path:
            if isinstance(node, dict) and part in node:
                position.append(list(node).index(part))
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                position.append(part)
                node = node[part]
            else:
                position.append(1 << 30)
                node = None
        return tuple(position)

    # ------------------------------------------------------------ environment references

    def expand(self, value: Any, path: KeyPath) -> Any:
        """``value`` with ``${NAME}`` replaced in every string; ``_FAILED`` where one is unset."""
        if isinstance(value, str):
            return self._expand_string(value, path)
        if isinstance(value, list):
            items = [self.expand(item, (*path, index)) for index, item in enumerate(value)]
            return _FAILED if any(item is _FAILED for item in items) else items
        if isinstance(value, dict):
            return {name: self.expand(item, (*path, name)) for name, item in value.items()}
        return value

    def _expand_string(self, text: str, path: KeyPath) -> Any:
        missing: list[str] = []
        malformed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal malformed
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name is None:
                malformed = True
                return ""
            if name not in self.environ:
                missing.append(name)
                return ""
            return self.environ[name]

        expanded = _REFERENCE.sub(replace, text)
        for name in dict.fromkeys(missing):
            self.problem(path, f"environment variable {name} is not set")
        if malformed:
            self.problem(
                path, "malformed environment reference: write ${NAME}, or $${ for a literal ${"
            )
        return _FAILED if missing or malformed else expanded

    # ------------------------------------------------------------ tables

    def table(self, document: Mapping[str, Any], name: str, path: KeyPath) -> Mapping[str, Any]:
        """``document[name]`` if it is a table (else a problem and an empty table)."""
        value = document.get(name, {})
        if value is _FAILED:
            return {}
        if not isinstance(value, dict):
            self.problem((*path, name), f"expected a table, got {_show(value)}")
            return {}
        return value

    def read(
        self,
        table: Mapping[str, Any],
        path: KeyPath,
        sections: Sequence[Section],
        elsewhere: Mapping[str, str] | None = None,
        subtables: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Parse ``table``'s keys against the keys of ``sections``.

        Returns the parsed values (``_FAILED`` for a value already reported). Reports unknown
        keys (``elsewhere`` maps a key of another kind to the reason it does not apply here),
        values the parser refuses, required keys missing, and keys whose ``when`` is not met.
        ``subtables`` are names the caller reads itself.
        """
        keys: dict[str, Key] = {}
        for section in sections:
            keys.update(section.by_name())
        values: dict[str, Any] = {}
        skip = set(subtables)
        for name, raw in table.items():
            if name in skip:
                continue
            key = keys.get(name)
            if key is None:
                if elsewhere is not None and name in elsewhere:
                    if elsewhere[name]:  # "": a key of some kind, while the kind is unknown
                        self.problem((*path, name), elsewhere[name])
                else:
                    hint = _suggest(name, [*keys, *skip], key=True)
                    self.problem((*path, name), f"unknown key{hint}")
                continue
            if raw is _FAILED:
                values[name] = _FAILED
                continue
            try:
                values[name] = key.parse(raw)
            except _Invalid as invalid:
                self.problem((*path, name), str(invalid))
                values[name] = _FAILED
        for key in keys.values():
            if key.default is REQUIRED and key.name not in values:
                self.problem((*path, key.name), "required")
        for name, value in values.items():
            when = keys[name].when
            if when is None or value is _FAILED:
                continue
            sibling, allowed = when
            current = values.get(sibling, keys[sibling].default)
            if current is _FAILED:
                continue
            if allowed is None and current is UNSET:
                self.problem((*path, name), f"only used with {sibling} set")
            elif allowed is not None and current not in allowed:
                wanted = " or ".join(f"{sibling} = {toml_literal(v)}" for v in allowed)
                self.problem((*path, name), f"only used with {wanted}")
        return values

    # ------------------------------------------------------------ sections

    def redis(self, document: Mapping[str, Any]) -> RedisSettings | None:
        if "redis" not in document:
            return None
        table = self.table(document, "redis", ())
        values = self.read(table, ("redis",), [SECTIONS["redis"]])
        if _FAILED in values.values() or "url" not in values:
            return None
        return RedisSettings(**values)

    def server(self, document: Mapping[str, Any]) -> ServerSettings:
        values = self.read(self.table(document, "gateway", ()), ("gateway",), [SECTIONS["gateway"]])
        return ServerSettings(**_given(values))

    def processor(self, document: Mapping[str, Any]) -> MessageProcessorConfig:
        table = self.table(document, "processor", ())
        values = self.read(table, ("processor",), [SECTIONS["processor"]], subtables=["circuit"])
        preset = values.pop("preset", UNSET)
        base = (
            MessageProcessorConfig()
            if preset is UNSET or preset is _FAILED
            else getattr(MessageProcessorConfig, preset)()
        )
        fields = _given(values)
        good = self._core_fields(base, fields, ("processor",))
        circuit = self.circuit(table, base.circuit_config, values)
        try:
            return dataclasses.replace(base, **good, circuit_config=circuit)
        except (TypeError, ValueError) as error:
            self.problem(("processor",), _core_message(error, None))
            return base

    def circuit(
        self, processor: Mapping[str, Any], base: CircuitConfig, values: Mapping[str, Any]
    ) -> CircuitConfig:
        path: KeyPath = ("processor", "circuit")
        if "circuit" not in processor:
            return base
        table = self.table(processor, "circuit", ("processor",))
        if values.get("enable_circuit_breaker") is False:
            self.problem(path, "only used with enable_circuit_breaker = true")
        read = self.read(table, path, [SECTIONS["processor.circuit"]])
        preset = read.pop("preset", UNSET)
        if preset is not UNSET and preset is not _FAILED:
            base = getattr(CircuitConfig, preset)()
        good = self._core_fields(base, _given(read), path)
        try:
            return dataclasses.replace(base, **good)
        except (TypeError, ValueError) as error:
            self.problem(path, _core_message(error, None))
            return base

    def _core_fields(self, base: Any, fields: Mapping[str, Any], path: KeyPath) -> dict[str, Any]:
        """The ``fields`` the core's config class accepts one at a time over ``base``; a problem
        for each one it refuses, worded by the core."""
        good: dict[str, Any] = {}
        for name, value in fields.items():
            try:
                dataclasses.replace(base, **{name: value})
            except (TypeError, ValueError) as error:
                text = _core_message(error, name)
                if isinstance(value, float) and value.is_integer():
                    # "got -1.0" for a file that says -1: name the value as a person wrote it
                    text = text.removesuffix(f"got {value!r}") + f"got {int(value)}"
                self.problem((*path, name), text)
            else:
                good[name] = value
        return good

    def provider(self, document: Mapping[str, Any]) -> ProviderSettings | None:
        path: KeyPath = ("provider",)
        if "provider" not in document:
            self.problem(
                path, f"required: a [provider] table with kind = {_one_of(PROVIDER_KINDS)}"
            )
            return None
        if not isinstance(document["provider"], dict):
            self.table(document, "provider", ())
            return None
        table = document["provider"]
        kind = table.get("kind")
        known = isinstance(kind, str) and kind in PROVIDER_KINDS
        own = [SECTIONS["provider"]]
        if known and f"provider.{kind}" in SECTIONS:
            own.append(SECTIONS[f"provider.{kind}"])
        elsewhere = {
            # While the kind itself is wrong, the keys of the kinds are not judged yet.
            name: f"only used with kind = {toml_literal(other)}" if known else ""
            for other in PROVIDER_KINDS
            if other != kind and f"provider.{other}" in SECTIONS
            for name in SECTIONS[f"provider.{other}"].names()
        }
        values = self.read(table, path, own, elsewhere)
        kind = values.get("kind", _FAILED)
        if kind == "openai" and "model" not in values:
            self.problem((*path, "model"), 'required with kind = "openai"')
        if kind is _FAILED or _FAILED in values.values():
            return None
        options: dict[str, Any] = {}
        if kind == "simulated":
            options = {key.name: key.default for key in SECTIONS["provider.simulated"].keys}
            options.update({name: values[name] for name in options if name in values})
            options["outages"] = tuple(options["outages"])
        common = {
            name: value
            for name, value in _given(values).items()
            if name in SECTIONS["provider"].names() and name != "kind"
        }
        if "requests_per_second" in common:
            common["requests_per_second"] = float(common["requests_per_second"])
        if common.get("system_prompt") == "":
            common["system_prompt"] = None
        if kind == "openai":
            openai = {key.name: key.default for key in SECTIONS["provider.openai"].keys}
            openai.update({n: v for n, v in values.items() if n in openai})
            common.update(openai)
        return ProviderSettings(kind=kind, **common, options=MappingProxyType(options))

    def channels(self, document: Mapping[str, Any]) -> tuple[ChannelSettings, ...]:
        path: KeyPath = ("channels",)
        table = self.table(document, "channels", ())
        if not table and "channels" in document and not isinstance(document["channels"], dict):
            return ()
        if not table:
            self.problem(path, "at least one channel is required, e.g. a [channels.web] table")
            return ()
        channels: list[ChannelSettings] = []
        paths: dict[str, str] = {}
        terminals: list[str] = []
        for name, value in table.items():
            where: KeyPath = (*path, name)
            if not isinstance(value, dict):
                self.problem(where, f"expected a table, got {_show(value)}")
                continue
            if not _CHANNEL_NAME.fullmatch(name):
                self.problem(where, "a channel name may use only letters, digits, - and _")
            channel = self.channel(name, value, where)
            if channel is None:
                continue
            if channel.kind == "terminal":
                terminals.append(name)
                if len(terminals) > 1:
                    self.problem(
                        where,
                        f"a second terminal channel (channels.{terminals[0]} is "
                        "one): only one can read the terminal",
                    )
            if channel.path is not None:
                other = paths.get(channel.path)
                if other is not None:
                    self.problem(
                        (*where, "path"), f"{channel.path} is also the path of channels.{other}"
                    )
                paths.setdefault(channel.path, name)
            channels.append(channel)
        return tuple(channels)

    def channel(self, name: str, table: Mapping[str, Any], path: KeyPath) -> ChannelSettings | None:
        kind = table.get("kind", name if name in CHANNEL_KINDS else None)
        if kind is None:
            self.problem(
                (*path, "kind"),
                f"required: {toml_literal(name)} is not a kind ({_one_of(CHANNEL_KINDS)})",
            )
        known = isinstance(kind, str) and kind in CHANNEL_KINDS
        own = [SECTIONS["channels"]]
        if known and f"channels.{kind}" in SECTIONS:
            own.append(SECTIONS[f"channels.{kind}"])
        own_names = {name for section in own for name in section.names()}
        elsewhere: dict[str, str] = {}
        for other in CHANNEL_KINDS:
            section = SECTIONS.get(f"channels.{other}")
            if other == kind or section is None:
                continue
            for key in section.names():
                if key not in own_names:
                    # While the kind itself is wrong, its keys are not judged yet.
                    reason = f"only used with kind = {toml_literal(other)}" if known else ""
                    elsewhere.setdefault(key, reason)
        values = self.read(table, path, own, elsewhere)
        if not known or values.get("kind") is _FAILED:
            return None
        kind = values.get("kind", kind)
        if kind != "terminal" and "allowed_users" not in values:
            self.problem(
                (*path, "allowed_users"),
                'required: a list of user ids, [] to deny everyone or "*" to allow everyone',
            )
        mode = values.get("mode", "polling")
        http = kind in ("webhook", "slack") or (kind == "telegram" and mode == "webhook")
        if "path" in values and not http and mode is not _FAILED:
            reason = (
                'only used with mode = "webhook"'
                if kind == "telegram"
                else "the terminal channel has no HTTP path"
            )
            self.problem((*path, "path"), reason)
        if kind == "telegram" and values.get("mode") == "webhook" and "secret_token" not in values:
            self.problem((*path, "secret_token"), 'required with mode = "webhook"')
        if _FAILED in values.values() or kind not in CHANNEL_KINDS:
            return None
        options: dict[str, Any] = {}
        if f"channels.{kind}" in SECTIONS:
            for spec in SECTIONS[f"channels.{kind}"].keys:
                value = values.get(spec.name, spec.default)
                options[spec.name] = None if value is UNSET else value
        return ChannelSettings(
            name=name,
            kind=kind,
            allowed_users=values.get("allowed_users"),
            path=values.get("path", f"/channels/{name}") if http else None,
            queue_mode=values.get("queue_mode", "followup"),
            collect_window=values.get("collect_window", 0.5),
            options=MappingProxyType(options),
        )

    def scale_out_channels(self, channels: Sequence[ChannelSettings]) -> None:
        """What ``[redis]`` cannot serve: a channel that reads messages itself (every process
        would poll the same bot, or read its own terminal)."""
        for channel in channels:
            if channel.kind == "terminal":
                self.problem(
                    ("channels", channel.name),
                    "the terminal channel cannot be scaled out: [redis] serves HTTP channels",
                )
            elif channel.kind == "telegram" and channel.options.get("mode") != "webhook":
                self.problem(
                    ("channels", channel.name, "mode"),
                    'must be "webhook" with [redis]: in polling mode every process would poll '
                    "the same bot (Telegram serves one getUpdates at a time)",
                )

    def top_level(self, document: Mapping[str, Any]) -> None:
        for name in document:
            if name in _TOP_LEVEL:
                continue
            homes = [
                _table_name(sid) for sid, section in SECTIONS.items() if name in section.names()
            ]
            hint = _suggest(name, _TOP_LEVEL, key=True)
            if not hint and homes:
                hint = f" (it belongs in {homes[0]})"
            self.problem((name,), f"unknown key{hint}")


def _table_name(section_id: str) -> str:
    """The TOML table a section's keys are written in: ``provider.openai`` -> ``[provider]``."""
    if section_id.startswith("channels"):
        return "[channels.NAME]"
    return f"[{section_id if section_id == 'processor.circuit' else section_id.split('.')[0]}]"


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that parsed, without the ones already reported."""
    return {name: value for name, value in values.items() if value is not _FAILED}


def _core_message(error: Exception, name: str | None) -> str:
    """The core's error worded for a key: ``"MessageProcessorConfig.x must be >= 1, got 0"`` on
    key ``x`` becomes ``"must be >= 1, got 0"``."""
    text = str(error)
    if name is not None:
        for prefix in (f"MessageProcessorConfig.{name} ", f"CircuitConfig.{name} ", f"{name} "):
            if text.startswith(prefix) and text[len(prefix) :].startswith("must "):
                return text[len(prefix) :]
    return text


def parse_config(
    document: Mapping[str, Any],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Build a :class:`GatewayConfig` from a parsed TOML document (what ``tomllib`` returns).

    Does not block. ``environ`` (default ``os.environ``) resolves ``${NAME}`` references.

    Raises:
        ConfigError: with every problem found, each line prefixed with ``source``.
    """
    loader = _Loader(source, os.environ if environ is None else environ, document)
    expanded = loader.expand(dict(document), ())
    loader.top_level(expanded)
    server = loader.server(expanded)
    processor = loader.processor(expanded)
    provider = loader.provider(expanded)
    channels = loader.channels(expanded)
    redis = loader.redis(expanded)
    if redis is not None:
        loader.scale_out_channels(channels)
    if loader.problems or provider is None:
        raise ConfigError(loader.problems)
    return GatewayConfig(server, processor, provider, channels, source, redis)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read the TOML file at ``path`` and build the gateway's config from it.

    Blocks on the file read (a small local file). ``environ`` (default ``os.environ``) resolves
    ``${NAME}`` references. Problem lines start with ``str(path)``, the name as given.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has problems (every one listed).
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such file"]) from None
    except OSError as error:
        raise ConfigError([f"{source}: cannot read: {error.strerror or error}"]) from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{source}: invalid TOML: {error}"]) from None
    return parse_config(document, source=source, environ=environ)
