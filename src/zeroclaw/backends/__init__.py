"""Backends that let several gateway processes share state: :mod:`zeroclaw.backends.redis`."""
