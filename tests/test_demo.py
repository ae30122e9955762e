"""The demo's parts on their own: the seeded traffic plan, the record, the verdict's checks (each
failure it must catch), the samples, the report and the views. The whole run, as a user starts
it, is tests/test_demo_e2e.py."""

from __future__ import annotations

import io
import itertools
import json
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from zeroclaw.concurrency.channel_integration import AdmissionKind, MessageResultKind
from zeroclaw.demo.live import LiveView, PlainView, plain_line
from zeroclaw.demo.record import RunRecord
from zeroclaw.demo.report import BreakerTransition, print_report, summarize, write_json
from zeroclaw.demo.run import demo_config
from zeroclaw.demo.sampler import Sample, percentile, take_sample
from zeroclaw.demo.scenario import DemoScenario, PlannedDelivery, plan_deliveries
from zeroclaw.demo.verdict import judge
from zeroclaw.gateway.config import parse_config
from zeroclaw.providers.managed import ProviderStats

ACCEPTED = AdmissionKind.ACCEPTED
SUCCESS = MessageResultKind.SUCCESS


# ---------------------------------------------------------------------------- the plan


def test_a_seed_fixes_the_plan_and_another_seed_changes_it() -> None:
    scenario = DemoScenario(duration=20, seed=4)
    assert plan_deliveries(scenario) == plan_deliveries(DemoScenario(duration=20, seed=4))
    assert plan_deliveries(scenario) != plan_deliveries(DemoScenario(duration=20, seed=5))


def test_the_plan_has_the_mix_of_a_chat_platform() -> None:
    scenario = DemoScenario(duration=30)
    plan = plan_deliveries(scenario)
    assert plan[0].at == 0.0
    assert [d.at for d in plan] == sorted(d.at for d in plan)
    assert all(0.0 <= d.at <= scenario.traffic_end for d in plan)
    assert len({d.conversation for d in plan}) > 0.9 * scenario.conversations == 270
    originals = [d for d in plan if not d.redelivery]
    per_conversation = Counter(d.conversation for d in originals)
    counts = sorted(per_conversation.values())
    # Most users send one or two messages; a few send many.
    assert sum(1 for n in counts if n <= 2) > 0.7 * len(counts)
    assert counts[-1] >= 15
    # About one delivery in ten is a redelivery, always of a message offered before it.
    redeliveries = [d for d in plan if d.redelivery]
    assert 0.05 * len(plan) < len(redeliveries) < 0.15 * len(plan)
    first_offer = {d.message_id: d.at for d in reversed(originals)}
    assert all(first_offer[d.message_id] < d.at for d in redeliveries)
    # Bursts: some half second carries well over twice the mean rate.
    mean_per_half_second = len(plan) / (scenario.traffic_end * 2)
    busiest = max(
        sum(1 for d in plan if start <= d.at < start + 0.5) for start in (d.at for d in plan[::5])
    )
    assert busiest > 2.5 * mean_per_half_second  # a Poisson stream would peak near 2x
    # A conversation's own messages are planned in order.
    for _, messages in itertools.groupby(
        sorted(originals, key=lambda d: (d.conversation, d.at)), key=lambda d: d.conversation
    ):
        seqs = [d.seq for d in messages]
        assert seqs == sorted(seqs)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"duration": 0}, "duration"),
        ({"duration": float("inf")}, "duration"),
        ({"redelivery_share": 1.5}, "redelivery_share"),
        ({"outage_start_share": 0.8, "outage_share": 0.3}, "before the run"),
    ],
)
def test_a_scenario_refuses_what_cannot_run(settings: dict[str, float], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DemoScenario(**settings)  # type: ignore[arg-type]


def test_docs_show_the_config_the_demo_runs() -> None:
    """docs/demo.md writes the demo's settings as a zeroclaw.toml: it must load to them."""
    text = (Path(__file__).parents[1] / "docs" / "demo.md").read_text(encoding="utf-8")
    found = re.search(r"```toml\n(.*?)```", text, re.S)
    assert found is not None
    document = tomllib.loads(found.group(1) + '[channels.term]\nkind = "terminal"\n')
    documented = parse_config(document)
    runs = demo_config(DemoScenario())
    assert documented.processor == runs.processor
    assert documented.provider == runs.provider


# ---------------------------------------------------------------------------- the verdict


def _delivery(conversation: int, seq: int, redelivery: bool = False) -> PlannedDelivery:
    return PlannedDelivery(float(seq), conversation, seq, redelivery)


def _accept(record: RunRecord, planned: PlannedDelivery, at: float) -> int:
    index = record.offered(planned, at)
    record.admitted(index, ACCEPTED, None, at)
    return index


def _healthy_record() -> RunRecord:
    """Two conversations, a duplicate and a refusal, everything answered once and in order."""
    record = RunRecord()
    a0 = _accept(record, _delivery(0, 0), 0.0)
    a1 = _accept(record, _delivery(0, 1), 0.1)
    b0 = _accept(record, _delivery(1, 0), 0.2)
    again = record.offered(_delivery(0, 0, redelivery=True), 0.3)
    record.admitted(again, AdmissionKind.DUPLICATE, None, 0.3)
    refused = record.offered(_delivery(1, 1), 0.4)
    record.admitted(refused, AdmissionKind.REJECTED, "overloaded", 0.4)
    record.answered(b0, SUCCESS, 0.5)
    record.answered(a0, SUCCESS, 0.6)
    record.answered(a1, MessageResultKind.FAILED, 0.7)
    return record


def test_a_healthy_run_passes_every_check() -> None:
    record = _healthy_record()
    verdict = judge(record)
    assert [check.ok for check in verdict] == [True, True, True], verdict
    assert record.pending == 0
    assert record.admissions == Counter(accepted=3, duplicate=1, rejected=1)
    assert record.reasons == Counter(overloaded=1)
    assert [latency for _, latency in record.answer_log] == [pytest.approx(0.3), pytest.approx(0.6)]


def test_a_missing_result_fails_the_first_check() -> None:
    record = _healthy_record()
    _accept(record, _delivery(2, 0), 1.0)
    first, *_ = judge(record)
    assert not first.ok
    assert "1 without a result" in first.detail


def test_a_second_result_fails_the_first_check() -> None:
    record = _healthy_record()
    record.answered(0, SUCCESS, 2.0)
    first, *_ = judge(record)
    assert not first.ok
    assert "1 answered twice" in first.detail


def test_a_result_for_a_refused_message_fails_the_first_check() -> None:
    record = _healthy_record()
    record.answered(4, SUCCESS, 2.0)  # the refused one
    first, *_ = judge(record)
    assert not first.ok
    assert "1 results for nothing" in first.detail


def test_answers_out_of_acceptance_order_fail_the_second_check() -> None:
    record = RunRecord()
    first = _accept(record, _delivery(0, 0), 0.0)
    second = _accept(record, _delivery(0, 1), 0.1)
    record.answered(second, SUCCESS, 0.5)
    record.answered(first, SUCCESS, 0.6)
    _, order, _ = judge(record)
    assert not order.ok
    assert "1 answers out of order" in order.detail


def test_a_redelivery_accepted_while_the_first_runs_fails_the_third_check() -> None:
    record = RunRecord()
    first = _accept(record, _delivery(0, 0), 0.0)
    again = _accept(record, _delivery(0, 0, redelivery=True), 0.1)
    record.answered(first, SUCCESS, 0.5)
    record.answered(again, SUCCESS, 0.6)
    *_, doubled = judge(record)
    assert not doubled.ok
    assert "1 messages answered twice, 1 accepted while in flight" in doubled.detail


def test_a_redelivery_after_a_failure_may_be_processed() -> None:
    record = RunRecord()
    first = _accept(record, _delivery(0, 0), 0.0)
    record.answered(first, MessageResultKind.FAILED, 0.5)
    again = _accept(record, _delivery(0, 0, redelivery=True), 1.0)
    record.answered(again, SUCCESS, 1.5)
    assert all(check.ok for check in judge(record))


# ---------------------------------------------------------------------------- samples, report


def _provider(limit: int = 4, in_flight: int = 2) -> ProviderStats:
    return ProviderStats(
        calls=0,
        successes=0,
        errors_by_class={},
        retries=0,
        requests_by_status={},
        concurrency_limit=limit,
        in_flight=in_flight,
    )


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert percentile([float(n) for n in range(1, 101)], 1.0) == 100.0


def test_a_sample_takes_rates_and_latencies_over_the_last_second() -> None:
    scenario = DemoScenario(duration=10)  # outage from 3 s for 2.5 s
    record = _healthy_record()
    earlier = take_sample(0.2, RunRecord(), scenario, None, _provider(), "closed", [])
    sample = take_sample(1.2, record, scenario, None, _provider(6, 3), "open", [earlier])
    # Five offered and two answered since the sample of 0.2 s, one second before.
    assert sample.offered_rate == pytest.approx(5.0)
    assert sample.answered_rate == pytest.approx(2.0)
    assert sample.rejected_rate == pytest.approx(1.0)
    assert (sample.offered, sample.accepted, sample.duplicates, sample.rejected) == (5, 3, 1, 1)
    assert (sample.answered, sample.failed) == (2, 1)
    assert (sample.in_flight, sample.concurrency_limit, sample.breaker) == (3, 6, "open")
    assert sample.p50 == pytest.approx(0.3)
    assert not sample.outage
    assert take_sample(3.5, record, scenario, None, _provider(), "open", [sample]).outage
    # Answers older than the window leave the percentiles.
    assert take_sample(5.0, record, scenario, None, _provider(), "open", [sample]).p99 is None


def _samples(scenario: DemoScenario) -> list[Sample]:
    record = _healthy_record()
    limits = [8, 8, 1, 1, 6]  # before, in the outage and recovery (3..6.5 s), after
    samples: list[Sample] = []
    for t, limit in zip([1.0, 2.0, 4.0, 6.0, 8.0], limits, strict=True):
        samples.append(take_sample(t, record, scenario, None, _provider(limit), "closed", samples))
    return samples


def test_the_report_has_every_figure_and_the_verdict(tmp_path: Path) -> None:
    scenario = DemoScenario(duration=10)
    record = _healthy_record()
    samples = _samples(scenario)
    transitions = [
        BreakerTransition(3.5, "closed", "open"),
        BreakerTransition(5.5, "open", "half_open"),
    ]
    summary = summarize(
        record,
        samples,
        scenario,
        transitions,
        elapsed=10.0,
        cpu_seconds=0.5,
        provider={"calls": 3},
    )
    assert (summary["offered"], summary["accepted"], summary["duplicate"]) == (5, 3, 1)
    assert (summary["rejected"], summary["answered"], summary["failed"]) == (1, 2, 1)
    assert summary["rejected_by_reason"] == {"overloaded": 1}
    assert summary["breaker_opened"] == 1
    assert summary["concurrency_limit"] == {
        "min": 1,
        "max": 8,
        "highest_before_outage": 8,
        "lowest_in_outage": 1,
        "highest_after_recovery": 6,
    }
    assert summary["cpu_share_of_one_core"] == 0.05
    verdict = judge(record)
    out = io.StringIO()
    print_report(summary, verdict, out)
    text = out.getvalue()
    for words in ("offered ", "duplicate ", "rejected ", "answered ", "p50", "p95", "p99"):
        assert words in text
    assert "closed->open@3.5s open->half_open@5.5s" in text
    assert "verdict: PASS" in text
    path = tmp_path / "report.json"
    write_json(path, scenario, summary, verdict, samples)
    document = json.loads(path.read_text())
    assert document["passed"] is True
    assert document["summary"] == json.loads(json.dumps(summary))
    assert len(document["samples"]) == 5
    assert document["scenario"]["outage_start"] == 3.0


def test_the_chart_is_a_png_with_the_run_on_it(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the demo extra draws the chart")
    from zeroclaw.demo.report import write_chart

    scenario = DemoScenario(duration=10)
    samples = _samples(scenario)
    summary = summarize(
        _healthy_record(), samples, scenario, [], elapsed=10.0, cpu_seconds=0.1, provider={}
    )
    path = tmp_path / "report.png"
    write_chart(path, scenario, samples, summary)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_the_plain_view_prints_a_line_every_two_seconds() -> None:
    scenario = DemoScenario(duration=10)
    out = io.StringIO()
    view = PlainView(out)
    view.start()
    for sample in _samples(scenario):
        view.update(sample)
    lines = out.getvalue().splitlines()
    # Samples at 1, 2, 4, 6 and 8 s: lines at 2, 4, 6 and 8 s.
    assert [line.split()[0] for line in lines[1:]] == ["t=", "t=", "t=", "t="]
    assert len(lines) == 5
    assert lines[2] == plain_line(_samples(scenario)[2])
    assert "[provider outage]" in lines[2]


def test_the_live_view_draws_the_pipeline() -> None:
    pytest.importorskip("rich", reason="the demo extra draws the live view")
    scenario = DemoScenario(duration=10)
    out = io.StringIO()
    view = LiveView(out, scenario)
    sample = _samples(scenario)[2]
    view.update(sample)
    from rich.console import Console

    console = Console(file=out, width=100, force_terminal=False)
    console.print(view._render())
    text = out.getvalue()
    for words in ("in flight / limit 1", "breaker", "dedup hits", "p50", "provider outage"):
        assert words in text, text
