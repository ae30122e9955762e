"""Deduplicator: BLOOM and COMBINED (rotation boundaries, memory, false-positive rate)."""

from __future__ import annotations

import math
import random

import pytest

from zeroclaw.concurrency.deduplicator import DedupKey, Deduplicator, DedupStrategy
from zeroclaw.testing import FakeClock

BLOOM = DedupStrategy.BLOOM
COMBINED = DedupStrategy.COMBINED


def make(
    strategy: DedupStrategy, ttl: float = 10.0, **kw: object
) -> tuple[Deduplicator, FakeClock]:
    clock = FakeClock(start=100.0)
    kw.setdefault("salt_seed", 7)  # bloom salts are secret and random by default: repeat them
    return Deduplicator(ttl, strategy=strategy, clock=clock, **kw), clock  # type: ignore[arg-type]


def fp_bound(probes: int, p: float) -> float:
    """M·p + 4 sigma for a Binomial(M, p) count of false positives (python-bloomfilter#24)."""
    return probes * p + 4.0 * math.sqrt(probes * p * (1.0 - p))


# ---- BLOOM: TTL and rotation boundaries ---------------------------------------------------


def test_bloom_remembers_at_least_ttl_and_at_most_two_ttl() -> None:
    dedup, clock = make(BLOOM, ttl=10.0)
    assert dedup.check_and_update("early") is False  # opens generation 1 at t=100
    clock.advance_to(109.999)
    assert dedup.check_and_update("late") is False  # just before generation 1 closes
    clock.advance_to(110.0)  # generation 1 closes: both still remembered
    assert dedup.contains("early")
    assert dedup.contains("late")
    clock.advance_to(119.998)  # late + ttl - epsilon
    assert dedup.contains("late")
    assert dedup.check_and_update("early") is True
    clock.advance_to(120.0)  # 2 x ttl after generation 1 opened: dropped
    assert not dedup.contains("early")
    assert not dedup.contains("late")
    assert dedup.stats().expired_removed == 2


def test_bloom_key_added_just_before_rotation_survives_a_full_ttl() -> None:
    dedup, clock = make(BLOOM, ttl=60.0)
    dedup.check_and_update("opener")  # generation opens at 100, closes at 160
    for step in range(1, 60):
        clock.advance_to(100.0 + step)
        dedup.check_and_update(f"k{step}")
    clock.advance_to(159.999999)
    dedup.check_and_update("edge")
    clock.advance_to(160.0)  # rotation instant
    dedup.check_and_update("after")  # opens generation 2
    assert dedup.generation_count == 2  # type: ignore[attr-defined]
    clock.advance_to(159.999999 + 60.0 - 1e-6)
    assert dedup.contains("edge")
    assert dedup.contains("after")
    clock.advance_to(220.0)
    assert not dedup.contains("edge")
    assert dedup.contains("after")  # generation 2 closes at 220, dropped at 280
    clock.advance_to(279.999)
    assert dedup.contains("after")
    clock.advance_to(280.0)
    assert not dedup.contains("after")


def test_bloom_full_generation_rotates_early_and_keeps_its_keys_a_full_ttl() -> None:
    dedup, clock = make(BLOOM, ttl=10.0, max_entries=100)
    for i in range(100):
        dedup.check_and_update(f"a{i}")
    clock.advance_to(103.0)
    dedup.check_and_update("b0")  # generation 1 is full: closes at 103, dropped at 113
    assert dedup.generation_count == 2  # type: ignore[attr-defined]
    clock.advance_to(112.999)
    assert all(dedup.contains(f"a{i}") for i in range(100))
    clock.advance_to(113.0)
    assert not any(dedup.contains(f"a{i}") for i in range(100))
    assert dedup.contains("b0")


def test_bloom_caps_generations_and_counts_early_drops_as_evicted() -> None:
    dedup, _ = make(BLOOM, ttl=1000.0, max_entries=50, generations=3)
    for i in range(500):  # 10 x max_entries distinct keys within one ttl
        dedup.check_and_update(f"k{i}")
    assert dedup.generation_count == 3  # type: ignore[attr-defined]
    stats = dedup.stats()
    assert stats.unique_added + stats.duplicates_found == 500
    assert stats.evicted_entries == stats.unique_added - stats.current_entries
    assert stats.current_entries <= 150
    # The newest max_entries keys are always remembered.
    assert all(dedup.contains(f"k{i}") for i in range(450, 500))


def test_bloom_never_forgets_inside_ttl_at_up_to_max_entries_per_ttl() -> None:
    rng = random.Random(7)
    ttl, cap = 10.0, 200
    dedup, clock = make(BLOOM, ttl=ttl, max_entries=cap, false_positive_rate=1e-4)
    first_seen: dict[str, float] = {}
    arrivals: list[float] = []
    now = 100.0
    for i in range(3000):
        now += rng.expovariate(1.0) * ttl / cap * 1.1  # fewer than cap new keys per ttl
        clock.advance_to(now)
        arrivals = [t for t in arrivals if t > now - ttl]
        if len(arrivals) >= cap:
            continue  # keep the load strictly under max_entries per ttl
        key = f"n{i}"
        dedup.check_and_update(key)  # (a false positive, rate 1e-4, would only say True)
        first_seen[key] = now
        arrivals.append(now)
        # Every key first seen within the last ttl must still be a duplicate.
        for old in rng.sample(list(first_seen), min(5, len(first_seen))):
            if now < first_seen[old] + ttl:
                assert dedup.contains(old), (old, first_seen[old], now)
    assert dedup.stats().evicted_entries == 0


def test_bloom_memory_is_bounded_and_near_the_optimum() -> None:
    p, cap = 1e-6, 1000
    dedup, _clock = make(BLOOM, ttl=1e6, max_entries=cap, false_positive_rate=p)
    for i in range(10 * cap):
        dedup.check_and_update(f"a-very-long-key-{'x' * 200}-{i}")
    gens = dedup._gens  # type: ignore[attr-defined]
    assert len(gens) == 3
    per_gen_optimum = -math.log(0.8 * p / 3) / math.log(2) ** 2  # sized for 0.8 p / 3
    for gen in gens:
        assert gen.m / cap == pytest.approx(per_gen_optimum, rel=0.01)
    memory = dedup.stats().memory_bytes
    assert memory < 3 * cap * per_gen_optimum / 8 * 1.05 + 1000
    # independent of key length: short keys cost the same
    short, _ = make(BLOOM, ttl=1e6, max_entries=cap, false_positive_rate=p)
    for i in range(10 * cap):
        short.check_and_update(str(i))
    assert short.stats().memory_bytes == memory


def test_bloom_rate_statistical_bound_with_every_generation_full() -> None:
    # Worst case: all three generations at capacity; together they must stay within p.
    p, cap, probes = 1e-3, 20_000, 200_000
    dedup, _ = make(BLOOM, ttl=1e6, max_entries=cap, false_positive_rate=p)
    gens = dedup._gens  # type: ignore[attr-defined]
    i = 0
    while not (len(gens) == 3 and gens[-1].count == cap):
        dedup.check_and_update(f"in-{i}")  # a false positive here is not added: keep going
        i += 1
    assert [gen.count for gen in gens] == [cap, cap, cap]
    false_positives = sum(dedup.contains(f"probe-{i}") for i in range(probes))
    assert false_positives <= fp_bound(probes, p)
    # the ones met while filling are false positives too, at a rate at most p
    assert dedup.stats().duplicates_found <= fp_bound(3 * cap, p)


def test_bloom_generations_are_salted_differently() -> None:
    dedup, _ = make(BLOOM, ttl=1e6, max_entries=10)
    for i in range(25):
        dedup.check_and_update(f"k{i}")
    salts = {gen.salt for gen in dedup._gens}  # type: ignore[attr-defined]
    assert len(salts) == 3


def test_salt_seed_repeats_the_salts_and_no_seed_keeps_them_secret() -> None:
    def salts(dedup: Deduplicator) -> list[int]:
        for i in range(25):
            dedup.check_and_update(f"k{i}")
        return [gen.salt for gen in dedup._gens]  # type: ignore[attr-defined]

    seeded = [salts(make(BLOOM, ttl=1e6, max_entries=10, salt_seed=3)[0]) for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert salts(make(BLOOM, ttl=1e6, max_entries=10, salt_seed=4)[0]) != seeded[0]
    unseeded = [salts(make(BLOOM, ttl=1e6, max_entries=10, salt_seed=None)[0]) for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_bloom_cleanup_drops_expired_generations() -> None:
    dedup, clock = make(BLOOM, ttl=10.0)
    for i in range(10):
        dedup.check_and_update(f"k{i}")
    clock.advance(15.0)
    assert len(dedup) == 10  # closed at 110, dropped at 120
    clock.advance(10.0)
    assert dedup.cleanup() == 10
    assert len(dedup) == 0
    assert dedup.stats().memory_bytes < 200


# ---- COMBINED -----------------------------------------------------------------------------


def test_combined_is_exact_without_overflow() -> None:
    dedup, clock = make(COMBINED, ttl=10.0, max_entries=100)
    dedup.check_and_update("a")
    clock.advance_to(109.999)
    assert dedup.check_and_update("a") is True
    clock.advance_to(110.0)
    assert dedup.check_and_update("a") is False
    assert dedup._overflow == []  # type: ignore[attr-defined]


def test_combined_overflowed_keys_stay_duplicates_until_their_ttl_ends() -> None:
    dedup, clock = make(COMBINED, ttl=10.0, max_entries=2)
    dedup.check_and_update("a")  # t=100
    clock.advance_to(101.0)
    dedup.check_and_update("b")
    clock.advance_to(102.0)
    dedup.check_and_update("c")  # evicts a (expiry 110) into the bloom layer
    assert dedup.stats().evicted_entries == 1
    clock.advance_to(109.999)
    assert dedup.contains("a")
    assert dedup.check_and_update("a") is True  # a bloom hit: no re-insert, no TTL extension
    assert len(dedup._entries) == 2  # type: ignore[attr-defined]
    clock.advance_to(110.0)
    assert not dedup.contains("a")
    assert dedup.check_and_update("a") is False


def test_combined_overflow_is_forgotten_at_most_a_quarter_ttl_late() -> None:
    dedup, clock = make(COMBINED, ttl=8.0, max_entries=1)
    for step in range(8):  # k_i at 100+i, evicted by k_{i+1}; expiries 108 .. 114
        clock.advance_to(100.0 + step)
        dedup.check_and_update(f"k{step}")
    events: list[tuple[float, str, bool]] = []
    for step in range(7):
        expiry = 108.0 + step
        events.append((expiry - 1e-6, f"k{step}", True))  # no false negative inside ttl
        events.append((expiry + 2.0, f"k{step}", False))  # forgotten by ttl / 4 later
    for when, key, expected in sorted(events):
        clock.advance_to(when)
        assert dedup.contains(key) is expected, (when, key)


def test_combined_composite_keys_overflow_into_bloom() -> None:
    dedup, clock = make(COMBINED, ttl=10.0, max_entries=1)
    first = DedupKey.combine(["C1", "1700000000.000100"])
    assert dedup.check_and_update(first) is False
    assert dedup.check_and_update(DedupKey.combine(["C1", "1700000000.000200"])) is False
    assert first not in dedup._entries  # type: ignore[attr-defined]
    assert dedup.check_and_update(DedupKey.combine(["C1", "1700000000.000100"])) is True
    assert dedup.contains(first)
    assert dedup.stats().memory_bytes > 0
    clock.advance(10.0)
    assert not dedup.contains(first)


def test_combined_remove() -> None:
    dedup, _ = make(COMBINED, ttl=10.0, max_entries=1)
    dedup.check_and_update("a")
    dedup.check_and_update("b")  # a overflows into the bloom layer
    assert dedup.remove("b") is True
    assert dedup.check_and_update("b") is False
    assert dedup.remove("a") is False  # the bloom layer cannot forget one key
    assert dedup.check_and_update("a") is True


def test_combined_memory_grows_at_bloom_cost_under_ten_times_overflow() -> None:
    cap = 1000
    dedup, _clock = make(COMBINED, ttl=1e6, max_entries=cap, false_positive_rate=1e-6)
    for i in range(10 * cap):
        dedup.check_and_update(f"user-{i:06d}")
    overflow = dedup._overflow  # type: ignore[attr-defined]
    assert sum(f.count for f in overflow) == 9 * cap
    assert sum(f.p for f in overflow) <= 1e-6
    exact_only, _ = make(COMBINED, ttl=1e6, max_entries=cap)
    for i in range(cap):
        exact_only.check_and_update(f"user-{i:06d}")
    bloom_bytes = dedup.stats().memory_bytes - exact_only.stats().memory_bytes
    assert bloom_bytes / (9 * cap) < 12  # bytes per overflowed key, vs ~100 for an exact entry
    # every overflowed key is still a duplicate (no false negatives inside ttl)
    assert all(dedup.contains(f"user-{i:06d}") for i in range(10 * cap))


def test_combined_rate_statistical_bound_after_overflow() -> None:
    p, cap, probes = 1e-3, 2_000, 200_000
    dedup, _ = make(COMBINED, ttl=1e6, max_entries=cap, false_positive_rate=p)
    for i in range(20 * cap):
        dedup.check_and_update(f"in-{i}")
    false_positives = sum(dedup.contains(f"probe-{i}") for i in range(probes))
    assert false_positives <= fp_bound(probes, p)


def test_combined_no_false_positive_before_overflow() -> None:
    dedup, _ = make(COMBINED, ttl=1e6, max_entries=5000, false_positive_rate=0.5)
    for i in range(5000):
        dedup.check_and_update(f"in-{i}")
    assert not any(dedup.contains(f"probe-{i}") for i in range(20_000))
