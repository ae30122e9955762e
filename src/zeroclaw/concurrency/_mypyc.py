"""mypyc, which compiles the hot modules of this package: ``mypyc_attr``, ``compiled_modules``,
``build_summary`` and ``describe_compiled``.

The wheel compiles :data:`COMPILED` with mypyc (``pyproject.toml``). mypyc reads ``mypyc_attr``
from ``mypy_extensions`` while it compiles (it type-checks with ``TYPE_CHECKING`` true); at run
time it is a no-op defined here, so the package never imports ``mypy_extensions`` and needs only
the standard library, compiled or not. This module itself is never compiled: a compiled module
would reject the ``else`` branch below as unreachable.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["COMPILED", "build_summary", "compiled_modules", "describe_compiled", "mypyc_attr"]

_T = TypeVar("_T")

# What pyproject.toml's mypyc hook compiles (the per-message and per-call paths).
COMPILED = (
    "zeroclaw.concurrency.worker_pool",
    "zeroclaw.concurrency._parking_lot",
    "zeroclaw.concurrency.backpressure",
    "zeroclaw.concurrency.circuit_breaker",
    "zeroclaw.concurrency.channel_integration",
    "zeroclaw.concurrency.deduplicator",
    "zeroclaw.concurrency._limit_rules",
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
        path = _loaded_from(importlib.import_module(name))
        if not path.endswith(".py"):
            found[name] = path
    return found


def build_summary() -> str:
    """One line saying which build is installed (``zeroclaw --version`` prints it).

    ``compiled with mypyc (7 of 7 modules)``; a partly compiled tree names its plain modules;
    ``plain Python (nothing compiled)`` for the build ``pip install`` falls back to without a
    working C compiler (same behaviour, slower: docs/performance.md). Imports those modules.
    """
    compiled = compiled_modules()
    if not compiled:
        return "plain Python (nothing compiled)"
    plain = [name.rsplit(".", 1)[1] for name in COMPILED if name not in compiled]
    summary = f"compiled with mypyc ({len(compiled)} of {len(COMPILED)} modules"
    if plain:
        summary += "; plain Python: " + ", ".join(plain)
    return summary + ")"


# What mypyc puts in a plain-Python class's dict in place of its docstring.
_FILLER_DOC = "mypyc filler docstring"
_sources: dict[str, types.ModuleType] = {}


def _loaded_from(module: types.ModuleType) -> str:
    """The file Python really imported ``module`` from.

    A compiled module imported by another compiled module of its group can report, in both
    ``__file__`` and its spec, the site-packages folder its build was meant for, where no file is
    (seen in an editable install). Its package is plain Python and knows where it is, so the
    file is looked up there: the extension beside the package's ``__init__.py``, else the source.
    """
    package, _, leaf = module.__name__.rpartition(".")
    reported = pathlib.Path(module.__file__ or "")
    if reported.exists() or not package:
        return str(reported)
    folder = pathlib.Path(sys.modules[package].__file__ or "").parent
    for candidate in sorted(folder.glob(f"{leaf}.*")):
        if candidate.suffix in {".so", ".pyd"}:
            return str(candidate)
    return str(folder / f"{leaf}.py")


def _source_module(name: str) -> types.ModuleType:
    """Module ``name`` run from the ``.py`` file that ships beside its extension (cached)."""
    if name not in _sources:
        extension = pathlib.Path(_loaded_from(sys.modules[name]))
        source = extension.with_name(extension.name.split(".")[0] + ".py")
        spec = importlib.util.spec_from_file_location(f"_source_of_{name}", source)
        if spec is None or spec.loader is None:
            raise ImportError(f"no source beside {extension}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while a class is made
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]
        _sources[name] = module
    return _sources[name]


class _FromSource:
    """The ``__doc__`` or ``__signature__`` of ``qualname`` in the source of ``module``, read on
    first use. ``instances``: served to instances of the owner (a callable object) rather than to
    the class itself."""

    def __init__(self, module: str, qualname: str, what: str, target: type, instances: bool):
        self._module, self._qualname, self._what = module, qualname, what
        self._target, self._instances = target, instances
        self._value: Any = None
        self._loaded = False

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if self._what == "__signature__":
            serve = instance is not None if self._instances else instance is None
            if not serve or (not self._instances and owner is not self._target):
                return None  # inspect then reads the signature as usual
        if not self._loaded:
            found: Any = _source_module(self._module)
            for part in self._qualname.split("."):
                found = inspect.getattr_static(found, part)
            found = getattr(found, "__func__", found)  # a classmethod's or staticmethod's function
            self._value = found.__doc__ if self._what == "__doc__" else inspect.signature(found)
            self._loaded = True
        return self._value

    def __set__(self, instance: object, value: object) -> None:
        raise AttributeError(f"{self._what} is read-only")


class _PropertyDoc:
    def __get__(self, prop: _SourceProperty | None, owner: type | None = None) -> str | None:
        if prop is None:
            return property.__doc__
        module, qualname = prop.source
        found: Any = _source_module(module)
        for part in qualname.split("."):
            found = inspect.getattr_static(found, part)
        return found.__doc__  # type: ignore[no-any-return]

    def __set__(self, prop: _SourceProperty, value: object) -> None:
        """Ignored: ``property.__init__`` writes the compiled getter's empty docstring here."""


class _SourceProperty(property):
    """A property whose ``__doc__`` is its getter's in the source (read on first use)."""

    __doc__ = _PropertyDoc()
    source: tuple[str, str]


def describe_compiled(name: str) -> None:
    """Serve from the source the docstrings and signatures a compiled module cannot carry in C.

    The build (``hatch_build.py``) writes each docstring and signature into the C of the
    extension. Three kinds of object are left without: a class whose signature has a default
    ``inspect`` cannot read from C (a plain ``Enum`` member); a plain-Python class inside a
    compiled module (an enum, a ``NamedTuple``, a plain dataclass), which mypyc gives a filler
    docstring; and its methods, which mypyc makes callable objects without a signature. Each of
    these gets a descriptor (a property: a ``__doc__``) that reads the same name from the ``.py``
    file beside the extension the first time someone asks. Nothing runs per call. Does nothing
    to a plain-Python module (nothing there matches), so the modules call it unconditionally,
    last.
    """
    module = sys.modules[name]
    for public in getattr(module, "__all__", ()):
        cls = getattr(module, public, None)
        if not isinstance(cls, type) or cls.__module__ != name:
            continue
        init = vars(cls).get("__init__")
        if isinstance(init, types.WrapperDescriptorType) and cls.__text_signature__ is None:
            cls.__signature__ = _FromSource(name, public, "__signature__", cls, False)  # type: ignore[attr-defined]
        if vars(cls).get("__doc__") != _FILLER_DOC:
            continue
        cls.__doc__ = _FromSource(name, public, "__doc__", cls, False)  # type: ignore[assignment]
        for attribute, value in list(vars(cls).items()):
            function = getattr(value, "__func__", getattr(value, "fget", value))
            kind = type(function)
            if kind.__module__ == name and kind.__name__.endswith("_obj"):  # mypyc's callable
                qualname = f"{public}.{attribute}"
                if isinstance(value, property):  # it copied the getter's empty docstring
                    documented = _SourceProperty(value.fget, value.fset, value.fdel)
                    documented.source = (name, qualname)
                    setattr(cls, attribute, documented)
                    continue
                kind.__doc__ = _FromSource(name, qualname, "__doc__", kind, True)  # type: ignore[assignment]
                kind.__signature__ = _FromSource(name, qualname, "__signature__", kind, True)
