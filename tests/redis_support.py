"""Real Redis for the tests: the session server, a namespace per test, a client, private servers.

``tests/conftest.py`` registers the fixtures, so any test module can ask for them:

- ``redis_url`` (session): the url of the server the tests share. It is ``$ZEROCLAW_TEST_REDIS_URL``
  or ``redis://127.0.0.1:6379/0``, if that answers PING; otherwise a private ``redis-server``
  started for the session, if one is on ``PATH``; otherwise the session fails (never skips) and
  says how to get one.
- ``namespace``: a namespace of the test's own; every key containing it is deleted at teardown.
- ``redis_client``: ``zeroclaw.backends.redis.connect(redis_url)``, closed at teardown.
- ``private_redis``: a started :class:`RedisServer` of the test's own, that it may kill and
  restart (AOF with ``appendfsync always``: what was acknowledged survives a SIGKILL).

:class:`RedisServer` and :func:`session_redis` are plain code, usable outside pytest (the
benchmarks start a server with them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
import redis

from zeroclaw.backends.redis import connect

if TYPE_CHECKING:
    from redis.asyncio import Redis

URL_ENV = "ZEROCLAW_TEST_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
# A loaded machine (two cores shared by several test runs) can take seconds to start a server.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_POLL = 0.01


class NoRedis(Exception):
    """No Redis answers and none can be started; the message says how to get one."""


def no_redis_message(url: str) -> str:
    """What the session says when ``url`` does not answer and no ``redis-server`` is on PATH."""
    return (
        f"these tests need a real Redis: nothing answers PING at {url}, and no redis-server is on "
        "PATH to start a private one. Install one (apt-get install redis-server), or start one on "
        f"127.0.0.1:6379 (redis-server --port 6379 --save ''), or point {URL_ENV} at one "
        "(e.g. redis://host:6379/0)"
    )


def url_from(environ: Mapping[str, str]) -> str:
    """The session server's url: ``$ZEROCLAW_TEST_REDIS_URL``, else ``redis://127.0.0.1:6379/0``."""
    return environ.get(URL_ENV) or DEFAULT_URL


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis at ``url`` answers PING within ``timeout`` seconds. Blocks."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def unused_port() -> int:
    """A 127.0.0.1 TCP port nothing listened on a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1, with its data in ``directory``.

    ``durable`` (the default) runs it with ``--appendonly yes --appendfsync always``: every write
    is on disk before it is acknowledged, so a restart after :meth:`kill` still has it. Otherwise
    it keeps nothing (``--appendonly no``). ``--save ""`` always: no RDB snapshots. The port is
    picked once and kept across restarts. Every method blocks until it is done.
    """

    def __init__(
        self,
        directory: Path,
        *,
        durable: bool = True,
        binary: str = "redis-server",
        port: int | None = None,
    ) -> None:
        self.directory = directory
        self.durable = durable
        self.binary = binary
        self.port = unused_port() if port is None else port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """The server's log file (kept across restarts)."""
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        """Whether the process this object started is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on the same port and directory as before) and return once it
        answers PING.

        Raises:
            RuntimeError: it is already running, or it exited or did not answer within
                :data:`START_TIMEOUT` (the message has the end of its log).
        """
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.log_path),
                "--save",
                "",
                *persistence,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(self.url, timeout=0.5):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._halt(signal.SIGKILL)
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{START_TIMEOUT:g}s:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def kill(self) -> None:
        """SIGKILL the server and reap it: nothing is flushed beyond what was acknowledged."""
        self._halt(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the server (it shuts down cleanly) and wait for it to exit; SIGKILL if it
        has not within :data:`STOP_TIMEOUT`. Does nothing if it is not running."""
        self._halt(signal.SIGTERM)

    def _halt(self, signum: int) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, durable={self.durable}, running={self.running})"


def session_redis(
    url: str, directory: Path, *, path: str | None = None
) -> tuple[str, RedisServer | None]:
    """The url to test against, and the server started for it if one was.

    ``url`` if it answers PING; otherwise a private, non-durable ``redis-server`` (found on
    ``path``, default ``$PATH``) started in ``directory``, which the caller stops. Blocks.

    Raises:
        NoRedis: ``url`` does not answer and no ``redis-server`` is on ``path``.
    """
    if answers(url):
        return url, None
    binary = shutil.which("redis-server", path=path)
    if binary is None:
        raise NoRedis(no_redis_message(url))
    server = RedisServer(directory, durable=False, binary=binary)
    server.start()
    return server.url, server


def delete_matching(url: str, pattern: str) -> int:
    """Delete every key matching ``pattern`` (found with SCAN, never KEYS); how many. Blocks."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for name in client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


# ---- fixtures (tests/conftest.py imports them) --------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The url of the Redis the session's tests share (see the module docstring)."""
    found: tuple[str, RedisServer | None] | str
    try:
        found = session_redis(url_from(os.environ), tmp_path_factory.mktemp("redis"))
    except NoRedis as missing:
        found = str(missing)  # failed outside the except block: no chained traceback
    if isinstance(found, str):
        pytest.fail(found, pytrace=False)
    url, server = found
    try:
        yield url
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace no other test uses; its keys are deleted from the session server at teardown."""
    name = f"zctest-{uuid.uuid4().hex}"
    yield name
    delete_matching(redis_url, f"*{name}*")


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the session server (bytes replies), closed at teardown."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable ``redis-server`` of this test's own, started; stopped at teardown."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "this test starts its own redis-server and none is on PATH: apt-get install "
            "redis-server",
            pytrace=False,
        )
    server = RedisServer(tmp_path / "redis", binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.kill()
