"""Test settings shared by every module.

Hypothesis runs derandomized by default, so that CI sees the same examples on every run and a red
run is never luck. ``HYPOTHESIS_PROFILE=explore`` runs random, ten times larger searches instead,
for a developer hunting bugs (a failure found there is printed with the ``@reproduce_failure``
line to keep it as a test).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
