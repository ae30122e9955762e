"""``zeroclaw demo``: simulated chat traffic through the real gateway, watched, reported, judged.

The run builds a :class:`~zeroclaw.gateway.app.Gateway` as ``zeroclaw serve`` does — the
``simulated`` provider inside the same ``ManagedProvider`` (rate limiter, adaptive concurrency
limit, retries), the same ``ConcurrentMessageProcessor`` (dedup, breaker, backpressure, lanes,
pool) and the same intake — with the demo's chat platform (:class:`SimulatedChat`) as its only
channel and no HTTP listener. The scenario's provider has a capacity knee and a scripted outage
in the middle of the run, then a slow recovery. While it runs a view shows the pipeline; at the
end the report is printed and written (``report.json``, ``report.png``), with the verdict of
:mod:`zeroclaw.demo.verdict`. Ctrl-C ends the traffic early: what was accepted drains, and the
report is still written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TextIO

from zeroclaw.channels import ChannelContext
from zeroclaw.concurrency import CircuitConfig
from zeroclaw.concurrency.channel_integration import Channel, MessageProcessorConfig
from zeroclaw.demo.channel import SimulatedChat
from zeroclaw.demo.live import LiveView, PlainView, View
from zeroclaw.demo.record import RunRecord
from zeroclaw.demo.report import (
    BreakerTransition,
    print_report,
    summarize,
    write_chart,
    write_json,
)
from zeroclaw.demo.sampler import Sample, Sampler, take_sample
from zeroclaw.demo.scenario import DemoScenario, plan_deliveries
from zeroclaw.demo.verdict import judge
from zeroclaw.gateway.app import Gateway
from zeroclaw.gateway.config import GatewayConfig, ProviderSettings, ServerSettings
from zeroclaw.gateway.metrics import STATE_LABELS

__all__ = ["DemoOptions", "demo_config", "run_demo"]

_logger = logging.getLogger("zeroclaw.demo")

# How long the accepted messages get to finish once the traffic ended (or on Ctrl-C).
_DRAIN_SECONDS = 15.0


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``zeroclaw demo`` was asked for: the scenario, where the report goes, the view."""

    scenario: DemoScenario
    out: Path
    live: bool


def demo_config(scenario: DemoScenario) -> GatewayConfig:
    """The gateway config of a demo run: what a ``zeroclaw.toml`` for it would say. Pure.

    The processor sheds rather than queues without end (``admission = "reject"``), its breaker
    is tuned to a 30 s run (open 2 s, judged over the last 50 calls), and the provider is the
    ``simulated`` backend with the scenario's capacity knee, outage and recovery.
    """
    processor = MessageProcessorConfig(
        worker_pool_size=scenario.max_concurrency,
        task_queue_size=2 * scenario.max_concurrency,
        max_concurrent_requests=48,
        dedup_ttl=60.0,
        circuit_config=CircuitConfig(
            failure_threshold=5,
            success_threshold=3,
            timeout_duration=2.0,
            failure_rate_threshold=0.5,
            window_size=50,
            min_calls=10,
            # Three probes at once: one probe queued behind the backlog of the outage would hold
            # the breaker half-open for as long as the backlog takes.
            half_open_max_calls=3,
        ),
        processing_timeout=10.0,
        admission="reject",
    )
    provider = ProviderSettings(
        kind="simulated",
        system_prompt="You are the zeroclaw demo's simulated assistant.",
        max_retries=2,
        max_concurrency=scenario.max_concurrency,
        # The run compresses an outage of minutes into seconds; the limiter's window shrinks
        # with it, so that it can fall and recover within the run (serve's default is 20).
        limiter_window=5,
        history_turns=10,
        options=MappingProxyType(
            {
                "seed": scenario.seed,
                "base_latency": scenario.base_latency,
                "latency_sigma": 0.35,
                "capacity": scenario.capacity,
                "error_rate": 0.0,
                "outages": ((scenario.outage_start, scenario.outage_duration),),
                "recovery": scenario.recovery,
            }
        ),
    )
    server = ServerSettings(port=0, shutdown_timeout=_DRAIN_SECONDS)
    return GatewayConfig(server, processor, provider, channels=(), source="<zeroclaw demo>")


async def run_demo(options: DemoOptions, *, out: TextIO | None = None) -> int:
    """Run the demo (see the module doc); returns the exit code: 0 when the verdict passes,
    1 when a check failed or the gateway could not run. Blocks for the run (``duration``
    seconds, plus the drain).

    Raises:
        ImportError: matplotlib (or, for the live view, rich) is missing: the ``demo`` extra.
        OSError: ``options.out`` cannot be written.
    """
    out = sys.stdout if out is None else out
    scenario = options.scenario
    options.out.mkdir(parents=True, exist_ok=True)
    plan = plan_deliveries(scenario)
    record = RunRecord()
    chats: list[SimulatedChat] = []

    def build_chat(context: ChannelContext) -> Channel:
        chat = SimulatedChat(
            context.intake, plan, record, settle_timeout=_DRAIN_SECONDS, until=scenario.duration
        )
        chats.append(chat)
        return chat

    gateway = Gateway(demo_config(scenario), extra_channels=[build_chat], http=False)
    chat = chats[0]
    # The processor names its breaker "<provider>:<model>" and makes it on start; made now, it
    # is the same one, and every transition is caught as it happens (a sample might miss a
    # half-open moment).
    breaker = gateway.processor.breakers.get_or_create(f"{gateway.provider.name}:{gateway.model}")
    transitions: list[BreakerTransition] = []
    breaker.on_state_change(
        lambda old, new: transitions.append(
            BreakerTransition(round(chat.now(), 3), STATE_LABELS[old], STATE_LABELS[new])
        )
    )

    def read(t: float, previous: Sequence[Sample]) -> Sample:
        return take_sample(
            t,
            record,
            scenario,
            gateway.processor.stats(),
            gateway.provider.stats(),
            STATE_LABELS[breaker.state],
            previous,
        )

    view: View = LiveView(out, scenario) if options.live else PlainView(out)
    sampler = Sampler(read, chat.now, watch=view.update)
    cpu_start = time.process_time()
    wall_start = time.monotonic()
    view.start()
    sampling = asyncio.get_running_loop().create_task(sampler.run(), name="demo:sampler")
    try:
        code = await gateway.run()
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        sampler.sample_now()
        view.stop()
    elapsed = time.monotonic() - wall_start
    cpu_seconds = time.process_time() - cpu_start
    provider = gateway.provider.stats()
    summary = summarize(
        record,
        sampler.samples,
        scenario,
        transitions,
        elapsed=elapsed,
        cpu_seconds=cpu_seconds,
        provider={
            "calls": provider.calls,
            "retries": provider.retries,
            "requests_by_status": dict(provider.requests_by_status),
        },
        interrupted=len(record.deliveries) < len(plan),
    )
    verdict = judge(record)
    print(file=out)
    print_report(summary, verdict, out)
    write_json(options.out / "report.json", scenario, summary, verdict, sampler.samples)
    write_chart(options.out / "report.png", scenario, sampler.samples, summary)
    print(
        f"\nwrote {options.out / 'report.json'} and {options.out / 'report.png'}",
        file=out,
        flush=True,
    )
    if code != 0:
        _logger.error("the gateway exited %d", code)
        return 1
    return 0 if all(check.ok for check in verdict) else 1
