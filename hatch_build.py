"""The wheel's build hook: hatch-mypyc compiles the hot modules, with three changes.

hatchling loads this file (``[tool.hatch.build.targets.wheel.hooks.custom]`` in pyproject.toml);
the package never imports it. What it adds to hatch-mypyc's hook:

1. **No C compiler, plain build.** Before compiling, it checks that a C compiler builds a file
   that includes ``Python.h``, as the extensions will (``CC`` is honoured). If none does, it warns
   and builds the plain-Python package instead of failing the install. Any other compile error
   still fails the build: a broken module must not turn into a silently slower install.
2. **A standard build never touches the tree it builds from.** hatch-mypyc deletes the extensions
   it finds in the source tree, then compiles into it; ``pip install /some/checkout`` from another
   environment would thus replace, or on a failed build delete, the extensions of that checkout's
   editable install. A standard (non-editable) build compiles in a copy instead. An editable
   build still compiles in place: those extensions are what it installs.
3. **Docstrings and signatures survive compilation.** See :func:`document_c`.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# The parts of the tree a build reads (hatch-mypyc runs mypy over src/ with pyproject's config).
_BUILD_INPUTS = ("pyproject.toml", "README.md", "hatch_build.py", "src")


def c_compiler_problem() -> str | None:
    """Why no C extension can be built here, or ``None`` when a test file compiles.

    Compiles (does not link) a file including ``Python.h`` with the compiler setuptools would use,
    so a missing compiler, a ``CC`` naming nothing and missing Python headers are all caught.
    """
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler, get_python_inc

    with tempfile.TemporaryDirectory(prefix="zeroclaw-cc-") as tmp:
        source = Path(tmp, "probe.c")
        source.write_text("#include <Python.h>\nint zeroclaw_probe(void) { return 0; }\n")
        compiler: Any = new_compiler()
        customize_compiler(compiler)
        try:
            compiler.compile(
                [str(source)], output_dir=tmp, include_dirs=[get_python_inc()], extra_preargs=[]
            )
        except (CCompilerError, DistutilsError, OSError) as error:
            return f"{' '.join(compiler.compiler_so[:1]) or 'the C compiler'} failed: {error}"
    return None


# ------------------------------------------------------------------ docstrings and signatures


def _source_index(root: str) -> dict[tuple[str, str | None, str], ast.AST]:
    """``(module, class or None, name) -> def or class node`` for every module under src/."""
    index: dict[tuple[str, str | None, str], ast.AST] = {}
    for path in Path(root, "src").rglob("*.py"):
        parts = path.relative_to(Path(root, "src")).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            _add(index, module, None, node)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    _add(index, module, node.name, member)
    return index


def _add(
    index: dict[tuple[str, str | None, str], ast.AST], module: str, cls: str | None, node: ast.AST
) -> None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        key = (module, cls, node.name)
        # Overloads and property setters share a name: keep the definition with a docstring.
        if key not in index or ast.get_docstring(node) is not None:
            index[key] = node


def _representable(default: ast.expr, opaque: set[str]) -> bool:
    """Whether ``inspect`` can read ``default`` back from a ``__text_signature__``.

    It reads literals and dotted names whose value is a number, a string or ``None``; ``opaque``
    names the classes whose members are none of those (a plain ``Enum``).
    """
    if isinstance(default, ast.Constant):
        return True
    if isinstance(default, ast.UnaryOp) and isinstance(default.operand, ast.Constant):
        return True
    if isinstance(default, ast.Tuple):
        return all(_representable(element, opaque) for element in default.elts)
    if isinstance(default, ast.Attribute) and isinstance(default.value, ast.Name):
        return default.value.id not in opaque  # an IntEnum member, a module's constant
    return isinstance(default, ast.Name)


def _text_signature(
    node: ast.FunctionDef | ast.AsyncFunctionDef, *, bound: bool, drop_first: bool, opaque: set[str]
) -> str | None:
    """``(params)`` as CPython's ``__text_signature__`` syntax, from the source ``def``.

    ``bound`` marks the first parameter (``$self``, ``$cls``); ``drop_first`` drops it (a class's
    signature is its ``__init__``'s without ``self``). ``None`` when a default cannot be written.
    """
    arguments = ast.arguments(
        posonlyargs=[ast.arg(a.arg) for a in node.args.posonlyargs],
        args=[ast.arg(a.arg) for a in node.args.args],
        vararg=ast.arg(node.args.vararg.arg) if node.args.vararg else None,
        kwonlyargs=[ast.arg(a.arg) for a in node.args.kwonlyargs],
        kw_defaults=node.args.kw_defaults,
        kwarg=ast.arg(node.args.kwarg.arg) if node.args.kwarg else None,
        defaults=node.args.defaults,
    )
    defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
    if not all(_representable(default, opaque) for default in defaults):
        return None
    first = arguments.posonlyargs or arguments.args
    if first and drop_first:
        del first[0]
    elif first and bound:
        first[0].arg = "$" + first[0].arg
    return f"({ast.unparse(arguments)})"


def _c_string(text: str) -> str:
    """``text`` as a C string literal (UTF-8; octal escapes, which never swallow what follows)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\?':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


_DOC = re.compile(r'PyDoc_STR\("((?:[^"\\]|\\.)*)"\)')
_TABLE = re.compile(r"static (PyMethodDef|PyGetSetDef) (\w+)\[\] = \{")
_TYPE = re.compile(r"static PyTypeObject CPyType_(\w+)_template_ = \{")
_ENTRY = re.compile(r'^\s*\{"(\w+)",')
_WRAPPER_INTO_DICT = re.compile(
    r"PyDict_SetItem\(tp->tp_dict, (name_wrapper_\w+), (wrapper_\w+)\) < 0"
)


def document_c(path: str, root: str) -> None:
    """Rewrite mypyc's generated C so that docstrings and signatures survive compilation.

    mypyc 2.4.1 drops every docstring, writes a ``__text_signature__`` only where it can (none
    with an enum default, a wrong one for some keyword-only parameters), and puts in the class
    dict, for each ``async`` method, a wrapper whose signature reads as ``()`` and whose
    ``__doc__`` cannot be set. This runs between mypyc's code generation and the C compiler, in
    the build only: the doc slot of each method, function, property and class (where CPython
    reads ``__doc__`` and ``__text_signature__``) gets ``name(params)\\n--\\n\\ndocstring``
    from the ``.py`` source, and ``async`` methods stay the method descriptors mypyc also makes
    (the same C function, called the same way; ``inspect.iscoroutinefunction`` says ``False``
    for them, as for any builtin). Nothing is added to any call path. It reads mypyc's output
    format: mypy is pinned (pyproject.toml) and the public-API test checks the compiled result.
    """
    index = _source_index(root)
    opaque = {
        name
        for (_, cls, name), node in index.items()
        if cls is None
        and isinstance(node, ast.ClassDef)
        and any(ast.unparse(base) in ("Enum", "enum.Enum") for base in node.bases)
    }
    by_class: dict[tuple[str | None, str], list[ast.AST]] = {}
    for (_, cls, name), node in index.items():
        by_class.setdefault((cls, name), []).append(node)

    def find(cls: str | None, name: str) -> ast.AST | None:
        found = by_class.get((cls, name), [])
        return found[0] if len(found) == 1 else None  # ambiguous: leave mypyc's

    def function_doc(cls: str | None, name: str, old: str) -> str | None:
        node = find(cls, name)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return None
        decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
        bound = cls is not None and "staticmethod" not in decorators
        params = _text_signature(node, bound=bound, drop_first=False, opaque=opaque)
        old_signature = old.split("\\n--\\n\\n")[0] if "\\n--\\n\\n" in old else None
        docstring = ast.get_docstring(node) or ""
        if params is not None:
            return _c_string(f"{name}{params}\n--\n\n{docstring}")
        if old_signature is not None:  # mypyc's, kept: it is already a C literal's body
            return '"' + old_signature + "\\n--\\n\\n" + _c_string(docstring)[1:]
        return _c_string(docstring) if docstring else None

    def class_doc(cls: str) -> str | None:
        node = find(None, cls)
        if not isinstance(node, ast.ClassDef):
            return None
        docstring = ast.get_docstring(node) or ""
        init = find(cls, "__init__")
        params = None
        if isinstance(init, ast.FunctionDef):
            params = _text_signature(init, bound=False, drop_first=True, opaque=opaque)
        if params is None:  # no __init__ in the source (a dataclass): inspect finds its own
            return _c_string(docstring) if docstring else None
        return _c_string(f"{cls}{params}\n--\n\n{docstring}")

    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    table: tuple[str, str | None] | None = None  # (kind, class or None for a module's functions)
    entry: str | None = None
    type_name: str | None = None
    for number, line in enumerate(lines):
        if (match := _TABLE.search(line)) is not None:
            kind, name = match.groups()
            # "<module>___<Class>_methods", "<module>module_methods" (a module's functions).
            owner = name.removesuffix("_methods").removesuffix("_getseters")
            table = (kind, None if "___" not in owner else owner.split("___")[-1])
            entry = None
            continue
        if (match := _TYPE.search(line)) is not None:
            type_name = match.group(1).split("___")[-1]
            continue
        if table is not None and line.strip() == "};":
            table = None
            continue
        if (match := _WRAPPER_INTO_DICT.search(line)) is not None:
            name_obj, wrapper = match.groups()
            lines[number] = line.replace(
                match.group(0), f"(Py_DECREF({wrapper}), Py_DECREF({name_obj}), 0) < 0"
            )
            continue
        if type_name is not None and ".tp_doc = " in line:
            doc = class_doc(type_name)
            if doc is not None:
                lines[number] = f"    .tp_doc = PyDoc_STR({doc}),\n"
            type_name = None
            continue
        if table is None:
            continue
        if (match := _ENTRY.match(line)) is not None:
            entry = match.group(1)
        kind, owner = table
        if kind == "PyMethodDef" and entry and (doc_match := _DOC.search(line)) is not None:
            doc = function_doc(owner, entry, doc_match.group(1))
            if doc is not None:
                lines[number] = line.replace(doc_match.group(0), f"PyDoc_STR({doc})")
            entry = None
        elif (
            kind == "PyGetSetDef"
            and entry
            and line.strip() in ("NULL, NULL, NULL},", "NULL, NULL},")
        ):
            node = find(owner, entry)
            docstring = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            if docstring:
                doc = _c_string(docstring)
                if line.strip() == "NULL, NULL, NULL},":  # setter, doc, closure
                    lines[number] = f"    NULL, {doc}, NULL}},\n"
                elif lines[number - 1].lstrip().startswith("(setter)"):  # doc, closure
                    lines[number] = f"    {doc}, NULL}},\n"
            entry = None
    Path(path).write_text("".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------- the hook


def _setup_prelude(root: str) -> str:
    """Lines run first in the setup script hatch-mypyc writes: build in ``root``, keep the docs."""
    here = os.path.dirname(os.path.abspath(__file__))
    return (
        f"import os, sys\nos.chdir({root!r})\nsys.path.insert(0, {here!r})\n"
        "import hatch_build, mypyc.build\n"
        f"mypyc.build.mypycify = hatch_build.documenting(mypyc.build.mypycify, {root!r})\n"
    )


def documenting(mypycify: Any, root: str) -> Any:
    """``mypycify`` that runs :func:`document_c` over the C it generates, before it is compiled."""

    def generate(*args: Any, **kwargs: Any) -> Any:
        extensions = mypycify(*args, **kwargs)
        for extension in extensions:
            for source in extension.sources:
                if source.endswith(".c"):
                    document_c(source, root)
        return extensions

    return generate


def get_build_hook() -> type:
    """The hook class; imported lazily so that this file loads without hatch-mypyc."""
    import hatch_mypyc.plugin
    from hatch_mypyc.plugin import MypycBuildHook

    class CompiledOrPlain(MypycBuildHook):  # type: ignore[misc]
        _build_root: str | None = None

        @property
        def root(self) -> str:
            return self._build_root or super().root  # type: ignore[no-any-return]

        def initialize(self, version: str, build_data: dict[str, Any]) -> None:
            if self.target_name != "wheel":
                return
            problem = c_compiler_problem()
            if problem is not None:
                message = (
                    "zeroclaw: no working C compiler, so this builds the plain-Python package "
                    f"(same behaviour, slower; see README.md): {problem}"
                )
                self.app.display_warning(message)
                print(f"WARNING: {message}", file=sys.stderr)
                return
            if version != "editable":
                real_root = self.root
                self._build_root = tempfile.mkdtemp(prefix="zeroclaw-build-")
                for name in _BUILD_INPUTS:
                    source = os.path.join(real_root, name)
                    target = os.path.join(self._build_root, name)
                    if os.path.isdir(source):
                        shutil.copytree(
                            source, target, ignore=shutil.ignore_patterns("*.so", "*.pyd")
                        )
                    elif os.path.exists(source):
                        shutil.copy2(source, target)
            build_root = self.root
            make_setup = hatch_mypyc.plugin.construct_setup_file

            def construct_setup_file(*args: Any, **kwargs: Any) -> str:
                return _setup_prelude(build_root) + make_setup(*args, **kwargs)

            hatch_mypyc.plugin.construct_setup_file = construct_setup_file
            try:
                super().initialize(version, build_data)
            finally:
                hatch_mypyc.plugin.construct_setup_file = make_setup
            if self._build_root is not None:
                # The extensions are in the copy: include them from there, not by pattern from
                # the source tree (whose own, possibly stale, extensions stay out of the wheel).
                build_data["artifacts"][:] = [
                    a for a in build_data["artifacts"] if a not in self.artifact_patterns
                ]
                for pattern in self.artifact_globs:
                    for path in glob.glob(os.path.join(self._build_root, pattern)):
                        build_data["force_include"][path] = os.path.relpath(path, self._build_root)

        def finalize(self, version: str, build_data: dict[str, Any], artifact: str) -> None:
            if self._build_root is not None:
                shutil.rmtree(self._build_root, ignore_errors=True)
                self._build_root = None

    return CompiledOrPlain
