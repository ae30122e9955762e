"""The in-process chaos run (issue 18, part 1): many messages through ``ConcurrentMessageProcessor``
and the simulated provider, on a fake clock, with every kind of fault at once; then the checks.

Faults, each drawn per delivery from one seeded ``random.Random``: provider failures
(``SimulatedBackend.error_rate``), handlers that hang past ``processing_timeout``, handlers whose
task is cancelled while they run (they raise ``CancelledError``), platform redeliveries of an
earlier message (same id, 0.01–3 s later), a provider outage in the middle of the run, and a
shutdown (``stop()``) while messages are still in flight. Deliveries arrive through
:meth:`ConcurrentMessageProcessor.submit` (a push channel) with ``admission = "reject"``, so the
driver, which also advances the fake clock, never waits on admission.

Checks (:class:`ChaosReport`): no accepted message lost (each got exactly one result) and none
answered twice (no message id succeeded twice, no second result for one delivery);
per conversation, results in acceptance order; after the stop every permit back and nothing in
flight; the deduplicator's entries never above the messages it saw within one TTL.

Used by tests/test_chaos.py (a short form) and ``python -m benchmarks.chaos`` (the long form,
whose figures docs/reliability.md gives).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.helpers import UnusedProvider
from zeroclaw.concurrency import CircuitConfig
from zeroclaw.concurrency.channel_integration import (
    AdmissionKind,
    ChannelMessage,
    ConcurrentMessageProcessor,
    MessageProcessorConfig,
    MessageResult,
    MessageResultKind,
)
from zeroclaw.providers import ChatMessage, SimulatedBackend
from zeroclaw.testing import FakeClock

__all__ = ["ChaosReport", "ChaosSettings", "run_chaos"]


@dataclass(frozen=True)
class ChaosSettings:
    """One chaos run. Rates are per delivery; times are fake seconds."""

    messages: int = 10_000
    conversations: int = 500
    seed: int = 0
    failure_rate: float = 0.20
    hang_rate: float = 0.05
    cancel_rate: float = 0.02
    redelivery_rate: float = 0.10
    mean_gap: float = 0.002
    processing_timeout: float = 1.0
    dedup_ttl: float = 5.0
    outage_start_share: float = 0.4
    outage_share: float = 0.1
    stop_at_share: float = 0.97


@dataclass
class ChaosReport:
    """What a chaos run offered, what happened, and every check's count (all 0 when it held)."""

    offered: int = 0
    admissions: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # REJECTED admissions by reason
    results: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    doubled: int = 0
    out_of_order: int = 0
    permits_missing: int = 0
    left_in_flight: int = 0
    dedup_over_bound: int = 0
    dedup_peak: int = 0
    real_seconds: float = 0.0
    fake_seconds: float = 0.0

    @property
    def held(self) -> bool:
        """Every check held."""
        return not (
            self.lost
            or self.doubled
            or self.out_of_order
            or self.permits_missing
            or self.left_in_flight
            or self.dedup_over_bound
        )


class _PushChannel:
    """The chaos run's platform: messages come in through ``submit``; results are recorded."""

    def __init__(self) -> None:
        self.results: list[tuple[int, MessageResultKind]] = []  # (delivery index, kind)
        self._closed = asyncio.Event()

    @property
    def name(self) -> str:
        return "chaos"

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        await self._closed.wait()

    async def send(self, message: str, recipient: str) -> None:
        raise AssertionError("results go to deliver()")

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        self.results.append((int(message.metadata["delivery"]), result.kind))

    async def health_check(self) -> bool:
        return True


@dataclass(frozen=True)
class _Delivery:
    at: float
    conversation: int
    seq: int
    fault: str  # "" | "hang" | "cancel"

    @property
    def message_id(self) -> str:
        return f"c{self.conversation}-{self.seq}"


def _plan(settings: ChaosSettings, rng: random.Random) -> list[_Delivery]:
    deliveries: list[_Delivery] = []
    seqs: Counter[int] = Counter()
    at = 0.0
    for _ in range(settings.messages):
        at += rng.expovariate(1 / settings.mean_gap)
        conversation = rng.randrange(settings.conversations)
        seq = seqs[conversation]
        seqs[conversation] += 1
        roll = rng.random()
        fault = (
            "hang"
            if roll < settings.hang_rate
            else "cancel"
            if roll < settings.hang_rate + settings.cancel_rate
            else ""
        )
        deliveries.append(_Delivery(at, conversation, seq, fault))
        if rng.random() < settings.redelivery_rate:
            deliveries.append(_Delivery(at + rng.uniform(0.01, 3.0), conversation, seq, fault))
    deliveries.sort(key=lambda d: d.at)
    return deliveries


async def run_chaos(settings: ChaosSettings) -> ChaosReport:
    """Run the chaos scenario of ``settings`` and check it. Blocks for the run (seconds of real
    time: the clock is fake)."""
    started = time.perf_counter()
    rng = random.Random(settings.seed)
    clock = FakeClock()
    plan = _plan(settings, rng)
    duration = plan[-1].at if plan else 0.0
    backend = SimulatedBackend(
        seed=settings.seed,
        base_latency=0.05,
        latency_sigma=0.5,
        capacity=32,
        error_rate=settings.failure_rate,
        outages=[(duration * settings.outage_start_share, duration * settings.outage_share)],
        clock=clock,
    )
    report = ChaosReport(offered=len(plan))
    faults = report.faults

    async def handler(message: ChannelMessage) -> str:
        fault = message.metadata["fault"]
        if fault == "hang":
            await clock.sleep(settings.processing_timeout * 3)
        elif fault == "cancel":
            await clock.sleep(0.01)
            raise asyncio.CancelledError("cancelled mid-run")
        return await backend.complete(
            [ChatMessage("user", message.content)], model="m", temperature=0.0
        )

    config = MessageProcessorConfig(
        worker_pool_size=64,
        task_queue_size=256,
        max_concurrent_requests=256,
        dedup_ttl=settings.dedup_ttl,
        processing_timeout=settings.processing_timeout,
        admission="reject",
        max_pending_per_conversation=0,
        # Trips in the outage, not on the steady 20-25 % of failures and hangs.
        circuit_config=CircuitConfig(
            failure_threshold=20, failure_rate_threshold=0.8, timeout_duration=2.0
        ),
    )
    gateway = ConcurrentMessageProcessor(
        config,
        clock=clock,
        handler=handler,
        handle_signals=False,
        drain_timeout=settings.processing_timeout * 5,
        send_timeout=None,
    )
    channel = _PushChannel()
    running = asyncio.ensure_future(gateway.start([channel], UnusedProvider(), None))
    await gateway.wait_started()

    accepted_at: dict[int, int] = {}  # delivery index -> acceptance rank in its conversation
    accepted_per_conversation: Counter[int] = Counter()
    accepted_times: list[float] = []  # when each acceptance happened, in order
    conversation_of: list[int] = []
    message_of: list[str] = []
    stop_at = int(len(plan) * settings.stop_at_share)
    for index, delivery in enumerate(plan):
        gap = delivery.at - clock.now()
        if gap > 0:
            await clock.run_for(gap)
        if index == stop_at:
            await gateway.stop()  # shutdown with messages in flight; the rest are refused
        conversation_of.append(delivery.conversation)
        message_of.append(delivery.message_id)
        if delivery.fault:
            faults[delivery.fault] += 1
        message = ChannelMessage(
            id=delivery.message_id,
            sender=f"user{delivery.conversation}",
            content=f"message {delivery.seq}",
            channel="chaos",
            timestamp=clock.now(),
            metadata={"delivery": index, "fault": delivery.fault},
        )
        try:
            admission = await gateway.submit(channel, message)
        except RuntimeError:  # start() has returned: the stop is complete
            report.admissions["after stop"] += 1
            continue
        report.admissions[admission.kind.value] += 1
        if admission.kind is AdmissionKind.REJECTED:
            report.refusals[admission.reason or "?"] += 1
        if admission.kind is AdmissionKind.ACCEPTED:
            rank = accepted_per_conversation[delivery.conversation]
            accepted_per_conversation[delivery.conversation] += 1
            accepted_at[index] = rank
            accepted_times.append(clock.now())
        stats = gateway.stats()
        if stats is not None and stats.deduplicator is not None and index % 97 == 0:
            entries = stats.deduplicator.current_entries
            report.dedup_peak = max(report.dedup_peak, entries)
            horizon = clock.now() - settings.dedup_ttl
            recent = sum(1 for t in accepted_times[-entries - 1 :] if t > horizon)
            if entries > recent:
                report.dedup_over_bound += 1
    if not running.done():
        await gateway.stop()
    while not running.done():
        await clock.run_for(1.0)
    await running
    report.fake_seconds = clock.now()
    faults["provider failures (error_rate)"] = backend.errors
    faults["provider failures (outage)"] = backend.outage_failures
    faults["redeliveries"] = len(plan) - len({d.message_id for d in plan})

    results_per_delivery: Counter[int] = Counter()
    successes_per_message: Counter[str] = Counter()
    answered_ranks: dict[int, list[int]] = defaultdict(list)
    for index, kind in channel.results:
        results_per_delivery[index] += 1
        report.results[kind.value] += 1
        if kind is MessageResultKind.SUCCESS:
            successes_per_message[message_of[index]] += 1
        if index in accepted_at:
            answered_ranks[conversation_of[index]].append(accepted_at[index])
    report.lost = sum(1 for index in accepted_at if results_per_delivery[index] == 0)
    report.doubled = sum(max(0, n - 1) for n in results_per_delivery.values()) + sum(
        max(0, n - 1) for n in successes_per_message.values()
    )
    report.doubled += sum(1 for index in results_per_delivery if index not in accepted_at)
    report.out_of_order = sum(
        sum(1 for a, b in itertools.pairwise(ranks) if a > b) for ranks in answered_ranks.values()
    )
    final = gateway.stats()
    if final is not None:
        report.left_in_flight = final.in_flight
        if final.backpressure is not None:
            report.permits_missing = (
                config.max_concurrent_requests - final.backpressure.available_permits
            )
    report.real_seconds = time.perf_counter() - started
    return report
