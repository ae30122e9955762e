"""The ``zeroclaw`` command (also ``python -m zeroclaw``): ``serve``, ``check``, ``init``, ``demo``.

Built on ``argparse``: the standard library covers subcommands, per-command ``--help`` and
``--version``, and the command must start (``check``, ``init``) without any extra installed.

Exit codes: 0 success; 1 ``init`` refused to write (the file exists, or cannot be created), or
a ``demo`` run whose verdict failed;
2 a usage error, a config with problems (one line per problem on stderr, before anything binds),
a missing config file, or a missing extra (the message names it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import os
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import ModuleType
from typing import Final, TextIO

from zeroclaw import __version__
from zeroclaw.gateway.config import (
    ChannelSettings,
    ConfigError,
    GatewayConfig,
    load_config,
    toml_literal,
)

__all__ = ["STARTER_CONFIG", "main"]

DEFAULT_CONFIG: Final = "zeroclaw.toml"
LOG_LEVEL_ENV: Final = "ZEROCLAW_LOG_LEVEL"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
# What `zeroclaw serve` imports beyond the standard library, and the extra that brings it.
GATEWAY_EXTRA: Final = ("aiohttp", "prometheus_client")
GATEWAY_INSTALL: Final = "pip install 'zeroclaw[gateway]'"
# What `zeroclaw demo` imports beyond the gateway's: the chart (rich only for the live view).
DEMO_EXTRA: Final = ("matplotlib",)
DEMO_INSTALL: Final = "pip install 'zeroclaw[demo]'"
DEMO_OUT: Final = "zeroclaw-demo"

STARTER_CONFIG: Final = """\
# zeroclaw gateway config, written by `zeroclaw init`.
# Check it with `zeroclaw check --config FILE`, run it with `zeroclaw serve --config FILE`.
# Every key is in docs/gateway.md. Durations are seconds. Any string may read an
# environment variable as "${NAME}" (an unset one is an error).

[gateway]
host = "127.0.0.1"      # loopback only; "0.0.0.0" listens on every interface
port = 8080             # 0 = any free port (the bound port is logged)

[processor]
preset = "small"        # small | medium | large: pool, queue and admission sizes

[provider]
kind = "echo"           # replies with the message itself: try the gateway without an LLM
# An OpenAI-compatible endpoint instead (OpenAI, Ollama, vLLM, OpenRouter...):
# kind = "openai"
# base_url = "https://api.openai.com/v1"    # a local Ollama: "http://127.0.0.1:11434/v1"
# api_key = "${OPENAI_API_KEY}"             # "" for Ollama: no Authorization header
# model = "gpt-4o-mini"

# Several `zeroclaw serve` processes as one gateway, sharing a Redis (docs/scale-out.md):
# [redis]
# url = "redis://127.0.0.1:6379/0"

[channels.web]
kind = "webhook"        # POST /channels/web  {"sender": "alice", "content": "hello"}
allowed_users = ["*"]   # senders whose messages are processed: "*" everyone, [] nobody
# token = "${WEBHOOK_TOKEN}"   # then requests need "Authorization: Bearer <token>"
# callback_url = "http://127.0.0.1:9000/replies"   # answer 202 at once, POST replies there
"""


class _OneLineFormatter(logging.Formatter):
    """One line per event: newlines (a traceback, a multi-line message) are escaped as ``\\n``."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


_handler: logging.Handler | None = None


def setup_logging(level: str, stream: TextIO | None = None) -> None:
    """Send log records of ``level`` and above to ``stream`` (stderr), one line per event.

    Replaces the handler an earlier call installed, so calling it twice does not log twice.
    """
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    _handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(_handler)
    root.setLevel(level.upper())


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _duration(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (0 < seconds < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return seconds


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.lower()


class _Version(argparse.Action):
    """``--version``: the version, then the build (read only when asked: it imports the
    compiled modules), so that a user learns whether ``pip install`` fell back to plain Python."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from zeroclaw.concurrency._mypyc import build_summary

        print(f"zeroclaw {__version__}\nbuild: {build_summary()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeroclaw",
        description="An AI-agent gateway: chat channels in, an LLM's replies out.",
    )
    parser.add_argument(
        "--version",
        action=_Version,
        help="show the version and whether the build is compiled (mypyc) or plain Python",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    config_help = f"the config file (default: ./{DEFAULT_CONFIG})"
    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway until SIGINT/SIGTERM, then drain and exit 0. "
        "A config with problems exits 2 before anything binds.",
    )
    serve.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help=config_help)
    serve.add_argument("--host", help="listen on this address instead of gateway.host")
    serve.add_argument("--port", type=_port, help="listen on this port instead of gateway.port")
    serve.add_argument(
        "--log-level",
        type=_log_level,
        metavar="LEVEL",
        help=f"{' | '.join(LOG_LEVELS)} (default: ${LOG_LEVEL_ENV}, else info)",
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check",
        help="validate a config file and show what would run",
        description="Validate the config file and print what `serve` would run. "
        "Exit 0 when it is valid, 2 (one line per problem on stderr) when not.",
    )
    check.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help=config_help)
    check.set_defaults(run=_check)

    init = commands.add_parser(
        "init",
        help="write a commented starter config",
        description="Write a commented starter config (echo provider, one webhook channel). "
        "Never overwrites a file: exits 1 if PATH exists.",
    )
    init.add_argument("path", nargs="?", default=DEFAULT_CONFIG, metavar="PATH", help=config_help)
    init.set_defaults(run=_init)

    demo = commands.add_parser(
        "demo",
        help="run the gateway under simulated chat traffic, live, with a report",
        description="Simulated chat traffic (bursts, chatty users, redeliveries) through the "
        "gateway's real pipeline and a simulated provider that saturates, fails and recovers. "
        "Shows it live, then prints the report and a verdict and writes report.json and "
        "report.png. Exit 0 when every check of the verdict holds, 1 when one fails. "
        "Ctrl-C ends the traffic early; the report is still written.",
    )
    demo.add_argument(
        "--duration",
        type=_duration,
        default=30.0,
        metavar="S",
        help="seconds of the run (default: 30)",
    )
    demo.add_argument(
        "--seed", type=int, default=0, metavar="N", help="traffic and provider seed (default: 0)"
    )
    demo.add_argument(
        "--out",
        default=DEMO_OUT,
        metavar="DIR",
        help=f"where report.json, report.png and demo.log go (default: ./{DEMO_OUT})",
    )
    demo.add_argument(
        "--no-live",
        action="store_true",
        help="print a line every few seconds instead of the live view (also when the output "
        "is not a terminal)",
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zeroclaw`` command with ``argv`` (default ``sys.argv[1:]``); return its exit
    code. Blocks for as long as the command runs (``serve``: until the gateway stops)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors: argparse's own codes
        return exit_.code if isinstance(exit_.code, int) else 2
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    return run(args)


def _load(path: str) -> GatewayConfig | None:
    """The config at ``path``, or ``None`` after printing its problems to stderr."""
    try:
        return load_config(path)
    except ConfigError as error:
        for line in error.problems:
            print(line, file=sys.stderr)
        if not os.path.exists(path):
            print(f"hint: `zeroclaw init {path}` writes a starter config", file=sys.stderr)
        return None


def _missing_extra(module: str, command: str = "serve") -> int:
    extra, install = ("demo", DEMO_INSTALL) if command == "demo" else ("gateway", GATEWAY_INSTALL)
    print(
        f"zeroclaw {command}: the {extra!r} extra is not installed (no module {module!r}): "
        f"{install}",
        file=sys.stderr,
    )
    return 2


def _gateway_app(
    command: str = "serve", module_name: str = "zeroclaw.gateway.app"
) -> ModuleType | int:
    """``module_name`` (``zeroclaw.gateway.app``), or an exit code after saying what is missing
    (the ``demo`` command also needs :data:`DEMO_EXTRA`)."""
    needed = GATEWAY_EXTRA + (DEMO_EXTRA if command == "demo" else ())
    for module in needed:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            return _missing_extra(module, command)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing.startswith("zeroclaw"):
            print(
                f"zeroclaw {command}: this installation has no server ({missing} is missing)",
                file=sys.stderr,
            )
            return 2
        return _missing_extra(missing, command)


def _serve(args: argparse.Namespace) -> int:
    level = args.log_level
    if level is None:
        level = os.environ.get(LOG_LEVEL_ENV, "info")
        try:
            level = _log_level(level)
        except argparse.ArgumentTypeError as error:
            print(f"zeroclaw serve: {LOG_LEVEL_ENV} {error}", file=sys.stderr)
            return 2
    config = _load(args.config)
    if config is None:
        return 2
    if args.host is not None or args.port is not None:
        server = config.gateway
        server = dataclasses.replace(
            server,
            host=server.host if args.host is None else args.host,
            port=server.port if args.port is None else args.port,
        )
        config = dataclasses.replace(config, gateway=server)
    app = _gateway_app()
    if isinstance(app, int):
        return app
    setup_logging(level)
    logging.getLogger("zeroclaw.cli").info(
        "zeroclaw %s: config %s, provider %s (model %s), channels %s",
        __version__,
        config.source,
        config.provider.kind,
        config.provider.model,
        ", ".join(f"{channel.name} ({channel.kind})" for channel in config.channels),
    )
    code: int = app.serve(config)
    return code


def _demo(args: argparse.Namespace) -> int:
    run = _gateway_app("demo", "zeroclaw.demo.run")
    if isinstance(run, int):
        return run
    from pathlib import Path

    from zeroclaw.demo.scenario import DemoScenario

    out = Path(args.out)
    live = not args.no_live and sys.stdout.isatty()
    if live:
        try:
            importlib.import_module("rich")
        except ModuleNotFoundError:
            return _missing_extra("rich", "demo")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"zeroclaw demo: cannot write to {out}: {error.strerror or error}", file=sys.stderr)
        return 1
    # The live view owns the terminal: the gateway's log lines go to a file beside the report.
    log_path = out / "demo.log"
    with open(log_path, "w", encoding="utf-8") as log:
        setup_logging("info", log)
        options = run.DemoOptions(
            DemoScenario(duration=args.duration, seed=args.seed), out=out, live=live
        )
        try:
            code: int = asyncio.run(run.run_demo(options))
        finally:
            setup_logging("warning")
    print(f"the gateway's log: {log_path}")
    return code


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    print(describe(config))
    return 0


def _init(args: argparse.Namespace) -> int:
    path: str = args.path
    try:
        with open(path, "x", encoding="utf-8") as file:
            file.write(STARTER_CONFIG)
    except FileExistsError:
        print(f"zeroclaw init: {path} already exists; not overwritten", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"zeroclaw init: cannot write {path}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"wrote {path}; check it: zeroclaw check --config {path}")
    print(f"run it: zeroclaw serve --config {path}")
    return 0


# ---------------------------------------------------------------------------- `check` output


def mask(secret: str | None) -> str:
    """A secret as ``check`` shows it: never the secret itself, at most its last 4 characters
    when it is long enough (16+) for those not to give it away."""
    if secret is None:
        return "unset"
    if not secret:
        return '"" (empty)'
    tail = secret[-4:] if len(secret) >= 16 else ""
    return f"****{tail} ({len(secret)} characters)"


def _masked_url(url: str) -> str:
    """``url`` with its password (if any) masked."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))


def _as_seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g}s"


def describe(config: GatewayConfig) -> str:
    """What ``serve`` would run with ``config``, as ``check`` prints it (secrets masked)."""
    server, provider, processor = config.gateway, config.provider, config.processor
    lines = [
        f"{config.source}: ok",
        f"gateway    http://{server.host}:{server.port}  max_body_bytes {server.max_body_bytes}"
        f"  shutdown_timeout {_seconds(server.shutdown_timeout)}",
    ]
    where = ""
    if provider.kind == "openai":
        key = mask(provider.api_key) if provider.api_key else "none (no Authorization header)"
        where = f"  base_url {provider.base_url}  api_key {key}"
    rate = provider.requests_per_second
    lines.append(f"provider   {provider.kind}  model {provider.model}{where}")
    lines.append(
        f"           temperature {provider.temperature:g}  max_retries {provider.max_retries}"
        f"  requests_per_second {f'{rate:g}' if rate else 'unlimited'}"
        f"  max_concurrency {provider.max_concurrency}  history_turns {provider.history_turns}"
    )
    if provider.options:
        options = "  ".join(
            f"{name} {toml_literal(value)}" for name, value in provider.options.items()
        )
        lines.append(f"           {options}")
    lines.append(
        f"processor  worker_pool_size {processor.worker_pool_size}"
        f"  task_queue_size {processor.task_queue_size}"
        f"  max_concurrent_requests {processor.max_concurrent_requests}"
        f"  processing_timeout {_seconds(processor.processing_timeout)}"
        f"  admission {processor.admission}"
    )
    stages = []
    if processor.enable_dedup and config.redis is not None:
        stages.append(
            f"dedup on (gateway-wide in Redis, ttl {_seconds(config.redis.dedup_ttl)}, "
            f"key {processor.dedup_key})"
        )
    elif processor.enable_dedup:
        stages.append(f"dedup on (ttl {_seconds(processor.dedup_ttl)}, key {processor.dedup_key})")
    else:
        stages.append("dedup off")
    circuit = processor.circuit_config
    if processor.enable_circuit_breaker:
        stages.append(
            f"breaker on ({circuit.failure_threshold} failures in a row, or "
            f"{circuit.failure_rate_threshold:.0%} of {circuit.window_size} once "
            f"{circuit.min_calls} are in; open {_seconds(_as_seconds(circuit.timeout_duration))})"
        )
    else:
        stages.append("breaker off")
    stages.append(f"backpressure {'on' if processor.enable_backpressure else 'off'}")
    lines.append("           " + ", ".join(stages))
    if config.redis is not None:
        redis = config.redis
        lines.append(
            f"redis      {_masked_url(redis.url)}  namespace {redis.namespace}"
            f"  partitions {redis.partitions}  lease_ttl {_seconds(redis.lease_ttl)}"
            f"  max_deliveries {redis.max_deliveries}  max_backlog {redis.max_backlog}"
        )
    width = max(len(channel.name) for channel in config.channels)
    for index, channel in enumerate(config.channels):
        label = "channels" if index == 0 else ""
        lines.append(f"{label:<10} {channel.name:<{width}}  {channel.kind:<8}  {_route(channel)}")
    return "\n".join(lines)


_SECRETS: Final = ("token", "bot_token", "signing_secret", "secret_token")


def _route(channel: ChannelSettings) -> str:
    parts = [f"POST {channel.path}" if channel.path else _no_path(channel)]
    users = channel.allowed_users
    parts.append(
        "allowed_users *" if users is None else f"allowed_users {', '.join(users) or '(none)'}"
    )
    for name in _SECRETS:
        if name in channel.options and channel.options[name] is not None:
            parts.append(f"{name} {mask(channel.options[name])}")
    if channel.kind == "webhook":
        callback = channel.options.get("callback_url")
        parts.append(f"replies to {callback}" if callback else "replies in the HTTP response")
    return "  ".join(parts)


def _no_path(channel: ChannelSettings) -> str:
    if channel.kind == "terminal":
        return "stdin/stdout"
    return f"polling {channel.options.get('api_base')}"
