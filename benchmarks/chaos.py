"""The chaos run's long form: ``python -m benchmarks.chaos [--messages 100000] [--seed 0]``.

Runs tests/chaos_run.py's scenario (provider failures, hangs past the timeout, cancelled
handlers, redeliveries, an outage and a shutdown mid-flight, through ``ConcurrentMessageProcessor``
on a fake clock; run it from a clone) and prints what was offered, every fault injected by class,
what became of the messages, and each check. Exits 1 when a check fails. docs/reliability.md
gives the figures of a run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from tests.chaos_run import ChaosSettings, run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # One warning per failed message (rate-limited) is the gateway's log, not this report's.
    logging.getLogger("zeroclaw").setLevel(logging.ERROR)
    report = asyncio.run(run_chaos(ChaosSettings(messages=args.messages, seed=args.seed)))
    print(f"messages {args.messages} (seed {args.seed}), deliveries offered {report.offered}")
    print(f"run: {report.fake_seconds:.1f} s of fake time in {report.real_seconds:.1f} s")
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(report.faults.items())))
    print("admissions: " + ", ".join(f"{k} {v}" for k, v in sorted(report.admissions.items())))
    print("refusals: " + ", ".join(f"{k} {v}" for k, v in sorted(report.refusals.items())))
    print("results: " + ", ".join(f"{k} {v}" for k, v in sorted(report.results.items())))
    checks = {
        "lost": report.lost,
        "doubled": report.doubled,
        "answered out of order": report.out_of_order,
        "permits not given back": report.permits_missing,
        "left in flight": report.left_in_flight,
        "dedup samples above the TTL window": report.dedup_over_bound,
    }
    for name, count in checks.items():
        print(f"  {name}: {count}")
    print(f"dedup entries at most {report.dedup_peak}")
    print("PASS" if report.held else "FAIL")
    return 0 if report.held else 1


if __name__ == "__main__":
    sys.exit(main())
