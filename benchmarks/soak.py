"""Soak: ``zeroclaw serve`` under steady load for a long while, its resources sampled every second.

    python -m benchmarks.soak [--seconds 600] [--rate 100] [--out DIR]

Starts ``zeroclaw serve`` (a sync webhook in front of the simulated provider) as the end-to-end
tests do (``tests/gateway_process.py``: run it from a clone) and a load generator in another
process (this module with ``--generate``: an aiohttp client posting ``--rate`` messages a second
from 500 senders, each answered before it counts, one line of JSON a second with what it sent,
what was answered and the latency percentiles of that second). Every second it reads the
gateway's ``/status`` (``process``: RSS, open file descriptors, asyncio tasks). At the end it
stops both (SIGTERM: the gateway drains and exits 0) and checks, after a warm-up of a tenth of
the run (at least 5 s): RSS grew less than 5 % from the first to the last tenth of the samples;
file descriptors and tasks did not grow (the last third's mean at most 10 % plus 3 above the first
third's); p99 latency stayed within 1.5x plus 20 ms of the first third's; every request was
answered 200. Prints the figures, writes ``soak.json`` and ``soak.png`` to ``--out``, exits 1 when
a check fails. tests/test_soak.py runs a short form; docs/reliability.md has a long run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.gateway_process import start_serve, write_config

CONFIG = """
[gateway]
port = 0
[processor]
preset = "medium"
max_concurrent_requests = 200
task_queue_size = 400
worker_pool_size = 64
[provider]
kind = "simulated"
base_latency = 0.05
capacity = 64
max_concurrency = 64
[channels.web]
kind = "webhook"
allowed_users = ["*"]
"""

SENDERS = 500


@dataclass
class SoakResult:
    """A soak run's samples (one per second) and its checks."""

    seconds: float
    rate: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    load: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


# ---------------------------------------------------------------------------- the load generator


async def generate(url: str, rate: float, seconds: float) -> None:
    """Post ``rate`` messages a second to ``url`` for ``seconds``; a JSON line per second."""
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        latencies: list[float] = []
        counts = {"sent": 0, "ok": 0, "errors": 0}
        tasks: set[asyncio.Task[None]] = set()

        async def one(n: int) -> None:
            started = time.perf_counter()
            body = {"sender": f"user{n % SENDERS}", "content": f"message {n}", "id": f"m{n}"}
            try:
                async with session.post(url, json=body) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            counts["ok" if ok else "errors"] += 1
            latencies.append(time.perf_counter() - started)

        start = time.perf_counter()
        next_report = start + 1.0
        n = 0
        while (now := time.perf_counter()) < start + seconds:
            due = start + n / rate
            if due > now:
                await asyncio.sleep(min(due - now, max(0.0, next_report - now)))
            if time.perf_counter() >= next_report:
                window, latencies[:] = sorted(latencies), []
                line = {"t": round(next_report - start, 3), **counts}
                if window:
                    line["p50"] = window[len(window) // 2]
                    line["p99"] = window[min(len(window) - 1, int(len(window) * 0.99))]
                print(json.dumps(line), flush=True)
                next_report += 1.0
            if time.perf_counter() >= due:
                task = asyncio.ensure_future(one(n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                counts["sent"] += 1
                n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        print(json.dumps({"t": round(time.perf_counter() - start, 3), "final": True, **counts}))


# ---------------------------------------------------------------------------- the soak


async def run_soak(seconds: float, rate: float, directory: Path) -> SoakResult:
    """Run the soak (see the module doc). Blocks for ``seconds`` plus start and drain."""
    result = SoakResult(seconds, rate)
    served = await start_serve(write_config(directory, CONFIG))
    generator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.soak",
        "--generate",
        f"{served.base}/channels/web",
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    assert generator.stdout is not None

    async def read_load() -> None:
        assert generator.stdout is not None
        while raw := await generator.stdout.readline():
            result.load.append(json.loads(raw))

    reader = asyncio.ensure_future(read_load())
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while generator.returncode is None and time.perf_counter() - started < seconds + 60:
            async with session.get(f"{served.base}/status") as response:
                status = await response.json()
            result.samples.append(
                {"t": round(time.perf_counter() - started, 3), **status["process"]}
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(generator.wait(), 1.0)
    await reader
    code = await served.stop()
    _judge(result, code)
    return result


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _judge(result: SoakResult, exit_code: int) -> None:
    warm = max(5.0, result.seconds / 10)
    samples = [s for s in result.samples if s["t"] >= warm and s["rss_bytes"] is not None]
    tenth = max(1, len(samples) // 10)
    third = max(1, len(samples) // 3)
    rss_first = _mean([s["rss_bytes"] for s in samples[:tenth]])
    rss_last = _mean([s["rss_bytes"] for s in samples[-tenth:]])
    growth = (rss_last - rss_first) / rss_first if rss_first else 0.0
    figures = result.figures
    figures["rss_first_mib"] = rss_first / 2**20
    figures["rss_last_mib"] = rss_last / 2**20
    figures["rss_growth"] = growth
    checks = result.checks
    checks["rss grew < 5 % after warm-up"] = bool(samples) and growth < 0.05
    for key in ("open_fds", "asyncio_tasks"):
        first = _mean([s[key] for s in samples[:third]])
        last = _mean([s[key] for s in samples[-third:]])
        figures[f"{key}_first"] = first
        figures[f"{key}_last"] = last
        checks[f"{key} flat"] = bool(samples) and last <= first * 1.1 + 3
    load = [line for line in result.load if "p99" in line and line["t"] >= warm]
    third = max(1, len(load) // 3)
    p99_first = _mean([line["p99"] for line in load[:third]])
    p99_last = _mean([line["p99"] for line in load[-third:]])
    figures["p99_first_ms"] = p99_first * 1000
    figures["p99_last_ms"] = p99_last * 1000
    figures["p50_ms"] = _mean([line["p50"] for line in load]) * 1000
    checks["p99 stable"] = bool(load) and p99_last <= p99_first * 1.5 + 0.02
    final = next((line for line in result.load if line.get("final")), None)
    figures["sent"] = final["sent"] if final else 0
    figures["errors"] = final["errors"] if final else -1
    checks["every request answered 200"] = final is not None and final["ok"] == final["sent"]
    checks["gateway drained and exited 0"] = exit_code == 0


def write_chart(result: SoakResult, path: Path) -> None:
    """``soak.png``: RSS, open fds, asyncio tasks and latency over the run. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(4, 1, figsize=(9, 8), sharex=True, layout="constrained")
    t = [s["t"] for s in result.samples]
    axes[0].plot(t, [(s["rss_bytes"] or 0) / 2**20 for s in result.samples], color="tab:blue")
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].plot(t, [s["open_fds"] or 0 for s in result.samples], color="tab:green")
    axes[1].set_ylabel("open fds")
    axes[2].plot(t, [s["asyncio_tasks"] for s in result.samples], color="tab:olive")
    axes[2].set_ylabel("asyncio tasks")
    load = [line for line in result.load if "p99" in line]
    lt = [line["t"] for line in load]
    axes[3].plot(lt, [line["p50"] * 1000 for line in load], label="p50", color="tab:blue")
    axes[3].plot(lt, [line["p99"] * 1000 for line in load], label="p99", color="tab:purple")
    axes[3].set_ylabel("latency (ms)")
    axes[3].legend(loc="upper left", fontsize="small")
    axes[3].set_xlabel("seconds")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    figure.suptitle(
        f"zeroclaw serve soak: {result.rate:g} messages/s for {result.seconds:g} s "
        "(webhook, simulated provider)"
    )
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=Path("soak"))
    parser.add_argument("--generate", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        asyncio.run(generate(args.generate, args.rate, args.seconds))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run_soak(args.seconds, args.rate, args.out))
    (args.out / "soak.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    write_chart(result, args.out / "soak.png")
    for name, value in result.figures.items():
        print(f"{name}: {value:.4g}")
    for name, ok in result.checks.items():
        print(f"[{'ok' if ok else 'FAILED'}] {name}")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
