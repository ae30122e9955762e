"""Deduplicator: EXACT and SLIDING_WINDOW semantics, DedupKey and the shared surface (FakeClock)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import pickle
import subprocess
import sys
from datetime import timedelta

import pytest

from zeroclaw.concurrency.deduplicator import DedupKey, Deduplicator, DedupStats, DedupStrategy
from zeroclaw.testing import FakeClock

EXACT = DedupStrategy.EXACT
SLIDING = DedupStrategy.SLIDING_WINDOW
BLOOM = DedupStrategy.BLOOM
COMBINED = DedupStrategy.COMBINED
ALL = list(DedupStrategy)
FORGETTING = [EXACT, SLIDING, COMBINED]  # strategies that can forget one key


def make(
    strategy: DedupStrategy = EXACT, ttl: float = 10.0, **kw: object
) -> tuple[Deduplicator, FakeClock]:
    clock = FakeClock(start=100.0)
    kw.setdefault("salt_seed", 7)  # bloom salts are secret and random by default: repeat them
    return Deduplicator(ttl, strategy=strategy, clock=clock, **kw), clock  # type: ignore[arg-type]


# ---- construction -------------------------------------------------------------------------


def test_defaults_follow_the_contract() -> None:
    dedup = Deduplicator()
    assert dedup.ttl == 60.0
    assert dedup.strategy is EXACT
    assert dedup.max_entries == 100_000
    assert isinstance(dedup, Deduplicator)


@pytest.mark.parametrize("strategy", ALL)
def test_every_strategy_is_a_deduplicator(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    assert isinstance(dedup, Deduplicator)
    assert dedup.strategy is strategy
    assert f"strategy={strategy.value}" in repr(dedup)


def test_ttl_accepts_timedelta() -> None:
    dedup = Deduplicator(timedelta(minutes=10))
    assert dedup.ttl == 600.0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": -1.0}, ValueError),
        ({"ttl": "10"}, TypeError),
        ({"max_entries": 0}, ValueError),
        ({"max_entries": 1.5}, TypeError),
        ({"false_positive_rate": 0.0}, ValueError),
        ({"false_positive_rate": 1.0}, ValueError),
        ({"ttl": float("inf")}, ValueError),
        ({"ttl": float("nan")}, ValueError),
        ({"ttl": True}, TypeError),
        ({"max_entries": True}, TypeError),
        ({"false_positive_rate": True}, TypeError),
        ({"false_positive_rate": float("nan")}, ValueError),
        ({"strategy": "exact"}, TypeError),
        ({"strategy": BLOOM, "generations": 1}, ValueError),
        ({"strategy": SLIDING, "max_sightings": 1}, ValueError),
        ({"strategy": EXACT, "generations": 3}, TypeError),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Deduplicator(**kwargs)  # type: ignore[arg-type]


def test_constructor_and_calls_need_no_event_loop() -> None:
    # This test is sync: no loop is running. Every method must work with the default clock.
    for strategy in ALL:
        dedup = Deduplicator(1.0, strategy=strategy, salt_seed=7)
        assert dedup.check_and_update("a") is False
        assert dedup.check_and_update("a") is True
        assert dedup.contains("a")
        dedup.cleanup()
        assert len(dedup) >= 1
        dedup.stats()


@pytest.mark.parametrize("strategy", ALL)
def test_wrong_key_type_raises(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    for call in (dedup.check_and_update, dedup.contains, dedup.remove):
        with pytest.raises(TypeError):
            call(42)  # type: ignore[arg-type]


def test_stats_is_a_frozen_slotted_dataclass() -> None:
    stats = Deduplicator().stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.duplicates_found = 1  # type: ignore[misc]
    assert not hasattr(stats, "__dict__")


def test_errors_name_the_deduplicator() -> None:
    with pytest.raises(ValueError, match="dedup 'slack-events': ttl must be > 0"):
        Deduplicator(0, name="slack-events")


def test_count_in_window_needs_sliding() -> None:
    dedup, _ = make(EXACT)
    with pytest.raises(TypeError, match="SLIDING_WINDOW"):
        dedup.count_in_window("a")


# ---- behaviour shared by every strategy ---------------------------------------------------


@pytest.mark.parametrize("strategy", ALL)
def test_first_sighting_is_new_then_duplicate(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    assert dedup.contains("m1") is False
    assert dedup.check_and_update("m1") is False
    assert dedup.check_and_update("m1") is True
    assert dedup.contains("m1") is True
    assert dedup.check_and_update("m2") is False
    stats = dedup.stats()
    assert isinstance(stats, DedupStats)
    assert (stats.duplicates_found, stats.unique_added, stats.current_entries) == (1, 2, 2)
    assert stats.memory_bytes > 0


@pytest.mark.parametrize("strategy", ALL)
def test_str_and_dedupkey_of_are_the_same_key(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    assert dedup.check_and_update("evt-1") is False
    assert dedup.check_and_update(DedupKey.of("evt-1")) is True
    assert dedup.check_and_update(DedupKey.combine(["evt-1"])) is False  # a different key
    assert dedup.check_and_update(DedupKey.combine(["evt-1"])) is True


class _Kind(str, enum.Enum):  # noqa: UP042 (the mixin is the case under test, not StrEnum)
    # A str-valued Enum whose str() is "_Kind.EVT_1", not its text.
    EVT_1 = "evt-1"
    EVT_2 = "evt-2"


class _Tagged(str):
    def __str__(self) -> str:
        return "always-the-same"


@pytest.mark.parametrize("strategy", ALL)
def test_str_subclass_keys_are_their_text(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    assert dedup.check_and_update(_Kind.EVT_1) is False
    assert dedup.check_and_update("evt-1") is True  # equal keys (_Kind.EVT_1 == "evt-1") match
    assert dedup.contains(_Kind.EVT_1)
    # Two different keys whose __str__ agree are still two keys.
    assert dedup.check_and_update(_Tagged("a")) is False
    assert dedup.check_and_update(_Tagged("b")) is False
    assert dedup.check_and_update("a") is True
    assert DedupKey.of(_Kind.EVT_2) == DedupKey.of("evt-2")
    assert DedupKey.combine([_Kind.EVT_2, "x"]) == DedupKey.combine(["evt-2", "x"])


class _MyKey(DedupKey):
    pass


def test_dedupkey_subclass_is_a_key() -> None:
    dedup, _ = make(EXACT)
    assert dedup.check_and_update(_MyKey("k")) is False
    assert dedup.check_and_update("k") is True


@pytest.mark.parametrize("strategy", ALL)
def test_contains_changes_nothing(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    assert dedup.contains("x") is False
    assert dedup.contains("x") is False
    assert dedup.stats().unique_added == 0
    assert dedup.check_and_update("x") is False


@pytest.mark.parametrize("strategy", ALL)
def test_clear_forgets_keys_and_resets_counters(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    dedup.check_and_update("a")
    dedup.check_and_update("a")
    dedup.clear()
    assert len(dedup) == 0
    stats = dedup.stats()
    assert (stats.duplicates_found, stats.unique_added, stats.evicted_entries) == (0, 0, 0)
    assert dedup.check_and_update("a") is False


@pytest.mark.parametrize("strategy", FORGETTING)
def test_remove_lets_a_redelivery_through(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy)
    dedup.check_and_update("evt")
    assert dedup.remove("evt") is True
    assert dedup.contains("evt") is False
    assert dedup.check_and_update("evt") is False  # processed again
    assert dedup.check_and_update("evt") is True
    assert dedup.remove("other") is False


def test_bloom_remove_returns_false_and_keeps_the_key() -> None:
    dedup, _ = make(BLOOM)
    dedup.check_and_update("evt")
    assert dedup.remove("evt") is False
    assert dedup.check_and_update("evt") is True


@pytest.mark.parametrize("strategy", ALL)
def test_ttl_timedelta_boundaries(strategy: DedupStrategy) -> None:
    clock = FakeClock()
    dedup = Deduplicator(timedelta(seconds=5), strategy=strategy, clock=clock, salt_seed=7)
    dedup.check_and_update("a")
    clock.advance(timedelta(seconds=4.999))
    assert dedup.contains("a")


# ---- EXACT --------------------------------------------------------------------------------


def test_exact_duplicate_until_just_before_ttl_and_new_at_ttl() -> None:
    dedup, clock = make(EXACT, ttl=10.0)
    assert dedup.check_and_update("a") is False  # t = 100
    clock.advance_to(109.999999)
    assert dedup.contains("a") is True
    assert dedup.check_and_update("a") is True
    clock.advance_to(110.0)  # now == first_seen + ttl: expired
    assert dedup.contains("a") is False
    assert dedup.check_and_update("a") is False
    assert dedup.stats().expired_removed == 1


def test_exact_repeats_do_not_extend_the_ttl() -> None:
    # The original refreshed the TTL on every repeat, so a key re-sent often never expired.
    dedup, clock = make(EXACT, ttl=10.0)
    dedup.check_and_update("a")
    for _ in range(9):
        clock.advance(1.0)
        assert dedup.check_and_update("a") is True
    clock.advance(1.0)  # 10 s after the FIRST sighting
    assert dedup.check_and_update("a") is False
    clock.advance(9.5)
    assert dedup.check_and_update("a") is True  # the new first sighting at t=110 counts


def test_exact_expired_entries_are_never_reported_and_are_dropped() -> None:
    dedup, clock = make(EXACT, ttl=10.0)
    for i in range(100):
        dedup.check_and_update(f"k{i}")
        clock.advance(0.05)  # k0 at 100.0 ... k99 at 104.95
    clock.advance_to(110.0)
    assert len(dedup) == 100 - 1  # only k0 expired
    clock.advance_to(112.5)
    assert len(dedup) == 49  # k0..k50 (first_seen <= 102.5) have expired
    stats = dedup.stats()
    assert stats.current_entries == 49
    assert stats.expired_removed == 51
    assert stats.unique_added == 100


def test_exact_cleanup_returns_the_number_dropped() -> None:
    dedup, clock = make(EXACT, ttl=10.0)
    for i in range(5):
        dedup.check_and_update(f"k{i}")
    clock.advance(10.0)
    assert dedup.cleanup() == 5
    assert dedup.cleanup() == 0
    assert len(dedup) == 0


def test_exact_evicts_the_oldest_at_max_entries() -> None:
    dedup, clock = make(EXACT, ttl=100.0, max_entries=3)
    for key in "abc":
        dedup.check_and_update(key)
        clock.advance(1.0)
    dedup.check_and_update("b")  # a repeat does not make "b" younger
    dedup.check_and_update("d")
    assert not dedup.contains("a")  # oldest evicted
    assert dedup.contains("b")
    assert dedup.contains("c")
    assert dedup.contains("d")
    dedup.check_and_update("e")
    assert not dedup.contains("b")
    stats = dedup.stats()
    assert stats.evicted_entries == 2
    assert stats.current_entries == 3
    assert stats.unique_added == 5


@pytest.mark.parametrize("strategy", [EXACT, COMBINED])
def test_exact_remove_then_readd_keeps_expiry_order(strategy: DedupStrategy) -> None:
    dedup, clock = make(strategy, ttl=10.0)
    dedup.check_and_update("a")  # t=100
    clock.advance(1.0)
    dedup.check_and_update("b")  # t=101
    dedup.remove("a")
    clock.advance(1.0)
    dedup.check_and_update("a")  # t=102, expires at 112
    clock.advance_to(111.0)  # b expired, a live
    assert not dedup.contains("b")
    assert dedup.contains("a")
    clock.advance_to(112.0)
    assert not dedup.contains("a")
    assert len(dedup) == 0


@pytest.mark.parametrize("strategy", [EXACT, COMBINED])
def test_exact_remove_readd_loop_keeps_memory_bounded(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy, ttl=1e9, max_entries=10)
    for _ in range(10_000):
        dedup.check_and_update("hot")
        dedup.remove("hot")
    order = dedup._order  # type: ignore[attr-defined]
    assert len(order) <= 2 * 10 + 64
    assert len(dedup) == 0
    assert dedup.check_and_update("hot") is False
    assert dedup.check_and_update("hot") is True


@pytest.mark.parametrize("strategy", [EXACT, COMBINED])
def test_exact_eviction_skips_removed_slots(strategy: DedupStrategy) -> None:
    dedup, _ = make(strategy, ttl=100.0, max_entries=2)
    dedup.check_and_update("a")
    dedup.check_and_update("b")
    dedup.remove("a")
    dedup.check_and_update("a")  # a is now youngest
    dedup.check_and_update("c")  # evicts b, not a
    assert dedup.contains("a")
    assert dedup.contains("c")
    assert "b" not in dedup._entries  # type: ignore[attr-defined]
    # EXACT forgets b; COMBINED keeps it in its bloom layer until b's TTL ends.
    assert dedup.contains("b") is (strategy is COMBINED)


@pytest.mark.parametrize("strategy", [EXACT, SLIDING, COMBINED])
def test_exact_layers_bounded_under_ten_times_max_entries(strategy: DedupStrategy) -> None:
    dedup, clock = make(strategy, ttl=1e6, max_entries=1000)
    for i in range(10_000):
        dedup.check_and_update(f"user-{i}")
        clock.advance(0.001)
    assert len(dedup._entries) <= 1000  # type: ignore[attr-defined]
    stats = dedup.stats()
    assert stats.evicted_entries == 9000
    if strategy is not COMBINED:
        assert stats.current_entries == 1000
    # Memory does not depend on how many keys went through: compare with a fresh, full one.
    fresh, fclock = make(strategy, ttl=1e6, max_entries=1000)
    for i in range(1000):
        fresh.check_and_update(f"user-{i}")
        fclock.advance(0.001)
    if strategy is COMBINED:
        # the bloom layer holds the 9000 overflow keys at a few bytes each
        assert stats.memory_bytes < fresh.stats().memory_bytes + 9000 * 16
    else:
        assert stats.memory_bytes < 1.5 * fresh.stats().memory_bytes


def test_exact_composite_keys() -> None:
    dedup, _ = make(EXACT)
    assert dedup.check_and_update(DedupKey.combine(["C1", "1700000000.000100"])) is False
    assert dedup.check_and_update(DedupKey.combine(["C1", "1700000000.000100"])) is True
    assert dedup.check_and_update(DedupKey.combine(["C1:1700000000", "000100"])) is False


@pytest.mark.parametrize("strategy", ALL)
def test_str_subclass_keys_work(strategy: DedupStrategy) -> None:
    class Tag(str):
        pass

    dedup, _ = make(strategy)
    assert dedup.check_and_update(Tag("a")) is False
    assert dedup.check_and_update("a") is True


# ---- SLIDING_WINDOW -----------------------------------------------------------------------


def test_sliding_window_restarts_on_every_sighting() -> None:
    dedup, clock = make(SLIDING, ttl=10.0)
    assert dedup.check_and_update("a") is False  # t=100
    clock.advance_to(109.0)
    assert dedup.check_and_update("a") is True  # window now ends at 119
    clock.advance_to(118.999)
    assert dedup.contains("a") is True
    clock.advance_to(119.0)
    assert dedup.contains("a") is False
    assert dedup.check_and_update("a") is False


def test_sliding_count_in_window_counts_every_sighting() -> None:
    dedup, clock = make(SLIDING, ttl=10.0)
    assert dedup.count_in_window("a") == 0
    dedup.check_and_update("a")  # 100
    assert dedup.count_in_window("a") == 1
    clock.advance(4.0)
    dedup.check_and_update("a")  # 104
    clock.advance(4.0)
    dedup.check_and_update("a")  # 108
    assert dedup.count_in_window("a") == 3
    clock.advance_to(109.999)
    assert dedup.count_in_window("a") == 3
    clock.advance_to(110.0)  # the first sighting leaves the window
    assert dedup.count_in_window("a") == 2
    clock.advance_to(114.0)
    assert dedup.count_in_window("a") == 1
    dedup.check_and_update("a")  # 114: prunes the old sightings
    assert dedup.count_in_window("a") == 2
    clock.advance_to(124.0)
    assert dedup.count_in_window("a") == 0


def test_sliding_expired_keys_are_dropped() -> None:
    dedup, clock = make(SLIDING, ttl=10.0)
    for i in range(10):
        dedup.check_and_update(f"k{i}")
        dedup.check_and_update(f"k{i}")
    clock.advance(5.0)
    dedup.check_and_update("k0")  # k0's window now ends at 115
    clock.advance_to(110.0)
    assert len(dedup) == 1
    assert dedup.cleanup() == 0
    assert dedup.stats().expired_removed == 9
    clock.advance_to(115.0)
    assert dedup.cleanup() == 1
    assert dedup._stored == 0  # type: ignore[attr-defined]


def test_sliding_evicts_least_recently_seen() -> None:
    dedup, clock = make(SLIDING, ttl=100.0, max_entries=2)
    dedup.check_and_update("a")
    clock.advance(1.0)
    dedup.check_and_update("b")
    clock.advance(1.0)
    dedup.check_and_update("a")  # a is now the most recent
    dedup.check_and_update("c")  # evicts b
    assert dedup.contains("a")
    assert dedup.contains("c")
    assert not dedup.contains("b")
    assert dedup.stats().evicted_entries == 1


def test_sliding_a_key_seen_a_million_times_has_bounded_memory() -> None:
    dedup, clock = make(SLIDING, ttl=1e9, max_entries=100, max_sightings=64)
    for _ in range(100_000):
        dedup.check_and_update("hot")
        clock.advance(1e-3)
    seen = dedup._entries["hot"]  # type: ignore[attr-defined]
    assert len(seen.ends) <= 65
    assert dedup._stored <= 65  # type: ignore[attr-defined]
    # The count stays exact for a key whose sightings are all in the window.
    assert dedup.count_in_window("hot") == 100_000
    assert dedup.stats().memory_bytes < 10_000


def test_sliding_folded_count_is_an_upper_bound_and_drops_out() -> None:
    dedup, clock = make(SLIDING, ttl=10.0, max_sightings=4)
    for _ in range(20):  # one sighting per 0.25 s, 100.0 .. 104.75
        dedup.check_and_update("a")
        clock.advance(0.25)
    assert dedup.count_in_window("a") == 20
    times = [100.0 + 0.25 * i for i in range(20)]
    for now in (109.0, 110.0, 111.3, 112.0, 113.9, 114.0, 114.5, 114.75, 115.0):
        clock.advance_to(now)
        true_count = sum(1 for t in times if now < t + 10.0)
        assert true_count <= dedup.count_in_window("a") <= 20
        if true_count == 0:
            assert dedup.count_in_window("a") == 0


def test_sliding_eviction_and_remove_release_stored_sightings() -> None:
    dedup, _ = make(SLIDING, ttl=1e9, max_entries=2, max_sightings=20)
    for key in ("a", "a", "a", "b", "b"):
        dedup.check_and_update(key)
    assert dedup._stored == 5  # type: ignore[attr-defined]
    dedup.check_and_update("c")  # evicts "a", the least recently seen, with its 3 sightings
    assert dedup._stored == 2  # type: ignore[attr-defined]
    assert dedup.remove("b") is True
    assert dedup._stored == 0  # type: ignore[attr-defined]
    assert dedup.count_in_window("b") == 0
    assert dedup.stats().evicted_entries == 1


def test_sliding_folded_sightings_reset_once_they_leave_the_window() -> None:
    dedup, clock = make(SLIDING, ttl=10.0, max_sightings=4)
    for _ in range(8):  # 100.0 .. 101.75: folding kicks in
        dedup.check_and_update("a")
        clock.advance(0.25)
    seen = dedup._entries["a"]  # type: ignore[attr-defined]
    assert seen.folded > 0
    clock.advance_to(105.0)
    dedup.check_and_update("a")  # keeps the key alive until 115
    clock.advance_to(111.9)  # the first 8 sightings (t <= 101.75) have left the window
    assert dedup.count_in_window("a") == 1
    dedup.check_and_update("a")  # the aggregate is dropped on the next sighting
    assert seen.folded == 0
    assert dedup.count_in_window("a") == 2


def test_sliding_many_keys_keep_the_sightings_budget() -> None:
    dedup, _ = make(SLIDING, ttl=1e9, max_entries=50, max_sightings=20)
    for _ in range(5):
        for i in range(50):
            dedup.check_and_update(f"k{i}")
    assert len(dedup) == 50
    assert dedup._stored <= 2 * 50 + 20 + 1  # type: ignore[attr-defined]
    assert all(dedup.count_in_window(f"k{i}") >= 5 for i in range(50))
    for i in range(50):
        assert dedup.remove(f"k{i}")
    assert dedup._stored == 0  # type: ignore[attr-defined]


# ---- DedupKey -----------------------------------------------------------------------------


def test_dedupkey_combine_is_injective() -> None:
    assert DedupKey.combine(["a:b", "c"]) != DedupKey.combine(["a", "b:c"])
    assert DedupKey.combine(["ab", ""]) != DedupKey.combine(["a", "b"])
    assert DedupKey.combine(["", ""]) != DedupKey.combine([""])
    assert DedupKey.combine([]) != DedupKey.of("")
    assert DedupKey.combine(["a"]) != DedupKey.of("a")
    pairs = [(["a:b", "c"], ["a", "b:c"]), (["1", "23"], ["12", "3"]), (["a\x00"], ["a", ""])]
    for left, right in pairs:
        assert DedupKey.combine(left).digest != DedupKey.combine(right).digest
        assert DedupKey.combine(left).encode() != DedupKey.combine(right).encode()


def test_dedupkey_equality_hash_and_order() -> None:
    a1, a2 = DedupKey.of("a"), DedupKey("a")
    assert a1 == a2
    assert hash(a1) == hash(a2)
    assert len({a1, a2, DedupKey.of("b")}) == 2
    assert DedupKey.of(5) == DedupKey.of("5")
    assert DedupKey.combine(["x", 1]) == DedupKey.combine(["x", "1"])
    keys = [DedupKey.combine(["b"]), DedupKey.of("b"), DedupKey.of("a"), DedupKey.combine(["a"])]
    assert sorted(keys) == [
        DedupKey.of("a"),
        DedupKey.of("b"),
        DedupKey.combine(["a"]),
        DedupKey.combine(["b"]),
    ]
    assert DedupKey.of("a") < DedupKey.of("b") <= DedupKey.of("b")
    assert DedupKey.of("c") > DedupKey.of("b") >= DedupKey.of("b")
    assert DedupKey.of("a") != "a"  # a key object is not a string, though dedup treats them alike
    with pytest.raises(TypeError):
        _ = DedupKey.of("a") < "b"  # type: ignore[operator]


def test_dedupkey_accessors_repr_and_pickle() -> None:
    simple = DedupKey.of("evt-1")
    composite = DedupKey.combine(["C1", "ts"])
    assert not simple.is_composite
    assert composite.is_composite
    assert simple.parts == ("evt-1",)
    assert composite.parts == ("C1", "ts")
    assert str(simple) == "evt-1"
    assert str(composite) == "C1:ts"
    assert eval(repr(simple)) == simple
    assert eval(repr(composite)) == composite
    for key in (simple, composite):
        assert pickle.loads(pickle.dumps(key)) == key
    assert len(simple.digest) == 32
    assert simple.digest == DedupKey.of("evt-1").digest


def test_dedupkey_rejects_non_text() -> None:
    with pytest.raises(TypeError):
        DedupKey.of(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DedupKey.combine(["a", None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        DedupKey.of(True)


def test_dedupkey_digests_are_stable_across_processes() -> None:
    code = (
        "from zeroclaw.concurrency.deduplicator import DedupKey;"
        "print(DedupKey.combine(['C1', 'ts']).digest, DedupKey.content_hash('héllo'))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    digest, content = outputs.pop().split()
    assert digest == DedupKey.combine(["C1", "ts"]).digest
    # content_hash is SHA-256 of the UTF-8 text: a known value, not a per-process hash.
    assert content == hashlib.sha256("héllo".encode()).hexdigest()
    assert DedupKey.content_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert DedupKey.content_hash(b"abc") == DedupKey.content_hash("abc")


def test_dedupkey_surrogates_encode() -> None:
    key = DedupKey.of("\ud800")
    assert key.encode() == "\ud800".encode("utf-8", "surrogatepass")
    dedup, _ = make(BLOOM)
    assert dedup.check_and_update(key) is False
    assert dedup.check_and_update("\ud800") is True
