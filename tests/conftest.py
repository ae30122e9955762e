"""Test settings shared by every module.

Hypothesis runs derandomized by default, so that CI sees the same examples on every run and a red
run is never luck. ``HYPOTHESIS_PROFILE=explore`` runs random, ten times larger searches instead,
for a developer hunting bugs (a failure found there is printed with the ``@reproduce_failure``
line to keep it as a test).

The install compiles the hot modules with mypyc, and Python imports a compiled module in place of
its ``.py`` file, so an edited source would go untested until the next build: the run stops at
once if a module compiled in this source tree (an editable install) is older than its source.
The header says which build runs.

The Redis fixtures (``redis_url``, ``namespace``, ``redis_client``, ``private_redis``) live in
``tests/redis_support.py``; importing them here gives them to every module.
"""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import settings

from tests.redis_support import namespace, private_redis, redis_client, redis_url  # noqa: F401
from zeroclaw.concurrency._mypyc import compiled_modules

settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def pytest_configure(config: pytest.Config) -> None:
    for name, path in compiled_modules().items():
        extension = pathlib.Path(path)
        if not (extension.parents[3] / "pyproject.toml").exists():
            continue  # installed from a wheel, not built in this source tree: nothing to edit
        source = extension.with_name(extension.name.split(".")[0] + ".py")
        if source.stat().st_mtime > extension.stat().st_mtime:
            pytest.exit(
                f"{name} is compiled from an older {source.name}: rebuild it "
                "(pip install -e .), or delete the extensions (*.so) beside it to test the "
                "plain-Python sources",
                returncode=4,
            )


def pytest_report_header() -> str:
    compiled = compiled_modules()
    if not compiled:
        return "zeroclaw: plain Python (nothing compiled)"
    return f"zeroclaw: compiled with mypyc: {', '.join(sorted(compiled))}"
