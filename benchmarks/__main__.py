"""Run every benchmark group, each in a process of its own: ``python -m benchmarks``.

    python -m benchmarks [--quick] [--json PATH] [--no-uvloop] [GROUP ...]

GROUP is a module name without the ``bench_`` prefix (``worker_pool``, ``backpressure``...); by
default all of them run, each in a process of its own, once on asyncio's default event loop and
once under uvloop. The peers come from the ``bench`` dependency group
(``pip install -e . --group bench``); nothing is installed here.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from benchmarks.harness import Figure, Ratio, Report, build_description

HERE = pathlib.Path(__file__).parent


def available_groups() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("groups", nargs="*", help=f"groups to run: {', '.join(available_groups())}")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="skip the second run of each group under uvloop"
    )
    args = parser.parse_args(argv)
    groups = args.groups or available_groups()
    unknown = set(groups) - set(available_groups())
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")

    combined = Report()
    failed: list[str] = []
    loops = ["asyncio"] if args.no_uvloop else ["asyncio", "uvloop"]
    with tempfile.TemporaryDirectory() as scratch:
        for group in groups:
            for loop in loops:
                out = pathlib.Path(scratch) / f"{group}-{loop}.json"
                command = [sys.executable, "-m", f"benchmarks.bench_{group}", "--json", str(out)]
                if args.quick:
                    command.append("--quick")
                if loop == "uvloop":
                    command.append("--uvloop")
                print(f"== {group} ({loop})", flush=True)
                if subprocess.run(command, check=False).returncode != 0 or not out.exists():
                    failed.append(f"{group} ({loop})")
                    continue
                data = json.loads(out.read_text())
                suffix = "" if loop == "asyncio" else " [uvloop]"
                for entry in data["ratios"]:
                    entry.pop("ratio")
                    entry.pop("met")
                    entry["group"] += suffix
                    combined.ratios.append(Ratio(**entry))
                for entry in data["figures"]:
                    entry["group"] += suffix
                    combined.figures.append(Figure(**entry))
    print("\n## Results\n")
    print(f"zeroclaw: {build_description()}\n")
    print(combined.markdown())
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(combined.to_json(), indent=2))
    if failed:
        print(f"\nfailed groups: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
