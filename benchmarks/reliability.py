"""Every reliability part's long form, one after another: ``python -m benchmarks.reliability``.

    python -m benchmarks.reliability [--quick]

1. chaos: ``benchmarks.chaos`` with 100 000 messages (``--quick``: 20 000);
2. soak: ``benchmarks.soak`` for 600 s at 100 messages/s (``--quick``: 60 s), into ./soak;
3. hostile input: tests/test_hostile_input.py with 5 000 fuzzed bodies (``--quick``: 1 000;
   the CI short form fuzzes 150);
4. cancellation at every await: tests/test_cancellation_points.py (exhaustive already: every
   suspension point of every covered call, four ways);
5. faults in the outside world: the tests docs/reliability.md lists, by name.

Each runs in a process of its own from a clone; the run exits 1 if any part fails and says which.
docs/reliability.md has the figures of the latest run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

FAULT_TESTS = [
    "tests/test_providers_openai.py::test_a_body_cut_short_is_a_retryable_connection_error",
    "tests/test_providers_openai.py::test_a_2xx_that_is_not_a_completion_is_not_retryable",
    "tests/test_providers_openai.py::test_a_hang_is_a_retryable_timeout",
    "tests/test_providers_openai.py::test_a_refused_connection_is_retryable",
    "tests/test_webhook.py::test_callback_5xx_is_retried_until_it_lands",
    "tests/test_webhook.py::test_callback_4xx_is_not_retried_and_counts_a_send_failure",
    "tests/test_webhook.py::test_a_hung_callback_is_timed_out_and_blocks_no_other_reply",
    "tests/test_telegram.py::test_failing_sends_are_counted_and_block_no_other_chat",
    "tests/test_slack.py::test_a_stuck_conversation_does_not_hold_up_another",
    "tests/test_gateway_e2e.py::test_sigterm_drains_the_request_in_flight_and_refuses_new_ones",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter long forms")
    args = parser.parse_args()
    python = sys.executable
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    parts = {
        "chaos": [
            python,
            "-m",
            "benchmarks.chaos",
            "--messages",
            "20000" if args.quick else "100000",
        ],
        "soak": [python, "-m", "benchmarks.soak", "--seconds", "60" if args.quick else "600"],
        "hostile input": [*pytest, "tests/test_hostile_input.py"],
        "cancellation at every await": [*pytest, "tests/test_cancellation_points.py"],
        "faults in the outside world": [*pytest, *FAULT_TESTS],
    }
    env = {**os.environ, "ZEROCLAW_FUZZ_EXAMPLES": "1000" if args.quick else "5000"}
    failed = []
    for name, command in parts.items():
        print(f"== {name}", flush=True)
        if subprocess.run(command, env=env, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("every part held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
