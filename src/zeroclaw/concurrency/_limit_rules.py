"""The decisions of :class:`~zeroclaw.concurrency.backpressure.AdaptiveLimiter`, as pure functions.

Two rules live side by side; both turn one complete window of latency samples into the next
(fractional) concurrency limit, and neither needs an event loop, a clock or a limiter:

* :data:`LimitMode.TARGET` steers towards an absolute latency target
  (:func:`adaptive_next_limit`).
* :data:`LimitMode.GRADIENT` learns the provider's no-load latency (:func:`learn_baseline`) and
  steers towards ``tolerance`` times it (:func:`gradient_target`), so a provider whose answers are
  slow whatever the load (an LLM writing a long answer) is not mistaken for an overloaded one.

:func:`next_limit` picks the rule. The limiter's shell only collects the window (sum, count, peak
in flight) and applies the result.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zeroclaw.concurrency._mypyc import describe_compiled

__all__ = [
    "DEFAULT_TOLERANCE",
    "DROP_BACKOFF",
    "MAX_GRADIENT",
    "MIN_GRADIENT",
    "USED_FRACTION",
    "Baseline",
    "LimitMode",
    "adaptive_next_limit",
    "gradient_target",
    "learn_baseline",
    "next_limit",
]

#: Factor applied to the limit by one counted drop (429, 503, timeout).
DROP_BACKOFF = 0.5
#: The most one latency window may shrink (x0.5) or grow (x2) the limit.
MIN_GRADIENT = 0.5
MAX_GRADIENT = 2.0
#: "The limit is actually used" when at least this share of it was in flight during a window.
USED_FRACTION = 0.75
#: Gradient mode's default: the latency accepted, as a multiple of the learned no-load latency
#: (Netflix Gradient2's ``rttTolerance`` default).
DEFAULT_TOLERANCE = 1.5


class LimitMode(enum.StrEnum):
    """Which latency an :class:`~zeroclaw.concurrency.backpressure.AdaptiveLimiter` steers to."""

    #: ``target_latency_ms``, as given.
    TARGET = "target"
    #: ``tolerance`` x the learned no-load latency (never below ``target_latency_ms`` if given).
    GRADIENT = "gradient"


#: Gradient mode lowers its baseline after this many busier windows in a row were all faster.
FASTER_RUN = 3


@dataclass(frozen=True, slots=True)
class Baseline:
    """The no-load latency learned so far: ``latency_ms``, measured with at most ``load`` requests
    in flight (the peak in flight of the windows it comes from). ``faster`` counts the busier
    windows in a row that were faster than it, ``faster_ms`` the slowest of them."""

    latency_ms: float
    load: int
    faster: int = 0
    faster_ms: float = 0.0


def adaptive_next_limit(
    limit: float,
    avg_latency_ms: float,
    target_latency_ms: float,
    used: bool,
    min_limit: int,
    max_limit: int,
) -> float:
    """One window's decision, a pure function: the next (fractional) limit.

    ``gradient = target / avg`` clamped to [0.5, 2]. Above target the limit shrinks by the
    gradient; below target it grows by it, but only if ``used`` (otherwise it is kept: an idle
    limit says nothing about what the provider could take). The result stays in
    ``[min_limit, max_limit]``.
    """
    if avg_latency_ms <= 0:
        gradient = MAX_GRADIENT
    else:
        gradient = min(MAX_GRADIENT, max(MIN_GRADIENT, target_latency_ms / avg_latency_ms))
    if gradient < 1.0 or used:
        limit *= gradient
    return min(float(max_limit), max(float(min_limit), limit))


def learn_baseline(baseline: Baseline | None, mean_ms: float, load: int) -> Baseline | None:
    """Fold one window (mean latency ``mean_ms``, peak ``load`` in flight) into the baseline.

    * The first window, or one run with fewer requests in flight than the baseline's, replaces
      it: less of our own load, so a better no-load measurement, even if slower (the provider
      itself got slower, and only a measurement at low load can tell).
    * A window at the baseline's load is averaged with it (halfway), to follow drift.
    * Busier windows may only lower it, and only when :data:`FASTER_RUN` of them in a row were
      all faster (then to the slowest of them): more load and yet faster means the provider got
      faster or the baseline was measured under load (Vegas's no-load minimum), but one lucky
      window of short answers must not set it, or answer-length noise would ratchet it down.
      A busier window that is slower says nothing about the no-load latency, so the baseline
      never creeps up with our own queueing (the drift of Gradient2's long-term average,
      Netflix/concurrency-limits#134).
    * A window whose mean is 0 measured nothing (answers from a cache, a test double): it is
      not learned from, or every later window would look infinitely slower.
    """
    if not mean_ms > 0.0:
        return baseline
    if baseline is None or load < baseline.load:
        return Baseline(mean_ms, load)
    if load == baseline.load:
        return Baseline(0.5 * (baseline.latency_ms + mean_ms), load)
    if mean_ms >= baseline.latency_ms:
        return Baseline(baseline.latency_ms, baseline.load) if baseline.faster else baseline
    faster_ms = max(baseline.faster_ms, mean_ms)
    if baseline.faster + 1 >= FASTER_RUN:
        return Baseline(faster_ms, baseline.load)
    return Baseline(baseline.latency_ms, baseline.load, baseline.faster + 1, faster_ms)


def gradient_target(baseline_ms: float, tolerance: float, floor_ms: float | None) -> float:
    """The latency gradient mode aims at: ``tolerance x baseline``, never below ``floor_ms``."""
    aim = tolerance * baseline_ms
    if floor_ms is not None and floor_ms > aim:
        return floor_ms
    return aim


def next_limit(
    mode: LimitMode,
    limit: float,
    baseline: Baseline | None,
    mean_ms: float,
    load: int,
    used: bool,
    target_latency_ms: float | None,
    tolerance: float,
    min_limit: int,
    max_limit: int,
) -> tuple[float, Baseline | None, float | None]:
    """One complete window's decision: ``(next limit, next baseline, the latency aimed at)``.

    ``mean_ms`` is the window's mean latency, ``load`` the peak in flight during it, ``used``
    whether the limit was used (see :func:`adaptive_next_limit`). In target mode the baseline is
    passed through untouched; in gradient mode it is learned first, then the target rule runs
    against :func:`gradient_target`; until there is a baseline the limit is kept and the aim is
    ``None``.

    Raises:
        ValueError: in target mode without a ``target_latency_ms``.
    """
    if mode is LimitMode.TARGET:
        if target_latency_ms is None:
            raise ValueError("target mode needs a target_latency_ms")
        aim = target_latency_ms
    else:
        baseline = learn_baseline(baseline, mean_ms, load)
        if baseline is None:
            return min(float(max_limit), max(float(min_limit), limit)), None, None
        aim = gradient_target(baseline.latency_ms, tolerance, target_latency_ms)
    return adaptive_next_limit(limit, mean_ms, aim, used, min_limit, max_limit), baseline, aim


describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
