"""The demo's time series: one :class:`Sample` of the whole pipeline every ``interval`` seconds.

:func:`take_sample` is pure (the counters in, a sample out); :class:`Sampler` only calls it on a
timer and hands each sample to whoever watches (the live view). Rates and latency percentiles are
over the last :data:`RATE_WINDOW` seconds, so the live numbers do not jitter with the sampling.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency.channel_integration import ProcessorStats
from zeroclaw.demo.record import RunRecord
from zeroclaw.demo.scenario import DemoScenario
from zeroclaw.providers.managed import ProviderStats

__all__ = ["RATE_WINDOW", "Sample", "Sampler", "percentile", "take_sample"]

#: Seconds the rates and latency percentiles of a sample are taken over.
RATE_WINDOW = 1.0


def percentile(values: Sequence[float], share: float) -> float | None:
    """The ``share`` (0..1) percentile of ``values`` (nearest rank), ``None`` when empty. Pure."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class Sample:
    """The pipeline at ``t`` seconds into the run. Counts are cumulative; ``*_rate`` are per
    second over the last :data:`RATE_WINDOW`; latencies (seconds, offer to answer) over the
    answers of that window (``None`` when there were none). ``in_flight`` counts calls at the
    provider, ``provider_waiting`` those waiting for the adaptive limit to let them through,
    ``queued`` the messages queued for a worker."""

    t: float
    offered: int
    accepted: int
    duplicates: int
    rejected: int
    answered: int
    failed: int
    offered_rate: float
    answered_rate: float
    rejected_rate: float
    in_flight: int
    concurrency_limit: int
    provider_waiting: int
    queued: int
    breaker: str
    p50: float | None
    p99: float | None
    outage: bool


def _time_of(sample: Sample) -> float:
    return sample.t


def take_sample(
    t: float,
    record: RunRecord,
    scenario: DemoScenario,
    processor: ProcessorStats | None,
    provider: ProviderStats,
    breaker: str,
    previous: Sequence[Sample],
) -> Sample:
    """The sample at ``t`` from the counters now and the samples before it. Pure."""
    admissions = record.admissions
    results = record.results
    answered = results["success"]
    failed = sum(count for kind, count in results.items() if kind != "success")
    offered = len(record.deliveries)
    rejected = admissions["rejected"]
    window_start = t - RATE_WINDOW
    # The latest sample at or before the window's start (or nothing: the run's start).
    base_index = bisect.bisect_right(previous, window_start + 1e-9, key=_time_of) - 1
    base = previous[base_index] if base_index >= 0 else None
    span = t - base.t if base is not None else max(t, 1e-9)
    log = record.answer_log
    first = bisect.bisect_right(log, (window_start, float("inf")))
    latencies = [latency for _, latency in log[first:]]
    outage_start = scenario.outage_start
    return Sample(
        t=t,
        offered=offered,
        accepted=admissions["accepted"],
        duplicates=admissions["duplicate"],
        rejected=rejected,
        answered=answered,
        failed=failed,
        offered_rate=(offered - (base.offered if base else 0)) / span,
        answered_rate=(answered - (base.answered if base else 0)) / span,
        rejected_rate=(rejected - (base.rejected if base else 0)) / span,
        in_flight=provider.in_flight,
        concurrency_limit=provider.concurrency_limit,
        provider_waiting=provider.limiter.waiting_count if provider.limiter is not None else 0,
        queued=processor.worker_pool.queued_tasks if processor is not None else 0,
        breaker=breaker,
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        outage=outage_start <= t < outage_start + scenario.outage_duration,
    )


class Sampler:
    """Takes a sample every ``interval`` seconds until cancelled, and passes it to ``watch``.

    ``read`` returns the sample at a given run time (``take_sample`` over the live counters).
    """

    def __init__(
        self,
        read: Callable[[float, Sequence[Sample]], Sample],
        now: Callable[[], float],
        *,
        interval: float = 0.25,
        watch: Callable[[Sample], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._read = read
        self._now = now
        self.interval = interval
        self._watch = watch
        self._clock = resolve_clock(clock)
        self.samples: list[Sample] = []

    def sample_now(self) -> Sample:
        """Take one sample now and keep it. Does not block."""
        sample = self._read(self._now(), self.samples)
        self.samples.append(sample)
        if self._watch is not None:
            self._watch(sample)
        return sample

    async def run(self) -> None:
        """Sample every ``interval`` until cancelled. Blocks until then."""
        while True:
            await self._clock.sleep(self.interval)
            self.sample_now()
