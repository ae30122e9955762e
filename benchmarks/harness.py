"""What every benchmark group shares: interleaved rounds, medians, ratios and the report.

A group module (``benchmarks/bench_<group>.py``) defines ``async def run(report, quick)``. For each
comparison it calls :func:`interleave` with contenders that each run one round and return the
seconds per operation of that round; rounds alternate between contenders (ours, peer, ours, peer…)
so that drift in the machine's speed hits all of them alike. Medians are compared as ratios.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

RoundFn = Callable[[], Awaitable[float]]


@dataclass
class Timing:
    name: str
    median: float  # seconds per operation
    samples: list[float]


@dataclass
class Ratio:
    group: str
    ours: str
    peer: str
    ours_s: float
    peer_s: float
    target: float | None  # ours/peer must be <= target, when a target is set
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_s / self.peer_s

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target


@dataclass
class Figure:
    group: str
    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Report:
    ratios: list[Ratio] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def ratio(
        self,
        group: str,
        ours: Timing,
        peer: Timing,
        *,
        target: float | None = None,
        note: str = "",
    ) -> Ratio:
        """Record ours/peer (lower is better for us); ``target`` is the largest acceptable ratio."""
        entry = Ratio(group, ours.name, peer.name, ours.median, peer.median, target, note)
        self.ratios.append(entry)
        print(_format_ratio(entry), flush=True)
        return entry

    def figure(self, group: str, name: str, value: float, unit: str, note: str = "") -> None:
        self.figures.append(Figure(group, name, value, unit, note))
        print(f"  {group}: {name} = {value:.6g} {unit} {note}".rstrip(), flush=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "python": sys.version,
            "zeroclaw_build": build_description(),
            "ratios": [asdict(r) | {"ratio": r.ratio, "met": r.met} for r in self.ratios],
            "figures": [asdict(f) for f in self.figures],
        }

    def markdown(self) -> str:
        lines = [
            "| group | ours | peer | ours per op | peer per op | ours/peer | target | met |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.ratios:
            target = "" if r.target is None else f"≤ {r.target:g}×"
            met = {None: "", True: "yes", False: "**no**"}[r.met]
            lines.append(
                f"| {r.group} | {r.ours} | {r.peer} | {_fmt_time(r.ours_s)} | "
                f"{_fmt_time(r.peer_s)} | {r.ratio:.2f}× | {target} | {met} |"
            )
        if self.figures:
            lines += ["", "| group | figure | value | unit | note |", "|---|---|---|---|---|"]
            lines += [
                f"| {f.group} | {f.name} | {f.value:.6g} | {f.unit} | {f.note} |"
                for f in self.figures
            ]
        return "\n".join(lines)


def build_description() -> str:
    """Which zeroclaw this process measures: mypyc-compiled modules, or plain Python."""
    from zeroclaw.concurrency._mypyc import compiled_modules

    compiled = compiled_modules()
    if not compiled:
        return "plain Python (nothing compiled)"
    return "compiled with mypyc: " + ", ".join(name.rsplit(".", 1)[1] for name in compiled)


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    return f"{seconds * 1e3:.2f} ms"


def _format_ratio(r: Ratio) -> str:
    verdict = "" if r.met is None else ("  (target met)" if r.met else "  (TARGET MISSED)")
    return (
        f"  {r.group}: {r.ours} {_fmt_time(r.ours_s)} vs {r.peer} {_fmt_time(r.peer_s)}"
        f" -> {r.ratio:.2f}x{verdict}"
    )


async def interleave(contenders: dict[str, RoundFn], rounds: int) -> dict[str, Timing]:
    """Run ``rounds`` rounds of every contender, alternating, and return each one's median.

    One warm-up round per contender is run first and discarded. The garbage collector is run
    before, and disabled during, each round so that one contender's garbage is not collected on
    another's time.
    """
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_fn in contenders.values():
        await round_fn()  # warm-up
    for _ in range(rounds):
        for name, round_fn in contenders.items():
            gc.collect()
            gc.disable()
            try:
                samples[name].append(await round_fn())
            finally:
                gc.enable()
    return {name: Timing(name, statistics.median(s), s) for name, s in samples.items()}


def sync_round(fn: Callable[[], float]) -> RoundFn:
    """Wrap a synchronous round function as a contender."""

    async def round_fn() -> float:
        return fn()

    return round_fn


GroupRun = Callable[[Report, bool], Coroutine[Any, Any, None]]


def run_group(run: GroupRun, argv: list[str] | None = None) -> None:
    """Command line of one group: ``python -m benchmarks.bench_x [--quick] [--json P] [--uvloop]``.

    ``--uvloop`` runs the group under uvloop instead of the default asyncio loop.
    """
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--uvloop", action="store_true", help="run under uvloop")
    args = parser.parse_args(argv)
    report = Report()
    print(f"zeroclaw: {build_description()}", flush=True)
    if args.uvloop:
        import uvloop

        uvloop.run(run(report, args.quick))
    else:
        asyncio.run(run(report, args.quick))
    print()
    print(report.markdown())
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report.to_json(), out, indent=2)
