"""Queue modes end to end: ``zeroclaw serve --config F`` in a subprocess, a webhook channel per
mode, a real aiohttp client on loopback.

- ``queue_mode = "collect"``: three lines sent 100 ms apart are one LLM call; the first two
  requests are answered ``merged`` (naming the third), the third with the one reply.
- ``queue_mode = "interrupt"``: a message sent while the slow simulated provider answers an
  earlier one cancels it (``interrupted``) and is answered itself.
- ``/stop`` (any mode): cancels the running turn; ``/stop`` is answered ``Stopped.``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.gateway_process import Served, start_serve, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONFIG = """
[gateway]
port = 0
[provider]
kind = "simulated"
base_latency = 2.0
latency_sigma = 0.0
[channels.collect]
kind = "webhook"
allowed_users = ["*"]
queue_mode = "collect"
collect_window = 0.5
[channels.interrupt]
kind = "webhook"
allowed_users = ["*"]
queue_mode = "interrupt"
[channels.plain]
kind = "webhook"
allowed_users = ["*"]
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    config = write_config(tmp_path_factory.mktemp("modes"), CONFIG)
    process = await start_serve(config)
    try:
        yield process
    finally:
        assert await process.stop() == 0, process.log


async def post(
    session: aiohttp.ClientSession, served: Served, channel: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{served.base}/channels/{channel}", json=body) as response:
        return response.status, await response.json()


async def test_collect_three_lines_are_one_call_and_one_reply(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        requests = []
        for n, line in enumerate(["hi", "quick question", "how do I reset it?"]):
            body = {"sender": "carol", "content": line, "id": f"col-{n}"}
            requests.append(asyncio.ensure_future(post(session, served, "collect", body)))
            await asyncio.sleep(0.1)  # a user typing: the gaps are the scenario, not a wait
        answers = await asyncio.wait_for(asyncio.gather(*requests), 30)
    assert answers[0] == (200, {"id": "col-0", "status": "merged", "merged_into": "col-2"})
    assert answers[1] == (200, {"id": "col-1", "status": "merged", "merged_into": "col-2"})
    status, last = answers[2]
    assert status == 200
    assert last == {
        "id": "col-2",
        "status": "success",
        "reply": "simulated reply to: hi\nquick question\nhow do I reset it?",
    }


async def _until_running(session: aiohttp.ClientSession, served: Served) -> None:
    """Poll /status until the provider has a call in flight."""
    for _ in range(200):
        async with session.get(f"{served.base}/status") as response:
            if (await response.json())["provider"]["in_flight"] >= 1:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the provider never got the call")


async def _second_during_first(
    session: aiohttp.ClientSession,
    served: Served,
    channel: str,
    sender: str,
    first: str,
    second: str,
) -> tuple[tuple[int, dict[str, Any]], tuple[int, dict[str, Any]]]:
    """Send ``first``; once the provider has it, send ``second``; both answers."""
    running = asyncio.ensure_future(
        post(session, served, channel, {"sender": sender, "content": first})
    )
    await _until_running(session, served)
    later = await asyncio.wait_for(
        post(session, served, channel, {"sender": sender, "content": second}), 30
    )
    return await asyncio.wait_for(running, 30), later


async def test_interrupt_a_correction_cancels_the_running_answer(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        (status, body), second = await _second_during_first(
            session, served, "interrupt", "dan", "reset the router", "no, the modem"
        )
    assert (status, body["status"]) == (200, "interrupted")
    assert second[0] == 200
    assert second[1]["reply"] == "simulated reply to: no, the modem"


async def test_stop_cancels_the_running_turn_in_followup_mode(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        (status, body), stopped = await _second_during_first(
            session, served, "plain", "erin", "a long essay", "/stop"
        )
        assert (status, body["status"]) == (200, "interrupted")
        assert stopped[0] == 200
        assert stopped[1]["reply"] == "Stopped."
        async with session.get(f"{served.base}/metrics") as response:
            metrics = await response.text()
    assert 'zeroclaw_messages_total{channel="plain",outcome="interrupted"} 1.0' in metrics
