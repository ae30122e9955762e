"""Drive ``zeroclaw demo``'s live view in a real terminal (tmux) and check what it shows.

    python -m benchmarks.demo_live_tmux [--duration 20] [--interrupt-at 12] [--capture FILE]

Starts the demo, with its live view, in a detached tmux session of 110x32 cells; captures the
pane (``tmux capture-pane``) a few times while it runs and checks that the panel is there and
updates (the run time it shows moves on); sends Ctrl-C (``tmux send-keys C-c``) at
``--interrupt-at`` seconds and checks that the demo ends the run early, prints the report marked
interrupted, writes report.json and report.png, and exits 0. Prints the captures and the live
run's CPU share (report.json's ``cpu_share_of_one_core``: the refresh thread of the view
included); ``--capture FILE`` keeps the mid-run capture (docs/demo.md shows one). Exits non-zero
when a check fails. Not a test: it needs tmux (Debian's ``tmux`` package).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SESSION = "zeroclaw-demo-live"
WIDTH, HEIGHT = 110, 32


def _tmux(*args: str) -> str:
    done = subprocess.run(["tmux", *args], capture_output=True, text=True, check=True)
    return done.stdout


def _capture() -> str:
    return _tmux("capture-pane", "-p", "-t", SESSION)


def _shown_time(capture: str) -> float | None:
    for line in capture.splitlines():
        cells = line.strip("│ ").split()
        if len(cells) >= 3 and cells[0] == "time":
            try:
                return float(cells[1])
            except ValueError:
                return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--interrupt-at", type=float, default=12.0)
    parser.add_argument("--capture", type=Path, help="write the mid-run capture here")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is not installed (apt-get install tmux)", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="zeroclaw-demo-live-"))
    status = out / "exit-code"
    command = (
        f"{sys.executable} -m zeroclaw demo --duration {args.duration:g} --out {out}; "
        f"echo $? > {status}; sleep 600"
    )
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True, check=False)
    _tmux("new-session", "-d", "-s", SESSION, "-x", str(WIDTH), "-y", str(HEIGHT), command)
    problems: list[str] = []
    captures: list[tuple[float, str]] = []
    try:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < args.interrupt_at:
            time.sleep(min(3.0, args.interrupt_at - elapsed))
            captures.append((time.monotonic() - started, _capture()))
        _tmux("send-keys", "-t", SESSION, "C-c")
        deadline = time.monotonic() + 60
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        final = _capture()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True, check=False)
    shown = [_shown_time(text) for _, text in captures]
    if not all("zeroclaw demo" in text and "breaker" in text for _, text in captures):
        problems.append("a capture lacks the live panel")
    numbers = [t for t in shown if t is not None]
    if len(numbers) < 2 or numbers != sorted(numbers) or numbers[0] == numbers[-1]:
        problems.append(f"the run time shown does not move on: {shown}")
    if not status.exists():
        problems.append("the demo did not exit within 60 s of Ctrl-C")
    elif status.read_text().strip() != "0":
        problems.append(f"the demo exited {status.read_text().strip()}")
    if "zeroclaw demo report (interrupted)" not in final and "verdict:" not in final:
        problems.append("no report after Ctrl-C")
    report_path = out / "report.json"
    cpu_share = None
    if report_path.exists():
        report = json.loads(report_path.read_text())
        summary = report["summary"]
        cpu_share = summary["cpu_share_of_one_core"]
        if not summary["interrupted"]:
            problems.append("report.json does not say the run was interrupted")
        if not report["passed"]:
            problems.append("the verdict failed")
    else:
        problems.append("no report.json")
    if not (out / "report.png").exists():
        problems.append("no report.png")
    for at, text in captures:
        print(f"--- capture at {at:.1f} s ---\n{text.rstrip()}")
    print(f"--- after Ctrl-C ---\n{final.rstrip()}")
    print(f"live run: {cpu_share!r} of one core (report.json cpu_share_of_one_core)")
    if args.capture is not None and captures:
        middle = captures[len(captures) // 2][1]
        args.capture.write_text(
            "\n".join(line.rstrip() for line in middle.splitlines() if line.strip()) + "\n"
        )
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
