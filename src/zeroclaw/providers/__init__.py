"""Chat providers for the gateway: backends (``openai``, ``echo``, ``simulated``) and the
:class:`~zeroclaw.providers.managed.ManagedProvider` that adds retries and limits around them.

:func:`build_backend` makes a backend from a kind and options (what the config layer calls).
Importing this package does not import aiohttp: only the ``openai`` backend needs it, and it is
imported when that backend is built (or ``zeroclaw.providers.openai`` is imported).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from zeroclaw.providers.base import ChatBackend, ChatMessage, ErrorClass, ErrorCode, ProviderError
from zeroclaw.providers.echo import EchoBackend
from zeroclaw.providers.managed import ManagedProvider, ProviderStats
from zeroclaw.providers.simulated import SimulatedBackend

__all__ = [
    "BACKEND_KINDS",
    "ChatBackend",
    "ChatMessage",
    "EchoBackend",
    "ErrorClass",
    "ErrorCode",
    "ManagedProvider",
    "ProviderError",
    "ProviderStats",
    "SimulatedBackend",
    "backend_options",
    "build_backend",
]

# kind -> (module, class); imported on demand so that aiohttp loads only for ``openai``.
_BACKENDS: dict[str, tuple[str, str]] = {
    "echo": ("zeroclaw.providers.echo", "EchoBackend"),
    "openai": ("zeroclaw.providers.openai", "OpenAIBackend"),
    "simulated": ("zeroclaw.providers.simulated", "SimulatedBackend"),
}

#: The backend kinds :func:`build_backend` knows, sorted.
BACKEND_KINDS: tuple[str, ...] = tuple(sorted(_BACKENDS))


def _backend_class(kind: str) -> Any:
    if not isinstance(kind, str):
        raise TypeError(f"provider kind must be a str, not {type(kind).__name__}")
    try:
        module, name = _BACKENDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown provider kind {kind!r}; expected one of: {', '.join(BACKEND_KINDS)}"
        ) from None
    return getattr(importlib.import_module(module), name)


def backend_options(kind: str) -> dict[str, bool]:
    """The options a backend kind takes: name -> whether it is required.

    Imports the backend's module (aiohttp for ``openai``).

    Raises:
        ValueError: for an unknown kind (naming the known ones).
        ImportError: when the kind's extra is not installed.
    """
    parameters = inspect.signature(_backend_class(kind)).parameters.values()
    return {p.name: p.default is inspect.Parameter.empty for p in parameters}


def build_backend(kind: str, **options: Any) -> ChatBackend:
    """Make the backend ``kind`` (``openai``, ``echo``, ``simulated``) with ``options`` as its
    constructor's arguments. Does not block, opens no connection.

    Raises:
        ValueError: for an unknown kind, or a bad option value (from the backend).
        TypeError: for an option the kind does not take, a missing required one (each named,
            with the options the kind takes), or an option of the wrong type.
        ImportError: when the kind's extra is not installed (``pip install 'zeroclaw[gateway]'``).
    """
    cls = _backend_class(kind)
    accepted = backend_options(kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"provider kind {kind!r} does not take option(s) {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )
    missing = [name for name, required in accepted.items() if required and name not in options]
    if missing:
        raise TypeError(f"provider kind {kind!r} needs option(s) {', '.join(map(repr, missing))}")
    backend: ChatBackend = cls(**options)
    return backend
