"""The ``zeroclaw`` command (docs/gateway.md): ``serve``, ``check``, ``init``, ``--version``.

Most cases call :func:`zeroclaw.cli.main` in-process for speed; a few run the real command,
``python -m zeroclaw``, in a subprocess.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import pathlib
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator

import pytest

import zeroclaw
from zeroclaw import cli
from zeroclaw.cli import STARTER_CONFIG, main, mask, setup_logging
from zeroclaw.concurrency import _mypyc
from zeroclaw.gateway.config import GatewayConfig

SRC = pathlib.Path(zeroclaw.__file__).resolve().parents[1]

VALID = """
[provider]
kind = "openai"
model = "gpt-4o-mini"
api_key = "${ZEROCLAW_TEST_KEY}"

[channels.web]
kind = "webhook"
allowed_users = ["*"]
token = "hook-token-0123456789"

[channels.tg]
kind = "telegram"
bot_token = "123:abc"
allowed_users = ["alice"]

[channels.terminal]
"""

BAD = """
[gateway]
port = "80"
[provider]
kind = "echo"
[channels.tg]
kind = "telegram"
allowed_users = []
"""
BAD_LINES = [
    'gateway.port: expected an integer, got "80"',
    "channels.tg.bot_token: required",
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)


def write(tmp_path: pathlib.Path, text: str, name: str = "zeroclaw.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def run(*args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command: ``python -m zeroclaw ARGS``, on the sources under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "zeroclaw", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


# ---------------------------------------------------------------------------- help, version


def test_version_says_which_build_is_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == (
        f"zeroclaw {zeroclaw.__version__}\nbuild: {_mypyc.build_summary()}\n"
    )


@pytest.mark.parametrize(
    ("compiled", "summary"),
    [
        ({}, "plain Python (nothing compiled)"),
        (dict.fromkeys(_mypyc.COMPILED, "x.so"), "compiled with mypyc (7 of 7 modules)"),
        (
            dict.fromkeys(_mypyc.COMPILED[1:], "x.so"),
            "compiled with mypyc (6 of 7 modules; plain Python: worker_pool)",
        ),
    ],
)
def test_the_build_summary_names_what_is_compiled(
    monkeypatch: pytest.MonkeyPatch, compiled: dict[str, str], summary: str
) -> None:
    monkeypatch.setattr(_mypyc, "compiled_modules", lambda: compiled)
    assert _mypyc.build_summary() == summary


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("serve", "check", "init", "demo", "--version"):
        assert command in out


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("serve", ["--config", "--host", "--port", "--log-level"]),
        ("check", ["--config"]),
        ("init", ["PATH"]),
    ],
)
def test_command_help(command: str, options: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: zeroclaw {command}")
    for option in options:
        assert option in out


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: zeroclaw" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["serve", "--port", "70000"], "must be between 0 and 65535, got 70000"),
        (["serve", "--port", "http"], "expected an integer, got 'http'"),
        (["serve", "--log-level", "loud"], "must be one of debug, info, warning, error"),
        (["check", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- init


def test_init_writes_a_starter_that_check_accepts(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new.toml"
    assert main(["init", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == STARTER_CONFIG
    assert f"wrote {path}" in capsys.readouterr().out
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "provider   echo" in out
    assert "web  webhook   POST /channels/web" in out


def test_init_defaults_to_zeroclaw_toml_here(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert (tmp_path / "zeroclaw.toml").read_text(encoding="utf-8") == STARTER_CONFIG
    assert main(["check"]) == 0


def test_init_never_overwrites(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "# mine\n")
    assert main(["init", path]) == 1
    assert pathlib.Path(path).read_text(encoding="utf-8") == "# mine\n"
    assert capsys.readouterr().err == f"zeroclaw init: {path} already exists; not overwritten\n"


def test_init_into_a_missing_directory_fails(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "z.toml"
    assert main(["init", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"zeroclaw init: cannot write {path}: No such file or directory\n"
    )
    assert not path.exists()


# ---------------------------------------------------------------------------- check


def test_check_prints_what_would_run_with_secrets_masked(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "sk-test-abcdefghijklmnop-WXYZ"
    monkeypatch.setenv("ZEROCLAW_TEST_KEY", key)
    path = write(tmp_path, VALID)
    assert main(["check", "--config", path]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"{path}: ok"
    assert lines[1] == (
        "gateway    http://127.0.0.1:8080  max_body_bytes 1048576  shutdown_timeout 25s"
    )
    assert lines[2] == (
        "provider   openai  model gpt-4o-mini  base_url https://api.openai.com/v1"
        f"  api_key ****WXYZ ({len(key)} characters)"
    )
    assert key not in out
    assert "hook-token-0123456789" not in out
    assert "123:abc" not in out
    assert "processor  worker_pool_size 4  task_queue_size 100  max_concurrent_requests 10" in out
    assert lines[-3:] == [
        "channels   web       webhook   POST /channels/web  allowed_users *"
        "  token ****6789 (21 characters)  replies in the HTTP response",
        "           tg        telegram  polling https://api.telegram.org  allowed_users alice"
        "  bot_token **** (7 characters)",
        "           terminal  terminal  stdin/stdout  allowed_users *",
    ]


def test_check_reports_every_problem_and_exits_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD)
    assert main(["check", "--config", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"{path}: {line}" for line in BAD_LINES]


def test_check_missing_file_exits_2(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "zeroclaw.toml: no such file",
        "hint: `zeroclaw init zeroclaw.toml` writes a starter config",
    ]


def test_check_unset_environment_variable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ZEROCLAW_TEST_KEY", raising=False)
    path = write(tmp_path, VALID)
    assert main(["check", "--config", path]) == 2
    assert capsys.readouterr().err == (
        f"{path}: provider.api_key: environment variable ZEROCLAW_TEST_KEY is not set\n"
    )


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        (None, "unset"),
        ("", '"" (empty)'),
        ("short", "**** (5 characters)"),
        ("0123456789abcdef", "****cdef (16 characters)"),
    ],
)
def test_mask(secret: str | None, shown: str) -> None:
    assert mask(secret) == shown


# ---------------------------------------------------------------------------- serve


class FakeApp:
    """Stands in for ``zeroclaw.gateway.app`` (the gateway helper's module): records the config
    ``serve`` is called with."""

    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.configs: list[GatewayConfig] = []
        self.module = types.ModuleType("zeroclaw.gateway.app")
        self.module.serve = self.serve  # type: ignore[attr-defined]

    def serve(self, config: GatewayConfig) -> int:
        self.configs.append(config)
        logging.getLogger("zeroclaw.test").info("serving")
        return self.code


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> FakeApp:
    fake = FakeApp()
    monkeypatch.setitem(sys.modules, "zeroclaw.gateway.app", fake.module)
    # The extra's modules are checked by test_serve_missing_extra_names_it; here they need not
    # be installed.
    monkeypatch.setattr(cli, "GATEWAY_EXTRA", ())
    return fake


def test_serve_passes_the_config_and_returns_the_exit_code(
    tmp_path: pathlib.Path, app: FakeApp
) -> None:
    path = write(tmp_path, STARTER_CONFIG)
    assert main(["serve", "--config", path]) == 0
    [config] = app.configs
    assert (config.gateway.host, config.gateway.port) == ("127.0.0.1", 8080)
    assert config.source == path
    app.code = 3
    assert main(["serve", "--config", path]) == 3


def test_serve_host_and_port_override_the_file(tmp_path: pathlib.Path, app: FakeApp) -> None:
    path = write(tmp_path, STARTER_CONFIG)
    assert main(["serve", "--config", path, "--host", "::1", "--port", "0"]) == 0
    assert main(["serve", "--config", path, "--port", "9001"]) == 0
    first, second = app.configs
    assert (first.gateway.host, first.gateway.port) == ("::1", 0)
    assert (second.gateway.host, second.gateway.port) == ("127.0.0.1", 9001)


def test_serve_bad_config_exits_2_before_the_server(
    tmp_path: pathlib.Path, app: FakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD)
    assert main(["serve", "--config", path]) == 2
    assert app.configs == []
    assert capsys.readouterr().err.splitlines() == [f"{path}: {line}" for line in BAD_LINES]


def test_serve_missing_extra_names_it(
    tmp_path: pathlib.Path,
    app: FakeApp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "GATEWAY_EXTRA", ("aiohttp", "prometheus_client"))
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # what an uninstalled module looks like
    path = write(tmp_path, STARTER_CONFIG)
    assert main(["serve", "--config", path]) == 2
    assert app.configs == []
    assert capsys.readouterr().err == (
        "zeroclaw serve: the 'gateway' extra is not installed (no module 'aiohttp'): "
        "pip install 'zeroclaw[gateway]'\n"
    )


def test_serve_without_the_server_module(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "zeroclaw.gateway.app", None)
    monkeypatch.setattr(cli, "GATEWAY_EXTRA", ())
    path = write(tmp_path, STARTER_CONFIG)
    assert main(["serve", "--config", path]) == 2
    assert capsys.readouterr().err == (
        "zeroclaw serve: this installation has no server (zeroclaw.gateway.app is missing)\n"
    )


def _root_level_after_serve(argv: list[str]) -> int:
    assert main(argv) == 0
    return logging.getLogger().level


def test_serve_log_level(
    tmp_path: pathlib.Path, app: FakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, STARTER_CONFIG)
    monkeypatch.delenv("ZEROCLAW_LOG_LEVEL", raising=False)
    assert _root_level_after_serve(["serve", "--config", path]) == logging.INFO
    monkeypatch.setenv("ZEROCLAW_LOG_LEVEL", "WARNING")
    assert _root_level_after_serve(["serve", "--config", path]) == logging.WARNING
    level = _root_level_after_serve(["serve", "--config", path, "--log-level", "debug"])
    assert level == logging.DEBUG  # the option wins over the environment
    # One handler, however often serve runs in this process.
    assert cli._handler is not None
    assert logging.getLogger().handlers.count(cli._handler) == 1


def test_serve_bad_log_level_in_environment(
    tmp_path: pathlib.Path,
    app: FakeApp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ZEROCLAW_LOG_LEVEL", "chatty")
    assert main(["serve", "--config", write(tmp_path, STARTER_CONFIG)]) == 2
    assert app.configs == []
    assert capsys.readouterr().err == (
        "zeroclaw serve: ZEROCLAW_LOG_LEVEL must be one of debug, info, warning, error, "
        "got 'chatty'\n"
    )


def test_log_lines_are_one_line_per_event() -> None:
    stream = io.StringIO()
    setup_logging("info", stream)
    log = logging.getLogger("zeroclaw.test")
    log.debug("not shown")
    log.info("two\nlines")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" INFO zeroclaw.test: two\\nlines")
    assert " ERROR zeroclaw.test: failed\\nTraceback (most recent call last):\\n" in lines[1]
    assert lines[1].endswith("ValueError: boom")


# ---------------------------------------------------------------------------- the real command


def test_console_script_is_main() -> None:
    """``pip install`` makes a ``zeroclaw`` script that calls :func:`zeroclaw.cli.main`."""
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts == {"zeroclaw": "zeroclaw.cli:main"}
    module, _, name = scripts["zeroclaw"].partition(":")
    assert getattr(importlib.import_module(module), name) is main


def test_real_command_version() -> None:
    done = run("--version")
    # The suite runs the sources (PYTHONPATH=src in run()): the plain build, or the extensions
    # an editable install built beside them.
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"zeroclaw {zeroclaw.__version__}\nbuild: {_mypyc.build_summary()}\n",
        "",
    )


def test_real_command_init_then_check(tmp_path: pathlib.Path) -> None:
    done = run("init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "zeroclaw.toml").read_text(encoding="utf-8") == STARTER_CONFIG
    done = run("check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("zeroclaw.toml: ok\n")
    done = run("init", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "zeroclaw init: zeroclaw.toml already exists; not overwritten\n"


def test_real_command_bad_config_exits_2(tmp_path: pathlib.Path) -> None:
    write(tmp_path, BAD, "bad.toml")
    for command in ("check", "serve"):
        done = run(command, "--config", "bad.toml", cwd=tmp_path)
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.splitlines() == [f"bad.toml: {line}" for line in BAD_LINES]


def test_real_command_missing_file(tmp_path: pathlib.Path) -> None:
    done = run("check", "--config", "absent.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "absent.toml: no such file"


def test_serve_logs_to_stderr_one_line_per_event(
    tmp_path: pathlib.Path,
    app: FakeApp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ZEROCLAW_LOG_LEVEL", raising=False)
    path = write(tmp_path, STARTER_CONFIG)
    assert main(["serve", "--config", path]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    first, second = captured.err.splitlines()
    assert first.endswith(
        f" INFO zeroclaw.cli: zeroclaw {zeroclaw.__version__}: config {path}, "
        "provider echo (model echo), channels web (webhook)"
    )
    assert second.endswith(" INFO zeroclaw.test: serving")


def test_check_shows_disabled_stages_and_simulated_options(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
[processor]
enable_dedup = false
enable_circuit_breaker = false
enable_backpressure = false
processing_timeout = inf
[provider]
kind = "simulated"
seed = 5
outages = [[10, 2]]
requests_per_second = 2.5
[channels.terminal]
""",
    )
    assert main(["check", "--config", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:6] == [
        "provider   simulated  model simulated",
        "           temperature 0.7  max_retries 2  requests_per_second 2.5  max_concurrency 16"
        "  history_turns 10",
        "           seed 5  base_latency 0.2  latency_sigma 0.3  capacity 8  error_rate 0.0"
        "  outages [[10.0, 2.0]]  recovery 0.0",
        "processor  worker_pool_size 4  task_queue_size 100  max_concurrent_requests 10"
        "  processing_timeout none  admission wait",
    ]
    assert lines[6] == "           dedup off, breaker off, backpressure off"
    assert lines[7] == "channels   terminal  terminal  stdin/stdout  allowed_users *"


def test_check_shows_scale_out_with_the_password_masked(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
[provider]
kind = "echo"
[redis]
url = "redis://app:hunter2@redis.internal:6379/1"
partitions = 8
[channels.web]
kind = "webhook"
allowed_users = ["*"]
callback_url = "http://127.0.0.1:9000/replies"
""",
    )
    assert main(["check", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    lines = out.splitlines()
    assert lines[5].startswith("           dedup on (gateway-wide in Redis, ttl 86400s, key ")
    assert lines[6] == (
        "redis      redis://app:****@redis.internal:6379/1  namespace zeroclaw  partitions 8"
        "  lease_ttl 15s  max_deliveries 5  max_backlog 1000"
    )


def test_check_and_init_load_no_extra() -> None:
    """``check`` and ``init`` work without the gateway extra: importing the command loads none
    of its modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    code = (
        "import sys, zeroclaw.cli, zeroclaw.gateway.config\n"
        "print(sorted(m for m in ('aiohttp', 'prometheus_client') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout == "[]\n"
