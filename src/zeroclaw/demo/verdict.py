"""The checks a demo run makes of itself at the end, from its record alone. Pure.

They are the pipeline's guarantees (docs/channel_integration.md), checked on what the simulated
platform saw:

- **one result per accepted message**: every accepted delivery got exactly one result, and nothing
  that was not accepted got one;
- **in order**: in each conversation, results arrived in the order the messages were accepted;
- **no duplicate processed twice**: no message id was answered successfully twice, and a
  redelivery was never accepted while an earlier delivery of the same message was still in flight
  (a redelivery after a *failed* attempt may be accepted: the dedup claim is released on failure,
  so the platform's retry gets its chance, as it should).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from zeroclaw.concurrency.channel_integration import AdmissionKind, MessageResultKind
from zeroclaw.demo.record import DeliveryRecord, RunRecord

__all__ = ["Check", "judge"]


@dataclass(frozen=True, slots=True)
class Check:
    """One check: its name, whether it held, and the figures behind it."""

    name: str
    ok: bool
    detail: str


def _one_result_each(record: RunRecord) -> Check:
    accepted = [d for d in record.deliveries if d.admission is AdmissionKind.ACCEPTED]
    missing = sum(1 for d in accepted if d.answers == 0)
    extra = sum(max(0, d.answers - 1) for d in accepted)
    stray = record.stray_results - extra
    ok = missing == 0 and extra == 0 and stray == 0
    return Check(
        "every accepted message got exactly one result",
        ok,
        f"{len(accepted)} accepted, {len(accepted) - missing} answered once, "
        f"{missing} without a result, {extra} answered twice, {stray} results for nothing",
    )


def _in_order(record: RunRecord) -> Check:
    by_conversation: dict[int, list[DeliveryRecord]] = defaultdict(list)
    for delivery in record.deliveries:
        if delivery.answered_rank is not None:
            by_conversation[delivery.planned.conversation].append(delivery)
    out_of_order = 0
    for answered in by_conversation.values():
        answered.sort(key=lambda d: d.answered_rank or 0)
        ranks = [d.accepted_rank or 0 for d in answered]
        out_of_order += sum(1 for a, b in itertools.pairwise(ranks) if a > b)
    return Check(
        "no conversation was answered out of order",
        out_of_order == 0,
        f"{len(by_conversation)} conversations answered, {out_of_order} answers out of order",
    )


def _no_double_processing(record: RunRecord) -> Check:
    by_message: dict[str, list[DeliveryRecord]] = defaultdict(list)
    for delivery in record.deliveries:
        by_message[delivery.planned.message_id].append(delivery)
    doubled = 0
    overlapping = 0
    for deliveries in by_message.values():
        successes = sum(1 for d in deliveries if d.result is MessageResultKind.SUCCESS)
        doubled += max(0, successes - 1)
        accepted = [d for d in deliveries if d.admission is AdmissionKind.ACCEPTED]
        for earlier, later in itertools.pairwise(accepted):
            earlier_end = earlier.answered_at
            if earlier_end is None or (later.admitted_at or 0.0) < earlier_end:
                overlapping += 1
    redeliveries = sum(1 for d in record.deliveries if d.planned.redelivery)
    return Check(
        "no duplicate delivery was processed twice",
        doubled == 0 and overlapping == 0,
        f"{redeliveries} redeliveries, {record.admissions['duplicate']} found duplicate, "
        f"{doubled} messages answered twice, {overlapping} accepted while in flight",
    )


def judge(record: RunRecord) -> list[Check]:
    """The three checks of the module doc, in that order. Pure."""
    return [_one_result_each(record), _in_order(record), _no_double_processing(record)]
