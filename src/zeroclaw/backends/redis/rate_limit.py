"""A rate limit and a ``Retry-After`` pause shared by every process of a gateway, in one Lua script.

:class:`RedisRateLimiter` is the core's :class:`~zeroclaw.concurrency.RateLimiter` (a token
bucket kept as one GCRA timestamp, the "theoretical arrival time") moved into Redis: the decision
is one Lua script run atomically on the server, on the server's ``TIME``, so the processes'
clocks never enter it and, for every window of ``W`` seconds of server time, at most
``burst + rate * W`` tokens are granted across all of them. The GCRA in a Redis script is
brandur/redis-cell's idea (as the core's limiter cites it); the shared pause, where one
``Retry-After`` holds every caller, is PTB's ``AIORateLimiter`` (and discord.py's global
rate-limit lock), here across processes.

Keys (both in ``KEYS[]``, one hash tag: :meth:`~zeroclaw.backends.redis.keys.Keys.rate`):

- the TAT key holds the bucket's theoretical arrival time, in server milliseconds. It expires when
  the bucket is full again (an absent key *is* a full bucket), so an idle limit leaves nothing.
- the pause key exists while a pause lasts; its value is the pause's end, its TTL the pause.

What differs from the core's limiter, and why:

- No FIFO across waiters: :meth:`RedisRateLimiter.acquire` retries after the wait the server
  computed (capped, so a pause lifted early is seen), and whichever waiter asks first after the
  refill gets the tokens. A queue shared by processes would need a server-side list and its
  clean-up after dead waiters; the rate bound holds without it.
- Redis unreachable (``ConnectionError``, ``TimeoutError``, ``OSError``): the call is decided by a
  local :class:`~zeroclaw.concurrency.RateLimiter` of the same rate and burst, a warning is logged
  once per outage (and a line when Redis answers again), :attr:`RedisRateLimiter.shared` is
  ``False`` and :meth:`RedisRateLimiter.stats` counts the fallbacks. The rate is then per process
  (N processes may send N times the rate): the fallback keeps the gateway answering, and says so.
  After a failure the server is not asked again for ``retry_interval`` seconds, so an unreachable
  host does not cost every call a connect timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from zeroclaw.backends.redis.connection import raise_if_cancelled
from zeroclaw.backends.redis.keys import Keys
from zeroclaw.concurrency import RateLimiter
from zeroclaw.concurrency._validate import to_positive_number, to_seconds, to_timeout

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["GCRA_SCRIPT", "RedisRateLimiter", "RedisRateLimiterStats", "SharedPause"]

_log = logging.getLogger(__name__)

# One script for the three operations, so that the GCRA rule is written once.
# KEYS[1] = TAT key, KEYS[2] = pause key. ARGV[1] = op ("take", "pause", "peek"),
# ARGV[2] = ms per token, ARGV[3] = tolerance ms (burst x ms per token),
# ARGV[4] = tokens (take) or the pause in ms (pause).
# Returns {granted (1/0), wait ms as a string}; "peek" returns {0, pause left in ms}.
# Floats go back as strings (Redis truncates a Lua number reply to an integer), and are stored
# with 17 digits: tostring keeps 14, a tenth of a millisecond of a timestamp.
GCRA_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local op = ARGV[1]
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local paused = redis.call('PTTL', KEYS[2])
if op == 'peek' then
  if paused < 0 then paused = 0 end
  return {0, tostring(paused)}
end
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if op == 'pause' then
  local finish = now + tonumber(ARGV[4])
  if paused > 0 and now + paused > finish then finish = now + paused end
  if finish > now then
    redis.call('SET', KEYS[2], string.format('%.17g', finish), 'PX', math.ceil(finish - now))
  end
  -- An empty bucket when the pause ends: a full burst taken then.
  local empty = finish + tolerance
  if empty > tat then
    redis.call('SET', KEYS[1], string.format('%.17g', empty), 'PX', math.ceil(empty - now))
  end
  return {1, string.format('%.17g', finish - now)}
end
local new_tat = tat + tonumber(ARGV[4]) * interval
local wait = new_tat - now - tolerance
if paused > 0 and paused > wait then wait = paused end
if wait > 0.000001 then
  return {0, string.format('%.17g', wait)}
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil(new_tat - now))
return {1, '0'}
"""

#: How long :meth:`RedisRateLimiter.acquire` sleeps at most between two asks, seconds: a pause
#: lifted early (its key deleted) is noticed within this.
MAX_SLEEP: Final = 0.25
#: After a failed round trip, the seconds during which calls are decided locally without asking.
RETRY_INTERVAL: Final = 1.0


def _unreachable() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class RedisRateLimiterStats:
    """A snapshot of a :class:`RedisRateLimiter`.

    ``grants`` / ``refusals`` count ``try_acquire`` answers (each round of ``acquire`` is one),
    shared or local; ``fallbacks`` counts the calls decided by the local limiter because Redis
    was unreachable; ``shared`` is ``False`` while falling back.
    """

    grants: int
    refusals: int
    fallbacks: int
    shared: bool


class RedisRateLimiter:
    """A token bucket of ``rate`` tokens per second and capacity ``burst``, shared through Redis.

    ``RedisRateLimiter(client, keys, name, *, rate, burst)``: every limiter made with the same
    server, ``keys.namespace`` and ``name`` (in any process) draws from one bucket, which starts
    full. Every method is one round trip (``acquire``: one per try) and is async. See the module
    docstring for the rules, the keys and the fallback when Redis is unreachable.

    Raises:
        TypeError / ValueError: unless ``rate`` and ``burst`` are finite numbers > 0.
    """

    __slots__ = (
        "_client",
        "_down_until",
        "_fallbacks",
        "_grants",
        "_interval_ms",
        "_keys",
        "_local",
        "_refusals",
        "_retry_interval",
        "_script",
        "_shared",
        "_tolerance_ms",
        "burst",
        "name",
        "rate",
    )

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        name: str,
        *,
        rate: float,
        burst: float,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.rate = to_positive_number(rate, what="rate")
        self.burst = to_positive_number(burst, what="burst")
        self.name = name
        # The local limiter validates the pair (finite burst / rate) and is the fallback.
        self._local = RateLimiter(self.rate, self.burst, name=f"{name} (local fallback)")
        self._interval_ms = 1000.0 / self.rate
        self._tolerance_ms = self.burst * self._interval_ms
        self._client = client
        self._keys = keys.rate(name)
        self._script = client.register_script(GCRA_SCRIPT)
        self._retry_interval = to_seconds(retry_interval, what="retry_interval")
        self._shared = True
        self._down_until = -math.inf
        self._grants = 0
        self._refusals = 0
        self._fallbacks = 0

    @property
    def keys(self) -> tuple[str, str]:
        """The TAT key and the pause key, as passed in ``KEYS[]``."""
        return self._keys

    @property
    def shared(self) -> bool:
        """``False`` while Redis is unreachable and calls are decided locally."""
        return self._shared

    def _tokens(self, tokens: float) -> float:
        amount = to_positive_number(tokens, what="tokens")
        if amount > self.burst:
            raise ValueError(
                f"rate limiter {self.name!r}: {amount:g} tokens exceed the burst of {self.burst:g}"
            )
        return amount

    async def _run(self, op: str, arg: float) -> list[Any] | None:
        """The script's reply, or ``None`` when Redis is unreachable (logged once per outage)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            return None
        try:
            reply = await self._script(
                keys=list(self._keys),
                args=[op, repr(self._interval_ms), repr(self._tolerance_ms), repr(arg)],
            )
        except _unreachable() as exc:
            self._down_until = loop.time() + self._retry_interval
            if self._shared:
                self._shared = False
                _log.warning(
                    "rate limit %r: Redis unreachable (%s: %s); deciding locally, per process, "
                    "until it answers",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
            return None
        # A grant taken for a caller cancelled meanwhile is spent, as in the core limiter.
        raise_if_cancelled()
        if not self._shared:
            self._shared = True
            _log.warning("rate limit %r: Redis answers again; the limit is shared", self.name)
        result: list[Any] = reply
        return result

    async def try_acquire(self, tokens: float = 1) -> float:
        """Take ``tokens`` now if the shared bucket has them. One round trip; does not wait.

        Returns 0.0 when granted, else the seconds until they could be (the ``retry_after``: if
        nothing else is granted meanwhile); while paused, at least the pause's remaining time.

        Raises:
            TypeError: ``tokens`` is not a number.
            ValueError: ``tokens <= 0``, not finite, or ``> burst`` (it could never be granted).
            redis.exceptions.RedisError: any error other than an unreachable server.
        """
        amount = self._tokens(tokens)
        reply = await self._run("take", amount)
        if reply is None:
            self._fallbacks += 1
            if self._local.try_acquire(amount):
                self._grants += 1
                return 0.0
            self._refusals += 1
            return max(self._local.retry_after(amount), 1e-6)
        if int(reply[0]):
            self._grants += 1
            return 0.0
        self._refusals += 1
        return float(reply[1]) / 1000.0

    async def acquire(self, tokens: float = 1, *, timeout: float | None = None) -> None:
        """Wait until ``tokens`` are granted, then return.

        Sleeps the wait each refusal names (at most :data:`MAX_SLEEP` at a time), then asks again;
        no order among waiters (see the module docstring).

        Raises:
            TypeError / ValueError: as :meth:`try_acquire`, or for a negative or NaN ``timeout``.
            TimeoutError: ``timeout`` seconds passed first (nothing is taken then).
        """
        amount = self._tokens(tokens)
        seconds = to_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            wait = await self.try_acquire(amount)
            if wait <= 0.0:
                return
            nap = min(wait, MAX_SLEEP)
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0.0:
                    raise TimeoutError(
                        f"rate limiter {self.name!r}: {amount:g} tokens not available within "
                        f"{seconds:g}s"
                    )
                nap = min(nap, left)
            await asyncio.sleep(nap)

    async def pause(self, seconds: float) -> None:
        """Grant nothing, in any process, for ``seconds`` from now (a ``Retry-After``).

        A pause never shortens a longer one already running; when it ends the bucket is empty
        and refills from then (the core limiter's rule). The local fallback limiter is paused too,
        so an outage that begins during the pause still honours it. One round trip.

        Raises:
            TypeError / ValueError: unless ``seconds`` is a finite number >= 0.
        """
        delay = to_seconds(seconds, what="pause", allow_infinite=False)
        self._local.pause(delay)
        await self._run("pause", delay * 1000.0)

    async def paused_for(self) -> float:
        """Seconds left of the shared pause (0.0 when none); the local one's while Redis is
        unreachable. One round trip."""
        reply = await self._run("peek", 0.0)
        if reply is None:
            return self._local.stats().paused_for
        return float(reply[1]) / 1000.0

    def stats(self) -> RedisRateLimiterStats:
        """A snapshot of the counters. Never blocks."""
        return RedisRateLimiterStats(
            grants=self._grants,
            refusals=self._refusals,
            fallbacks=self._fallbacks,
            shared=self._shared,
        )

    def __repr__(self) -> str:
        mode = "shared" if self._shared else "local fallback"
        return f"<RedisRateLimiter {self.name!r} rate={self.rate:g}/s burst={self.burst:g} {mode}>"


class SharedPause:
    """The shared ``Retry-After`` pause alone, for a provider without a rate limit
    (``requests_per_second = 0``): no round trip per request.

    :meth:`pause` sets the pause in Redis at once (through ``limiter``); every process learns of
    its peers' pauses by reading the pause every ``poll_interval`` seconds in :meth:`run`, so a
    peer's ``Retry-After`` holds here within that. :meth:`acquire` waits while a known pause
    lasts and otherwise returns at once. It is a
    :class:`~zeroclaw.providers.managed.SharedRateLimit`, given to ``ManagedProvider`` in place
    of the limiter itself.

    Args:
        limiter: the shared limiter whose pause this follows (its rate is not used).
        poll_interval: seconds between reads of the shared pause, > 0.
    """

    def __init__(self, limiter: RedisRateLimiter, *, poll_interval: float = 0.5) -> None:
        self.limiter = limiter
        self.poll_interval = to_positive_number(poll_interval, what="poll_interval")
        self._until = 0.0  # loop time at which the known pause ends
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def _left(self) -> float:
        return max(0.0, self._until - asyncio.get_running_loop().time())

    def _known(self, seconds: float) -> None:
        if seconds > 0:
            end = asyncio.get_running_loop().time() + seconds
            self._until = max(self._until, end)

    async def acquire(self, tokens: float = 1) -> None:
        """Wait while a known pause lasts (``tokens`` are not counted: there is no rate)."""
        # Until the known end, which a pause arriving meanwhile may move later.
        left = self._left()
        while left > 0:
            await asyncio.sleep(left)
            left = self._left()

    async def pause(self, seconds: float) -> None:
        """Pause every process for ``seconds`` (one round trip; locally at once)."""
        self._known(seconds)
        await self.limiter.pause(seconds)

    async def paused_for(self) -> float:
        """Seconds left of the pause known here. Does not block."""
        return self._left()

    async def run(self) -> None:
        """Read the shared pause every ``poll_interval`` seconds until :meth:`aclose`."""
        while not self._closing:
            self._known(await self.limiter.paused_for())
            await asyncio.sleep(self.poll_interval)

    def start(self) -> None:
        """Run :meth:`run` in a task of its own (idempotent). Needs a running event loop."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"shared pause {self.limiter.name}"
            )

    async def aclose(self) -> None:
        """Stop following the shared pause. Idempotent."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def __repr__(self) -> str:
        return f"SharedPause({self.limiter!r})"
