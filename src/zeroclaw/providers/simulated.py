"""The ``simulated`` backend: an LLM-shaped latency and failure model, seeded, on any clock.

What the demo and the benchmarks drive instead of a real provider. Each call:

* waits a latency drawn from a lognormal distribution whose median is ``base_latency``
  (``base_latency * exp(latency_sigma * N(0, 1))``: LLM latencies are right-skewed);
* past the capacity knee waits longer: with ``n`` calls in flight (this one included) and
  ``n > capacity``, the latency is multiplied by ``n / capacity``, which is what a server that
  serves ``capacity`` requests at once and queues the rest looks like by Little's law;
* fails with a retryable 503 with probability ``error_rate``, after its latency;
* during a scripted outage (``outages``: ``(start, duration)`` pairs in seconds from the first
  call) fails with a 503 after ``outage_latency``;
* after an outage, during ``recovery`` seconds, recovers slowly, as a restarted service warming
  its caches does: the failure probability falls linearly from 1 to ``error_rate`` and the latency
  is multiplied by a slowdown that falls linearly from :data:`RECOVERY_SLOWDOWN` to 1
  (``recovery=0``, the default: it is well again the moment the outage ends).

Every draw comes from one ``random.Random(seed)``, two draws per call in call order, and every wait
goes through ``clock``, so with :class:`zeroclaw.testing.FakeClock` and the same calls a run is
the same run, instantly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._validate import (
    to_count,
    to_fraction,
    to_positive_number,
    to_seconds,
)
from zeroclaw.providers.base import ChatMessage, ErrorCode, ProviderError, last_user_text

__all__ = ["RECOVERY_SLOWDOWN", "SimulatedBackend"]

#: How many times slower than usual a call is right after an outage, when ``recovery > 0``.
RECOVERY_SLOWDOWN = 3.0


class SimulatedBackend:
    """A chat backend with a latency distribution, a capacity knee, errors and outages.

    ``SimulatedBackend(*, seed=0, base_latency=0.2, latency_sigma=0.3, capacity=8,
    error_rate=0.0, outages=(), clock=None, outage_latency=0.05, recovery=0.0)``. The reply is
    ``"simulated reply to: <the last user message>"``.

    Raises:
        TypeError, ValueError: for a bad argument (negative latency, ``capacity < 1``,
            ``error_rate`` outside [0, 1], an outage that is not two durations).
    """

    __slots__ = (
        "_calls",
        "_clock",
        "_closed",
        "_epoch",
        "_errors",
        "_in_flight",
        "_outage_failures",
        "_peak_in_flight",
        "_rng",
        "base_latency",
        "capacity",
        "error_rate",
        "latency_sigma",
        "outage_latency",
        "outages",
        "recovery",
        "seed",
    )

    def __init__(
        self,
        *,
        seed: int = 0,
        base_latency: float = 0.2,
        latency_sigma: float = 0.3,
        capacity: int = 8,
        error_rate: float = 0.0,
        outages: Iterable[tuple[float, float]] = (),
        clock: Clock | None = None,
        outage_latency: float = 0.05,
        recovery: float = 0.0,
    ) -> None:
        self.seed = to_count(seed, what="seed", minimum=-(2**63))
        self.base_latency = to_seconds(base_latency, what="base_latency", allow_infinite=False)
        # A spread of log-latency, not a duration.
        self.latency_sigma = to_positive_number(
            latency_sigma, what="latency_sigma", allow_zero=True
        )
        self.capacity = to_count(capacity, what="capacity", minimum=1)
        self.error_rate = to_fraction(error_rate, what="error_rate")
        self.outage_latency = to_seconds(
            outage_latency, what="outage_latency", allow_infinite=False
        )
        self.recovery = to_seconds(recovery, what="recovery", allow_infinite=False)
        windows: list[tuple[float, float]] = []
        for index, outage in enumerate(outages):
            if not isinstance(outage, Sequence) or isinstance(outage, str) or len(outage) != 2:
                raise TypeError(
                    f"outages[{index}] must be a (start_seconds, duration_seconds) pair, "
                    f"got {outage!r}"
                )
            start = to_seconds(outage[0], what=f"outages[{index}] start", allow_infinite=False)
            duration = to_seconds(outage[1], what=f"outages[{index}] duration")
            windows.append((start, duration))
        self.outages: tuple[tuple[float, float], ...] = tuple(sorted(windows))
        self._clock = resolve_clock(clock)
        self._rng = random.Random(self.seed)
        self._epoch: float | None = None
        self._calls = 0
        self._errors = 0
        self._outage_failures = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._closed = False

    @property
    def name(self) -> str:
        """``"simulated"``."""
        return "simulated"

    @property
    def calls(self) -> int:
        """Calls started."""
        return self._calls

    @property
    def in_flight(self) -> int:
        """Calls started and not finished."""
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most calls that were in flight at once."""
        return self._peak_in_flight

    @property
    def errors(self) -> int:
        """Calls that failed by ``error_rate``."""
        return self._errors

    @property
    def outage_failures(self) -> int:
        """Calls that failed because they started during an outage."""
        return self._outage_failures

    def in_outage(self, now: float | None = None) -> bool:
        """Whether a call starting at ``now`` (default: the clock's now) falls in an outage.

        Before the first call nothing has started, so there is no outage yet. Never blocks.
        """
        if self._epoch is None:
            return False
        elapsed = (self._clock.now() if now is None else now) - self._epoch
        return any(start <= elapsed < start + duration for start, duration in self.outages)

    def recovering(self, elapsed: float) -> float:
        """How far from well a call starting ``elapsed`` seconds after the first call is: 1.0 the
        moment an outage ends, falling linearly to 0.0 over ``recovery`` seconds; 0.0 outside a
        recovery (and when ``recovery`` is 0). A pure function of ``elapsed``."""
        if self.recovery <= 0:
            return 0.0
        worst = 0.0
        for start, duration in self.outages:
            since_end = elapsed - (start + duration)
            if 0 <= since_end < self.recovery:
                worst = max(worst, 1.0 - since_end / self.recovery)
        return worst

    def error_rate_at(self, elapsed: float) -> float:
        """The failure probability of a call starting ``elapsed`` seconds after the first call,
        outside an outage: ``error_rate``, raised towards 1 while recovering. Pure."""
        left = self.recovering(elapsed)
        return self.error_rate + (1.0 - self.error_rate) * left

    def latency_for(self, draw: float, in_flight: int, elapsed: float = math.inf) -> float:
        """The latency of a call, a pure function of a standard normal ``draw``, the calls in
        flight (this one included) and when it starts (``elapsed`` seconds after the first call):
        the lognormal sample, times ``in_flight / capacity`` past the knee, times the recovery
        slowdown right after an outage."""
        latency = self.base_latency * math.exp(self.latency_sigma * draw)
        if in_flight > self.capacity:
            latency *= in_flight / self.capacity
        left = self.recovering(elapsed)
        if left > 0:
            latency *= 1.0 + (RECOVERY_SLOWDOWN - 1.0) * left
        return latency

    async def complete(
        self, messages: Sequence[ChatMessage], *, model: str, temperature: float
    ) -> str:
        """Wait the simulated latency on the clock, then reply or fail.

        Blocks for the drawn latency (on the injected clock).

        Raises:
            ProviderError: 503 ``service_unavailable``, retryable, by ``error_rate`` (raised while
                recovering) or during an outage.
            ValueError: when ``messages`` has no user message.
            RuntimeError: after :meth:`aclose`.
        """
        if self._closed:
            raise RuntimeError("simulated backend is closed")
        text = last_user_text(messages)
        now = self._clock.now()
        if self._epoch is None:
            self._epoch = now
        # Both draws are taken on every call, so the sequence does not depend on the outcomes.
        elapsed = now - self._epoch
        draw = self._rng.gauss(0.0, 1.0)
        fails = self._rng.random() < self.error_rate_at(elapsed)
        self._calls += 1
        self._in_flight += 1
        self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            if self.in_outage(now):
                await self._clock.sleep(self.outage_latency)
                self._outage_failures += 1
                raise ProviderError(
                    503,
                    ErrorCode.SERVICE_UNAVAILABLE,
                    "simulated outage",
                    retryable=True,
                )
            await self._clock.sleep(self.latency_for(draw, self._in_flight, elapsed))
            if fails:
                self._errors += 1
                raise ProviderError(
                    503,
                    ErrorCode.SERVICE_UNAVAILABLE,
                    "simulated error",
                    retryable=True,
                )
            return f"simulated reply to: {text}"
        finally:
            self._in_flight -= 1

    async def aclose(self) -> None:
        """Mark the backend closed. Idempotent."""
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"SimulatedBackend(seed={self.seed}, base_latency={self.base_latency:g}, "
            f"capacity={self.capacity}, error_rate={self.error_rate:g}, "
            f"outages={list(self.outages)!r}, recovery={self.recovery:g})"
        )
