"""The chaos run's short form (tests/chaos_run.py): 10 000 messages through
``ConcurrentMessageProcessor`` with provider failures, hangs past the timeout, cancelled handlers,
redeliveries, an outage and a shutdown mid-flight, on a fake clock. The long form is
``python -m benchmarks.chaos``; its figures are in docs/reliability.md."""

from __future__ import annotations

from tests.chaos_run import ChaosSettings, run_chaos


async def test_chaos_loses_nothing_doubles_nothing_and_gives_every_permit_back() -> None:
    report = await run_chaos(ChaosSettings(messages=10_000, seed=1))
    assert report.offered > 10_000  # the redeliveries come on top
    # Every fault happened, many times over.
    for fault in ("hang", "cancel", "provider failures (error_rate)", "redeliveries"):
        assert report.faults[fault] > 100, report.faults
    assert report.faults["provider failures (outage)"] > 0
    assert report.admissions["duplicate"] > 0
    assert report.results["success"] > 0
    assert report.results["timeout"] > 0
    assert report.results["failed"] > 0
    assert report.results["cancelled"] > 0
    assert (report.lost, report.doubled, report.out_of_order) == (0, 0, 0), report
    assert (report.permits_missing, report.left_in_flight) == (0, 0), report
    assert report.dedup_over_bound == 0, report
    assert report.held
