"""Every code block of README.md and docs/*.md runs as written: a reader can paste any of them.

What is run, and why:

- A ```python block is a complete program (imports included). Each one runs in a fresh interpreter
  (``sys.executable``, so on the build under test) with a timeout; it must exit 0 and write
  nothing to stderr (no traceback, warning or "coroutine was never awaited"). When a ```text
  block follows it directly, that block is what the program prints, and stdout must match it.
- A ```bash block is never run here: each one installs, builds or benchmarks (minutes and the
  network), or starts and talks to a gateway (the end-to-end tests do that over real sockets).
  Each is checked with ``bash -n`` and must carry the marker :data:`NOT_RUN` on the line above
  it, with the reason; ``.ci/run`` runs the README's install and
  test commands itself (checked below). The markers stay rare (:data:`MAX_NOT_RUN`).
- A ```text block is output or a diagram, not code. Every fence names its language.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = "<!-- not run by tests/test_docs.py:"
# Installs, benchmarks, and shell sessions against a running gateway (whose behaviour the
# end-to-end tests check over real sockets).
MAX_NOT_RUN = 16
# toml, json and yaml blocks are data, not programs: the config docs' examples are loaded by
# tests/test_config.py, a json block shows a body or a reply, a yaml one a Prometheus job.
LANGUAGES = {"python", "bash", "text", "toml", "json", "yaml"}
TIMEOUT = 60.0

_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: bool  # the line above the fence carries NOT_RUN
    output: str | None  # the ```text block right after a python block

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: pathlib.Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    raw: list[tuple[int, int, str, str, bool]] = []  # start, end, language, code, not_run
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.name}:{i + 1}: unclosed code fence"
        not_run = i > 0 and lines[i - 1].startswith(NOT_RUN)
        code = "\n".join(lines[i + 1 : end]) + "\n"
        raw.append((i, end, opening.group(1), code, not_run))
        i = end + 1
    blocks = []
    for n, (start, end, language, code, not_run) in enumerate(raw):
        output = None
        if language == "python" and n + 1 < len(raw):
            next_start, _, next_language, next_code, _ = raw[n + 1]
            between = lines[end + 1 : next_start]
            if next_language == "text" and all(not line.strip() for line in between):
                output = next_code
        blocks.append(Block(path, start + 1, language, code, not_run, output))
    return blocks


BLOCKS = [block for path in DOCS for block in _blocks(path)]
PYTHON = [block for block in BLOCKS if block.language == "python"]
BASH = [block for block in BLOCKS if block.language == "bash"]


def test_the_docs_have_code_to_check() -> None:
    assert {path.name for path in DOCS} >= {"README.md", "channel_integration.md"}
    assert len(PYTHON) >= 7
    assert all(block.path.exists() for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.where)
def test_every_fence_names_a_known_language(block: Block) -> None:
    assert block.language in LANGUAGES, f"{block.where}: fence language {block.language!r}"


def test_not_run_markers_are_rare_and_give_a_reason() -> None:
    marked = [block for block in BLOCKS if block.not_run]
    assert len(marked) <= MAX_NOT_RUN, [block.where for block in marked]
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith(NOT_RUN):
                reason = line.removeprefix(NOT_RUN).removesuffix("-->").strip()
                assert len(reason) >= 10, f"{path.name}:{number}: say why it is not run"
    # A marker counts only on the line right above a fence: none stands anywhere else.
    markers = sum(path.read_text(encoding="utf-8").count(NOT_RUN) for path in DOCS)
    assert markers == len(marked)


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.where)
def test_python_block_runs_as_written(block: Block, tmp_path: pathlib.Path) -> None:
    assert not block.not_run, f"{block.where}: python blocks are complete programs and run"
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stderr}"
    assert done.stderr == "", f"{block.where} wrote to stderr:\n{done.stderr}"
    if block.output is not None:
        assert done.stdout == block.output, f"{block.where} printed:\n{done.stdout}"


@pytest.mark.parametrize("block", BASH, ids=lambda block: block.where)
def test_bash_block_is_marked_and_parses(block: Block) -> None:
    assert block.not_run, f"{block.where}: bash blocks are not run here; mark why ({NOT_RUN})"
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run([bash, "-n"], input=block.code, capture_output=True, text=True)
    assert done.returncode == 0, f"{block.where}: {done.stderr}"


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    """The README's first block is not run here; ``.ci/run`` runs the same commands."""
    readme = next(block for block in BASH if block.path.name == "README.md")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("-m venv .venv", "-e '.[all]' --group dev", ".venv/bin/python -m pytest"):
        assert command in readme.code
        assert command in ci


# Notes that helped write this code but are not in the repository: a reader cannot open them, so
# the code and docs name the source itself (a project, an issue thread) instead. Spelled in pieces
# so that this file does not match itself.
_OUTSIDE = re.compile(
    "|".join(
        [
            "research" + "/",
            "DESIGN" + r"(\.md| ?§)",
            "original" + r"\.md",
            r"\.\./" + "shared",
            "/work" + "/",
            "GATEWAY_" + "INTERFACES",
            "COMMON" + r"\.md",
        ]
    )
)
_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_no_reference_to_files_outside_the_repository() -> None:
    paths = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / ".ci" / "run"]
    for folder in ("src", "docs", "tests", "benchmarks"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md"}]
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for path in DOCS:
        for target, _ in _LINK.findall(path.read_text(encoding="utf-8")):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []
