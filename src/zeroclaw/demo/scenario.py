"""What a demo run offers: the scenario's settings and its seeded plan of chat deliveries.

Pure: :func:`plan_deliveries` is a function of the :class:`DemoScenario` alone (one
``random.Random(seed)``), so ``--seed`` reproduces the traffic exactly. The mix follows what chat
platforms see (research: processing.md §3-4): most users send one or two messages a few seconds
apart, a few are very chatty and type in quick bursts, some conversations start together (a
message posted to a busy group, a notification everyone answers), and about one delivery in ten is
a platform redelivery of an earlier message (Telegram resends a webhook until it gets a 2xx, Slack
retries after 3 s without an answer).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["DemoScenario", "PlannedDelivery", "plan_deliveries"]


@dataclass(frozen=True, slots=True)
class DemoScenario:
    """The settings of one demo run. Times are seconds from the start of the run.

    The provider is slow for a while past its capacity, then down (``outage_start`` for
    ``outage_duration``), then recovering for ``recovery``; traffic is offered for the first
    ``traffic_share`` of ``duration`` and the rest of the run lets the backlog drain.

    Raises:
        ValueError: a duration that is not positive, a share outside (0, 1], an outage that does
            not fit in the run, fewer than one conversation.
    """

    duration: float = 30.0
    seed: int = 0
    conversations_per_second: float = 10.0
    chatty_share: float = 0.03
    redelivery_share: float = 0.10
    burst_share: float = 0.30
    traffic_share: float = 0.9
    outage_start_share: float = 0.3
    outage_share: float = 0.25
    recovery_share: float = 0.1
    # The simulated provider: lognormal latency with this median, serving ``capacity`` calls at
    # once (slower past that), at most ``max_concurrency`` through the adaptive limiter.
    base_latency: float = 0.25
    capacity: int = 8
    max_concurrency: int = 32

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration}")
        for name in ("chatty_share", "redelivery_share", "burst_share", "traffic_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.outage_start_share + self.outage_share + self.recovery_share > 1:
            raise ValueError("the outage and its recovery must end before the run does")
        if self.conversations < 1:
            raise ValueError("the scenario must have at least one conversation")

    @property
    def conversations(self) -> int:
        """How many conversations the run offers: ``conversations_per_second`` x ``duration``."""
        return max(1, round(self.conversations_per_second * self.duration))

    @property
    def traffic_end(self) -> float:
        """When the last message is offered."""
        return round(self.duration * self.traffic_share, 6)

    @property
    def outage_start(self) -> float:
        """When the provider goes down."""
        return round(self.duration * self.outage_start_share, 6)

    @property
    def outage_duration(self) -> float:
        """How long it stays down."""
        return round(self.duration * self.outage_share, 6)

    @property
    def recovery(self) -> float:
        """How long it takes to recover after the outage (failing less and less, slow)."""
        return round(self.duration * self.recovery_share, 6)


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """One delivery of a chat message: ``at`` seconds into the run, message ``seq`` of
    conversation ``conversation``; ``redelivery`` when the platform sends it again."""

    at: float
    conversation: int
    seq: int
    redelivery: bool = False

    @property
    def message_id(self) -> str:
        """The platform's id of the message: what its redeliveries share."""
        return f"c{self.conversation}-m{self.seq}"

    @property
    def sender(self) -> str:
        """The user of the conversation."""
        return f"user{self.conversation}"

    @property
    def text(self) -> str:
        """What the user wrote."""
        return f"message {self.seq} of conversation {self.conversation}"


def _message_count(rng: random.Random, chatty: bool) -> int:
    if chatty:
        return rng.randint(15, 30)
    roll = rng.random()
    if roll < 0.6:
        return 1
    if roll < 0.9:
        return 2
    return rng.randint(3, 5)


def plan_deliveries(scenario: DemoScenario) -> list[PlannedDelivery]:
    """Every delivery of the run, sorted by time (ties keep plan order). Pure, seeded.

    The first delivery is at ``0.0`` (the provider's scripted outage is timed from its first
    call); none is after :attr:`DemoScenario.traffic_end`.
    """
    rng = random.Random(scenario.seed)
    end = scenario.traffic_end
    bursts = [rng.uniform(0.05, 0.95) * end for _ in range(max(1, round(scenario.duration / 6)))]
    deliveries: list[PlannedDelivery] = []
    for conversation in range(scenario.conversations):
        chatty = rng.random() < scenario.chatty_share
        if rng.random() < scenario.burst_share:
            at = rng.choice(bursts) + rng.uniform(0.0, 0.5)
        else:
            at = rng.uniform(0.0, end)
        for seq in range(_message_count(rng, chatty)):
            if at > end:
                break
            deliveries.append(PlannedDelivery(at, conversation, seq))
            if rng.random() < scenario.redelivery_share:
                again = at + rng.uniform(0.05, 3.0)
                if again <= end:
                    deliveries.append(PlannedDelivery(again, conversation, seq, redelivery=True))
            # Chatty users send the next line at once; others read the answer and think first.
            at += rng.uniform(0.2, 1.5) if chatty else rng.expovariate(1 / 3.0) + 0.5
    deliveries.sort(key=lambda delivery: delivery.at)
    if deliveries:
        first = deliveries[0]
        deliveries[0] = PlannedDelivery(0.0, first.conversation, first.seq, first.redelivery)
    return deliveries
