"""Instructions per pipeline message, counted by callgrind: a figure the machine's load cannot move.

    python -m benchmarks.callgrind_pipeline [--python PATH] [--mode followup|collect|interrupt]

Runs ``bench_pipeline.pipeline_round`` (the pipeline benchmark's round: dedup, breaker,
backpressure, lanes, pool, results; 1000 conversations) under ``valgrind --tool=callgrind``
twice, with 2 000 and with 12 000 messages, in a fresh interpreter each time, and prints the
difference divided by 10 000: the instructions one message costs, start-up and imports cancelled
out. ``--python`` runs another checkout's interpreter (its own build of zeroclaw), so two builds
are compared by the same count: the way to check that a change costs the hot path nothing when
wall-clock figures on a shared machine move by more than the change. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = (2_000, 12_000)
PROGRAM = """
import asyncio, sys
sys.path.insert(0, {root!r})
from benchmarks.bench_pipeline import make_messages, pipeline_round
import inspect
messages = make_messages({count}, 1000)
kwargs = {{}}
if "queue_mode" in inspect.signature(pipeline_round).parameters:
    kwargs["queue_mode"] = {mode!r}
elif {mode!r} != "followup":
    raise SystemExit("this checkout has no queue modes")
asyncio.run(pipeline_round(messages, **kwargs))
"""


def instructions(python: str, root: Path, count: int, mode: str) -> int:
    """Total instructions callgrind counted for one round of ``count`` messages."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        program = PROGRAM.format(root=str(root), count=count, mode=mode)
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                python,
                "-c",
                program,
            ],
            capture_output=True,
            text=True,
            check=False,
            # A fixed hash seed: str hashing decides dict probing, and so the count.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if done.returncode != 0:
            raise SystemExit(f"the round failed under callgrind:\n{done.stderr[-2000:]}")
        found = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
        if found is None:
            raise SystemExit("no summary line in callgrind's output")
        return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter to count")
    parser.add_argument("--mode", default="followup", choices=("followup", "collect", "interrupt"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    root = Path(args.python).absolute().parents[2]  # <checkout>/.venv/bin/python
    if not (root / "benchmarks").is_dir():
        root = Path(__file__).resolve().parents[1]
    small, large = (instructions(args.python, root, n, args.mode) for n in SIZES)
    per_message = (large - small) / (SIZES[1] - SIZES[0])
    print(f"{root}: {per_message:.0f} instructions per message ({args.mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
