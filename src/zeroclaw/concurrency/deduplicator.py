"""Message deduplication: exact TTL, sliding window, rotating bloom filters, and exact + bloom.

Chat platforms redeliver. Slack retries an event when no 2xx arrives within 3 s (and again after
about 1 and 5 minutes); Telegram redelivers a webhook update until it is acknowledged and keeps
updates for up to 24 hours. Processing a redelivery means a second LLM call and a second reply, so a
gateway claims every delivery id on receipt::

    dedup = Deduplicator(ttl=600)            # Slack's last retry comes ~5 min after the first
    if dedup.check_and_update(event_id):     # True: seen within the TTL, skip it
        return
    ...

Every call is synchronous and O(1) amortised; none needs an event loop. Decisions are pure functions
of the stored state and ``clock.now()``; pass :class:`zeroclaw.testing.FakeClock` to test TTLs.

Strategies (see ``docs/deduplicator.md`` for the full semantics and the measured figures):

- ``EXACT``: a key is a duplicate while ``now < first_seen + ttl``. Repeats do not extend it (the
  original's TTL slid on every repeat, so a key re-sent once per TTL was suppressed forever).
- ``SLIDING_WINDOW``: a key is a duplicate while ``now < last_seen + ttl``; every sighting restarts
  the window and :meth:`Deduplicator.count_in_window` counts the sightings within it.
- ``BLOOM``: rotating generations of bloom filters (the standard sizing math; rotate, query
  every live generation, size each for ``p / generations`` (here with a 0.8 margin), re-salt each
  new generation as Bitcoin Core's ``CRollingBloomFilter`` does). Memory per key does not depend
  on the key's length.
- ``COMBINED``: ``EXACT`` bounded by ``max_entries``; keys pushed out of the exact layer stay in
  bloom filters until their TTL ends, so overflow costs a few bytes per key instead of forgetting.
"""

from __future__ import annotations

import enum
import math
import random
import secrets
import sys
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from hashlib import blake2b, sha256
from typing import Any, Final

from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency._mypyc import describe_compiled, mypyc_attr
from zeroclaw.concurrency._validate import CountArg, to_count, to_fraction, to_seconds

__all__ = ["DedupKey", "DedupStats", "DedupStrategy", "Deduplicator"]

_INF: Final = math.inf
_NEG_INF: Final = -math.inf
_LN2_SQ: Final = math.log(2.0) ** 2
_SIZING_MARGIN: Final = 0.8  # bloom structures are sized for 0.8·p, so measurements stay under p
_BIT: Final = tuple(1 << i for i in range(8))  # a tuple lookup beats computing 1 << (a & 7)
# A prefix no UTF-8 text can start with: composite keys never hash like a plain string key.
_COMPOSITE_TAG: Final = b"\xff"


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


@mypyc_attr(allow_interpreted_subclasses=True)
class DedupKey:
    """An immutable dedup key: one text (``of``) or an ordered tuple of parts (``combine``).

    ``DedupKey.of(s)`` and the plain string ``s`` are the same key to a :class:`Deduplicator`.
    ``combine`` is injective: ``combine(["a:b", "c"]) != combine(["a", "b:c"])`` and a composite
    key never equals a single-text key. Keys are hashable and totally ordered (single-text keys
    sort before composite keys). :attr:`digest` is a hex digest stable across processes and
    machines (BLAKE2b over an injective byte encoding, never Python's salted ``hash()``), for
    distributed stores such as Redis ``SET key NX PX ttl``.
    """

    __slots__ = ("_id", "_raw")

    _id: str | tuple[str, ...]
    _raw: bytes

    def __init__(self, value: str | int) -> None:
        """The key for one text (an ``int`` such as a Telegram ``update_id`` is its decimal text).

        Raises:
            TypeError: for any other type.
        """
        if isinstance(value, str):
            text = _text(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            text = str(int(value))
        else:
            raise TypeError(f"a DedupKey is made of str or int, not {type(value).__name__}")
        self._id = text
        self._raw = text.encode("utf-8", "surrogatepass")

    @classmethod
    def of(cls, value: str | int) -> DedupKey:
        """The key for one text; same as ``DedupKey(value)``. Raises ``TypeError`` for non-text."""
        return cls(value)

    @classmethod
    def combine(cls, parts: Iterable[str | int]) -> DedupKey:
        """An injective composite of ``parts`` (e.g. ``[channel, ts]`` or ``[chat_id, msg_id]``).

        Each part is length-prefixed in the byte encoding and kept as a tuple element in memory,
        so no choice of separators inside the parts can make two different lists collide.

        Raises:
            TypeError: if a part is not ``str`` or ``int``.
        """
        texts: list[str] = []
        raw = bytearray(_COMPOSITE_TAG)
        for part in parts:
            if isinstance(part, str):
                text = _text(part)
            elif isinstance(part, int) and not isinstance(part, bool):
                text = str(int(part))
            else:
                raise TypeError(f"DedupKey parts are str or int, not {type(part).__name__}")
            data = text.encode("utf-8", "surrogatepass")
            raw += len(data).to_bytes(8, "big")
            raw += data
            texts.append(text)
        # Built as the key of the empty text, then given the composite's parts: mypyc compiles no
        # cls.__new__(cls), and __init__ takes one text.
        key = cls("")
        key._id = tuple(texts)
        key._raw = bytes(raw)
        return key

    @staticmethod
    def content_hash(content: str | bytes) -> str:
        """SHA-256 hex digest of ``content`` (UTF-8 for text): stable across processes and runs.

        Use it to build a key from a message body (``combine([channel, sender,
        content_hash(text)])``) without keeping the body in memory.
        """
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
        return sha256(data).hexdigest()

    @property
    def is_composite(self) -> bool:
        """Whether this key came from :meth:`combine`."""
        return isinstance(self._id, tuple)

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts of a composite key, or a one-element tuple with the text of a simple key."""
        ident = self._id
        return ident if isinstance(ident, tuple) else (ident,)

    @property
    def digest(self) -> str:
        """A 32-hex-digit BLAKE2b digest of the key's injective encoding, stable everywhere."""
        return blake2b(self._raw, digest_size=16).hexdigest()

    def encode(self) -> bytes:
        """The injective byte encoding that :attr:`digest` and the bloom filters hash."""
        return self._raw

    def _sort_key(self) -> tuple[int, str | tuple[str, ...]]:
        ident = self._id
        return (1, ident) if isinstance(ident, tuple) else (0, ident)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DedupKey):
            return self._id == other._id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._id)

    def __lt__(self, other: DedupKey) -> bool:
        if not isinstance(other, DedupKey):
            return NotImplemented
        return self._sort_key() < other._sort_key()

    def __le__(self, other: DedupKey) -> bool:
        if not isinstance(other, DedupKey):
            return NotImplemented
        return self._sort_key() <= other._sort_key()

    def __gt__(self, other: DedupKey) -> bool:
        if not isinstance(other, DedupKey):
            return NotImplemented
        return self._sort_key() > other._sort_key()

    def __ge__(self, other: DedupKey) -> bool:
        if not isinstance(other, DedupKey):
            return NotImplemented
        return self._sort_key() >= other._sort_key()

    def __str__(self) -> str:
        ident = self._id
        return ":".join(ident) if isinstance(ident, tuple) else ident

    def __repr__(self) -> str:
        ident = self._id
        if isinstance(ident, tuple):
            return f"DedupKey.combine({list(ident)!r})"
        return f"DedupKey.of({ident!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        ident = self._id
        if isinstance(ident, tuple):
            return (DedupKey.combine, (ident,))
        return (DedupKey, (ident,))


def _text(value: str) -> str:
    """The exact ``str`` holding ``value``'s characters.

    ``str(value)`` is not that for a ``str`` subclass with its own ``__str__``: a ``(str, Enum)``
    member gives ``"Kind.A"``, so equal keys would miss and unrelated ones could match.
    """
    return value if value.__class__ is str else str.__str__(value)


def _coerce(key: object) -> str | tuple[str, ...]:
    """The dict key for ``key`` (slow path: anything but an exact ``str``)."""
    if isinstance(key, DedupKey):
        return key._id
    if isinstance(key, str):
        return _text(key)
    raise TypeError(f"a dedup key is a str or DedupKey, not {type(key).__name__}")


def _encode(key: object) -> bytes:
    """The bytes a bloom filter hashes for ``key`` (equal keys give equal bytes)."""
    if key.__class__ is str:
        return key.encode("utf-8", "surrogatepass")
    if isinstance(key, DedupKey):
        return key._raw
    if isinstance(key, str):
        return _text(key).encode("utf-8", "surrogatepass")
    raise TypeError(f"a dedup key is a str or DedupKey, not {type(key).__name__}")


def _encode_id(ident: str | tuple[str, ...]) -> bytes:
    """Bloom bytes for a stored dict key (``str`` or composite tuple)."""
    if isinstance(ident, str):
        return ident.encode("utf-8", "surrogatepass")
    return DedupKey.combine(ident)._raw


# --------------------------------------------------------------------------------------------
# Public enums and stats
# --------------------------------------------------------------------------------------------


class DedupStrategy(enum.StrEnum):
    """How a :class:`Deduplicator` remembers keys; ``str()`` gives the value (``"exact"``)."""

    EXACT = "exact"
    SLIDING_WINDOW = "sliding_window"
    BLOOM = "bloom"
    COMBINED = "combined"


@dataclass(frozen=True, slots=True)
class DedupStats:
    """A snapshot of a :class:`Deduplicator`'s counters.

    ``current_entries`` is the number of keys remembered now (for bloom filters: keys added to
    the live generations). ``expired_removed`` counts keys forgotten because their TTL ended,
    ``evicted_entries`` keys forgotten early because ``max_entries`` was reached (for ``BLOOM``,
    keys in a generation dropped early; for ``COMBINED``, exact entries moved to the bloom layer,
    which count again in ``expired_removed`` when their filter is dropped). ``memory_bytes``
    approximates what the structures hold, key objects included.
    """

    duplicates_found: int
    unique_added: int
    current_entries: int
    expired_removed: int
    evicted_entries: int
    memory_bytes: int


# --------------------------------------------------------------------------------------------
# Bloom filter
# --------------------------------------------------------------------------------------------


def _hash(data: bytes) -> int:
    """A 128-bit BLAKE2b digest of ``data`` as an int; bloom filters derive positions from it."""
    return int.from_bytes(blake2b(data, digest_size=16).digest(), "little")


def _next_prime(n: int) -> int:
    """The smallest prime >= ``n`` (trial division: at most a few ms for 10^9-bit filters)."""
    if n <= 2:
        return 2
    n |= 1
    while True:
        limit = math.isqrt(n)
        if all(n % d for d in range(3, limit + 1, 2)):
            return n
        n += 2


class _BloomFilter:
    """A standard bloom filter over a ``bytearray``, sized for ``capacity`` keys at rate ``p``.

    A key's k positions come from its 128-bit digest XORed with this filter's random salt, cut
    into three numbers ``a, b, c``: position ``i`` is ``a + i·b + c·i(i-1)/2 (mod m)`` ("triple
    hashing", Dillinger & Manolios 2004; a refinement of Kirsch & Mitzenmacher's double hashing
    whose m² distinct position sets put a floor of about n/m² under the FPR, which is
    noticeable at p = 1e-6). The salt makes two keys that collide in one generation unlikely to
    collide in the next (Bitcoin Core re-salts its rolling filter the same way). The original
    used k *adjacent* slots from one hash: 18 % false positives at a 1 % target.
    """

    __slots__ = ("bits", "capacity", "closes_at", "count", "drop_at", "k", "m", "p", "salt")

    def __init__(self, capacity: int, p: float, salt: int) -> None:
        self.capacity = capacity
        self.p = p
        # m = -n·ln p / ln²2 bits and k = log2(1/p) are optimal (the classic bloom sizing).
        # A floor of 1021 bits keeps tiny filters away from the hash-collision floor; a prime m
        # means steps never share a factor with m, so positions do not cycle early.
        m = _next_prime(max(1021, math.ceil(-capacity * math.log(p) / _LN2_SQ)))
        self.m = m
        self.k = max(1, round(-math.log2(p)))
        self.bits = bytearray((m + 7) >> 3)
        self.count = 0
        self.salt = salt
        self.closes_at = _INF  # no more keys after this time
        self.drop_at = _INF  # forgotten entirely at this time

    def has(self, digest: int) -> bool:
        m = self.m
        y = digest ^ self.salt
        a = y % m
        b = (y >> 43) % m
        c = (y >> 86) % m
        bits = self.bits
        bit = _BIT
        for _ in range(self.k):
            if not bits[a >> 3] & bit[a & 7]:
                return False
            a += b
            if a >= m:
                a -= m
            b += c
            if b >= m:
                b -= m
        return True

    def add(self, digest: int) -> None:
        m = self.m
        y = digest ^ self.salt
        a = y % m
        b = (y >> 43) % m
        c = (y >> 86) % m
        bits = self.bits
        bit = _BIT
        for _ in range(self.k):
            bits[a >> 3] |= bit[a & 7]
            a += b
            if a >= m:
                a -= m
            b += c
            if b >= m:
                b -= m
        self.count += 1

    def add_if_absent(self, digest: int) -> bool:
        """Set the key's bits; ``True`` if they were all set already (a duplicate: no change)."""
        m = self.m
        y = digest ^ self.salt
        a = y % m
        b = (y >> 43) % m
        c = (y >> 86) % m
        bits = self.bits
        bit = _BIT
        present = True
        for _ in range(self.k):
            i = a >> 3
            byte = bits[i]
            mask = bit[a & 7]
            if not byte & mask:
                bits[i] = byte | mask
                present = False
            a += b
            if a >= m:
                a -= m
            b += c
            if b >= m:
                b -= m
        if not present:
            self.count += 1
        return present

    def nbytes(self) -> int:
        return sys.getsizeof(self.bits) + 64


# --------------------------------------------------------------------------------------------
# Deduplicator
# --------------------------------------------------------------------------------------------

_KEY_SAMPLE: Final = 32


def _key_bytes(keys: Iterable[object], count: int) -> int:
    """Approximate bytes held by ``count`` keys, extrapolated from the first few."""
    if count == 0:
        return 0
    total = 0
    seen = 0
    for key in keys:
        if isinstance(key, tuple):
            total += sys.getsizeof(key) + sum(sys.getsizeof(part) for part in key)
        else:
            total += sys.getsizeof(key)
        seen += 1
        if seen == _KEY_SAMPLE:
            break
    return total * count // max(seen, 1)


class _Sightings:
    """The sightings of a key seen more than once (``SLIDING_WINDOW``), as expiry times.

    ``ends`` holds the newest sightings' ends (sighting time + ttl), ascending. When the
    deduplicator's budget of stored sightings is exceeded, the oldest half of a key's list is folded
    into one aggregate (``folded`` sightings ending between ``folded_first`` and ``folded_last``),
    so a key seen a million times costs O(1) memory.
    """

    __slots__ = ("ends", "folded", "folded_first", "folded_last")

    def __init__(self, first: float, second: float) -> None:
        self.ends = [first, second]
        self.folded = 0
        self.folded_first = 0.0
        self.folded_last = 0.0


@mypyc_attr(allow_interpreted_subclasses=True)
class Deduplicator:
    """Remembers keys for ``ttl`` seconds and reports repeats; see the module docstring.

    Args:
        ttl: how long a key counts as a duplicate, in seconds or as a ``timedelta`` (> 0).
        strategy: a :class:`DedupStrategy` (default ``EXACT``).
        max_entries: the bound on remembered keys (exact strategies) or on keys per bloom
            generation (``BLOOM``); beyond it the oldest keys are evicted and counted.
        false_positive_rate: the target rate of the bloom structures (``BLOOM``, ``COMBINED``), for
            all live generations together.
        clock: a :class:`~zeroclaw.concurrency._clock.Clock`; the monotonic clock by default.
        name: used in ``repr`` and error messages.
        salt_seed: ``BLOOM`` and ``COMBINED``: seed the bloom filters' salts, for runs that must
            repeat exactly (tests, simulations). By default each filter gets a secret random salt,
            so that nobody can pick keys that collide on purpose.
        generations: ``BLOOM`` only: the most generations kept at once (>= 2, default 3).
        max_sightings: ``SLIDING_WINDOW`` only: the budget of stored sighting times beyond one per
            key, for all keys together (default ``max_entries``).

    Raises ``ValueError`` for a non-positive ``ttl`` or ``max_entries`` or a rate outside (0, 1),
    ``TypeError`` for a wrong type. Not thread-safe (like asyncio's primitives, an instance belongs
    to one event loop); every method is synchronous, never blocks, and works without a loop.
    """

    __slots__ = (
        "_clock",
        "_dups",
        "_evicted",
        "_expired",
        "_fp_rate",
        "_max_entries",
        "_name",
        "_now",
        "_salts",
        "_strategy",
        "_ttl",
        "_unique",
    )

    _clock: Clock
    _dups: int
    _evicted: int
    _expired: int
    _fp_rate: float
    _max_entries: int
    _name: str
    _now: Callable[[], float]
    _salts: random.Random | None
    _strategy: DedupStrategy
    _ttl: float
    _unique: int

    def __new__(
        cls,
        ttl: float | timedelta = 60.0,
        *,
        strategy: DedupStrategy = DedupStrategy.EXACT,
        max_entries: CountArg = 100_000,
        false_positive_rate: float | int = 1e-6,
        clock: Clock | None = None,
        name: str = "dedup",
        salt_seed: int | None = None,
        **options: Any,
    ) -> Deduplicator:
        # The same parameters as __init__, so that inspect.signature (which reads __new__ first)
        # shows the real ones on both builds.
        # One subclass per strategy, so that each hot path is a plain method with no dispatch.
        if cls is not Deduplicator:
            return object.__new__(cls)  # a strategy's class, or a subclass defined in Python
        if not isinstance(strategy, DedupStrategy):
            raise TypeError(f"strategy must be a DedupStrategy, not {type(strategy).__name__}")
        impl = _IMPLEMENTATIONS[strategy]
        self = impl.__new__(impl)
        options.update(
            max_entries=max_entries,
            false_positive_rate=false_positive_rate,
            clock=clock,
            name=name,
            salt_seed=salt_seed,
        )
        # Set up here, not by __init__: where compiled code calls Deduplicator(...), mypyc's
        # constructor skips __init__ when __new__ returns an instance of a subclass.
        self._configure(ttl, strategy, options)
        return self

    def __init__(
        self,
        ttl: float | timedelta = 60.0,
        *,
        strategy: DedupStrategy = DedupStrategy.EXACT,
        max_entries: CountArg = 100_000,
        # float | int, not float: mypyc 2.4.1 fails to build a signature that has both a float
        # parameter with a default and **options. The same values are accepted either way.
        false_positive_rate: float | int = 1e-6,
        clock: Clock | None = None,
        name: str = "dedup",
        salt_seed: int | None = None,
        **options: Any,
    ) -> None:
        if type(self) in _SET_UP_BY_NEW:
            return  # Deduplicator(...) made it in __new__
        # A subclass defined in Python: set up here, so that its __init__ can take more arguments.
        options.update(
            max_entries=max_entries,
            false_positive_rate=false_positive_rate,
            clock=clock,
            name=name,
            salt_seed=salt_seed,
        )
        self._configure(ttl, strategy, options)

    def _configure(
        self, ttl: float | timedelta, strategy: DedupStrategy, kw: dict[str, Any]
    ) -> None:
        # Read from the dict, not through typed parameters: compiled code would take True for an
        # int (max_entries=True), which the check below refuses in both builds.
        max_entries = kw.pop("max_entries", 100_000)
        false_positive_rate = kw.pop("false_positive_rate", 1e-6)
        clock = kw.pop("clock", None)
        name = kw.pop("name", "dedup")
        salt_seed = kw.pop("salt_seed", None)
        who = f"dedup {name!r}"
        # An infinite TTL would never rotate a bloom generation (its false-positive rate would
        # climb without bound); max_entries already bounds what EXACT remembers.
        seconds = to_seconds(ttl, what=f"{who}: ttl", allow_infinite=False)
        if not seconds > 0.0:
            raise ValueError(f"{who}: ttl must be > 0, got {ttl!r}")
        max_entries = to_count(max_entries, what=f"{who}: max_entries", minimum=1)
        false_positive_rate = to_fraction(
            false_positive_rate, what=f"{who}: false_positive_rate", low_open=True
        )
        if false_positive_rate == 1.0:
            raise ValueError(f"{who}: false_positive_rate must be < 1, got 1.0")
        self._strategy = strategy
        self._ttl = seconds
        self._max_entries = max_entries
        self._fp_rate = float(false_positive_rate)
        self._clock = resolve_clock(clock)
        self._now = self._clock.now
        self._name = name
        self._salts = None if salt_seed is None else random.Random(salt_seed)
        self._dups = 0
        self._unique = 0
        self._expired = 0
        self._evicted = 0
        self._setup(kw)

    def _new_salt(self) -> int:
        """A bloom filter's salt: secret, or drawn from ``salt_seed``'s generator."""
        return secrets.randbits(128) if self._salts is None else self._salts.getrandbits(128)

    def _setup(self, options: dict[str, Any]) -> None:
        """Set up the strategy's structures from its own ``options`` (popped; none may be left)."""
        if options:
            raise TypeError(f"unexpected options for {self._strategy}: {sorted(options)}")

    # ---- the public surface; each strategy overrides these ----------------------------------

    def check_and_update(self, key: DedupKey | str) -> bool:
        """``True`` if ``key`` is a duplicate (skip it); otherwise record it and return ``False``.

        Never blocks. Raises ``TypeError`` for a key that is neither ``str`` nor ``DedupKey``.
        """
        raise NotImplementedError

    def contains(self, key: DedupKey | str) -> bool:
        """Whether ``check_and_update(key)`` would say duplicate now; records nothing."""
        raise NotImplementedError

    def remove(self, key: DedupKey | str) -> bool:
        """Forget ``key`` so that its next delivery goes through; ``True`` if it was forgotten.

        ``BLOOM`` cannot forget one key and always returns ``False``.
        """
        raise NotImplementedError

    def count_in_window(self, key: DedupKey | str) -> int:
        """``SLIDING_WINDOW`` only: sightings of ``key`` within the last ``ttl`` seconds.

        Raises ``TypeError`` for the other strategies, which do not keep sightings.
        """
        raise TypeError(f"count_in_window needs SLIDING_WINDOW, not {self._strategy}")

    def cleanup(self) -> int:
        """Drop what has expired now; return how many keys were dropped. Never needed for
        correctness (expired keys are never reported), only to release memory early."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every key and reset the counters."""
        self._dups = self._unique = self._expired = self._evicted = 0
        self._clear()

    def _clear(self) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        """Keys remembered now (expired ones excluded)."""
        raise NotImplementedError

    def _memory(self) -> int:
        raise NotImplementedError

    def _unique_added(self) -> int:
        return self._unique

    def stats(self) -> DedupStats:
        """A snapshot of the counters (expired keys are dropped first, so counts are current)."""
        current = len(self)
        dups, unique, expired, evicted = self._counts()
        return DedupStats(
            duplicates_found=dups,
            unique_added=unique,
            current_entries=current,
            expired_removed=expired,
            evicted_entries=evicted,
            memory_bytes=self._memory(),
        )

    def _counts(self) -> tuple[int, int, int, int]:
        """(duplicates_found, unique_added, expired_removed, evicted_entries)."""
        return self._dups, self._unique_added(), self._expired, self._evicted

    @property
    def ttl(self) -> float:
        """The TTL in seconds."""
        return self._ttl

    @property
    def strategy(self) -> DedupStrategy:
        """The strategy this instance uses."""
        return self._strategy

    @property
    def max_entries(self) -> int:
        """The configured bound (see the class docstring)."""
        return self._max_entries

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name

    def __repr__(self) -> str:
        return (
            f"Deduplicator(name={self._name!r}, strategy={self._strategy}, ttl={self._ttl:g}, "
            f"max_entries={self._max_entries}, entries={len(self)}, "
            f"duplicates={self._counts()[0]}, unique={self._counts()[1]})"
        )


class _Expiring(Deduplicator):
    """A strategy whose entries leave in expiry order: ``_horizon`` is a lower bound on the next
    expiry, so finding that nothing has expired costs one float comparison.

    The ``check_and_update`` of each subclass inlines :meth:`_expire_due` (the per-call path).
    """

    __slots__ = ("_horizon",)

    _horizon: float

    def _expire(self, now: float) -> int:
        """Drop every entry that expired by ``now``, set the horizon; return how many went."""
        raise NotImplementedError

    def _expire_due(self) -> float:
        """Drop what has expired (nothing before the horizon) and return the time it checked."""
        now = self._now()
        if now >= self._horizon:
            self._expire(now)
        return now

    def cleanup(self) -> int:
        return self._expire(self._now())


class _ExactCore(_Expiring):
    """``EXACT``'s and ``COMBINED``'s exact layer: dict key → expiry, and a FIFO of keys in
    insertion order.

    The TTL is constant and the clock monotonic, so first-sighting order is expiry order: expiry
    and eviction pop from the FIFO's front in O(1). (A dict alone cannot do this: deleting from a
    dict's front leaves dummies that every ``next(iter(d))`` rescans, O(n) per call.) ``remove()``
    leaves the key's FIFO slot behind as *stale*; ``_stale`` counts such slots per key, and since a
    key's stale slots always precede its live slot, a front slot whose key has a stale count is
    stale. ``_horizon`` is a lower bound on the front's expiry, so the hot path tests one float.
    :class:`_Exact` and :class:`_Combined` add the public calls (and ``_Combined`` its eviction).
    """

    __slots__ = ("_append", "_entries", "_order", "_removed", "_stale")

    def _setup(self, options: dict[str, Any]) -> None:
        super()._setup(options)
        self._removed = 0
        self._entries: dict[str | tuple[str, ...], float] = {}
        self._order: deque[str | tuple[str, ...]] = deque()
        self._append = self._order.append  # saves a method lookup per insert
        self._stale: dict[str | tuple[str, ...], int] = {}
        self._horizon = _NEG_INF

    def _forget(self, ident: str | tuple[str, ...]) -> bool:
        entries = self._entries
        if ident not in entries:
            return False
        del entries[ident]
        self._removed += 1
        stale = self._stale
        stale[ident] = stale.get(ident, 0) + 1
        # Bound the stale slots: a remove/re-add loop would otherwise grow the FIFO for a whole
        # TTL. The dict's order is insertion order, which is expiry order, so it rebuilds the FIFO.
        if len(self._order) > 2 * len(entries) + 64:
            self._order = deque(entries)
            self._append = self._order.append
            stale.clear()
        return True

    def _expire(self, now: float) -> int:
        """Drop every entry with ``expiry <= now`` from the front; update the horizon."""
        entries = self._entries
        order = self._order
        stale = self._stale
        dropped = 0
        while order:
            ident = order[0]
            if stale and ident in stale:
                order.popleft()
                left = stale[ident] - 1
                if left:
                    stale[ident] = left
                else:
                    del stale[ident]
                continue
            expiry = entries[ident]
            if expiry > now:
                self._horizon = expiry
                break
            order.popleft()
            del entries[ident]
            dropped += 1
        else:
            # Empty: the next insert must recompute the horizon on the call after it.
            self._horizon = _NEG_INF
        self._expired += dropped
        return dropped

    def _pop_oldest(self) -> tuple[str | tuple[str, ...], float]:
        """Remove and return the live entry with the earliest expiry (the map is not empty)."""
        entries = self._entries
        order = self._order
        stale = self._stale
        while True:
            ident = order.popleft()
            if stale and ident in stale:
                left = stale[ident] - 1
                if left:
                    stale[ident] = left
                else:
                    del stale[ident]
                continue
            return ident, entries.pop(ident)

    def _clear(self) -> None:
        self._removed = 0
        self._entries.clear()
        self._order.clear()
        self._stale.clear()
        self._horizon = _NEG_INF

    def _memory(self) -> int:
        entries = self._entries
        n = len(entries)
        return (
            sys.getsizeof(entries)
            + sys.getsizeof(self._order)
            + sys.getsizeof(self._stale)
            + n * sys.getsizeof(1.0)  # one float object per expiry
            + _key_bytes(entries, n)
        )


class _Exact(_ExactCore):
    """``EXACT``: the structures of :class:`_ExactCore`, with its public calls.

    The hot path reads a handful of attributes, one ``dict`` lookup and at most one insert. No
    counter is kept for new keys: every key added is now live, expired, evicted or removed.
    """

    __slots__ = ()

    def check_and_update(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        now = self._now()
        if now >= self._horizon:
            self._expire(now)
        entries = self._entries
        if ident in entries:  # once the horizon is past `now`, every entry is live
            self._dups += 1
            return True
        if len(entries) >= self._max_entries:
            self._evicted += 1
            self._pop_oldest()
        entries[ident] = now + self._ttl
        self._append(ident)
        return False

    def contains(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        self._expire_due()
        return ident in self._entries

    def remove(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        self._expire_due()
        return self._forget(ident)

    def __len__(self) -> int:
        self._expire_due()
        return len(self._entries)

    def _unique_added(self) -> int:
        return len(self._entries) + self._expired + self._evicted + self._removed


class _Sliding(_Expiring):
    """``SLIDING_WINDOW``: an ``OrderedDict`` key → end of window, in last-sighting order.

    A key seen once stores one float (the end of its window, ``last_seen + ttl``); a key seen more
    often stores a :class:`_Sightings`. Each sighting moves the key to the end, so the front holds
    the key whose window ends first: expiry and eviction are O(1) pops from the front. Sighting
    times beyond one per key share one budget (``max_sightings``); over it, the sighted key's oldest
    sightings are folded into an aggregate (the original kept one timestamp per call, forever).
    """

    __slots__ = ("_budget", "_entries", "_stored")

    def _setup(self, options: dict[str, Any]) -> None:
        max_sightings = options.pop("max_sightings", None)
        super()._setup(options)
        budget = self._max_entries if max_sightings is None else max_sightings
        if not isinstance(budget, int) or budget < 2:
            raise ValueError(f"max_sightings must be an int >= 2, got {max_sightings!r}")
        self._budget = budget
        self._entries: OrderedDict[str | tuple[str, ...], float | _Sightings] = OrderedDict()
        self._stored = 0  # sighting ends kept in _Sightings lists, all keys together
        self._horizon = _NEG_INF

    def check_and_update(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        now = self._now()
        if now >= self._horizon:
            self._expire(now)
        entries = self._entries
        seen = entries.get(ident)
        end = now + self._ttl
        if seen is None:
            if len(entries) >= self._max_entries:
                self._evict_one()
            entries[ident] = end
            self._unique += 1
            return False
        # Live: after _expire every stored window ends after `now`.
        if seen.__class__ is float:
            entries[ident] = _Sightings(seen, end)
            self._stored += 2
        else:
            self._add_sighting(seen, now, end)  # type: ignore[arg-type]
        entries.move_to_end(ident)
        self._dups += 1
        return True

    def _add_sighting(self, seen: _Sightings, now: float, end: float) -> None:
        ends = seen.ends
        gone = bisect_right(ends, now)  # sightings whose window has ended
        if gone:
            del ends[:gone]
        ends.append(end)
        if seen.folded and seen.folded_last <= now:
            seen.folded = 0
        self._stored += 1 - gone
        if self._stored > self._budget and len(ends) >= 2:
            half = len(ends) // 2
            if not seen.folded:
                seen.folded_first = ends[0]
            seen.folded += half
            seen.folded_last = ends[half - 1]
            del ends[:half]
            self._stored -= half

    def contains(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        self._expire_due()
        return ident in self._entries

    def count_in_window(self, key: DedupKey | str) -> int:
        """Sightings of ``key`` within the last ``ttl`` seconds, the first one included.

        Exact while the sightings budget (``max_sightings``) is not exceeded; beyond it, a key's
        oldest sightings are folded into one aggregate that is counted whole until the newest of
        them leaves the window (so the count may then exceed the true one, never fall below it).
        """
        ident = key if key.__class__ is str else _coerce(key)
        now = self._expire_due()
        seen = self._entries.get(ident)
        if seen is None:
            return 0
        if seen.__class__ is float:
            return 1
        assert isinstance(seen, _Sightings)
        count = len(seen.ends) - bisect_right(seen.ends, now)
        if seen.folded and seen.folded_last > now:
            count += seen.folded
        return count

    def remove(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        self._expire_due()
        seen = self._entries.pop(ident, None)
        if seen is None:
            return False
        if seen.__class__ is _Sightings:
            self._stored -= len(seen.ends)
        return True

    @staticmethod
    def _end(seen: float | _Sightings) -> float:
        return seen.ends[-1] if isinstance(seen, _Sightings) else seen

    def _expire(self, now: float) -> int:
        entries = self._entries
        dropped = 0
        while entries:
            ident = next(iter(entries))
            seen = entries[ident]
            end = self._end(seen)
            if end > now:
                self._horizon = end
                break
            entries.popitem(last=False)
            if seen.__class__ is _Sightings:
                self._stored -= len(seen.ends)
            dropped += 1
        else:
            self._horizon = _NEG_INF
        self._expired += dropped
        return dropped

    def _evict_one(self) -> None:
        _, seen = self._entries.popitem(last=False)
        if seen.__class__ is _Sightings:
            self._stored -= len(seen.ends)
        self._evicted += 1

    def _clear(self) -> None:
        self._entries.clear()
        self._stored = 0
        self._horizon = _NEG_INF

    def __len__(self) -> int:
        self._expire_due()
        return len(self._entries)

    def _memory(self) -> int:
        entries = self._entries
        n = len(entries)
        # The share of keys with a _Sightings (72 B + its list) is sampled, not scanned: O(1).
        sample = 0
        multi = 0
        for seen in entries.values():
            sample += 1
            multi += seen.__class__ is _Sightings
            if sample == _KEY_SAMPLE:
                break
        per_multi = 72 + sys.getsizeof([])
        return (
            sys.getsizeof(entries)
            + _key_bytes(entries, n)
            + n * 24  # a float per key, or a pointer's worth for a _Sightings
            + (multi * n // max(sample, 1)) * per_multi
            + self._stored * 32  # a float object and a list slot per stored sighting
        )


class _Bloom(Deduplicator):
    """``BLOOM``: up to ``generations`` bloom filters, newest last, each for ``max_entries`` keys.

    The newest generation takes new keys until ``ttl`` after it opened or until it holds
    ``max_entries`` keys, whichever comes first; then it closes. A closed generation is dropped
    ``ttl`` after it closed, so a key is remembered at least ``ttl`` (its generation closed after
    it was added) and less than ``2·ttl`` (a generation is open for at most ``ttl``). If a new
    generation is needed while ``generations`` are live, the oldest is dropped early and its keys
    are counted as evicted: that takes more than ``max_entries`` new keys within one ``ttl``.
    Each generation is sized for ``0.8·p / generations`` so that all of them together stay within
    ``p`` (the classic bloom sizing, applied per generation).
    """

    __slots__ = ("_gen_rate", "_generations", "_gens", "_next_event")

    def _setup(self, options: dict[str, Any]) -> None:
        generations = options.pop("generations", 3)
        super()._setup(options)
        if not isinstance(generations, int) or generations < 2:
            raise ValueError(f"generations must be an int >= 2, got {generations!r}")
        self._generations = generations
        # Sized at 0.8·p/g, not p/g: at p/g the expected rate of g full generations is p itself
        # (measured 1.07e-3 at a 1e-3 target), so half of all measurements would exceed it. The
        # margin costs -ln(0.8)/ln²2 = 0.46 bits per key.
        self._gen_rate = self._fp_rate * _SIZING_MARGIN / generations
        self._gens: list[_BloomFilter] = []  # oldest first; the last one may be open
        self._next_event = _INF

    def _maintain(self, now: float) -> None:
        """Close the open generation at its time limit; drop generations ``ttl`` after closing."""
        gens = self._gens
        if gens:
            newest = gens[-1]
            if newest.drop_at == _INF and now >= newest.closes_at:
                newest.drop_at = newest.closes_at + self._ttl
        while gens and gens[0].drop_at <= now:
            self._expired += gens.pop(0).count
        self._schedule()

    def _schedule(self) -> None:
        gens = self._gens
        if not gens:
            self._next_event = _INF
            return
        newest = gens[-1]
        event = newest.closes_at if newest.drop_at == _INF else newest.drop_at
        self._next_event = min(event, gens[0].drop_at)

    def _open(self, now: float) -> _BloomFilter:
        gens = self._gens
        if gens and gens[-1].drop_at == _INF:  # close a full generation early
            gens[-1].closes_at = now
            gens[-1].drop_at = now + self._ttl
        if len(gens) >= self._generations:
            self._evicted += gens.pop(0).count
        gen = _BloomFilter(self._max_entries, self._gen_rate, self._new_salt())
        gen.closes_at = now + self._ttl
        gens.append(gen)
        self._schedule()
        return gen

    def check_and_update(self, key: DedupKey | str) -> bool:
        data = key.encode("utf-8", "surrogatepass") if key.__class__ is str else _encode(key)
        digest = int.from_bytes(blake2b(data, digest_size=16).digest(), "little")
        now = self._now()
        if now >= self._next_event:
            self._maintain(now)
        gens = self._gens
        current = gens[-1] if gens else None
        if current is not None and (current.drop_at != _INF or current.count >= current.capacity):
            current = None  # closed or full: a new generation takes the key
        for gen in gens:
            if gen is not current and gen.has(digest):
                self._dups += 1
                return True
        if current is None:
            self._open(now).add(digest)
        elif current.add_if_absent(digest):  # test-and-set in one pass over the k positions
            self._dups += 1
            return True
        self._unique += 1
        return False

    def contains(self, key: DedupKey | str) -> bool:
        digest = _hash(_encode(key))
        now = self._now()
        if now >= self._next_event:
            self._maintain(now)
        return any(gen.has(digest) for gen in self._gens)

    def remove(self, key: DedupKey | str) -> bool:
        _encode(key)  # type check only: a bloom filter cannot forget one key
        return False

    def cleanup(self) -> int:
        before = self._expired
        self._maintain(self._now())
        return self._expired - before

    def _clear(self) -> None:
        self._gens.clear()
        self._next_event = _INF

    def __len__(self) -> int:
        now = self._now()
        if now >= self._next_event:
            self._maintain(now)
        return sum(gen.count for gen in self._gens)

    def _memory(self) -> int:
        return sys.getsizeof(self._gens) + sum(gen.nbytes() for gen in self._gens)

    @property
    def generation_count(self) -> int:
        """Live bloom generations (for tests and monitoring)."""
        return len(self._gens)


class _Combined(_ExactCore):
    """``COMBINED``: ``EXACT`` bounded by ``max_entries``, plus overflow bloom filters.

    A key evicted from the exact layer before its TTL ends is added to the newest overflow
    filter, whose ``drop_at`` becomes that key's expiry (keys are evicted in expiry order, so a
    filter is dropped when its last key expires). A filter takes keys whose expiries lie within
    ``ttl / 4`` of its first one, so an overflowed key is forgotten at most ``ttl / 4`` after its
    TTL ends. Overflow filters grow like a scalable bloom filter (Almeida et al. 2007): a new
    filter holds ``max_entries · 2^f`` keys, ``f`` the number of live full filters, and gets half of
    the false-positive budget (``0.8 · false_positive_rate``) that the live filters leave unused, so
    all live filters together stay within the rate however much overflow there is. Overflow costs
    bloom bits (a few bytes per key) instead of key objects. The original's "combined" strategy
    computed the bloom answer and ignored it.
    """

    __slots__ = ("_overflow",)

    def _setup(self, options: dict[str, Any]) -> None:
        super()._setup(options)
        self._overflow: list[_BloomFilter] = []  # oldest first

    def check_and_update(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        now = self._now()
        if now >= self._horizon:
            self._expire(now)
        entries = self._entries
        if ident in entries:
            self._dups += 1
            return True
        if self._overflow and self._overflow_has(ident):
            self._dups += 1
            return True
        if len(entries) >= self._max_entries:
            self._evict_one()
        entries[ident] = now + self._ttl
        self._append(ident)
        self._unique += 1
        return False

    def _overflow_has(self, ident: str | tuple[str, ...]) -> bool:
        digest = _hash(_encode_id(ident))
        return any(f.has(digest) for f in reversed(self._overflow))

    def contains(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        self._expire_due()
        if ident in self._entries:
            return True
        return bool(self._overflow) and self._overflow_has(ident)

    def remove(self, key: DedupKey | str) -> bool:
        ident = key if key.__class__ is str else _coerce(key)
        self._expire_due()
        removed = self._forget(ident)
        if self._overflow and self._overflow_has(ident):
            return False  # the bloom layer still remembers it and cannot forget one key
        return removed

    def _evict_one(self) -> None:
        ident, expiry = self._pop_oldest()
        overflow = self._overflow
        if (
            not overflow
            or overflow[-1].count >= overflow[-1].capacity
            or expiry - overflow[-1].closes_at > self._ttl / 4.0
        ):
            # 0.8·p, not p: the filters' rates add up to nearly all of the budget after a long
            # overflow, and a full filter's expected rate is its target (measured 1.01e-3 at 1e-3).
            budget = self._fp_rate * _SIZING_MARGIN - sum(f.p for f in overflow)
            full = sum(1 for f in overflow if f.count >= f.capacity)
            fresh = _BloomFilter(self._max_entries << full, budget / 2.0, self._new_salt())
            fresh.closes_at = expiry  # here: the first key's expiry
            overflow.append(fresh)
        current = overflow[-1]
        current.add(_hash(_encode_id(ident)))
        current.drop_at = expiry
        self._evicted += 1

    def _expire(self, now: float) -> int:
        dropped = super()._expire(now)
        overflow = self._overflow
        while overflow and overflow[0].drop_at <= now:
            gone = overflow.pop(0).count
            self._expired += gone
            dropped += gone
        if overflow and overflow[0].drop_at < self._horizon:
            self._horizon = overflow[0].drop_at
        return dropped

    def _clear(self) -> None:
        super()._clear()
        self._overflow.clear()

    def __len__(self) -> int:
        self._expire_due()
        return len(self._entries) + sum(f.count for f in self._overflow)

    def _memory(self) -> int:
        return (
            super()._memory()
            + sys.getsizeof(self._overflow)
            + sum(f.nbytes() for f in self._overflow)
        )


_IMPLEMENTATIONS: Final[dict[DedupStrategy, type[Deduplicator]]] = {
    DedupStrategy.EXACT: _Exact,
    DedupStrategy.SLIDING_WINDOW: _Sliding,
    DedupStrategy.BLOOM: _Bloom,
    DedupStrategy.COMBINED: _Combined,
}
# Deduplicator.__init__ leaves these alone: Deduplicator.__new__ set them up.
_SET_UP_BY_NEW: Final = frozenset(_IMPLEMENTATIONS.values())

describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
