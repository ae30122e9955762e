"""``help()``, ``__doc__`` and ``inspect.signature`` work on every public name, on both builds.

mypyc drops docstrings and some signatures; the build and ``_mypyc.describe_compiled`` restore
them (see ``hatch_build.py``). This walks ``__all__`` of every public module and compares what the
imported objects say (compiled or not) with the ``.py`` source they come from: every public class,
function, method and property has a docstring, and every signature has the source's parameter
names, kinds and defaults.
"""

from __future__ import annotations

import inspect
import pkgutil
import pydoc
import types
from typing import Any

import pytest

import zeroclaw.concurrency
from zeroclaw.concurrency._mypyc import _source_module

MODULES = [
    "zeroclaw.concurrency",
    *sorted(
        f"zeroclaw.concurrency.{info.name}"
        for info in pkgutil.iter_modules(zeroclaw.concurrency.__path__)
        if not info.name.startswith("_")
    ),
    "zeroclaw.testing",
]


def _shape(signature: inspect.Signature, *, drop_first: bool = False) -> list[tuple[str, Any, str]]:
    """Names, kinds and defaults: what a caller relies on (annotations are not compiled in)."""
    parameters = list(signature.parameters.values())[1 if drop_first else 0 :]
    kinds = [p.kind for p in parameters]
    # `self` before a "/" is positional-only in a C signature, positional-or-keyword in Python.
    return [
        (p.name, k if k is not p.POSITIONAL_ONLY else p.POSITIONAL_OR_KEYWORD, _default(p.default))
        for p, k in zip(parameters, kinds, strict=True)
    ]


def _default(value: object) -> str:
    # A function default is a different object in the source module: compare its name.
    return getattr(value, "__qualname__", None) or repr(value)


def _own_constructor_is_builtin(cls: type) -> bool:
    """An exception class that takes ``*args`` from ``BaseException``: no signature anywhere."""
    return issubclass(cls, BaseException) and not any(
        "__init__" in vars(base) or "__new__" in vars(base)
        for base in cls.__mro__
        if base.__module__.startswith("zeroclaw")
    )


def _public_names() -> list[tuple[str, str]]:
    names = []
    for module_name in MODULES:
        module = __import__(module_name, fromlist=["__all__"])
        names += [(module_name, name) for name in module.__all__]
    return names


def _members(cls: type) -> list[tuple[str, Any]]:
    """The public methods and properties the class itself defines, as written in its source."""
    members = []
    for name, value in vars(cls).items():
        function = getattr(value, "__func__", getattr(value, "fget", value))
        if name.startswith("_") or not isinstance(function, types.FunctionType):
            continue
        if function.__qualname__.startswith(f"{cls.__qualname__}."):  # not a field's default
            members.append((name, value))
    return members


def test_the_walk_covers_every_public_module() -> None:
    assert {
        "zeroclaw.concurrency.worker_pool",
        "zeroclaw.concurrency.channel_integration",
        "zeroclaw.testing",
    } <= set(MODULES)
    assert len(_public_names()) >= 60


@pytest.mark.parametrize(("module_name", "name"), _public_names())
def test_public_name_has_its_docstring_and_signature(module_name: str, name: str) -> None:
    module = __import__(module_name, fromlist=[name])
    obj = getattr(module, name)
    if not callable(obj):
        return  # a constant such as __version__: nothing to document
    home = obj.__module__
    source = getattr(_source_module(home), name)
    assert inspect.getdoc(obj), f"{home}.{name} has no docstring"
    assert inspect.getdoc(obj) == inspect.getdoc(source)
    assert "mypyc" not in pydoc.render_doc(obj)  # what help() prints
    if isinstance(obj, type) and _own_constructor_is_builtin(obj):
        pass
    else:
        assert _shape(inspect.signature(obj)) == _shape(inspect.signature(source)), name
    if not isinstance(obj, type):
        return
    members = _members(source)
    for member, written in members:
        qualname = f"{home}.{name}.{member}"
        if isinstance(written, property):
            assert written.__doc__, f"{qualname} has no docstring in the source"
            assert inspect.getdoc(getattr(obj, member)) == inspect.cleandoc(written.__doc__)
            continue
        imported, expected = getattr(obj, member), getattr(source, member)
        assert inspect.getdoc(imported), f"{qualname} has no docstring"
        assert inspect.getdoc(imported) == inspect.getdoc(expected), qualname
        method = isinstance(written, types.FunctionType)  # unbound here: drop `self`
        assert _shape(inspect.signature(imported), drop_first=method) == _shape(
            inspect.signature(expected), drop_first=method
        ), qualname


def test_compiled_methods_are_the_module_s_own_and_bound_ones_too() -> None:
    """A bound method reads its signature without ``self``, compiled or not."""
    from zeroclaw.concurrency import Backpressure, WorkerPool

    assert list(inspect.signature(Backpressure(1).acquire).parameters) == ["timeout"]
    assert list(inspect.signature(WorkerPool(1, 1).shutdown).parameters) == ["drain", "timeout"]
    assert "permit" in (inspect.getdoc(Backpressure(1).acquire) or "")
