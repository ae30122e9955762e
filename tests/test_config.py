"""The gateway's config file (docs/gateway.md): every problem at once, named by key; presets then
fields; environment references; and a reference in docs/gateway.md that matches the loader."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import tomllib
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeroclaw.channels import ChannelContext, build_channel
from zeroclaw.channels.telegram import TelegramChannel
from zeroclaw.channels.webhook import WebhookChannel
from zeroclaw.cli import STARTER_CONFIG
from zeroclaw.concurrency.channel_integration import MessageProcessorConfig
from zeroclaw.concurrency.circuit_breaker import CircuitConfig
from zeroclaw.gateway.config import (
    CIRCUIT_FIELDS_NOT_IN_TOML,
    PROCESSOR_FIELDS_NOT_IN_TOML,
    SECTIONS,
    ChannelSettings,
    ConfigError,
    GatewayConfig,
    ProviderSettings,
    RedisSettings,
    ServerSettings,
    load_config,
    parse_config,
    toml_literal,
)
from zeroclaw.gateway.intake import GatewayIntake
from zeroclaw.gateway.metrics import MessageLedger

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "gateway.md"

PROVIDER = '[provider]\nkind = "echo"\n'
WEB = '[channels.web]\nkind = "webhook"\nallowed_users = ["*"]\n'
MINIMAL = PROVIDER + WEB


def load(text: str, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    return parse_config(tomllib.loads(text), source="zeroclaw.toml", environ=environ or {})


def problems(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, environ)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def problem(text: str, environ: Mapping[str, str] | None = None) -> str:
    """The only problem of ``text`` (without the file name)."""
    found = problems(text, environ)
    assert len(found) == 1, found
    assert found[0].startswith("zeroclaw.toml: ")
    return found[0].removeprefix("zeroclaw.toml: ")


# ---------------------------------------------------------------------------- a valid file


def test_minimal_file_gets_every_default() -> None:
    config = load(MINIMAL)
    assert config.gateway == ServerSettings()
    assert config.gateway == ServerSettings("127.0.0.1", 8080, 1_048_576, 25.0)
    assert config.processor == MessageProcessorConfig()
    assert config.provider == ProviderSettings(kind="echo", model="echo")
    assert (config.provider.base_url, config.provider.api_key) == (None, None)
    assert (config.provider.history_turns, config.provider.max_concurrency) == (10, 16)
    assert config.channels == (
        ChannelSettings(
            name="web",
            kind="webhook",
            allowed_users=None,
            path="/channels/web",
            queue_mode="followup",
            collect_window=0.5,
            options={
                "token": None,
                "callback_url": None,
                "callback_timeout": 10.0,
                "callback_retries": 3,
                "admission_timeout": 10.0,
            },
        ),
    )
    assert config.source == "zeroclaw.toml"


def test_settings_are_frozen() -> None:
    config = load(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.channels = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.channels[0].options["token"] = "x"  # type: ignore[index]


def test_every_section_set() -> None:
    config = load(
        """
        [gateway]
        host = "0.0.0.0"
        port = 0
        max_body_bytes = 10
        shutdown_timeout = 0
        [processor]
        worker_pool_size = 3
        task_queue_size = 7
        max_concurrent_requests = 9
        processing_timeout = 5
        admission = "reject"
        dedup_ttl = 1.5
        dedup_key = "content"
        dedup_max_entries = 11
        enable_backpressure = true
        max_undelivered_results = 4
        [processor.circuit]
        failure_threshold = 2
        success_threshold = 4
        window_size = 20
        min_calls = 6
        half_open_max_calls = 2
        timeout_duration = 9
        failure_rate_threshold = 1
        slow_call_duration = 2.5
        open_jitter = 0.25
        probe_timeout = 3
        [provider]
        kind = "openai"
        base_url = "http://127.0.0.1:11434/v1/"
        api_key = ""
        model = "llama3.2"
        temperature = 0
        system_prompt = "Be brief."
        request_timeout = 5
        max_retries = 0
        requests_per_second = 2
        max_concurrency = 4
        history_turns = 0
        """
        + WEB
    )
    assert config.gateway == ServerSettings("0.0.0.0", 0, 10, 0.0)
    processor = config.processor
    assert (processor.worker_pool_size, processor.task_queue_size) == (3, 7)
    assert (processor.max_concurrent_requests, processor.processing_timeout) == (9, 5.0)
    assert (processor.admission, processor.dedup_ttl, processor.dedup_key) == (
        "reject",
        1.5,
        "content",
    )
    assert (processor.dedup_max_entries, processor.max_undelivered_results) == (11, 4)
    assert processor.circuit_config == CircuitConfig(
        2, 4, 9.0, 1.0, 20, 6, 2, slow_call_duration=2.5, open_jitter=0.25, probe_timeout=3.0
    )
    assert config.provider == ProviderSettings(
        kind="openai",
        base_url="http://127.0.0.1:11434/v1",  # the trailing / dropped
        api_key="",
        model="llama3.2",
        temperature=0.0,
        system_prompt="Be brief.",
        request_timeout=5.0,
        max_retries=0,
        requests_per_second=2.0,
        max_concurrency=4,
        history_turns=0,
    )


def test_openai_defaults() -> None:
    config = load('[provider]\nkind = "openai"\nmodel = "gpt-4o-mini"\n' + WEB)
    assert config.provider.base_url == "https://api.openai.com/v1"
    assert config.provider.api_key == ""
    assert config.provider.request_timeout == 60.0
    assert config.provider.options == {}


def test_empty_system_prompt_is_none() -> None:
    config = load('[provider]\nkind = "echo"\nsystem_prompt = ""\n' + WEB)
    assert config.provider.system_prompt is None


def test_simulated_options_are_the_backend_keywords() -> None:
    config = load('[provider]\nkind = "simulated"\n' + WEB)
    assert config.provider.model == "simulated"
    assert dict(config.provider.options) == {
        "seed": 0,
        "base_latency": 0.2,
        "latency_sigma": 0.3,
        "capacity": 8,
        "error_rate": 0.0,
        "outages": (),
        "recovery": 0.0,
    }
    config = load(
        '[provider]\nkind = "simulated"\nseed = 7\ncapacity = 2\nerror_rate = 0.5\n'
        "outages = [[10, 5], [30.5, 1]]\n" + WEB
    )
    assert config.provider.options["seed"] == 7
    assert config.provider.options["capacity"] == 2
    assert config.provider.options["error_rate"] == 0.5
    assert config.provider.options["outages"] == ((10.0, 5.0), (30.5, 1.0))


def test_processing_timeout_inf_means_no_limit() -> None:
    config = load("[processor]\nprocessing_timeout = inf\n" + MINIMAL)
    assert config.processor.processing_timeout is None


# ---------------------------------------------------------------------------- presets


def test_processor_preset_then_fields() -> None:
    config = load('[processor]\npreset = "medium"\nmax_concurrent_requests = 7\n' + MINIMAL)
    medium = MessageProcessorConfig.medium()
    assert config.processor.worker_pool_size == medium.worker_pool_size == 4
    assert config.processor.dedup_ttl == medium.dedup_ttl == 60.0
    assert config.processor.max_concurrent_requests == 7  # the field overrides the preset's 20


def test_each_processor_preset() -> None:
    for name in ("small", "medium", "large"):
        config = load(f'[processor]\npreset = "{name}"\n' + MINIMAL)
        assert config.processor == getattr(MessageProcessorConfig, name)()


def test_circuit_starts_from_the_processor_preset() -> None:
    """``large`` brings a lenient breaker; a circuit key overrides one field of it."""
    config = load(
        '[processor]\npreset = "large"\n[processor.circuit]\nfailure_threshold = 3\n' + MINIMAL
    )
    circuit = config.processor.circuit_config
    lenient = CircuitConfig.lenient()
    assert circuit.failure_threshold == 3
    assert circuit.timeout_duration == lenient.timeout_duration == 120.0
    assert circuit.failure_rate_threshold == lenient.failure_rate_threshold == 0.8
    assert config.processor.worker_pool_size == 8


def test_circuit_preset_then_fields() -> None:
    config = load(
        '[processor.circuit]\npreset = "strict"\nsuccess_threshold = 2\n'
        '[processor]\npreset = "large"\n' + MINIMAL
    )
    assert config.processor.circuit_config == dataclasses.replace(
        CircuitConfig.strict(), success_threshold=2
    )
    for name in ("fast_fail", "lenient", "strict"):
        config = load(f'[processor.circuit]\npreset = "{name}"\n' + MINIMAL)
        assert config.processor.circuit_config == getattr(CircuitConfig, name)()


def test_redis_table_turns_scale_out_on() -> None:
    async_web = WEB + 'callback_url = "http://127.0.0.1:9/replies"\n'
    assert load(PROVIDER + async_web).redis is None
    config = load(
        '[redis]\nurl = "redis://127.0.0.1:6379/0"\nlease_ttl = 3\n' + PROVIDER + async_web
    )
    assert config.redis == RedisSettings(url="redis://127.0.0.1:6379/0", lease_ttl=3.0)
    assert (config.redis.namespace, config.redis.partitions) == ("zeroclaw", 32)


# ---------------------------------------------------------------------------- one problem each

BAD: list[tuple[str, str]] = [
    # [gateway]
    ('[gateway]\nport = "80"\n', 'gateway.port: expected an integer, got "80"'),
    ("[gateway]\nport = 80.0\n", "gateway.port: expected an integer, got 80.0"),
    ("[gateway]\nport = true\n", "gateway.port: expected an integer, got true"),
    ("[gateway]\nport = 70000\n", "gateway.port: must be between 0 and 65535, got 70000"),
    ("[gateway]\nport = -1\n", "gateway.port: must be between 0 and 65535, got -1"),
    ("[gateway]\nmax_body_bytes = 0\n", "gateway.max_body_bytes: must be >= 1, got 0"),
    ("[gateway]\nshutdown_timeout = -1\n", "gateway.shutdown_timeout: must be >= 0, got -1"),
    (
        "[gateway]\nshutdown_timeout = inf\n",
        "gateway.shutdown_timeout: must be a finite number, got inf",
    ),
    (
        "[gateway]\nshutdown_timeout = nan\n",
        "gateway.shutdown_timeout: must be a finite number, got nan",
    ),
    (
        '[gateway]\nshutdown_timeout = "25s"\n',
        'gateway.shutdown_timeout: expected a number, got "25s"',
    ),
    ('[gateway]\nhost = ""\n', "gateway.host: must not be empty"),
    ("[gateway]\nhost = [1]\n", "gateway.host: expected a string, got a list"),
    ("[gateway]\nhost = 1979-05-27\n", "gateway.host: expected a string, got a date"),
    ("[gateway]\nprot = 1\n", "gateway.prot: unknown key (did you mean 'port'?)"),
    ("[gateway]\nzzz = 1\n", "gateway.zzz: unknown key"),
    ("gateway = 8080\n", "gateway: expected a table, got 8080"),
    # top level
    ("[gatway]\n", "gatway: unknown key (did you mean 'gateway'?)"),
    ("port = 8080\n", "port: unknown key (it belongs in [gateway])"),
    (
        "failure_threshold = 1\n",
        "failure_threshold: unknown key (it belongs in [processor.circuit])",
    ),
    ("bot_token = 'x'\n", "bot_token: unknown key (it belongs in [channels.NAME])"),
    # [redis]
    (
        "[redis]\nurl = 'http://127.0.0.1:6379'\n",
        'redis.url: must be a redis://, rediss:// or unix:// URL, got "http://127.0.0.1:6379"',
    ),
    ("[redis]\nnamespace = 'zc'\n", "redis.url: required"),
    (
        "[redis]\nurl = 'redis://h'\n[channels.tty]\nkind = 'terminal'\n",
        "channels.tty: the terminal channel cannot be scaled out: [redis] serves HTTP channels",
    ),
    (
        "[redis]\nurl = 'redis://h'\n[channels.tg]\nkind = 'telegram'\nbot_token = 'x'\n"
        "allowed_users = ['*']\n",
        'channels.tg.mode: must be "webhook" with [redis]: in polling mode every process would '
        "poll the same bot (Telegram serves one getUpdates at a time)",
    ),
    (
        "[redis]\nurl = 'redis://h'\npartitions = 0\n",
        "redis.partitions: must be between 1 and 1024, got 0",
    ),
    (
        "[redis]\nurl = 'redis://h'\nnamespace = 'a b'\n",
        'redis.namespace: must be letters, digits, - _ . and :, got "a b"',
    ),
    # [processor]: types are the loader's, ranges the core's
    (
        "[processor]\nworker_pool_size = 0\n",
        "processor.worker_pool_size: must be an int >= 1, got 0",
    ),
    (
        "[processor]\ntask_queue_size = -3\n",
        "processor.task_queue_size: must be an int >= 1, got -3",
    ),
    (
        "[processor]\nworker_pool_size = true\n",
        "processor.worker_pool_size: expected an integer, got true",
    ),
    ("[processor]\ndedup_ttl = -1\n", "processor.dedup_ttl: must be >= 0 seconds, got -1"),
    ("[processor]\ndedup_ttl = inf\n", "processor.dedup_ttl: must be a finite number, got inf"),
    (
        "[processor]\nprocessing_timeout = 0\n",
        "processor.processing_timeout: must be > 0 (inf: no limit), got 0",
    ),
    (
        "[processor]\nprocessing_timeout = -inf\n",
        "processor.processing_timeout: must be a finite number, got -inf",
    ),
    (
        "[processor]\nmax_undelivered_results = 0\n",
        "processor.max_undelivered_results: must be None or an int >= 1, got 0",
    ),
    (
        '[processor]\nadmission = "wiat"\n',
        'processor.admission: must be "wait" or "reject", got "wiat" (did you mean "wait"?)',
    ),
    (
        '[processor]\npreset = "huge"\n',
        'processor.preset: must be "small", "medium" or "large", got "huge"',
    ),
    (
        '[processor]\ndedup_key = "id"\n',
        'processor.dedup_key: must be "message_id" or "content", got "id"',
    ),
    (
        '[processor]\nenable_dedup = "yes"\n',
        'processor.enable_dedup: expected true or false, got "yes"',
    ),
    (
        "[processor]\nenable_dedup = false\ndedup_ttl = 5\n",
        "processor.dedup_ttl: only used with enable_dedup = true",
    ),
    (
        "[processor]\nenable_backpressure = false\nmax_concurrent_requests = 5\n",
        "processor.max_concurrent_requests: only used with enable_backpressure = true",
    ),
    (
        "[processor]\nenable_circuit_breaker = false\n[processor.circuit]\nfailure_threshold = 1\n",
        "processor.circuit: only used with enable_circuit_breaker = true",
    ),
    ("[processor]\nconversation_key = 'x'\n", "processor.conversation_key: unknown key"),
    ("[processor]\ncircuit = 5\n", "processor.circuit: expected a table, got 5"),
    (
        "[processor]\nworker_pool = 2\n",
        "processor.worker_pool: unknown key (did you mean 'worker_pool_size'?)",
    ),
    # [processor.circuit]
    (
        "[processor.circuit]\nfailure_rate_threshold = 1.5\n",
        "processor.circuit.failure_rate_threshold: must be in (0.0, 1.0], got 1.5",
    ),
    (
        "[processor.circuit]\nfailure_threshold = 0\n",
        "processor.circuit.failure_threshold: must be >= 1, got 0",
    ),
    (
        "[processor.circuit]\nwindow_size = 5\n",
        "processor.circuit.window_size: min_calls (10) must not exceed window_size (5)",
    ),
    (
        "[processor.circuit]\nmin_calls = 200\n",
        "processor.circuit.min_calls: min_calls (200) must not exceed window_size (100)",
    ),
    (
        "[processor.circuit]\nwindow_size = 50\nmin_calls = 60\n",
        "processor.circuit: min_calls (60) must not exceed window_size (50)",
    ),
    (
        "[processor.circuit]\ntimeout_duration = -5\n",
        "processor.circuit.timeout_duration: must be >= 0 seconds, got -5",
    ),
    (
        "[processor.circuit]\nslow_call_duration = 0\n",
        "processor.circuit.slow_call_duration: must be > 0, got 0",
    ),
    (
        "[processor.circuit]\nopen_jitter = 2\n",
        "processor.circuit.open_jitter: must be in [0.0, 1.0], got 2",
    ),
    (
        '[processor.circuit]\npreset = "fast"\n',
        'processor.circuit.preset: must be "fast_fail", "lenient" or "strict", got "fast" (did'
        ' you mean "fast_fail"?)',
    ),
    ("[processor.circuit]\nis_failure = 1\n", "processor.circuit.is_failure: unknown key"),
]

BAD_PROVIDER: list[tuple[str, str]] = [
    ("", 'provider: required: a [provider] table with kind = "openai", "echo" or "simulated"'),
    ('provider = "echo"\n', 'provider: expected a table, got "echo"'),
    ("[provider]\nmodel = 'x'\n", "provider.kind: required"),
    (
        '[provider]\nkind = "opnai"\nbase_url = "x"\n',
        'provider.kind: must be "openai", "echo" or "simulated", got "opnai" (did you mean'
        ' "openai"?)',
    ),
    ('[provider]\nkind = "openai"\n', 'provider.model: required with kind = "openai"'),
    ('[provider]\nkind = "openai"\nmodel = ""\n', "provider.model: must not be empty"),
    (
        '[provider]\nkind = "openai"\nmodel = "m"\nseed = 3\n',
        'provider.seed: only used with kind = "simulated"',
    ),
    (
        '[provider]\nkind = "echo"\nbase_url = "http://x"\n',
        'provider.base_url: only used with kind = "openai"',
    ),
    (
        '[provider]\nkind = "openai"\nmodel = "m"\nbase_url = "ftp://x"\n',
        'provider.base_url: must be an http:// or https:// URL, got "ftp://x"',
    ),
    (
        '[provider]\nkind = "openai"\nmodel = "m"\nbase_url = "localhost:11434"\n',
        'provider.base_url: must be an http:// or https:// URL, got "localhost:11434"',
    ),
    (
        '[provider]\nkind = "openai"\nmodel = "m"\nrequest_timeout = 0\n',
        "provider.request_timeout: must be > 0, got 0",
    ),
    (
        '[provider]\nkind = "echo"\ntemperature = -0.5\n',
        "provider.temperature: must be >= 0, got -0.5",
    ),
    ('[provider]\nkind = "echo"\nmax_retries = -1\n', "provider.max_retries: must be >= 0, got -1"),
    (
        '[provider]\nkind = "echo"\nmax_concurrency = 0\n',
        "provider.max_concurrency: must be >= 1, got 0",
    ),
    (
        '[provider]\nkind = "echo"\nrequests_per_second = -1\n',
        "provider.requests_per_second: must be >= 0, got -1",
    ),
    (
        '[provider]\nkind = "echo"\nhistory_turns = 1.5\n',
        "provider.history_turns: expected an integer, got 1.5",
    ),
    (
        '[provider]\nkind = "echo"\nmodle = "x"\n',
        "provider.modle: unknown key (did you mean 'model'?)",
    ),
    (
        '[provider]\nkind = "simulated"\nerror_rate = 1.5\n',
        "provider.error_rate: must be in [0.0, 1.0], got 1.5",
    ),
    ('[provider]\nkind = "simulated"\ncapacity = 0\n', "provider.capacity: must be >= 1, got 0"),
    (
        '[provider]\nkind = "simulated"\noutages = [10, 5]\n',
        "provider.outages: item 0: expected [start, duration], got 10",
    ),
    (
        '[provider]\nkind = "simulated"\noutages = [[1, 2], [3]]\n',
        "provider.outages: item 1: expected [start, duration], got a list",
    ),
    (
        '[provider]\nkind = "simulated"\noutages = [[1, -2]]\n',
        "provider.outages: item 0: must be >= 0, got -2",
    ),
    (
        '[provider]\nkind = "simulated"\noutages = "none"\n',
        'provider.outages: expected a list of [start, duration] pairs, got "none"',
    ),
]

HOOK = "[channels.web]\nkind = 'webhook'\nallowed_users = []\n"
TG = "[channels.tg]\nkind = 'telegram'\nbot_token = 't'\nallowed_users = []\n"
A = "[channels.a]\nkind = 'webhook'\nallowed_users = []\n"
B = "[channels.b]\nkind = 'webhook'\nallowed_users = []\n"
SLACK = "[channels.slack]\nbot_token = 'b'\nsigning_secret = 's'\nallowed_users = []\n"

BAD_CHANNEL: list[tuple[str, str]] = [
    ("", "channels: at least one channel is required, e.g. a [channels.web] table"),
    ("[channels]\n", "channels: at least one channel is required, e.g. a [channels.web] table"),
    ("channels = 1\n", "channels: expected a table, got 1"),
    ("[channels]\nweb = 1\n", "channels.web: expected a table, got 1"),
    (
        "[channels.web]\nallowed_users = []\ntoken = 'x'\n",
        'channels.web.kind: required: "web" is not a kind ("webhook", "telegram", "slack" or'
        ' "terminal")',
    ),
    (
        "[channels.web]\nkind = 'webhok'\nallowed_users = []\n",
        'channels.web.kind: must be "webhook", "telegram", "slack" or "terminal", got "webhok"'
        ' (did you mean "webhook"?)',
    ),
    (
        "[channels.web]\nkind = 'webhook'\n",
        'channels.web.allowed_users: required: a list of user ids, [] to deny everyone or "*" to'
        " allow everyone",
    ),
    (
        "[channels.web]\nkind = 'webhook'\nallowed_users = 'alice'\n",
        'channels.web.allowed_users: expected a list of user ids or "*", got "alice"',
    ),
    (
        "[channels.web]\nkind = 'webhook'\nallowed_users = ['*', 'alice']\n",
        'channels.web.allowed_users: "*" allows everyone: list no other users with it',
    ),
    (
        "[channels.web]\nkind = 'webhook'\nallowed_users = ['a', 1.5]\n",
        "channels.web.allowed_users: item 1: expected a string, got 1.5",
    ),
    (
        "[channels.web]\nkind = 'webhook'\nallowed_users = ['']\n",
        "channels.web.allowed_users: item 0: must not be empty",
    ),
    (
        HOOK + "token = ''\n",
        "channels.web.token: must not be empty",
    ),
    (
        HOOK + "callback_url = 'x'\n",
        'channels.web.callback_url: must be an http:// or https:// URL, got "x"',
    ),
    (
        HOOK + "callback_timeout = 3\n",
        "channels.web.callback_timeout: only used with callback_url set",
    ),
    (
        HOOK + "callback_url = 'http://x'\ncallback_retries = -1\n",
        "channels.web.callback_retries: must be >= 0, got -1",
    ),
    (
        HOOK + "bot_token = 'x'\n",
        'channels.web.bot_token: only used with kind = "telegram"',
    ),
    (
        HOOK + "signing_secret = 'x'\n",
        'channels.web.signing_secret: only used with kind = "slack"',
    ),
    (
        HOOK + "tokn = 'x'\n",
        "channels.web.tokn: unknown key (did you mean 'token'?)",
    ),
    (
        HOOK + "queue_mode = 'fifo'\n",
        'channels.web.queue_mode: must be "followup", "collect" or "interrupt", got "fifo"',
    ),
    (
        HOOK + "collect_window = 1\n",
        'channels.web.collect_window: only used with queue_mode = "collect"',
    ),
    (
        HOOK + "path = 'hook'\n",
        "channels.web.path: must start with / and use only letters, digits and - _ . ~ /, got"
        ' "hook"',
    ),
    (
        HOOK + "path = '/h/{x}'\n",
        "channels.web.path: must start with / and use only letters, digits and - _ . ~ /, got"
        ' "/h/{x}"',
    ),
    (
        HOOK + "path = '/metrics'\n",
        "channels.web.path: /metrics is the server's own path",
    ),
    (
        A + "path = '/x'\n" + B + "path = '/x'\n",
        "channels.b.path: /x is also the path of channels.a",
    ),
    (
        A + B + "path = '/channels/a'\n",
        "channels.b.path: /channels/a is also the path of channels.a",
    ),
    (
        '[channels."a b"]\nkind = "webhook"\nallowed_users = []\n',
        'channels."a b": a channel name may use only letters, digits, - and _',
    ),
    # terminal
    (
        "[channels.terminal]\npath = '/t'\n",
        "channels.terminal.path: the terminal channel has no HTTP path",
    ),
    (
        "[channels.terminal]\n[channels.tty]\nkind = 'terminal'\n",
        "channels.tty: a second terminal channel (channels.terminal is one): only one can read"
        " the terminal",
    ),
    (
        "[channels.terminal]\ntoken = 'x'\n",
        'channels.terminal.token: only used with kind = "webhook"',
    ),
    # telegram
    ("[channels.telegram]\nallowed_users = []\n", "channels.telegram.bot_token: required"),
    (
        TG + "mode = 'webhook'\n",
        'channels.tg.secret_token: required with mode = "webhook"',
    ),
    (
        TG + "secret_token = 's'\n",
        'channels.tg.secret_token: only used with mode = "webhook"',
    ),
    (
        TG + "mode = 'webhook'\nsecret_token = 'a b'\n",
        'channels.tg.secret_token: must be 1 to 256 letters, digits, _ or -, got "a b"',
    ),
    (
        TG + "path = '/tg'\n",
        'channels.tg.path: only used with mode = "webhook"',
    ),
    (
        TG + "mode = 'push'\n",
        'channels.tg.mode: must be "polling" or "webhook", got "push"',
    ),
    (
        TG + "group_reply = 'all'\n",
        'channels.tg.group_reply: must be "mention_only" or "all_messages", got "all"',
    ),
    (
        TG + "api_base = 'api.telegram.org'\n",
        'channels.tg.api_base: must be an http:// or https:// URL, got "api.telegram.org"',
    ),
    (
        TG + "token = 'x'\n",
        'channels.tg.token: only used with kind = "webhook"',
    ),
    # slack
    (
        "[channels.slack]\nbot_token = 'b'\nallowed_users = []\n",
        "channels.slack.signing_secret: required",
    ),
    (
        "[channels.slack]\nbot_token = 'b'\nsigning_secret = 's'\n",
        'channels.slack.allowed_users: required: a list of user ids, [] to deny everyone or "*"'
        " to allow everyone",
    ),
    (
        SLACK + "mode = 'webhook'\n",
        'channels.slack.mode: only used with kind = "telegram"',
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[line for _, line in BAD])
def test_bad_gateway_and_processor(text: str, expected: str) -> None:
    assert problem(text + MINIMAL) == expected


@pytest.mark.parametrize(("text", "expected"), BAD_PROVIDER, ids=[line for _, line in BAD_PROVIDER])
def test_bad_provider(text: str, expected: str) -> None:
    assert problem(text + WEB) == expected


@pytest.mark.parametrize(("text", "expected"), BAD_CHANNEL, ids=[line for _, line in BAD_CHANNEL])
def test_bad_channel(text: str, expected: str) -> None:
    assert problem(text + PROVIDER) == expected


def test_every_problem_at_once_in_file_order() -> None:
    text = """
[gateway]
port = "80"
hots = "x"

[processor]
preset = "huge"
worker_pool_size = 0

[provider]
kind = "openai"
seed = 3
api_key = "${NOPE}"

[channels.tg]
kind = "telegram"
mode = "webhook"

[channels.web]
kind = "webhook"
allowed_users = ["*"]
callback_timeout = 3

[extra]
"""
    assert problems(text) == [
        'zeroclaw.toml: gateway.port: expected an integer, got "80"',
        "zeroclaw.toml: gateway.hots: unknown key (did you mean 'host'?)",
        'zeroclaw.toml: processor.preset: must be "small", "medium" or "large", got "huge"',
        "zeroclaw.toml: processor.worker_pool_size: must be an int >= 1, got 0",
        'zeroclaw.toml: provider.seed: only used with kind = "simulated"',
        "zeroclaw.toml: provider.api_key: environment variable NOPE is not set",
        'zeroclaw.toml: provider.model: required with kind = "openai"',
        "zeroclaw.toml: channels.tg.bot_token: required",
        "zeroclaw.toml: channels.tg.allowed_users: required: a list of user ids, [] to deny "
        'everyone or "*" to allow everyone',
        'zeroclaw.toml: channels.tg.secret_token: required with mode = "webhook"',
        "zeroclaw.toml: channels.web.callback_timeout: only used with callback_url set",
        "zeroclaw.toml: extra: unknown key",
    ]


# ---------------------------------------------------------------------------- allowed_users


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('"*"', None),
        ('["*"]', None),
        ("[]", ()),
        ('["alice", "bob"]', ("alice", "bob")),
        ('[123456789, "alice"]', ("123456789", "alice")),
        ('["alice", "alice"]', ("alice",)),
    ],
)
def test_allowed_users_forms(written: str, expected: tuple[str, ...] | None) -> None:
    config = load(f'{PROVIDER}[channels.web]\nkind = "webhook"\nallowed_users = {written}\n')
    channel = config.channels[0]
    assert channel.allowed_users == expected
    assert channel.allows("alice") is (expected is None or "alice" in expected)


def test_terminal_needs_no_allowed_users_and_has_no_path() -> None:
    config = load(PROVIDER + "[channels.terminal]\n")
    assert config.channels == (ChannelSettings("terminal", "terminal", None, None),)


def test_channel_kinds_their_options_and_paths() -> None:
    config = load(
        PROVIDER
        + """
[channels.hook]
kind = "webhook"
allowed_users = ["a"]
token = "tok"
callback_url = "http://127.0.0.1:9000/replies"
callback_retries = 0
admission_timeout = 2.5
path = "/in/hook"

[channels.tg]
kind = "telegram"
bot_token = "123:abc"
allowed_users = [42]

[channels.tgw]
kind = "telegram"
bot_token = "123:abc"
mode = "webhook"
secret_token = "s3cr-et_"
allowed_users = []
group_reply = "all_messages"
admission_timeout = 0.75

[channels.slack]
bot_token = "xoxb-1"
signing_secret = "sig"
allowed_users = "*"
"""
    )
    hook, tg, tgw, slack = config.channels
    assert (hook.kind, hook.path, hook.allowed_users) == ("webhook", "/in/hook", ("a",))
    assert dict(hook.options) == {
        "token": "tok",
        "callback_url": "http://127.0.0.1:9000/replies",
        "callback_timeout": 10.0,
        "callback_retries": 0,
        "admission_timeout": 2.5,
    }
    assert (tg.kind, tg.path, tg.allowed_users) == ("telegram", None, ("42",))
    assert dict(tg.options) == {
        "bot_token": "123:abc",
        "mode": "polling",
        "secret_token": None,
        "api_base": "https://api.telegram.org",
        "group_reply": "mention_only",
        "admission_timeout": 10.0,
    }
    assert (tgw.path, tgw.options["mode"], tgw.options["secret_token"]) == (
        "/channels/tgw",
        "webhook",
        "s3cr-et_",
    )
    assert tgw.options["group_reply"] == "all_messages"
    # The admission wait reaches the channels the registry builds from these settings.
    context = ChannelContext(intake=GatewayIntake(None, MessageLedger()))
    built_hook, built_tgw = build_channel(hook, context), build_channel(tgw, context)
    assert isinstance(built_hook, WebhookChannel)
    assert isinstance(built_tgw, TelegramChannel)
    assert (built_hook.admission_timeout, built_tgw.admission_timeout) == (2.5, 0.75)
    assert (slack.kind, slack.path, slack.allowed_users) == ("slack", "/channels/slack", None)
    assert dict(slack.options) == {
        "bot_token": "xoxb-1",
        "signing_secret": "sig",
        "api_base": "https://slack.com/api",
    }


# ---------------------------------------------------------------------------- environment


def test_environment_references_anywhere_in_a_string() -> None:
    config = load(
        '[provider]\nkind = "openai"\nmodel = "${MODEL}"\napi_key = "${KEY}"\n'
        'base_url = "http://${HOST}:11434/v1"\n'
        '[channels.web]\nkind = "webhook"\nallowed_users = ["${ADMIN}", "bob"]\n',
        environ={"MODEL": "llama3.2", "KEY": "", "HOST": "127.0.0.1", "ADMIN": "alice"},
    )
    assert config.provider.model == "llama3.2"
    assert config.provider.api_key == ""  # set but empty: an empty value
    assert config.provider.base_url == "http://127.0.0.1:11434/v1"
    assert config.channels[0].allowed_users == ("alice", "bob")


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROCLAW_TEST_TOKEN", "from-env")
    text = MINIMAL + 'token = "${ZEROCLAW_TEST_TOKEN}"\n'
    config = parse_config(tomllib.loads(text))
    assert config.channels[0].options["token"] == "from-env"
    assert config.source == "<config>"


def test_unset_environment_references_name_the_key() -> None:
    text = (
        '[provider]\nkind = "openai"\nmodel = "m"\napi_key = "${A}${B}${A}"\n'
        '[channels.web]\nkind = "webhook"\nallowed_users = ["x", "${U}"]\n'
    )
    assert problems(text) == [
        "zeroclaw.toml: provider.api_key: environment variable A is not set",
        "zeroclaw.toml: provider.api_key: environment variable B is not set",
        "zeroclaw.toml: channels.web.allowed_users[1]: environment variable U is not set",
    ]


def test_unset_reference_in_a_kind_is_reported_once() -> None:
    text = PROVIDER + '[channels.web]\nkind = "${KIND}"\nallowed_users = []\n'
    assert problems(text) == [
        "zeroclaw.toml: channels.web.kind: environment variable KIND is not set"
    ]


def test_escaped_reference_is_literal() -> None:
    config = load(MINIMAL + 'token = "$${NOT_A_VAR} and $$ and $x"\n')
    assert config.channels[0].options["token"] == "${NOT_A_VAR} and $$ and $x"


@pytest.mark.parametrize("written", ["${1X}", "${}", "abc${", "${A-B}"])
def test_malformed_reference(written: str) -> None:
    assert problem(MINIMAL + f'token = "{written}"\n') == (
        "channels.web.token: malformed environment reference: write ${NAME}, or $${ for a"
        " literal ${"
    )


@given(
    text=st.text(alphabet="${}AB_ x", max_size=30),
    environ=st.dictionaries(st.sampled_from(["A", "B", "A_B"]), st.text(max_size=5)),
)
def test_escaping_every_reference_gives_the_text_back(text: str, environ: dict[str, str]) -> None:
    """Writing each ``${`` as ``$${`` makes any text literal, whatever the environment holds."""
    escaped = text.replace("${", "$${")
    document = {
        "provider": {"kind": "echo", "system_prompt": escaped},
        "channels": {"web": {"kind": "webhook", "allowed_users": "*"}},
    }
    config = parse_config(document, environ=environ)
    assert config.provider.system_prompt == (text or None)


def test_environment_values_are_not_expanded_again() -> None:
    config = load(MINIMAL + 'token = "${A}"\n', environ={"A": "${B}"})
    assert config.channels[0].options["token"] == "${B}"


# ---------------------------------------------------------------------------- files


def test_load_config_names_the_file_as_given(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pathlib.Path("my.toml").write_text(MINIMAL + "[gateway]\nport = 99999\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config("my.toml")
    assert caught.value.problems == [
        "my.toml: gateway.port: must be between 0 and 65535, got 99999"
    ]
    pathlib.Path("ok.toml").write_text(MINIMAL, encoding="utf-8")
    config = load_config(pathlib.Path("ok.toml"))
    assert config.source == "ok.toml"


def test_load_config_reads_environ(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "z.toml"
    path.write_text(MINIMAL + 'token = "${T}"\n', encoding="utf-8")
    assert load_config(path, environ={"T": "abc"}).channels[0].options["token"] == "abc"


def test_missing_unreadable_and_invalid_files(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.problems == [f"{missing}: no such file"]

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems == [f"{tmp_path}: cannot read: Is a directory"]

    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\nport = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    [line] = caught.value.problems
    assert line.startswith(f"{broken}: invalid TOML: ")
    assert "line 1" in line

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert caught.value.problems == [f"{binary}: not UTF-8 text"]


def test_starter_config_loads() -> None:
    config = load(STARTER_CONFIG)
    assert config.provider.kind == "echo"
    assert [(c.name, c.kind, c.path) for c in config.channels] == [
        ("web", "webhook", "/channels/web")
    ]
    assert config.processor == MessageProcessorConfig.small()


# ---------------------------------------------------------------------------- schema vs core


def test_every_core_processor_field_is_a_key_or_deliberately_not() -> None:
    fields = {f.name for f in dataclasses.fields(MessageProcessorConfig)}
    keys = set(SECTIONS["processor"].names()) - {"preset"}
    assert keys <= fields
    assert fields - keys == PROCESSOR_FIELDS_NOT_IN_TOML


def test_every_core_circuit_field_is_a_key_or_deliberately_not() -> None:
    fields = {f.name for f in dataclasses.fields(CircuitConfig)}
    keys = set(SECTIONS["processor.circuit"].names()) - {"preset"}
    assert keys <= fields
    assert fields - keys == CIRCUIT_FIELDS_NOT_IN_TOML


def test_documented_processor_defaults_are_the_cores() -> None:
    for name, defaults in (
        ("processor", MessageProcessorConfig()),
        ("processor.circuit", CircuitConfig()),
    ):
        for key in SECTIONS[name].keys:
            if key.name == "preset":
                continue
            core = getattr(defaults, key.name)
            assert key.documented_default == (
                "unset" if core is None else f"`{toml_literal(core)}`"
            )


def test_defaults_in_the_schema_load() -> None:
    """Writing every documented default explicitly gives the same config as writing none."""
    lines = []
    for section_id, table in (
        ("gateway", "gateway"),
        ("processor", "processor"),
        ("processor.circuit", "processor.circuit"),
    ):
        lines.append(f"[{table}]")
        for key in SECTIONS[section_id].keys:
            if key.documented_default.startswith("`"):
                lines.append(f"{key.name} = {key.documented_default.strip('`')}")
    assert load("\n".join(lines) + "\n" + MINIMAL) == load(MINIMAL)


# ---------------------------------------------------------------------------- docs/gateway.md

_ROW = re.compile(r"^\| `([a-z_]+)` \| (.+?) \| (.+?) \| (.+) \|$")


def documented_tables(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """Each ``### heading`` of the reference followed by a key table: key -> (type, default)."""
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    heading: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line[4:].strip() if line.startswith("### ") else None
            continue
        match = _ROW.match(line)
        if heading is not None and match is not None:
            name, type_, default, _meaning = match.groups()
            table = tables.setdefault(heading, {})
            assert name not in table, f"{heading}: {name} documented twice"
            table[name] = (type_, default)
    return tables


def reference_mismatches(text: str) -> list[str]:
    """How the docs' key tables differ from :data:`SECTIONS` (empty when they agree)."""
    tables = documented_tables(text)
    found: list[str] = []
    for section in SECTIONS.values():
        documented = tables.pop(section.title, None)
        if documented is None:
            found.append(f"no table under '### {section.title}'")
            continue
        for key in section.keys:
            row = documented.pop(key.name, None)
            if row is None:
                found.append(f"{section.title}: {key.name} is accepted but not documented")
            elif row != (key.type, key.documented_default):
                found.append(
                    f"{section.title}: {key.name} documented as {row}, "
                    f"the loader has {(key.type, key.documented_default)}"
                )
        for name in documented:
            found.append(f"{section.title}: {name} is documented but not accepted")
    for title in tables:
        found.append(f"'### {title}' documents keys of no section the loader has")
    return found


def test_docs_reference_matches_the_loader() -> None:
    assert reference_mismatches(DOCS.read_text(encoding="utf-8")) == []


def test_reference_check_catches_each_kind_of_drift() -> None:
    text = DOCS.read_text(encoding="utf-8")
    port_row = next(line for line in text.splitlines() if line.startswith("| `port` |"))
    assert reference_mismatches(text.replace(port_row + "\n", "")) == [
        "`[gateway]`: port is accepted but not documented"
    ]
    extra = port_row.replace("`port`", "`colour`")
    assert reference_mismatches(text.replace(port_row, port_row + "\n" + extra)) == [
        "`[gateway]`: colour is documented but not accepted"
    ]
    assert reference_mismatches(text.replace(port_row, port_row.replace("`8080`", "`80`"))) == [
        "`[gateway]`: port documented as ('integer', '`80`'), the loader has ('integer', '`8080`')"
    ]
    assert reference_mismatches(text.replace("### `[gateway]`", "### gateway")) == [
        "no table under '### `[gateway]`'",
        "'### gateway' documents keys of no section the loader has",
    ]


def test_docs_example_config_loads() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    names = set(re.findall(r"\$\{([A-Z_]+)\}", "".join(blocks)))
    environ = dict.fromkeys(names, "secret-value")
    for block in blocks:
        config = load(block, environ=environ)
        assert config.channels


def test_docs_keep_the_server_headings() -> None:
    headings = re.findall(r"^## (.+)$", DOCS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    for heading in (
        "Running against OpenAI",
        "Running against a local Ollama",
        "Scraping with Prometheus",
    ):
        assert heading in headings


def test_problem_values_render_as_toml() -> None:
    assert (
        problem("[gateway]\nport = inf\n" + MINIMAL) == "gateway.port: expected an integer, got inf"
    )
    assert (
        problem("[gateway]\nport = {a = 1}\n" + MINIMAL)
        == "gateway.port: expected an integer, got a table"
    )
    assert math.isinf(float("inf"))  # (TOML's inf is Python's)
