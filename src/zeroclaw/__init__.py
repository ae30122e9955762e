"""zeroclaw: the asyncio concurrency core of an AI-agent gateway.

The primitives live in :mod:`zeroclaw.concurrency`; test doubles in :mod:`zeroclaw.testing`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zeroclaw")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
