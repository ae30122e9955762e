"""``zeroclaw demo`` as a newcomer runs it: a subprocess, real time, the real gateway wiring.

The run is issue 14's acceptance command (``--duration 20 --no-live --out DIR``): it must exit 0,
print the report and the verdict, and leave a JSON that shows the story the demo tells — the
breaker opening in the outage and closing after it, the adaptive limit falling and recovering,
duplicates caught — and a PNG.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zeroclaw import cli

pytest.importorskip("matplotlib", reason="zeroclaw demo needs the demo extra")


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("demo")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "zeroclaw",
            "demo",
            "--duration",
            "20",
            "--no-live",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return completed, out


def _report(out: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((out / "report.json").read_text())
    return document


def test_the_demo_exits_0_with_the_report_and_a_passing_verdict(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    completed, out = demo_run
    assert completed.returncode == 0, completed.stdout + completed.stderr
    stdout = completed.stdout
    assert "zeroclaw demo: running" in stdout
    assert stdout.count("t=") >= 8  # a plain line every two seconds of a 20 s run
    for words in ("zeroclaw demo report", "offered ", "duplicate ", "rejected ", "answered "):
        assert words in stdout
    assert "verdict: PASS" in stdout
    assert stdout.count("[ok]") == 3
    assert (out / "demo.log").read_text()  # the gateway's log went beside the report


def test_the_json_tells_the_outage_story(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = demo_run
    report = _report(out)
    assert report["passed"] is True
    summary = report["summary"]
    scenario = report["scenario"]
    assert summary["duplicate"] > 0
    assert summary["answered"] > 0.5 * summary["accepted"]
    # The breaker opens during the outage and is closed again after it.
    transitions = summary["breaker_transitions"]
    opened = [t["t"] for t in transitions if t["new"] == "open"]
    assert opened
    assert scenario["outage_start"] <= opened[0]
    assert opened[0] < scenario["outage_start"] + scenario["outage_duration"]
    assert transitions[-1]["new"] == "closed"
    assert report["samples"][-1]["breaker"] == "closed"
    # The adaptive limit falls in the outage and grows back after it.
    limit = summary["concurrency_limit"]
    assert limit["lowest_in_outage"] < limit["highest_before_outage"]
    assert limit["highest_after_recovery"] > limit["lowest_in_outage"]
    samples = report["samples"]
    assert len(samples) >= 70  # four a second
    assert {"t", "offered_rate", "answered_rate", "in_flight", "concurrency_limit"} <= set(
        samples[0]
    )
    assert summary["cpu_share_of_one_core"] < 0.5


def test_the_chart_is_written(demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = demo_run
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 30_000


def test_a_missing_extra_is_named_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "DEMO_EXTRA", ("zeroclaw_no_such_module",))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "'demo' extra is not installed" in error
    assert "pip install 'zeroclaw[demo]'" in error


@pytest.mark.parametrize("duration", ["0", "-1", "inf", "soon"])
def test_a_bad_duration_is_a_usage_error(duration: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--duration", duration]) == 2
    assert "--duration" in capsys.readouterr().err
