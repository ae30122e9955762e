"""``pip install`` with no working C compiler gives the plain package, with a warning.

A real install (pip, build isolation, the build hook in ``hatch_build.py``) of a copy of the
source tree into a throwaway virtual environment, with ``CC`` naming nothing: about 15 s, most of
it pip fetching the build tools. The copy carries an extension file of a previous build, which
hatch-mypyc on its own deletes before it compiles: a build must leave the tree it builds from
alone.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def test_install_without_a_c_compiler_builds_the_plain_package(tmp_path: pathlib.Path) -> None:
    tree = tmp_path / "checkout"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "hatch_build.py"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    previous = tree / "src/zeroclaw/concurrency/worker_pool.cpython-311-x86_64-linux-gnu.so"
    previous.write_bytes(b"an editable install's extension")

    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["CC"] = str(tmp_path / "no-such-compiler")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-v", str(tree)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    log = install.stdout + install.stderr
    assert install.returncode == 0, log[-4000:]
    assert "WARNING: zeroclaw: no working C compiler" in log
    assert "no-such-compiler" in log  # the warning says which compiler failed

    check = "from zeroclaw.concurrency._mypyc import compiled_modules as c; print(c())"
    built = subprocess.run(
        [str(python), "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert built.stdout.strip() == "{}", built.stderr
    version = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "zeroclaw"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert version.stdout.splitlines()[1:] == ["build: plain Python (nothing compiled)"], version
    assert previous.read_bytes() == b"an editable install's extension"
