"""A circuit breaker's open/probe decision shared by every process of a gateway.

Each process keeps its own :class:`~zeroclaw.concurrency.CircuitBreaker`: the outcome windows
stay local (counting every call's outcome in Redis would put a round trip on every call), and
the local breaker alone decides when to trip. What is shared is what follows a trip, through two
keys of one hash tag (:meth:`~zeroclaw.backends.redis.keys.Keys.breaker`), each changed only by a
Lua script on the server's ``TIME``:

- the open key holds "open until" (server milliseconds). A trip anywhere sets it to the later of
  what it holds and ``now + the open period`` (the breaker's own, jitter included). It lives
  ``grace`` past that time, so that the probe that follows has a key to clear.
- the probe key names the one process (an instance id) allowed to probe once the open time has
  passed: ``SET NX PX``, renewed while its probe runs, so a probe whose process died frees the
  slot after ``probe_ttl``.

The shared phases, as :meth:`SharedBreakerDecision.poll_once` reads them each ``poll_interval``:

- *open* (the open key says until T > now): every process refuses; a CLOSED local breaker is
  forced open (``forced_by_peer``).
- *probe* (the key exists, T has passed): the process that holds the probe key (``probes_won``)
  lets its local breaker half-open, and its probe runs; the others keep refusing
  (``probes_lost``). A successful probe deletes both keys (a check-and-delete on the owner, which
  keeps the open key if another process tripped meanwhile); a failed one re-opens the key.
- *none* (no open key): local breakers decide alone. One that was open only because of the
  shared key (forced by a peer, or held after its own open time) closes: some process's probe
  succeeded.

Only processes that have calls to make (admitted or refused since the last poll) claim the probe,
so an idle process never holds the probe while a busy one waits.

**The window between a state change and the claim.** ``on_state_change`` is synchronous and
runs inside the call that changed the state, so a claim in Redis cannot happen there. The design
therefore never lets the local breaker half-open by itself while Redis answers: each poll pushes
its open time ``hold`` (4 polls) past what the shared key says, and only the winner of the claim
releases it (``force_open(duration=0)``: its next request is the probe). What remains: if the
loop is stalled longer than ``hold`` (or not running), the local open time runs out and a request
half-opens the breaker unclaimed. The callback then forces it open again at once and leaves the
claim to the loop, but the request that caused the transition has already been admitted: at most
one call per such stall reaches the dependency without the claim; its result is *late* (it
changes nothing). While Redis is unreachable, the local breaker half-opens and probes alone.

**Redis unreachable** (``ConnectionError``, ``TimeoutError``, ``OSError``): a warning once per
outage (and a line when Redis answers again), :attr:`SharedBreakerDecision.connected` is
``False``, and the local breaker is handed back its own timing: open for what was left of its
own or the last known shared open period, then half-open and probe alone.

Usage (the loop must run for anything to be shared)::

    async with SharedBreakerDecision(client, keys, "openai", breaker):
        ...  # use ``breaker`` as usual

or ``decision.start()`` / ``await decision.aclose()``, or run ``await decision.run()`` in a task of
your own. Sources: one probe per open period is Polly's rule (as the core breaker cites it); the
probe key is the ``SET key value NX PX ttl`` lock of the Redis ``SET`` documentation, with the
owner checked in a script before it is deleted; counting outcomes locally and sharing only the
decision is this module's choice (see the first paragraph).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from zeroclaw.backends.redis.connection import raise_if_cancelled
from zeroclaw.backends.redis.keys import Keys
from zeroclaw.concurrency import CircuitBreaker
from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._validate import to_seconds
from zeroclaw.concurrency.circuit_breaker import CircuitState

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["SharedBreakerDecision", "SharedBreakerStats"]

_log = logging.getLogger(__name__)

_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN

# KEYS[1] = open key, KEYS[2] = probe key. ARGV[1] = open period ms, ARGV[2] = grace ms,
# ARGV[3] = the probe owner to release ('' for none). Returns the shared open time left, ms.
OPEN_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local finish = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]))
if current ~= nil and current > finish then finish = current end
redis.call('SET', KEYS[1], string.format('%.17g', finish), 'PX',
  math.ceil(finish - now + tonumber(ARGV[2])))
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return string.format('%.17g', finish - now)
"""

# ARGV[1] = instance id, ARGV[2] = 'claim' (take the probe if free, renew it if ours) or 'peek',
# ARGV[3] = probe TTL ms. Returns {phase, open ms left, probe holder, holder's TTL ms}.
POLL_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil then return {'none', '0', '', '0'} end
if current > now then return {'open', string.format('%.17g', current - now), '', '0'} end
local holder = redis.call('GET', KEYS[2])
if ARGV[2] == 'claim' then
  local ttl = tonumber(ARGV[3])
  if not holder then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
    holder = ARGV[1]
  elseif holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  if holder == ARGV[1] and redis.call('PTTL', KEYS[1]) < 2 * ttl then
    redis.call('PEXPIRE', KEYS[1], 2 * ttl)
  end
end
if not holder then return {'probe', '0', '', '0'} end
return {'probe', '0', holder, tostring(redis.call('PTTL', KEYS[2]))}
"""

# ARGV[1] = instance id. 0: not the owner (nothing done); 1: both keys deleted; 2: the probe key
# deleted, the open key kept (another process tripped while the probe ran).
SUCCESS_SCRIPT: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local current = tonumber(redis.call('GET', KEYS[1]))
if current ~= nil and current > now then return 2 end
redis.call('DEL', KEYS[1])
return 1
"""


# ARGV[1] = instance id: give the probe back if it is ours (a process leaving without a result).
RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return redis.call('DEL', KEYS[2]) end
return 0
"""


def _unreachable() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class SharedBreakerStats:
    """A snapshot of a :class:`SharedBreakerDecision`.

    ``shared_opens``: opens this process published (its trips and failed probes);
    ``forced_by_peer``: times a CLOSED local breaker was forced open by the shared key;
    ``probes_won`` / ``probes_lost``: probe claims this process won, and lost to another
    process (once per winner); ``connected``: ``False`` while Redis is unreachable.
    """

    shared_opens: int
    forced_by_peer: int
    probes_won: int
    probes_lost: int
    connected: bool


class SharedBreakerDecision:
    """Share ``breaker``'s "open until" and its half-open probe with every process that uses the
    same server, ``keys.namespace`` and ``name`` (see the module docstring).

    ``SharedBreakerDecision(client, keys, name, breaker, *, poll_interval=0.25, clock=None,
    instance_id=None)``. ``clock`` must be the breaker's own clock (default: monotonic): the
    local open periods are kept on it. The polls are paced in real time whatever it is, since
    the shared times are the server's. ``instance_id`` names this process in the probe key
    (default: host, pid and a random part). The constructor subscribes to ``breaker``'s state
    changes (a breaker already OPEN counts as a trip); nothing is sent before :meth:`run` (or
    :meth:`start`, or ``async with``).

    Raises:
        TypeError / ValueError: ``poll_interval`` is not a number of seconds > 0.
    """

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        name: str,
        breaker: CircuitBreaker,
        *,
        poll_interval: float = 0.25,
        clock: Clock | None = None,
        instance_id: str | None = None,
    ) -> None:
        self._poll = to_seconds(poll_interval, what="poll_interval")
        if not 0.0 < self._poll < math.inf:
            raise ValueError(f"poll_interval must be > 0 and finite, got {poll_interval!r}")
        self.name = name
        self._breaker = breaker
        self._client = client
        self._clock = resolve_clock(clock)
        self._keys = keys.breaker(name)
        self.instance_id = (
            instance_id
            if instance_id is not None
            else f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        config = breaker.config
        probe = config.probe_timeout
        base = to_seconds(config.timeout_duration if probe is None else probe)
        if not 0.0 < base < math.inf:
            base = 1.0
        #: The probe key's TTL, seconds: the breaker's probe deadline, at least 4 polls.
        self.probe_ttl = max(base, 4 * self._poll)
        #: How long the open key outlives its open time, seconds (room for a few probe rounds).
        self.grace = 3 * self.probe_ttl
        #: How far each poll pushes a held local breaker's open time past the shared one.
        self.hold = 4 * self._poll
        self._open = client.register_script(OPEN_SCRIPT)
        self._poll_script = client.register_script(POLL_SCRIPT)
        self._success = client.register_script(SUCCESS_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        # Transitions our own force_open/force_close cause, in the order they will be announced.
        self._ours: deque[tuple[CircuitState, CircuitState]] = deque()
        # What the callbacks saw, for the loop to send: ("open", seconds, owner) / ("success",).
        self._outbox: deque[tuple[str, float, bool]] = deque()
        self._wake = asyncio.Event()
        self._connected = True
        self._owner = False  # we hold the probe key (as far as the last poll knew)
        # A local trip the server has not acknowledged (queued, or lost in an outage).
        self._unpublished = False
        # Bumped by every state change we did not cause: a poll reply read before it is stale.
        self._changes = 0
        self._own_until = -math.inf  # end of the local breaker's own open period (its clock)
        self._shared_until = -math.inf  # end of the last shared open period seen (its clock)
        self._phase = "none"
        self._lost_to = ""
        self._activity = -1
        self._shared_opens = 0
        self._forced_by_peer = 0
        self._probes_won = 0
        self._probes_lost = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._unsubscribe = breaker.on_state_change(self._on_change)
        if breaker.state is _OPEN:
            self._on_change(_CLOSED, _OPEN)

    # -- reading -----------------------------------------------------------------------------

    @property
    def breaker(self) -> CircuitBreaker:
        """The local breaker."""
        return self._breaker

    @property
    def keys(self) -> tuple[str, str]:
        """The open key and the probe key, as passed in ``KEYS[]``."""
        return self._keys

    @property
    def connected(self) -> bool:
        """``False`` while Redis is unreachable (the local breaker then decides alone)."""
        return self._connected

    def stats(self) -> SharedBreakerStats:
        """A snapshot of the counters. Never blocks."""
        return SharedBreakerStats(
            shared_opens=self._shared_opens,
            forced_by_peer=self._forced_by_peer,
            probes_won=self._probes_won,
            probes_lost=self._probes_lost,
            connected=self._connected,
        )

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll every ``poll_interval`` (at once after a local state change) until cancelled.
        Never returns otherwise; Redis errors other than an unreachable server propagate."""
        self._closing = False
        while not self._closing:
            self._wake.clear()
            await self.poll_once()
            sleeper = asyncio.ensure_future(asyncio.sleep(self._poll))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    def start(self) -> None:
        """Run :meth:`run` in a task of its own (idempotent). Needs a running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"shared breaker {self.name}"
            )

    async def aclose(self) -> None:
        """Stop the loop, send what the breaker did since the last poll (a probe's success, a
        trip), give back a probe claim not used, unsubscribe from the breaker and hand it back
        its own timing (as when Redis is unreachable). Idempotent; a few round trips."""
        task, self._task = self._task, None
        self._closing = True  # the loop stops even if a command swallows the cancellation
        if task is not None:
            task.cancel()
            # wait(), not await task: a cancellation of aclose itself still propagates.
            await asyncio.wait((task,))
            if not task.cancelled() and task.exception() is not None:
                _log.error(
                    "shared breaker %r: the poll loop had failed",
                    self.name,
                    exc_info=task.exception(),
                )
        self._unsubscribe()
        if self._connected:
            try:
                await self._flush()
                if self._owner:
                    await self._release(keys=list(self._keys), args=[self.instance_id])
            except _unreachable() as exc:
                self._lost(exc)
        self._release_local()

    async def __aenter__(self) -> SharedBreakerDecision:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def poll_once(self) -> None:
        """Send what the local breaker did, read the shared phase and apply it to the local
        breaker. A few round trips (one when nothing happened locally). Redis unreachable:
        handled (see the module docstring), not raised."""
        try:
            await self._flush()
            mode = "claim" if self._wants_probe() else "peek"
            changes = self._changes
            reply: list[Any] = await self._poll_script(
                keys=list(self._keys),
                args=[self.instance_id, mode, str(math.ceil(self.probe_ttl * 1000))],
            )
            raise_if_cancelled()
        except _unreachable() as exc:
            self._lost(exc)
            return
        if not self._connected:
            self._connected = True
            _log.warning(
                "shared breaker %r: Redis answers again; the decision is shared", self.name
            )
        if changes != self._changes:
            self._wake.set()  # the breaker changed during the round trip: decide on the next
            return
        self._apply(_text(reply[0]), float(reply[1]) / 1000.0, _text(reply[2]))

    async def _flush(self) -> None:
        """Send the queued opens and successes, in order. Raises what the client raises."""
        keys = list(self._keys)
        while self._outbox:
            kind, seconds, owner = self._outbox[0]
            if kind == "open":
                left = await self._open(
                    keys=keys,
                    args=[
                        repr(min(seconds, 86_400.0) * 1000.0),
                        repr(self.grace * 1000.0),
                        self.instance_id if owner else "",
                    ],
                )
                self._shared_opens += 1
                self._shared_until = self._clock.now() + float(left) / 1000.0
            else:
                await self._success(keys=keys, args=[self.instance_id])
            self._outbox.popleft()
            raise_if_cancelled()
            if not self._outbox:
                self._unpublished = False

    # -- the decision ------------------------------------------------------------------------

    def _wants_probe(self) -> bool:
        """Not CLOSED, and calls to make: admitted or refused since the last poll, or in flight."""
        stats = self._breaker.stats()
        activity = stats.total_calls + stats.rejected_calls + stats.ignored_calls
        active = activity != self._activity or stats.in_flight > 0
        self._activity = activity
        return stats.state is not _CLOSED and active

    def _apply(self, phase: str, open_left: float, holder: str) -> None:
        breaker = self._breaker
        state = breaker.state
        now = self._clock.now()
        self._phase = phase
        if phase == "open":
            self._owner = False
            self._lost_to = ""
            self._shared_until = now + open_left
            if state is _CLOSED:
                self._forced_by_peer += 1
            self._force_open(open_left + self.hold)
        elif phase == "probe":
            if holder == self.instance_id:
                if not self._owner:
                    self._owner = True
                    self._probes_won += 1
                    self._lost_to = ""
                    if state is _OPEN:
                        self._force_open(0.0)  # its next request is the probe
            else:
                self._owner = False
                if holder and holder != self._lost_to and state is not _CLOSED:
                    self._probes_lost += 1
                    self._lost_to = holder
                if state is _CLOSED:
                    self._forced_by_peer += 1
                self._force_open(self.hold)
        else:
            self._owner = False
            self._lost_to = ""
            if state is _OPEN:
                if not self._unpublished:
                    # Open by the shared key, or by a trip it took in: a probe succeeded.
                    self._force_close()
                elif self._own_until > now:
                    # A trip the server never heard of (made during an outage): say it now.
                    self._outbox.append(("open", self._own_until - now, False))
                    self._wake.set()

    def _on_change(self, old: CircuitState, new: CircuitState) -> None:
        ours = self._ours
        if ours and ours[0] == (old, new):
            ours.popleft()
            return
        self._changes += 1
        breaker = self._breaker
        if new is _OPEN:  # a trip, or a failed probe: publish it
            seconds = breaker.retry_after
            self._own_until = self._clock.now() + seconds
            self._unpublished = True
            if self._connected:  # else said on reconnection, if still open then
                self._outbox.append(("open", seconds, self._owner))
                self._wake.set()
            self._owner = False
        elif new is _CLOSED:  # the probe succeeded (or a close by hand)
            if self._owner and self._connected:
                self._outbox.append(("success", 0.0, True))
                self._wake.set()
            self._owner = False
            self._unpublished = False
            self._own_until = -math.inf
        elif not (self._owner or not self._connected or self._phase == "none"):
            # Half-open without the claim: the loop fell behind (see the module docstring).
            self._force_open(self.hold)
            self._wake.set()

    def _force_open(self, seconds: float) -> None:
        breaker = self._breaker
        old = breaker.state
        if old is not _OPEN:
            self._ours.append((old, _OPEN))
        breaker.force_open(duration=max(0.0, seconds))

    def _force_close(self) -> None:
        breaker = self._breaker
        old = breaker.state
        if old is not _CLOSED:
            self._ours.append((old, _CLOSED))
        breaker.force_close()

    def _lost(self, exc: BaseException) -> None:
        if not self._connected:
            return
        self._connected = False
        _log.warning(
            "shared breaker %r: Redis unreachable (%s: %s); the local breaker decides alone "
            "until it answers",
            self.name,
            type(exc).__name__,
            exc,
        )
        if any(kind == "open" for kind, _, _ in self._outbox):
            self._unpublished = True
        self._outbox.clear()
        self._release_local()

    def _release_local(self) -> None:
        """Give the local breaker its own timing back: open for what is left of its own or the
        last shared period, then half-open as usual."""
        self._owner = False
        self._phase = "none"
        self._lost_to = ""
        breaker = self._breaker
        if breaker.state is _OPEN:
            left = max(self._own_until, self._shared_until) - self._clock.now()
            self._force_open(left)

    def __repr__(self) -> str:
        mode = "connected" if self._connected else "local only"
        return (
            f"<SharedBreakerDecision {self.name!r} {self._breaker.state} phase={self._phase} "
            f"owner={self._owner} {mode}>"
        )
