"""End to end: a Slack channel in ``python -m zeroclaw serve --config F``, a provider that takes
5 s (the simulated backend, ``base_latency = 5``, no spread), the fake Slack Web API on loopback,
and events signed with the real scheme.

Slack retries an event that is not answered 2xx within 3 s, so the acknowledgement must not wait
for the LLM: each event is answered in under 1 s while its reply comes ~5 s later.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.slack_api import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    dm_event,
    mention_event,
    signed_headers,
    slack_error,
)
from tests.gateway_process import start_serve, until, write_config

PROVIDER_SECONDS = 5.0


def config_text(api_base: str) -> str:
    return f"""
[gateway]
port = 0
shutdown_timeout = 5.0

[processor]
processing_timeout = 30.0

[provider]
kind = "simulated"
base_latency = {PROVIDER_SECONDS}
latency_sigma = 0.0

[channels.slack]
bot_token = "{BOT_TOKEN}"
signing_secret = "{SIGNING_SECRET}"
api_base = "{api_base}"
allowed_users = ["U0ALICE"]
"""


async def _deliver(
    session: aiohttp.ClientSession, url: str, envelope: dict[str, Any], retry: int | None = None
) -> tuple[int, Any, float]:
    body = json.dumps(envelope).encode()
    started = time.monotonic()
    async with session.post(url, data=body, headers=signed_headers(body, retry_num=retry)) as r:
        answer = await r.json()
        return r.status, answer, time.monotonic() - started


def _metric(text: str, family: str, **labels: str) -> float:
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_slack_events_are_acked_at_once_and_answered_once_in_their_thread(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, aiohttp.ClientSession() as session:
        served = await start_serve(write_config(tmp_path, config_text(slack.base_url)))
        try:
            url = served.base + "/channels/slack"
            dm = dm_event("hello", event_id="EvE2E1", ts="1700000100.000100")
            first = await _deliver(session, url, dm)
            retries = [await _deliver(session, url, dm, retry=n) for n in (1, 2)]
            mention = mention_event("in a thread", event_id="EvE2E2", ts="1700000200.000200")
            second = await _deliver(session, url, mention)
            for status, answer, elapsed in (first, *retries, second):
                assert status == 200, answer
                assert elapsed < 1.0, f"the ack took {elapsed:.2f}s"
            assert [answer["status"] for _, answer, _ in (first, *retries, second)] == [
                "accepted",
                "duplicate",
                "duplicate",
                "accepted",
            ]
            assert slack.posts == []  # the provider is still thinking

            await slack.wait_for_posts(2, timeout=PROVIDER_SECONDS * 6)
            by_channel = {post["channel"]: post for post in slack.posts}
            assert set(by_channel) == {"D0DM", "C0GENERAL"}
            assert "thread_ts" not in by_channel["D0DM"]
            assert by_channel["C0GENERAL"]["thread_ts"] == "1700000200.000200"
            assert all(post["text"] for post in slack.posts)

            # ok: false from chat.postMessage is a send failure, logged and counted.
            slack.script("chat.postMessage", slack_error("not_in_channel"))
            third = await _deliver(session, url, dm_event("x", event_id="EvE2E3", ts="3.3"))
            assert third[0] == 200

            async def failure_counted() -> bool:
                async with session.get(served.base + "/metrics") as response:
                    text = await response.text()
                failures = "zeroclaw_channel_send_failures_total"
                return _metric(text, failures, channel="slack") == 1.0

            await until(failure_counted, timeout=PROVIDER_SECONDS * 6, what="the send failure")
            async with session.get(served.base + "/status") as response:
                status = (await response.json())["channels"]["slack"]
            assert (status["kind"], status["healthy"]) == ("slack", True)
            assert (status["received"], status["sent"], status["send_failures"]) == (3, 2, 1)
            assert len(slack.posts) == 2  # the three deliveries of the DM were answered once
        finally:
            code = await served.stop()
        assert code == 0, served.log()
        assert "not_in_channel" in served.log()


async def test_two_processes_behind_one_slack_app_answer_each_event_once(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    """Scale-out: Slack delivers an event to one process and its retries to the other (a load
    balancer does that); each event is posted once, in its thread, by whichever process owns
    the conversation."""
    async with FakeSlack() as slack, aiohttp.ClientSession() as session:
        text = config_text(slack.base_url).replace(
            f"base_latency = {PROVIDER_SECONDS}", "base_latency = 0.5"
        )
        text += f'\n[redis]\nurl = "{redis_url}"\nnamespace = "{namespace}"\npartitions = 4\n'
        path = write_config(tmp_path, text)
        processes = [await start_serve(path), await start_serve(path)]
        try:
            urls = [served.base + "/channels/slack" for served in processes]
            events = [
                dm_event(f"dm {n}", event_id=f"EvScale{n}", channel=f"D0DM{n}", ts=f"{n}.0001")
                for n in range(6)
            ]
            events.append(mention_event("threaded", event_id="EvScaleM", ts="77.0007"))
            for index, event in enumerate(events):
                status, answer, _ = await _deliver(session, urls[index % 2], event)
                assert (status, answer["status"]) == (200, "accepted"), answer
                status, answer, _ = await _deliver(session, urls[(index + 1) % 2], event, retry=1)
                assert (status, answer["status"]) == (200, "duplicate"), answer
            await slack.wait_for_posts(len(events), timeout=30)

            async def settled() -> bool:
                for served in processes:
                    async with session.get(served.base + "/status") as response:
                        redis = (await response.json())["redis"]
                    if redis["pending"] or redis["lag"]:
                        return False
                return True

            await until(settled, timeout=30, what="every entry answered")
            by_channel = {post["channel"]: post for post in slack.posts}
            assert len(slack.posts) == len(events)  # once each
            assert set(by_channel) == {f"D0DM{n}" for n in range(6)} | {"C0GENERAL"}
            assert by_channel["C0GENERAL"]["thread_ts"] == "77.0007"
        finally:
            codes = [await served.stop() for served in processes]
        assert codes == [0, 0], [served.log() for served in processes]
