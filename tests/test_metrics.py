"""The metrics collector: every family of docs/gateway.md's table from stats(), parsed back.

The snapshots come from a real ``MessageProcessor`` (run over a few messages) and real breakers;
the provider's stats are a frozen dataclass of the shape ``ManagedProvider.stats()`` returns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from zeroclaw.concurrency.channel_integration import (
    Admission,
    AdmissionKind,
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
    MessageResult,
    MessageResultKind,
    ProcessorStats,
)
from zeroclaw.concurrency.circuit_breaker import (
    CircuitBreaker,
    CircuitConfig,
)
from zeroclaw.gateway.metrics import (
    CONTENT_TYPE,
    DURATION_BUCKETS,
    FAMILIES,
    OUTCOMES,
    GatewayCollector,
    MessageLedger,
    MetricSources,
)
from zeroclaw.gateway.server import GatewayServer
from zeroclaw.testing import FakeClock


@dataclass(frozen=True)
class ProviderStats:
    calls: int = 7
    successes: int = 5
    errors_by_class: Mapping[str, int] = field(default_factory=lambda: {"server": 2})
    retries: int = 3
    requests_by_status: Mapping[str, int] = field(default_factory=lambda: {"200": 5, "503": 4})
    concurrency_limit: int = 12
    in_flight: int = 1


@dataclass(frozen=True)
class Counters:
    received: int
    sent: int
    send_failures: int


def parse(text: bytes) -> dict[str, list[Sample]]:
    """Samples by sample name, with each family's type checked against the table."""
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
            base = sample.name
            for suffix in ("_bucket", "_sum", "_count"):
                if family.type == "histogram" and base.endswith(suffix):
                    base = base.removesuffix(suffix)
            if base in FAMILIES:
                assert FAMILIES[base] == family.type, base
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    (match,) = [s for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    return match.value


async def run_processor() -> tuple[ProcessorStats, MessageProcessor]:
    processor = MessageProcessor(MessageProcessorConfig(max_concurrent_requests=4))

    async def answer(message: ChannelMessage) -> str:
        return message.content

    for n in (1, 2, 2, 3):
        await processor.process_message("web", msg(str(n)), answer)
    await processor.shutdown(drain=True, timeout=5)
    return processor.stats(), processor


def msg(message_id: str, channel: str = "web") -> ChannelMessage:
    return ChannelMessage(message_id, "u", "hi", channel, 0.0)


async def test_every_family_of_the_table_is_served_with_values_from_stats() -> None:
    stats, _ = await run_processor()
    clock = FakeClock()
    tripped = CircuitBreaker(CircuitConfig(failure_threshold=1), name="openai:gpt", clock=clock)
    assert tripped.allow_request()
    tripped.record_failure()
    breakers = {"openai:gpt": tripped.stats()}
    ledger = MessageLedger(clock=clock)
    ledger.admitted("web", msg("a"), Admission(AdmissionKind.ACCEPTED))
    ledger.admitted("web", msg("a"), Admission(AdmissionKind.DUPLICATE))
    ledger.admitted("web", msg("b"), Admission(AdmissionKind.REJECTED, "overloaded"))
    clock.advance(0.3)
    ledger.finished(msg("a"), MessageResult(MessageResultKind.SUCCESS, "hi"))
    ledger.ignored("web")
    collector = GatewayCollector(
        MetricSources(
            processor=lambda: stats,
            breakers=lambda: breakers,
            provider=ProviderStats,
            channels=lambda: {"web": Counters(3, 1, 2)},
            ledger=ledger,
        )
    )
    samples = parse(collector.render())
    missing = [name for name in FAMILIES if name not in samples and name + "_bucket" not in samples]
    assert missing == []

    assert (
        value(samples, "zeroclaw_pool_completed_tasks_total") == stats.worker_pool.completed_tasks
    )
    assert value(samples, "zeroclaw_pool_completed_tasks_total") == 3
    assert value(samples, "zeroclaw_dedup_duplicates_found_total") == 1
    assert value(samples, "zeroclaw_dedup_unique_added_total") == 3
    assert value(samples, "zeroclaw_backpressure_available_permits") == 4
    assert value(samples, "zeroclaw_provider_requests_total", status="503") == 4
    assert value(samples, "zeroclaw_provider_concurrency_limit") == 12
    assert value(samples, "zeroclaw_channel_send_failures_total", channel="web") == 2

    states = {s.labels["state"]: s.value for s in samples["zeroclaw_circuit_state"]}
    assert states == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
    assert value(samples, "zeroclaw_circuit_consecutive_failures", breaker="openai:gpt") == 1

    outcomes = {
        s.labels["outcome"]: s.value
        for s in samples["zeroclaw_messages_total"]
        if s.labels["channel"] == "web"
    }
    assert set(OUTCOMES) <= set(outcomes)
    assert {k: v for k, v in outcomes.items() if v} == {
        "accepted": 1,
        "duplicate": 1,
        "rejected": 1,
        "success": 1,
        "ignored": 1,
    }
    buckets = {s.labels["le"]: s.value for s in samples["zeroclaw_message_duration_seconds_bucket"]}
    assert (buckets["0.25"], buckets["0.5"], buckets["+Inf"]) == (0, 1, 1)
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert value(samples, "zeroclaw_message_duration_seconds_count", channel="web") == 1
    assert abs(value(samples, "zeroclaw_message_duration_seconds_sum", channel="web") - 0.3) < 1e-9


async def test_families_exist_before_the_processor_runs() -> None:
    collector = GatewayCollector(
        MetricSources(
            processor=lambda: None,
            breakers=dict,
            provider=lambda: None,
            channels=dict,
            ledger=MessageLedger(),
        )
    )
    names = {f.name for f in text_string_to_metric_families(collector.render().decode())}
    # Counter families are named without their _total suffix by the parser.
    expected = {name.removesuffix("_total") for name in FAMILIES}
    assert expected <= names


async def test_a_scrape_reads_fresh_snapshots() -> None:
    counter = {"n": 0}

    def channels() -> dict[str, Counters]:
        counter["n"] += 1
        return {"web": Counters(0, 0, counter["n"])}

    collector = GatewayCollector(
        MetricSources(
            processor=lambda: None,
            breakers=dict,
            provider=lambda: None,
            channels=channels,
            ledger=MessageLedger(),
        )
    )
    first = parse(collector.render())
    second = parse(collector.render())
    assert value(first, "zeroclaw_channel_send_failures_total", channel="web") == 1
    assert value(second, "zeroclaw_channel_send_failures_total", channel="web") == 2


async def test_metrics_route_serves_text_format_0_0_4() -> None:
    collector = GatewayCollector(
        MetricSources(
            processor=lambda: None,
            breakers=dict,
            provider=ProviderStats,
            channels=dict,
            ledger=MessageLedger(),
        )
    )

    async def status() -> dict[str, object]:
        return {}

    server = GatewayServer(port=0, metrics=collector.render, status=status)
    port = await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE
            samples = parse(await response.read())
            assert value(samples, "zeroclaw_provider_concurrency_limit") == 12
    finally:
        await server.stop()


def test_ledger_pairs_durations_with_their_own_admission() -> None:
    clock = FakeClock()
    ledger = MessageLedger(clock=clock)
    ledger.admitted("web", msg("x"), Admission(AdmissionKind.ACCEPTED))
    clock.advance(2.0)
    ledger.admitted("web", msg("y"), Admission(AdmissionKind.ACCEPTED))
    clock.advance(1.0)
    ledger.finished(msg("y"), MessageResult(MessageResultKind.FAILED, error=RuntimeError()))
    ledger.finished(msg("x"), MessageResult(MessageResultKind.TIMEOUT))
    entry = ledger.snapshot()["web"]
    assert entry.duration_count == 2
    assert entry.duration_sum == 4.0  # 1 s for y, 3 s for x
    assert (entry.outcomes["failed"], entry.outcomes["timeout"]) == (1, 1)
    assert ledger.open_messages == 0


def test_docs_list_every_family_of_the_contract() -> None:
    text = (Path(__file__).parent.parent / "docs" / "gateway.md").read_text()
    listed = set(re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", " ".join(text.split())))
    missing = [name for name in FAMILIES if name.removeprefix("zeroclaw_") not in listed]
    assert missing == []
