"""Deduplicator EXACT and SLIDING_WINDOW against simple reference models, with fake time.

Times are multiples of 0.25 and the TTL is 1.0, so Hypothesis lands exactly on TTL boundaries.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from zeroclaw.concurrency.deduplicator import DedupKey, Deduplicator, DedupStrategy
from zeroclaw.testing import FakeClock

TTL = 1.0
KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
STEPS = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 3.0])


class ExactModel(RuleBasedStateMachine):
    """Model: key -> first_seen, in insertion order; live while now < first_seen + TTL."""

    @initialize(max_entries=st.integers(1, 6), as_dedupkey=st.booleans())
    def setup(self, max_entries: int, as_dedupkey: bool) -> None:
        self.clock = FakeClock()
        self.max_entries = max_entries
        self.as_dedupkey = as_dedupkey
        self.dedup = Deduplicator(
            TTL, strategy=DedupStrategy.EXACT, max_entries=max_entries, clock=self.clock
        )
        self.first_seen: dict[str, float] = {}
        self.dups = 0
        self.evicted = 0

    def key(self, key: str) -> str | DedupKey:
        return DedupKey.of(key) if self.as_dedupkey else key

    def live(self) -> dict[str, float]:
        now = self.clock.now()
        return {k: t for k, t in self.first_seen.items() if now < t + TTL}

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.clock.advance(step)

    @rule(key=KEYS)
    def check(self, key: str) -> None:
        live = self.live()
        expected = key in live
        self.first_seen = live
        if expected:
            self.dups += 1
        else:
            if len(live) >= self.max_entries:
                oldest = next(iter(live))  # insertion order == first-seen order
                del self.first_seen[oldest]
                self.evicted += 1
            self.first_seen[key] = self.clock.now()
        assert self.dedup.check_and_update(self.key(key)) is expected

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        assert self.dedup.contains(self.key(key)) is (key in self.live())

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        live = self.live()
        self.first_seen = live
        expected = self.first_seen.pop(key, None) is not None
        assert self.dedup.remove(self.key(key)) is expected

    @rule()
    def cleanup(self) -> None:
        self.dedup.cleanup()

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.dedup) == len(self.live())
        stats = self.dedup.stats()
        assert stats.duplicates_found == self.dups
        assert stats.evicted_entries == self.evicted
        assert stats.current_entries == len(self.live())


class SlidingModel(RuleBasedStateMachine):
    """Model: key -> every sighting time, in recency order; live while now < last + TTL."""

    @initialize(max_entries=st.integers(1, 6))
    def setup(self, max_entries: int) -> None:
        self.clock = FakeClock()
        self.max_entries = max_entries
        self.dedup = Deduplicator(
            TTL,
            strategy=DedupStrategy.SLIDING_WINDOW,
            max_entries=max_entries,
            clock=self.clock,
            max_sightings=10_000,  # the model counts exactly: no folding
        )
        self.sightings: dict[str, list[float]] = {}

    def live(self) -> dict[str, list[float]]:
        now = self.clock.now()
        return {k: s for k, s in self.sightings.items() if now < s[-1] + TTL}

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.clock.advance(step)

    @rule(key=KEYS)
    def check(self, key: str) -> None:
        now = self.clock.now()
        live = self.live()
        self.sightings = live
        expected = key in live
        if expected:
            live[key] = [*live.pop(key), now]  # most recently seen goes last
        else:
            if len(live) >= self.max_entries:
                del live[next(iter(live))]  # the least recently seen
            live[key] = [now]
        assert self.dedup.check_and_update(key) is expected

    @rule(key=KEYS)
    def count(self, key: str) -> None:
        now = self.clock.now()
        expected = sum(1 for t in self.live().get(key, []) if now < t + TTL)
        assert self.dedup.count_in_window(key) == expected

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        live = self.live()
        self.sightings = live
        expected = live.pop(key, None) is not None
        assert self.dedup.remove(key) is expected

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.dedup) == len(self.live())


class CombinedModel(RuleBasedStateMachine):
    """Model: an EXACT layer, plus evicted keys remembered until their expiry.

    An overflowed key is a duplicate while ``now < expiry``, forgotten once
    ``now >= expiry + TTL/4``, and either in between (its bloom filter outlives it by at most
    TTL/4). The rate is 1e-9, so a false positive would be a one-in-a-billion event.
    """

    @initialize(max_entries=st.integers(1, 4))
    def setup(self, max_entries: int) -> None:
        self.clock = FakeClock()
        self.max_entries = max_entries
        self.dedup = Deduplicator(
            TTL,
            strategy=DedupStrategy.COMBINED,
            max_entries=max_entries,
            clock=self.clock,
            false_positive_rate=1e-9,
            salt_seed=7,
        )
        self.first_seen: dict[str, float] = {}
        self.overflow: dict[str, float] = {}  # evicted key -> its expiry

    def live(self) -> dict[str, float]:
        now = self.clock.now()
        return {k: t for k, t in self.first_seen.items() if now < t + TTL}

    def bloom(self, key: str) -> bool | None:
        """True/False when the bloom layer's answer is certain, None in its grace period."""
        expiry = self.overflow.get(key)
        now = self.clock.now()
        if expiry is None or now >= expiry + TTL / 4:
            return False
        return True if now < expiry else None

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.clock.advance(step)

    @rule(key=KEYS)
    def check(self, key: str) -> None:
        live = self.live()
        self.first_seen = live
        got = self.dedup.check_and_update(key)
        if key in live:
            assert got is True
            return
        bloom = self.bloom(key)
        if bloom is not None:
            assert got is bloom
        if got:
            return
        if len(live) >= self.max_entries:
            oldest = next(iter(live))
            self.overflow[oldest] = live.pop(oldest) + TTL
        live[key] = self.clock.now()

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        got = self.dedup.contains(key)
        if key in self.live():
            assert got is True
        else:
            bloom = self.bloom(key)
            if bloom is not None:
                assert got is bloom

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        live = self.live()
        self.first_seen = live
        in_exact = live.pop(key, None) is not None
        got = self.dedup.remove(key)
        bloom = self.bloom(key)
        if bloom is not None:
            assert got is (in_exact and not bloom)
        else:
            assert not got or in_exact

    @invariant()
    def exact_layer_agrees(self) -> None:
        self.dedup.cleanup()  # drops expired entries only: no change the caller could observe
        assert len(self.dedup._entries) <= self.max_entries  # type: ignore[attr-defined]
        assert set(self.dedup._entries) == set(self.live())  # type: ignore[attr-defined]


class BloomModel(RuleBasedStateMachine):
    """Model: a key added at t is remembered while now < t + TTL, forgotten from t + 2·TTL on.

    In between either answer is right. The "remembered" half holds only while no generation was
    dropped early (``evicted_entries == 0``); small ``max_entries`` exercises rotation on fullness.
    The rate is 1e-9, so a false positive would be a one-in-a-billion event.
    """

    @initialize(max_entries=st.integers(1, 4), generations=st.integers(2, 4))
    def setup(self, max_entries: int, generations: int) -> None:
        self.clock = FakeClock()
        self.dedup = Deduplicator(
            TTL,
            strategy=DedupStrategy.BLOOM,
            max_entries=max_entries,
            clock=self.clock,
            false_positive_rate=1e-9,
            generations=generations,
            salt_seed=7,
        )
        self.added: dict[str, float] = {}

    def expected(self, key: str) -> bool | None:
        added = self.added.get(key)
        now = self.clock.now()
        if added is None or now >= added + 2 * TTL:
            return False
        if now < added + TTL and self.dedup.stats().evicted_entries == 0:
            return True
        return None

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.clock.advance(step)

    @rule(key=KEYS)
    def check(self, key: str) -> None:
        expected = self.expected(key)
        got = self.dedup.check_and_update(key)
        if expected is not None:
            assert got is expected
        if not got:
            self.added[key] = self.clock.now()

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        expected = self.expected(key)
        if expected is not None:
            assert self.dedup.contains(key) is expected

    @invariant()
    def generations_bounded(self) -> None:
        assert self.dedup.generation_count <= self.dedup._generations  # type: ignore[attr-defined]


ExactModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
SlidingModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
CombinedModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
BloomModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestExactModel = ExactModel.TestCase
TestBloomModel = BloomModel.TestCase
TestCombinedModel = CombinedModel.TestCase
TestSlidingModel = SlidingModel.TestCase
