"""What the demo shows while it runs: a live panel in a terminal, or a plain line every few seconds.

:class:`LiveView` draws with rich (the ``demo`` extra), a well-kept terminal UI library that
redraws in place and cleans up after itself; it refreshes :data:`REFRESH_PER_SECOND` times a
second from the latest sample. :class:`PlainView` (``--no-live``, or output that is not a
terminal: a log, CI) prints one line every :data:`PLAIN_EVERY` seconds instead. Both take samples
through ``update`` (from the sampler, never blocking) and are started and stopped by the run.
"""

from __future__ import annotations

from typing import Any, Protocol, TextIO

from zeroclaw.demo.sampler import Sample
from zeroclaw.demo.scenario import DemoScenario

__all__ = ["PLAIN_EVERY", "REFRESH_PER_SECOND", "LiveView", "PlainView", "View", "plain_line"]

REFRESH_PER_SECOND = 4
#: Seconds between two lines of the plain view.
PLAIN_EVERY = 2.0

_BREAKER_STYLE = {"closed": "bold green", "half_open": "bold yellow", "open": "bold red"}


class View(Protocol):
    """What the run drives: ``start``, an ``update`` per sample, ``stop``."""

    def start(self) -> None: ...

    def update(self, sample: Sample) -> None: ...

    def stop(self) -> None: ...


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def plain_line(sample: Sample) -> str:
    """One line of the plain view for ``sample``. Pure."""
    phase = "  [provider outage]" if sample.outage else ""
    return (
        f"t={sample.t:5.1f}s  offered {sample.offered_rate:5.1f}/s  "
        f"answered {sample.answered_rate:5.1f}/s  in flight {sample.in_flight:2d}/limit "
        f"{sample.concurrency_limit:2d}  waiting {sample.provider_waiting + sample.queued:3d}  "
        f"breaker {sample.breaker:<9}  "
        f"dedup hits {sample.duplicates:4d}  rejected {sample.rejected:4d}  "
        f"p50 {_ms(sample.p50)}  p99 {_ms(sample.p99)}{phase}"
    )


class PlainView:
    """Prints :func:`plain_line` to ``out`` every :data:`PLAIN_EVERY` seconds of run time."""

    def __init__(self, out: TextIO, *, every: float = PLAIN_EVERY) -> None:
        self._out = out
        self._every = every
        self._next = every

    def start(self) -> None:
        """Say what runs. Does not block beyond the write."""
        print("zeroclaw demo: running (a line every few seconds)", file=self._out, flush=True)

    def update(self, sample: Sample) -> None:
        """Print a line when one is due. Does not block beyond the write."""
        if sample.t >= self._next:
            print(plain_line(sample), file=self._out, flush=True)
            while self._next <= sample.t:
                self._next += self._every

    def stop(self) -> None:
        """Nothing to clean up."""


class LiveView:
    """A rich panel redrawn in place on ``out`` (a terminal).

    Raises (on construction):
        ImportError: rich is not installed (the ``demo`` extra).
    """

    def __init__(self, out: TextIO, scenario: DemoScenario) -> None:
        from rich.console import Console
        from rich.live import Live

        self._scenario = scenario
        self._console = Console(file=out)
        self._latest: Sample | None = None
        self._live = Live(
            self._render(),
            console=self._console,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=False,
            get_renderable=self._render,
        )

    def _render(self) -> Any:
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        sample = self._latest
        scenario = self._scenario
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")
        table.add_column()
        if sample is None:
            table.add_row("starting", "")
            return Panel(table, title="zeroclaw demo", expand=False)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=scenario.max_concurrency, completed=sample.in_flight, width=32),
            f"{sample.in_flight} in flight / limit {sample.concurrency_limit}",
        )
        breaker = sample.breaker
        table.add_row("time", f"{sample.t:5.1f} s of {scenario.duration:g} s")
        table.add_row(
            "messages",
            f"offered {sample.offered_rate:5.1f}/s   answered {sample.answered_rate:5.1f}/s   "
            f"rejected {sample.rejected_rate:5.1f}/s",
        )
        table.add_row("provider", bar)
        table.add_row(
            "queue depth",
            f"{sample.provider_waiting} waiting for the provider, {sample.queued} for a worker",
        )
        table.add_row("breaker", f"[{_BREAKER_STYLE.get(breaker, 'bold')}]{breaker}[/]")
        table.add_row(
            "totals",
            f"offered {sample.offered}  accepted {sample.accepted}  answered {sample.answered}  "
            f"failed {sample.failed}",
        )
        table.add_row("dedup hits", str(sample.duplicates))
        table.add_row("rejections", str(sample.rejected))
        table.add_row("latency", f"p50 {_ms(sample.p50)}   p99 {_ms(sample.p99)}")
        phase = "[bold red]provider outage[/]" if sample.outage else "[green]provider up[/]"
        table.add_row("scenario", phase)
        return Panel(
            table, title="zeroclaw demo", subtitle="Ctrl-C ends the run early", expand=False
        )

    def start(self) -> None:
        """Start redrawing (rich's own refresh thread). Does not block."""
        self._live.start()

    def update(self, sample: Sample) -> None:
        """Show ``sample`` from the next refresh on. Does not block."""
        self._latest = sample

    def stop(self) -> None:
        """Draw the last state and stop redrawing. Blocks briefly (the last refresh)."""
        self._live.stop()
