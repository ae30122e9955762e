"""The full message pipeline vs a hand-written asyncio baseline.

Ours: ``MessageProcessor.process_message`` (dedup + breaker + backpressure + lanes + pool, with the
default 30 s ``processing_timeout``) for every message, results read from ``responses``. Baseline:
a bounded ``asyncio.Queue``, the same number of workers, one future per message, no dedup, no
breaker, no ordering, no timeout. Target (issue 6): at most 2.5×
the baseline's cost per message, and over 30 000 messages/s.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import time
from typing import Any

from benchmarks.harness import Report, interleave, run_group
from zeroclaw.concurrency.channel_integration import (
    ChannelMessage,
    MessageProcessor,
    MessageProcessorConfig,
)

GROUP = "pipeline"
WORKERS = 4
BOUND = 1000


async def noop_handler(message: ChannelMessage) -> str:
    return message.content


def make_messages(count: int, conversations: int) -> list[ChannelMessage]:
    return [
        ChannelMessage(
            id=str(i),
            sender=f"user{i % conversations}",
            content="hi",
            channel="webhook",
            timestamp=0.0,
        )
        for i in range(count)
    ]


async def pipeline_round(
    messages: list[ChannelMessage],
    *,
    dedup: bool = True,
    breaker: bool = True,
    queue_mode: str = "followup",
) -> float:
    """Seconds per message through a fresh processor (with dedup and the breaker unless told).

    No cap on the messages waiting per conversation: every message is processed (with the
    default cap of 20, a conversation's burst past it would be refused, and the round would not
    be the same work).
    """
    config = MessageProcessorConfig(
        worker_pool_size=WORKERS,
        task_queue_size=BOUND,
        max_concurrent_requests=BOUND,
        dedup_max_entries=max(len(messages), 1),
        enable_dedup=dedup,
        enable_circuit_breaker=breaker,
        max_pending_per_conversation=0,
        queue_mode=queue_mode,  # type: ignore[arg-type]
        collect_window=0.0,
    )
    processor = MessageProcessor(config)

    async def drain() -> int:
        delivered = 0
        async for _ in processor.responses:
            delivered += 1
        return delivered

    start = time.perf_counter()
    reader = asyncio.ensure_future(drain())
    for message in messages:
        await processor.process_message("webhook", message, noop_handler)
    await processor.shutdown()
    delivered = await reader
    elapsed = time.perf_counter() - start
    assert delivered == len(messages), (delivered, len(messages))
    return elapsed / len(messages)


async def baseline_round(messages: list[ChannelMessage]) -> float:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[ChannelMessage, asyncio.Future[Any]]] = asyncio.Queue(BOUND)

    async def worker() -> None:
        while True:
            message, future = await queue.get()
            try:
                future.set_result(await noop_handler(message))
            except Exception as exc:
                future.set_exception(exc)

    workers = [loop.create_task(worker()) for _ in range(WORKERS)]
    start = time.perf_counter()
    futures = []
    for message in messages:
        future = loop.create_future()
        await queue.put((message, future))
        futures.append(future)
    for future in futures:
        await future
    elapsed = time.perf_counter() - start
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return elapsed / len(messages)


async def run(report: Report, quick: bool) -> None:
    count = 10_000 if quick else 30_000
    rounds = 3 if quick else 5
    messages = make_messages(count, 1000)
    timings = await interleave(
        {
            "MessageProcessor (1000 conversations)": functools.partial(pipeline_round, messages),
            "asyncio.Queue + workers + futures": functools.partial(baseline_round, messages),
        },
        rounds,
    )
    ours = timings["MessageProcessor (1000 conversations)"]
    report.ratio(
        GROUP,
        ours,
        timings["asyncio.Queue + workers + futures"],
        target=2.5,
        note=f"{count} no-op messages, {WORKERS} workers",
    )
    report.figure(GROUP, "pipeline throughput", 1.0 / ours.median, "messages/s", "target > 30 000")
    await stage_costs(report, messages, rounds)
    await queue_mode_costs(report, messages, rounds)
    for conversations in (10, 1000, 100_000):
        scaled = make_messages(count if conversations < count else conversations, conversations)
        timing = await interleave(
            {"scale": functools.partial(pipeline_round, scaled)}, max(1, rounds - 2)
        )
        report.figure(
            GROUP,
            f"throughput, {conversations} conversations",
            1.0 / timing["scale"].median,
            "messages/s",
            f"{len(scaled)} messages",
        )
    await memory_figures(report, 100_000 if quick else 1_000_000)


async def queue_mode_costs(report: Report, messages: list[ChannelMessage], rounds: int) -> None:
    """What collect and interrupt cost per message, against followup in the same run.

    ``collect_window = 0``: only messages that arrive while their conversation's turn runs are
    merged. With 1000 conversations and 1000 messages in flight at most, a conversation rarely
    has a second message waiting: the mode's own cost. With 10 conversations a hundred wait in
    each, and collect answers them in batches (one handler call each); interrupt supersedes
    all but the newest.
    """
    for conversations in (1000, 10):
        spread = make_messages(len(messages), conversations)
        timings = await interleave(
            {
                mode: functools.partial(pipeline_round, spread, queue_mode=mode)
                for mode in ("followup", "collect", "interrupt")
            },
            rounds,
        )
        for mode in ("collect", "interrupt"):
            report.ratio(
                GROUP,
                timings[mode],
                timings["followup"],
                note=f"{conversations} conversations, queue_mode={mode} vs followup, per message",
            )


async def stage_costs(report: Report, messages: list[ChannelMessage], rounds: int) -> None:
    """What dedup and the breaker add to a message: the pipeline with each switched off."""
    variants = {
        "all stages": (True, True),
        "without dedup": (False, True),
        "without the breaker": (True, False),
        "without dedup and breaker": (False, False),
    }
    timings = await interleave(
        {
            name: functools.partial(pipeline_round, messages, dedup=dedup, breaker=breaker)
            for name, (dedup, breaker) in variants.items()
        },
        rounds,
    )
    for name, timing in timings.items():
        report.figure(GROUP, f"per message, {name}", timing.median * 1e6, "µs")


def rss_bytes() -> int:
    """The resident set size of this process now (Linux), in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def memory_figures(report: Report, total: int) -> None:
    """RSS of one processor at rest and after ``total`` messages over 10 000 conversations."""
    gc.collect()
    before = rss_bytes()
    config = MessageProcessorConfig(
        worker_pool_size=WORKERS,
        task_queue_size=BOUND,
        max_concurrent_requests=BOUND,
    )
    processor = MessageProcessor(config)
    gc.collect()
    at_rest = rss_bytes()

    async def drain() -> None:
        async for _ in processor.responses:
            pass

    reader = asyncio.ensure_future(drain())
    for i in range(total):
        message = ChannelMessage(
            id=str(i), sender=f"user{i % 10_000}", content="hi", channel="webhook", timestamp=0.0
        )
        await processor.process_message("webhook", message, noop_handler)
    gc.collect()
    after = rss_bytes()
    await processor.shutdown()
    await reader
    report.figure(GROUP, "process RSS before the processor", before / 2**20, "MiB")
    report.figure(GROUP, "process RSS, processor at rest", at_rest / 2**20, "MiB")
    report.figure(
        GROUP,
        f"process RSS after {total} messages",
        after / 2**20,
        "MiB",
        f"dedup holds up to {config.dedup_max_entries} keys (ttl {config.dedup_ttl:g}s)",
    )


if __name__ == "__main__":
    run_group(run)
