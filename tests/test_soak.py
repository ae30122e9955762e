"""The soak's short form (benchmarks/soak.py): ``zeroclaw serve`` in a subprocess under a steady
50 messages a second from a load generator in another process, for 20 s; its RSS, open file
descriptors and asyncio tasks sampled every second from ``/status``. The long form (10 minutes)
and its chart are in docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

from benchmarks.soak import run_soak


async def test_a_steady_load_leaks_nothing(tmp_path: Path) -> None:
    result = await run_soak(20.0, 50.0, tmp_path)
    assert len(result.samples) >= 15
    assert result.figures["sent"] >= 900
    failed = [name for name, ok in result.checks.items() if not ok]
    assert failed == [], (failed, result.figures)
