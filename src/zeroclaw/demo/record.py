"""What happened to every delivery of a demo run: its admission, and its result when accepted.

The demo channel writes it; the sampler, the report and the verdict read it. Plain data and
synchronous calls only (nothing here waits). Memory is one small record per delivery: a run
offers a few thousand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from zeroclaw.concurrency.channel_integration import AdmissionKind, MessageResultKind
from zeroclaw.demo.scenario import PlannedDelivery

__all__ = ["DeliveryRecord", "RunRecord"]


@dataclass(slots=True)
class DeliveryRecord:
    """One delivery: when it was offered and admitted, how, and (accepted) how it ended.

    ``accepted_rank`` orders the accepted deliveries of one conversation by admission (0, 1, ...);
    ``answered_rank`` is the order their results arrived in. ``answers`` counts results
    delivered for it: exactly 1 for an accepted delivery, 0 for any other.
    """

    planned: PlannedDelivery
    offered_at: float
    admitted_at: float | None = None
    admission: AdmissionKind | None = None
    reason: str | None = None
    accepted_rank: int | None = None
    result: MessageResultKind | None = None
    answered_at: float | None = None
    answered_rank: int | None = None
    answers: int = 0

    @property
    def latency(self) -> float | None:
        """Seconds from offer to answer, once answered."""
        if self.answered_at is None:
            return None
        return self.answered_at - self.offered_at


@dataclass(slots=True)
class RunRecord:
    """Every delivery of a run, with counters kept as they happen (cheap to sample)."""

    deliveries: list[DeliveryRecord] = field(default_factory=list)
    admissions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    # Results delivered for a message that was not accepted (or not by this channel): a verdict
    # failure, kept rather than raised so that the run still finishes and reports it.
    stray_results: int = 0
    # (answered_at, latency) of every successful answer, in the order they came: the sampler's
    # latency windows read it from a cursor.
    answer_log: list[tuple[float, float]] = field(default_factory=list)
    _accepted_per_conversation: Counter[int] = field(default_factory=Counter)
    _answered_per_conversation: Counter[int] = field(default_factory=Counter)
    _pending: int = 0

    @property
    def pending(self) -> int:
        """Accepted deliveries whose result has not arrived yet."""
        return self._pending

    def offered(self, planned: PlannedDelivery, now: float) -> int:
        """Record that ``planned`` is being offered; returns its index (the message's key)."""
        self.deliveries.append(DeliveryRecord(planned, offered_at=now))
        return len(self.deliveries) - 1

    def admitted(self, index: int, kind: AdmissionKind, reason: str | None, now: float) -> None:
        """Record the admission of delivery ``index``."""
        record = self.deliveries[index]
        record.admitted_at = now
        record.admission = kind
        record.reason = reason
        self.admissions[kind.value] += 1
        if kind is AdmissionKind.ACCEPTED:
            conversation = record.planned.conversation
            record.accepted_rank = self._accepted_per_conversation[conversation]
            self._accepted_per_conversation[conversation] += 1
            self._pending += 1
        elif reason is not None:
            self.reasons[reason] += 1

    def answered(self, index: int, kind: MessageResultKind, now: float) -> None:
        """Record a result delivered for delivery ``index``."""
        if not 0 <= index < len(self.deliveries):
            self.stray_results += 1
            return
        record = self.deliveries[index]
        record.answers += 1
        if record.answers > 1 or record.admission is not AdmissionKind.ACCEPTED:
            self.stray_results += 1
            return
        conversation = record.planned.conversation
        record.result = kind
        record.answered_at = now
        record.answered_rank = self._answered_per_conversation[conversation]
        self._answered_per_conversation[conversation] += 1
        self.results[kind.value] += 1
        self._pending -= 1
        if kind is MessageResultKind.SUCCESS:
            self.answer_log.append((now, now - record.offered_at))
