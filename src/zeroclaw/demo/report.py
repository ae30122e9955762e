"""The demo's report: the summary figures, the table printed at the end, ``report.json`` and
``report.png``.

:func:`summarize` is pure (the record and the samples in, a JSON-ready dict out).
:func:`write_chart` needs matplotlib (the ``demo`` extra) and draws with its non-interactive
``Agg`` backend, so no display is needed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from zeroclaw.demo.record import RunRecord
from zeroclaw.demo.sampler import Sample, percentile
from zeroclaw.demo.scenario import DemoScenario
from zeroclaw.demo.verdict import Check

__all__ = ["BreakerTransition", "print_report", "summarize", "write_chart", "write_json"]

# Breaker states as a level for the chart: closed at the bottom, open at the top.
_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerTransition:
    """The breaker went from ``old`` to ``new`` at ``t`` seconds into the run."""

    t: float
    old: str
    new: str


def _limit_phases(samples: Sequence[Sample], scenario: DemoScenario) -> dict[str, int | None]:
    outage_start = scenario.outage_start
    recovered = outage_start + scenario.outage_duration + scenario.recovery

    before = [s.concurrency_limit for s in samples if s.t < outage_start]
    during = [s.concurrency_limit for s in samples if outage_start <= s.t < recovered]
    after = [s.concurrency_limit for s in samples if s.t >= recovered]
    return {
        "highest_before_outage": max(before, default=None),
        "lowest_in_outage": min(during, default=None),
        "highest_after_recovery": max(after, default=None),
    }


def summarize(
    record: RunRecord,
    samples: Sequence[Sample],
    scenario: DemoScenario,
    transitions: Sequence[BreakerTransition],
    *,
    elapsed: float,
    cpu_seconds: float,
    provider: Mapping[str, Any],
    interrupted: bool = False,
) -> dict[str, Any]:
    """Every figure of the report, JSON-ready. Pure.

    ``elapsed`` is the run's wall time and ``cpu_seconds`` the process's CPU time over it (the
    demo's own cost: traffic, pipeline, sampler and live view together).
    """
    latencies = [latency for _, latency in record.answer_log]
    results = record.results
    return {
        "duration_seconds": round(elapsed, 3),
        "interrupted": interrupted,
        "conversations": len({d.planned.conversation for d in record.deliveries}),
        "offered": len(record.deliveries),
        "redeliveries_offered": sum(1 for d in record.deliveries if d.planned.redelivery),
        "accepted": record.admissions["accepted"],
        "duplicate": record.admissions["duplicate"],
        "rejected": record.admissions["rejected"],
        "rejected_by_reason": dict(record.reasons),
        "answered": results["success"],
        "failed": results["failed"] + results["rejected"],
        "timed_out": results["timeout"],
        "cancelled": results["cancelled"],
        "latency_seconds": {
            name: percentile(latencies, share)
            for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
        "breaker_transitions": [dataclasses.asdict(t) for t in transitions],
        "breaker_opened": sum(1 for t in transitions if t.new == "open"),
        "concurrency_limit": {
            "min": min((s.concurrency_limit for s in samples), default=None),
            "max": max((s.concurrency_limit for s in samples), default=None),
            **_limit_phases(samples, scenario),
        },
        "provider": dict(provider),
        "cpu_seconds": round(cpu_seconds, 3),
        "cpu_share_of_one_core": round(cpu_seconds / elapsed, 3) if elapsed > 0 else None,
    }


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def print_report(summary: Mapping[str, Any], verdict: Sequence[Check], out: TextIO) -> None:
    """Print the report table and the verdict to ``out``. Does not block beyond the write."""
    latency = summary["latency_seconds"]
    limit = summary["concurrency_limit"]
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(summary["rejected_by_reason"].items()))
    transitions = " ".join(
        f"{t['old']}->{t['new']}@{t['t']:.1f}s" for t in summary["breaker_transitions"]
    )
    rows = [
        ("offered", f"{summary['offered']} ({summary['redeliveries_offered']} redeliveries)"),
        ("accepted", str(summary["accepted"])),
        ("duplicate", str(summary["duplicate"])),
        ("rejected", f"{summary['rejected']}" + (f" ({reasons})" if reasons else "")),
        ("answered", str(summary["answered"])),
        ("failed", str(summary["failed"])),
        ("timed out", str(summary["timed_out"])),
        ("cancelled", str(summary["cancelled"])),
        (
            "latency",
            f"p50 {_seconds(latency['p50'])}  p95 {_seconds(latency['p95'])}  "
            f"p99 {_seconds(latency['p99'])}",
        ),
        ("breaker", f"opened {summary['breaker_opened']}x  {transitions or 'no transition'}"),
        (
            "adaptive limit",
            f"{_count(limit['min'])}..{_count(limit['max'])}  (before the outage up to "
            f"{_count(limit['highest_before_outage'])}, in it down to "
            f"{_count(limit['lowest_in_outage'])}, after up to "
            f"{_count(limit['highest_after_recovery'])})",
        ),
        (
            "demo cpu",
            f"{summary['cpu_seconds']:.1f} s in {summary['duration_seconds']:.1f} s "
            f"({100 * (summary['cpu_share_of_one_core'] or 0):.0f} % of one core)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    title = "zeroclaw demo report" + (" (interrupted)" if summary["interrupted"] else "")
    print(title, file=out)
    print("-" * len(title), file=out)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)
    print(file=out)
    passed = all(check.ok for check in verdict)
    print(f"verdict: {'PASS' if passed else 'FAIL'}", file=out)
    for check in verdict:
        print(f"  [{'ok' if check.ok else 'FAILED'}] {check.name}: {check.detail}", file=out)
    out.flush()


def write_json(
    path: Path,
    scenario: DemoScenario,
    summary: Mapping[str, Any],
    verdict: Sequence[Check],
    samples: Sequence[Sample],
) -> None:
    """Write ``report.json``: the scenario, the summary, the verdict and every sample. Blocks
    on the file write."""
    document = {
        "scenario": {
            **dataclasses.asdict(scenario),
            "conversations": scenario.conversations,
            "outage_start": scenario.outage_start,
            "outage_duration": scenario.outage_duration,
            "recovery": scenario.recovery,
        },
        "summary": summary,
        "verdict": [dataclasses.asdict(check) for check in verdict],
        "passed": all(check.ok for check in verdict),
        "samples": [dataclasses.asdict(sample) for sample in samples],
    }
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def write_chart(
    path: Path,
    scenario: DemoScenario,
    samples: Sequence[Sample],
    summary: Mapping[str, Any],
) -> None:
    """Draw ``report.png``: throughput, latency, in flight vs the adaptive limit, and the
    breaker's state over time, the outage and the recovery shaded. Blocks while it draws.

    Raises:
        ImportError: matplotlib is not installed (the ``demo`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    figure, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True, layout="constrained")
    throughput, latency, concurrency, breaker = axes
    outage_start = scenario.outage_start
    outage_end = outage_start + scenario.outage_duration
    for index, axis in enumerate(axes):
        axis.axvspan(
            outage_start,
            outage_end,
            color="tab:red",
            alpha=0.13,
            label="provider outage" if index == 0 else None,
        )
        axis.axvspan(
            outage_end,
            outage_end + scenario.recovery,
            color="tab:orange",
            alpha=0.10,
            label="provider recovering" if index == 0 else None,
        )
        axis.grid(alpha=0.3)

    throughput.plot(t, [s.offered_rate for s in samples], label="offered", color="tab:gray")
    throughput.plot(t, [s.answered_rate for s in samples], label="answered", color="tab:green")
    throughput.plot(t, [s.rejected_rate for s in samples], label="rejected", color="tab:red")
    throughput.set_ylabel("messages / s")
    throughput.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=5, fontsize="small")

    def seconds(values: list[float | None]) -> list[float]:
        return [float("nan") if v is None else v for v in values]

    latency.plot(t, seconds([s.p50 for s in samples]), label="p50", color="tab:blue")
    latency.plot(t, seconds([s.p99 for s in samples]), label="p99", color="tab:purple")
    latency.set_ylabel("latency (s)")
    latency.legend(loc="upper left", ncols=2, fontsize="small")

    concurrency.plot(t, [s.in_flight for s in samples], label="in flight", color="tab:blue")
    concurrency.step(
        t,
        [s.concurrency_limit for s in samples],
        where="post",
        label="adaptive limit",
        color="black",
    )
    concurrency.plot(
        t,
        [s.provider_waiting + s.queued for s in samples],
        label="waiting",
        color="tab:olive",
    )
    concurrency.set_ylabel("provider calls")
    concurrency.legend(loc="upper left", ncols=3, fontsize="small")

    levels = [_BREAKER_LEVEL.get(s.breaker, 0) for s in samples]
    breaker.step(t, levels, where="post", color="black")
    breaker.fill_between(
        t, levels, step="post", color="tab:red", alpha=0.3, label="breaker not closed"
    )
    breaker.set_yticks([0, 1, 2], ["closed", "half open", "open"])
    breaker.set_ylim(-0.2, 2.3)
    breaker.set_ylabel("breaker")
    breaker.set_xlabel("seconds since the start of the run")
    breaker.set_xlim(0, max(t) if t else scenario.duration)

    latency_p99 = summary["latency_seconds"]["p99"]
    figure.suptitle(
        f"zeroclaw demo: {summary['offered']} deliveries, {summary['answered']} answered, "
        f"{summary['duplicate']} duplicates, {summary['rejected']} shed"
        + (f", p99 {latency_p99:.2f} s" if latency_p99 is not None else "")
    )
    figure.savefig(path, dpi=90)
    plt.close(figure)
