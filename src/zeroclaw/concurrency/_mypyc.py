"""mypyc, which compiles the hot modules of this package: ``mypyc_attr`` and ``compiled_modules``.

The wheel compiles :data:`COMPILED` with mypyc (``pyproject.toml``). mypyc reads ``mypyc_attr``
from ``mypy_extensions`` while it compiles (it type-checks with ``TYPE_CHECKING`` true); at run
time it is a no-op defined here, so the package never imports ``mypy_extensions`` and needs only
the standard library, compiled or not. This module itself is never compiled: a compiled module
would reject the ``else`` branch below as unreachable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["COMPILED", "compiled_modules", "mypyc_attr"]

_T = TypeVar("_T")

# What pyproject.toml's mypyc hook compiles (the per-message and per-call paths).
COMPILED = (
    "zeroclaw.concurrency.worker_pool",
    "zeroclaw.concurrency._parking_lot",
    "zeroclaw.concurrency.backpressure",
    "zeroclaw.concurrency.circuit_breaker",
    "zeroclaw.concurrency.channel_integration",
    "zeroclaw.concurrency.deduplicator",
)

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr
else:

    def mypyc_attr(*_flags: str, **_options: Any) -> Callable[[_T], _T]:
        """What mypyc does with the flags happened at compile time; here nothing is left to do."""
        return lambda cls: cls


def compiled_modules() -> dict[str, str]:
    """The modules of :data:`COMPILED` that Python imports as mypyc extensions, with their files.

    Empty for a plain-Python install. Imports those modules.
    """
    found = {}
    for name in COMPILED:
        path = importlib.import_module(name).__file__ or ""
        if not path.endswith(".py"):
            found[name] = path
    return found
