"""Run ``python -m zeroclaw serve --config F`` in a subprocess, as a user does, for the e2e tests.

The bound port is read from the ``zeroclaw: listening on http://HOST:PORT`` line on stderr, then
``/healthz`` is polled (with a generous bound) until it answers 200. Stderr is drained in the
background so the child never blocks on a full pipe, and kept for failure messages.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

LISTENING = re.compile(r"zeroclaw: listening on (http://[^\s:]+:(\d+))")
START_TIMEOUT = 60.0  # a loaded machine can take long to import and bind


@dataclass
class Served:
    process: asyncio.subprocess.Process
    base: str
    port: int
    stderr: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return "".join(self.stderr)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 60.0) -> int:
        """The exit code, once the child exits (fails the test after ``timeout``)."""
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"zeroclaw did not exit in {timeout}s:\n{self.log()}") from None
        if self._drain is not None:
            await self._drain
        return code

    async def stop(self) -> int:
        """SIGTERM and wait for the exit code (idempotent)."""
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
        return await self.wait()

    def rss_bytes(self) -> int:
        """The child's resident set size, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")


def write_config(directory: Path, text: str, name: str = "zeroclaw.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


async def start_serve(
    config: Path, *, stdin: int | None = asyncio.subprocess.DEVNULL, wait_healthy: bool = True
) -> Served:
    """Start ``zeroclaw serve --config config`` and return once it is listening (and healthy).

    ``stdin=asyncio.subprocess.PIPE`` gives the test the terminal channel's input.
    """
    env = dict(os.environ)
    env.setdefault("ZEROCLAW_LOG_LEVEL", "info")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zeroclaw",
        "serve",
        "--config",
        str(config),
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    match = None
    while match is None:
        remaining = deadline - time.monotonic()
        try:
            raw = await asyncio.wait_for(process.stderr.readline(), max(0.1, remaining))
        except TimeoutError:
            raw = b""
        if not raw:
            if process.returncode is None:
                process.kill()
            await process.wait()
            raise AssertionError(f"zeroclaw serve did not start:\n{''.join(lines)}")
        line = raw.decode(errors="replace")
        lines.append(line)
        match = LISTENING.search(line)
    served = Served(process, match.group(1), int(match.group(2)), lines)
    served._drain = asyncio.get_running_loop().create_task(_drain(process.stderr, lines))
    if wait_healthy:
        await until_healthy(served)
    return served


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while raw := await stream.readline():
        lines.append(raw.decode(errors="replace"))


async def until_healthy(served: Served, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(served.base + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline or served.process.returncode is not None:
                raise AssertionError(f"/healthz never answered 200:\n{served.log()}")
            await asyncio.sleep(0.05)


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll an async or plain callable until it returns true, with a generous bound."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        await asyncio.sleep(0.02)
