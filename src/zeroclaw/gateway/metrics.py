"""``/metrics``: every family of docs/gateway.md's metrics table, from ``stats()`` at scrape time.

:class:`GatewayCollector` is a custom ``prometheus_client`` collector: nothing is incremented in
the hot path for the primitives' families; each scrape reads the processor's, breakers',
provider's and channels' ``stats()`` and turns them into families. The per-channel message
families (``zeroclaw_messages_total``, ``zeroclaw_message_duration_seconds``) come from the
:class:`MessageLedger`, which keeps plain integer counts and histogram buckets as channels report
admissions and delivered results, and is read the same way.

Served as the Prometheus text format 0.0.4 (:data:`CONTENT_TYPE`).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    ChannelMessage,
    MessageResult,
    MessageResultKind,
    ProcessorStats,
)
from zeroclaw.concurrency.circuit_breaker import CircuitBreakerStats, CircuitState

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "zeroclaw's metrics need prometheus_client: pip install 'zeroclaw[gateway]'"
    ) from exc

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "FAMILIES",
    "FAMILY_SAMPLES",
    "OUTCOMES",
    "STATE_LABELS",
    "GatewayCollector",
    "LedgerChannel",
    "MessageLedger",
    "MetricSources",
]

_logger = logging.getLogger("zeroclaw.gateway.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The families the contract fixes (docs/gateway.md's list), by the name their samples carry (a
# counter's "_total" included), with their type: what tests and benchmarks/prometheus_scrape.py
# check a scrape against. The collector also exposes provider_in_flight and provider_retries_total.
FAMILIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "zeroclaw_pool_active_workers": "gauge",
        "zeroclaw_pool_queued_tasks": "gauge",
        "zeroclaw_pool_completed_tasks_total": "counter",
        "zeroclaw_pool_timeout_tasks_total": "counter",
        "zeroclaw_pool_avg_processing_time_ms": "gauge",
        "zeroclaw_backpressure_available_permits": "gauge",
        "zeroclaw_backpressure_waiting": "gauge",
        "zeroclaw_backpressure_load_percentage": "gauge",
        "zeroclaw_backpressure_rejected_total": "counter",
        "zeroclaw_circuit_state": "gauge",
        "zeroclaw_circuit_failure_rate": "gauge",
        "zeroclaw_circuit_consecutive_failures": "gauge",
        "zeroclaw_circuit_time_in_state_seconds": "gauge",
        "zeroclaw_dedup_duplicates_found_total": "counter",
        "zeroclaw_dedup_unique_added_total": "counter",
        "zeroclaw_dedup_current_entries": "gauge",
        "zeroclaw_messages_total": "counter",
        "zeroclaw_message_duration_seconds": "histogram",
        "zeroclaw_provider_requests_total": "counter",
        "zeroclaw_provider_concurrency_limit": "gauge",
        "zeroclaw_channel_send_failures_total": "counter",
    }
)

# A sample name each family of FAMILIES always exposes (a histogram's is its "_bucket").
FAMILY_SAMPLES: Final[tuple[str, ...]] = tuple(
    name + "_bucket" if kind == "histogram" else name for name, kind in FAMILIES.items()
)

# Every outcome label value of zeroclaw_messages_total, emitted (as 0) before it first happens.
OUTCOMES = (
    "accepted",
    "duplicate",
    "rejected",
    "success",
    "failed",
    "timeout",
    "cancelled",
    "ignored",
    "merged",
    "interrupted",
)

# Upper bounds (seconds) of zeroclaw_message_duration_seconds: an LLM reply takes 0.1 s to minutes.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

#: The ``state`` label of each breaker state (docs/gateway.md, the metrics table).
STATE_LABELS = {
    CircuitState.CLOSED: "closed",
    CircuitState.OPEN: "open",
    CircuitState.HALF_OPEN: "half_open",
}

# Admission times of accepted messages not yet finished; a bound so that a channel that never
# reports its results cannot grow it without limit (the oldest are dropped, and logged).
_MAX_OPEN_MESSAGES = 100_000


@dataclass
class LedgerChannel:
    """One channel's message counts: outcomes, and the duration histogram (non-cumulative)."""

    outcomes: dict[str, int]
    buckets: list[int]  # one per DURATION_BUCKETS bound, plus +Inf
    duration_sum: float = 0.0
    duration_count: int = 0


class MessageLedger:
    """Per-channel message outcomes and durations (admission to reply sent). Never blocks.

    Channels (through the gateway's intake) call :meth:`admitted`, :meth:`ignored` and
    :meth:`finished`; the collector reads :meth:`snapshot`.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = resolve_clock(clock)
        self._channels: dict[str, LedgerChannel] = {}
        self._open: OrderedDict[tuple[str, str, str], list[float]] = OrderedDict()
        self._dropped_open = 0

    def channel(self, name: str) -> LedgerChannel:
        """The counts of channel ``name`` (created at zero)."""
        entry = self._channels.get(name)
        if entry is None:
            entry = self._channels[name] = LedgerChannel(
                outcomes=dict.fromkeys(OUTCOMES, 0), buckets=[0] * (len(DURATION_BUCKETS) + 1)
            )
        return entry

    def admitted(self, channel: str, message: ChannelMessage, admission: Admission) -> None:
        """Count an admission; an accepted message's clock starts now."""
        entry = self.channel(channel)
        kind = admission.kind
        if kind is AdmissionKind.ACCEPTED:
            entry.outcomes["accepted"] += 1
            key = (channel, message.sender, message.id)
            starts = self._open.get(key)
            if starts is None:
                self._open[key] = [self._clock.now()]
                if len(self._open) > _MAX_OPEN_MESSAGES:
                    self._open.popitem(last=False)
                    self._dropped_open += 1
                    if self._dropped_open == 1:
                        _logger.warning(
                            "more than %d messages without a reported result: durations of "
                            "the oldest are no longer measured",
                            _MAX_OPEN_MESSAGES,
                        )
            else:
                starts.append(self._clock.now())
        elif kind is AdmissionKind.DUPLICATE:
            entry.outcomes["duplicate"] += 1
        else:
            entry.outcomes["rejected"] += 1

    def ignored(self, channel: str) -> None:
        """Count a message that was not processed (sender not allowed, unsupported update)."""
        self.channel(channel).outcomes["ignored"] += 1

    def finished(self, message: ChannelMessage, result: MessageResult) -> None:
        """Count an accepted message's result, and its duration once its reply was delivered."""
        entry = self.channel(message.channel)
        kind = result.kind
        outcome = "rejected" if kind is MessageResultKind.REJECTED else kind.value
        entry.outcomes[outcome] = entry.outcomes.get(outcome, 0) + 1
        key = (message.channel, message.sender, message.id)
        starts = self._open.get(key)
        if not starts:
            return
        started = starts.pop(0)
        if not starts:
            del self._open[key]
        elapsed = max(0.0, self._clock.now() - started)
        entry.buckets[bisect.bisect_left(DURATION_BUCKETS, elapsed)] += 1
        entry.duration_sum += elapsed
        entry.duration_count += 1

    def snapshot(self) -> dict[str, LedgerChannel]:
        """A copy of every channel's counts."""
        return {
            name: LedgerChannel(
                outcomes=dict(entry.outcomes),
                buckets=list(entry.buckets),
                duration_sum=entry.duration_sum,
                duration_count=entry.duration_count,
            )
            for name, entry in self._channels.items()
        }

    @property
    def open_messages(self) -> int:
        """Accepted messages whose result has not been reported yet."""
        return sum(len(starts) for starts in self._open.values())


class ProviderStatsLike(Protocol):
    """What the collector reads from ``ManagedProvider.stats()``."""

    @property
    def calls(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def requests_by_status(self) -> Mapping[str, int]: ...
    @property
    def errors_by_class(self) -> Mapping[str, int]: ...
    @property
    def concurrency_limit(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


class ChannelCountersLike(Protocol):
    """What the collector reads from ``ConcurrentMessageProcessor.channel_stats()`` values."""

    @property
    def received(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def send_failures(self) -> int: ...


@dataclass(frozen=True)
class MetricSources:
    """Where a scrape reads from; each callable returns a fresh snapshot and never blocks."""

    processor: Callable[[], ProcessorStats | None]
    breakers: Callable[[], Mapping[str, CircuitBreakerStats]]
    provider: Callable[[], ProviderStatsLike | None]
    channels: Callable[[], Mapping[str, ChannelCountersLike]]
    ledger: MessageLedger
    #: Scale-out's figures (``ScaleOut.stats``); ``None`` without ``[redis]`` (no such families).
    scale_out: Callable[[], ScaleOutStatsLike] | None = None


class GatewayCollector:
    """A ``prometheus_client`` collector: every §4.7 family from snapshots taken at scrape time."""

    def __init__(self, sources: MetricSources) -> None:
        self._sources = sources
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        """The text exposition (format 0.0.4) of every family. Does not block on I/O."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """Yield every family (families whose stage is disabled have no samples)."""
        sources = self._sources
        yield from _pool_and_pipeline(sources.processor())
        yield from _breakers(sources.breakers())
        yield from _messages(sources.ledger.snapshot())
        yield from _provider(sources.provider())
        failures = CounterMetricFamily(
            "zeroclaw_channel_send_failures",
            "Replies and notices a channel failed to send (or deliver).",
            labels=["channel"],
        )
        for name, counters in sorted(sources.channels().items()):
            failures.add_metric([name], counters.send_failures)
        yield failures
        if sources.scale_out is not None:
            yield from _scale_out(sources.scale_out())


class ScaleOutStatsLike(Protocol):
    """What the scale-out families read (``zeroclaw.backends.redis.ScaleOutStats``)."""

    @property
    def connected(self) -> bool: ...
    @property
    def partitions_owned(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def lag(self) -> int: ...
    @property
    def redeliveries(self) -> int: ...
    @property
    def dead_letters(self) -> int: ...
    @property
    def lease_changes(self) -> int: ...
    @property
    def fenced_out(self) -> int: ...
    @property
    def in_doubt(self) -> int: ...


def _scale_out(stats: ScaleOutStatsLike) -> Iterator[Metric]:
    gauges = (
        ("zeroclaw_redis_connected", "1 while the last Redis command succeeded.", stats.connected),
        (
            "zeroclaw_redis_partitions_owned",
            "Partitions this process owns.",
            stats.partitions_owned,
        ),
        (
            "zeroclaw_redis_pending",
            "Entries of the owned partitions handed out and not acknowledged.",
            stats.pending,
        ),
        ("zeroclaw_redis_lag", "Entries of the owned partitions not handed out yet.", stats.lag),
    )
    for name, doc, value in gauges:
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], float(value))
        yield gauge
    counters = (
        (
            "zeroclaw_redis_redeliveries",
            "Entries read again after an earlier owner had them.",
            stats.redeliveries,
        ),
        (
            "zeroclaw_redis_dead_letters",
            "Entries moved to a dead-letter stream.",
            stats.dead_letters,
        ),
        (
            "zeroclaw_redis_lease_changes",
            "Partition leases acquired, released or lost.",
            stats.lease_changes,
        ),
        (
            "zeroclaw_redis_fenced_out",
            "Replies not sent because the partition's lease had passed on.",
            stats.fenced_out,
        ),
        (
            "zeroclaw_redis_in_doubt",
            "Replies whose sender died sending them (sent again or not, as [redis] in_doubt says).",
            stats.in_doubt,
        ),
    )
    for name, doc, value in counters:
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], value)
        yield counter


def _pool_and_pipeline(stats: ProcessorStats | None) -> Iterator[Metric]:
    pool = stats.worker_pool if stats is not None else None
    backpressure = stats.backpressure if stats is not None else None
    dedup = stats.deduplicator if stats is not None else None

    def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc)
        if value is not None:
            family.add_metric([], value)
        return family

    def counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc)
        if value is not None:
            family.add_metric([], value)
        return family

    yield gauge(
        "zeroclaw_pool_active_workers",
        "Workers running a task now.",
        pool.active_workers if pool else None,
    )
    yield gauge(
        "zeroclaw_pool_queued_tasks",
        "Tasks queued for a worker.",
        pool.queued_tasks if pool else None,
    )
    yield counter(
        "zeroclaw_pool_completed_tasks",
        "Tasks the pool completed.",
        pool.completed_tasks if pool else None,
    )
    yield counter(
        "zeroclaw_pool_timeout_tasks",
        "Tasks that exceeded the processing timeout.",
        pool.timeout_tasks if pool else None,
    )
    yield gauge(
        "zeroclaw_pool_avg_processing_time_ms",
        "Mean processing time of completed tasks, in milliseconds.",
        pool.avg_processing_time_ms if pool else None,
    )
    yield gauge(
        "zeroclaw_backpressure_available_permits",
        "Admission permits free now.",
        backpressure.available_permits if backpressure else None,
    )
    yield gauge(
        "zeroclaw_backpressure_waiting",
        "Admissions waiting for a permit.",
        backpressure.waiting_count if backpressure else None,
    )
    yield gauge(
        "zeroclaw_backpressure_load_percentage",
        "Permits held, as a percentage of the bound.",
        backpressure.load_percentage if backpressure else None,
    )
    yield counter(
        "zeroclaw_backpressure_rejected",
        "Admissions refused for want of a permit.",
        backpressure.rejected_count if backpressure else None,
    )
    yield counter(
        "zeroclaw_dedup_duplicates_found",
        "Messages recognised as duplicates.",
        dedup.duplicates_found if dedup else None,
    )
    yield counter(
        "zeroclaw_dedup_unique_added",
        "Distinct messages remembered.",
        dedup.unique_added if dedup else None,
    )
    yield gauge(
        "zeroclaw_dedup_current_entries",
        "Message keys remembered now.",
        dedup.current_entries if dedup else None,
    )


def _breakers(breakers: Mapping[str, CircuitBreakerStats]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "zeroclaw_circuit_state",
        "1 for the breaker's current state, 0 for the others.",
        labels=["breaker", "state"],
    )
    rate = GaugeMetricFamily(
        "zeroclaw_circuit_failure_rate", "Failure rate over the current window.", labels=["breaker"]
    )
    consecutive = GaugeMetricFamily(
        "zeroclaw_circuit_consecutive_failures",
        "Failures in a row.",
        labels=["breaker"],
    )
    in_state = GaugeMetricFamily(
        "zeroclaw_circuit_time_in_state_seconds",
        "Seconds since the breaker's last transition.",
        labels=["breaker"],
    )
    for name, stats in sorted(breakers.items()):
        for member, label in STATE_LABELS.items():
            state.add_metric([name, label], 1.0 if stats.state is member else 0.0)
        rate.add_metric([name], stats.failure_rate)
        consecutive.add_metric([name], stats.consecutive_failures)
        in_state.add_metric([name], stats.time_in_current_state)
    yield from (state, rate, consecutive, in_state)


def _messages(channels: Mapping[str, LedgerChannel]) -> Iterator[Metric]:
    totals = CounterMetricFamily(
        "zeroclaw_messages",
        "Messages by channel and outcome (admission outcomes, then result outcomes).",
        labels=["channel", "outcome"],
    )
    durations = HistogramMetricFamily(
        "zeroclaw_message_duration_seconds",
        "Seconds from a message's admission to its reply being sent.",
        labels=["channel"],
    )
    bounds = [*(_bound(b) for b in DURATION_BUCKETS), "+Inf"]
    for name, entry in sorted(channels.items()):
        for outcome, count in entry.outcomes.items():
            totals.add_metric([name, outcome], count)
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(bounds, entry.buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        durations.add_metric([name], buckets, sum_value=entry.duration_sum)
    yield totals
    yield durations


def _bound(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else "+Inf"


def _provider(stats: ProviderStatsLike | None) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "zeroclaw_provider_requests",
        "HTTP requests to the provider, by status (or error class when there was no answer).",
        labels=["status"],
    )
    limit = GaugeMetricFamily(
        "zeroclaw_provider_concurrency_limit",
        "The adaptive limiter's current limit on calls in flight to the provider.",
    )
    in_flight = GaugeMetricFamily("zeroclaw_provider_in_flight", "Provider calls in flight now.")
    retries = CounterMetricFamily("zeroclaw_provider_retries", "Provider calls retried.")
    if stats is not None:
        for status, count in sorted(stats.requests_by_status.items()):
            requests.add_metric([str(status)], count)
        limit.add_metric([], stats.concurrency_limit)
        in_flight.add_metric([], stats.in_flight)
        retries.add_metric([], stats.retries)
    yield from (requests, limit, in_flight, retries)
