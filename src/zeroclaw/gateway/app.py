"""``zeroclaw serve``: the channels, the provider and the processor wired together, and the server.

:func:`serve` builds, from a :class:`~zeroclaw.gateway.config.GatewayConfig`:

- the provider: the configured backend (``zeroclaw.providers.build_backend``) inside a
  ``ManagedProvider`` (rate limit, adaptive concurrency, retries);
- the conversation history (the last ``history_turns`` successful exchanges go with each call;
  ``/new`` clears the conversation and is answered without calling the provider; ``/stop``
  cancels the conversation's running turn, which ends INTERRUPTED, and is answered without
  calling the provider);
- each channel's queue mode (``[channels.NAME] queue_mode``, ``collect_window``);
- a ``ConcurrentMessageProcessor`` with the processor config, whose handler is
  :meth:`Gateway.answer`;
- the channels (by kind, from the channel registry) and the HTTP server.

It logs ``zeroclaw: listening on http://HOST:PORT`` to stderr once it serves. SIGINT or SIGTERM
starts the drain: ``/healthz`` answers 503, new messages are refused 503 with ``Retry-After``
while the listener stays up, running work gets ``gateway.shutdown_timeout`` to finish and its
replies go out, then :func:`serve` returns 0. It also returns (0) once every channel ended on its
own (the terminal at end of input) and every message was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from zeroclaw import __version__
from zeroclaw.channels import ChannelContext, build_channel
from zeroclaw.concurrency.channel_integration import (
    Channel,
    ChannelMessage,
    ConcurrentMessageProcessor,
)
from zeroclaw.gateway.config import GatewayConfig, ProviderSettings
from zeroclaw.gateway.history import ConversationHistory
from zeroclaw.gateway.intake import GatewayIntake
from zeroclaw.gateway.metrics import GatewayCollector, MessageLedger, MetricSources
from zeroclaw.gateway.server import GatewayServer, HttpChannel
from zeroclaw.providers import ManagedProvider, backend_options, build_backend
from zeroclaw.providers.managed import PAUSE_ONLY_RATE

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from zeroclaw.backends.redis.breaker import SharedBreakerDecision
    from zeroclaw.backends.redis.history import RedisHistory
    from zeroclaw.backends.redis.rate_limit import RedisRateLimiter, SharedPause
    from zeroclaw.backends.redis.scale_out import ScaleOut

__all__ = [
    "NEW_CONVERSATION_COMMAND",
    "NEW_CONVERSATION_REPLY",
    "STOP_COMMAND",
    "STOP_REPLY",
    "Gateway",
    "serve",
]

_logger = logging.getLogger("zeroclaw.gateway")

NEW_CONVERSATION_COMMAND = "/new"
NEW_CONVERSATION_REPLY = "Started a new conversation."
STOP_COMMAND = "/stop"
STOP_REPLY = "Stopped."

# The shortest send/deliver timeout: a reply that cannot be sent within it is given up (logged,
# counted). Raised to cover the slowest webhook callback (every attempt and backoff).
_MIN_SEND_TIMEOUT = 30.0
# How long the listener waits for requests still open once the processor has drained (their
# answers are ready by then; this only bounds a client that does not read its answer).
_SERVER_LINGER = 5.0
_HEALTH_CHECK_TIMEOUT = 2.0

# ProviderSettings fields a backend may take as constructor arguments, when it does.
_BACKEND_FIELDS = ("base_url", "api_key", "request_timeout")


def serve(config: GatewayConfig) -> int:
    """Run the gateway until SIGINT/SIGTERM and the drain (or until every channel ended).

    Blocks; returns the exit code: 0 after a clean stop, 1 when the listener cannot be bound or
    the processor fails to start (the reason is logged), 2 when a channel or the provider
    cannot be built from the config (a kind not available in this version, a missing extra:
    said on stderr).
    """
    try:
        gateway = Gateway(config)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"zeroclaw serve: {config.source}: {exc}", file=sys.stderr, flush=True)
        return 2
    return asyncio.run(gateway.run())


def _backend_kwargs(settings: ProviderSettings) -> dict[str, Any]:
    accepted = backend_options(settings.kind)
    kwargs: dict[str, Any] = {}
    for name in _BACKEND_FIELDS:
        value = getattr(settings, name)
        if name in accepted and value is not None:
            kwargs[name] = value
    kwargs.update(settings.options)
    return kwargs


class Gateway:
    """One gateway: its provider, history, processor, channels and server. See the module doc.

    Args:
        config: what to run.
        stdin_fd: the terminal channel's input.
        stdout: the terminal channel's output.
        extra_channels: builders of channels the config does not name, run beside the configured
            ones (the demo's simulated chat traffic): each is called once with the
            :class:`~zeroclaw.channels.ChannelContext` the configured channels get (its intake
            admits their messages) and returns the channel. One that has ``handle`` and
            ``path`` is served over HTTP.
        http: ``False`` runs without the HTTP server (no listener, no ``/metrics``): for a
            caller whose channels need none, as the demo's do.

    Raises:
        ValueError, TypeError: a channel or provider refuses its settings.
        ImportError: a channel kind or backend needs an extra that is not installed.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        stdin_fd: int = 0,
        stdout: TextIO | None = None,
        extra_channels: Sequence[Callable[[ChannelContext], Channel]] = (),
        http: bool = True,
    ) -> None:
        self.config = config
        settings = config.provider
        self.model = settings.model or settings.kind
        self.temperature = settings.temperature
        self.system_prompt = settings.system_prompt
        backend = build_backend(settings.kind, **_backend_kwargs(settings))
        # With [redis], one client for everything shared: the provider's rate limit and pause,
        # the breaker's decision, the partitions (a blocking read per owned partition).
        # The conversation history too: a conversation that changes hands keeps it.
        self.redis: Redis | None = None
        self.shared_rate: RedisRateLimiter | None = None
        self.shared_pause: SharedPause | None = None
        self.shared_history: RedisHistory | None = None
        if config.redis is not None:
            from zeroclaw.backends.redis import Keys, RedisRateLimiter, SharedPause
            from zeroclaw.backends.redis.connection import MAX_CONNECTIONS, connect
            from zeroclaw.backends.redis.history import RedisHistory

            self.redis = connect(
                config.redis.url, max_connections=config.redis.partitions + MAX_CONNECTIONS
            )
            keys = Keys(config.redis.namespace)
            rate = settings.requests_per_second or PAUSE_ONLY_RATE
            self.shared_rate = RedisRateLimiter(
                self.redis,
                keys,
                f"provider:{settings.kind}:{self.model}",
                rate=rate,
                burst=max(1.0, math.ceil(rate)),  # the local limiter's burst
            )
            if not settings.requests_per_second:
                # No rate to share, only Retry-After pauses: no round trip per request.
                self.shared_pause = SharedPause(self.shared_rate)
            self.shared_history = RedisHistory(
                self.redis, keys, settings.history_turns, ttl=config.redis.history_ttl
            )
        self.provider = ManagedProvider(
            backend,
            max_retries=settings.max_retries,
            requests_per_second=settings.requests_per_second,
            max_concurrency=settings.max_concurrency,
            limiter_window=settings.limiter_window,
            shared_rate_limit=self.shared_pause or self.shared_rate,
        )
        self.history = ConversationHistory(settings.history_turns)
        self.ledger = MessageLedger()
        self._kinds = {spec.name: spec.kind for spec in config.channels}
        processor_config = dataclasses.replace(
            config.processor,
            channel_queue_modes={
                spec.name: (spec.queue_mode, spec.collect_window)
                for spec in config.channels
                if spec.queue_mode != "followup"
            },
        )
        if config.redis is not None:
            # Scale-out dedups at ingress, gateway-wide; entries read again after a takeover
            # must not be refused as duplicates by the owner's own memory.
            processor_config = dataclasses.replace(processor_config, enable_dedup=False)
        server_settings = config.gateway
        # The processor is made before the channels (they submit to it through the intake), and
        # its send timeout must cover the slowest channel's delivery, known once they exist.
        self.intake = GatewayIntake(None, self.ledger)
        context = ChannelContext(
            intake=self.intake,
            max_body_bytes=server_settings.max_body_bytes,
            stdin_fd=stdin_fd,
            stdout=stdout if stdout is not None else sys.stdout,
        )
        self.channels: list[Channel] = [build_channel(spec, context) for spec in config.channels]
        self.channels.extend(build(context) for build in extra_channels)
        self.http = http
        budgets = [getattr(c, "delivery_budget", 0.0) for c in self.channels]
        self.processor = ConcurrentMessageProcessor(
            processor_config,
            model=self.model,
            temperature=self.temperature,
            handler=self.answer,
            send_timeout=max(_MIN_SEND_TIMEOUT, *budgets),
            drain_timeout=server_settings.shutdown_timeout,
            handle_signals=False,
            interrupt_command=STOP_COMMAND,
        )
        self.scale_out: ScaleOut | None = None
        if config.redis is not None:
            from zeroclaw.backends.redis.scale_out import ScaleOut

            dedup_key = config.processor.dedup_key
            self.scale_out = ScaleOut(
                config.redis,
                self.processor,
                self.channels,
                client=self.redis,
                dedup=(
                    None
                    if not config.processor.enable_dedup
                    else ("content" if dedup_key == "content" else "message_id")
                ),
            )
            self.intake.attach(self.scale_out)
        else:
            self.intake.attach(self.processor)
        self.collector = GatewayCollector(
            MetricSources(
                processor=self.processor.stats,
                breakers=self.processor.circuit_breaker_stats,
                provider=self.provider.stats,
                channels=self.processor.channel_stats,
                ledger=self.ledger,
                scale_out=self.scale_out.stats if self.scale_out is not None else None,
            )
        )
        http_channels: list[HttpChannel] = [
            c  # type: ignore[misc]
            for c in self.channels
            if hasattr(c, "handle") and hasattr(c, "path")
        ]
        self.server = GatewayServer(
            host=server_settings.host,
            port=server_settings.port,
            channels=http_channels,
            metrics=self.collector.render,
            status=self.status,
            max_body_bytes=server_settings.max_body_bytes,
            shutdown_timeout=min(_SERVER_LINGER, server_settings.shutdown_timeout),
            client_timeout=server_settings.client_timeout,
        )
        self.shared_breaker: SharedBreakerDecision | None = None
        self._started_at = time.monotonic()
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the handler

    @staticmethod
    def conversation_of(message: ChannelMessage) -> Hashable:
        """The history key of ``message``: channel, reply target (else sender), thread."""
        return (message.channel, message.reply_to, message.thread_id)

    async def answer(self, message: ChannelMessage) -> str:
        """The reply to ``message``, with the conversation's history; ``/new`` clears it, ``/stop``
        (whose arrival cancelled the running turn) is acknowledged.

        Waits for the provider. Raises what the provider raises (``ProviderError``); the
        exchange is recorded only when it succeeds.
        """
        conversation = self.conversation_of(message)
        command = message.content.strip()
        shared = self.shared_history
        if command == NEW_CONVERSATION_COMMAND:
            if shared is not None:
                await shared.clear(conversation)  # raises: the turn fails, /new not confirmed
            else:
                self.history.clear(conversation)
            return NEW_CONVERSATION_REPLY
        if command == STOP_COMMAND:
            return STOP_REPLY
        if shared is not None:
            messages = await shared.messages_for(conversation, self.system_prompt, message.content)
        else:
            messages = self.history.messages_for(conversation, self.system_prompt, message.content)
        reply = await self.provider.complete(
            messages, model=self.model, temperature=self.temperature
        )
        if shared is not None:
            await shared.record(conversation, message.content, reply)
        else:
            self.history.record(conversation, message.content, reply)
        return reply

    # ------------------------------------------------------------------ running

    async def run(self) -> int:
        """Serve until stopped (see :func:`serve`); returns the exit code. Blocks until then."""
        loop = asyncio.get_running_loop()
        channels = (
            self.scale_out.channels_for_processor() if self.scale_out is not None else self.channels
        )
        processing = loop.create_task(
            self.processor.start(channels, self.provider, self.system_prompt),
            name="gateway:processor",
        )
        started = loop.create_task(self.processor.wait_started())
        await asyncio.wait([processing, started], return_when=asyncio.FIRST_COMPLETED)
        if not started.done() or started.exception() is not None:
            started.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await started
            if not processing.done():
                await self.processor.stop()
            with contextlib.suppress(Exception):
                await processing
            _logger.error("the processor stopped before it started", exc_info=_error(processing))
            await self._close()
            return 1
        try:
            if self.http:
                await self.server.start()
        except OSError as exc:
            _logger.error(
                "cannot listen on %s:%s: %s",
                self.config.gateway.host,
                self.config.gateway.port,
                exc,
            )
            await self.processor.stop()
            with contextlib.suppress(Exception):
                await processing
            await self._close()
            return 1
        if self.scale_out is not None:
            self._share_the_breaker()
            if self.shared_pause is not None:
                self.shared_pause.start()
            await self.scale_out.start()
        if self.http:
            print(f"zeroclaw: listening on {self.server.url}", file=sys.stderr, flush=True)
        installed = self._install_signal_handlers(loop)
        try:
            await processing
        except Exception:
            _logger.exception("the processor failed")
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            self._begin_drain(None)
            await self._close()
        _logger.info("stopped")
        return 0

    def _share_the_breaker(self) -> None:
        """With [redis]: the provider breaker's open/probe decision is the gateway's."""
        from zeroclaw.backends.redis import Keys
        from zeroclaw.backends.redis.breaker import SharedBreakerDecision

        running = self.processor.processor
        breaker = running.breaker if running is not None else None
        if breaker is None or self.redis is None or self.config.redis is None:
            return  # enable_circuit_breaker = false: nothing to share
        name = next(iter(self.processor.breakers.names()), f"{self.provider.name}:{self.model}")
        self.shared_breaker = SharedBreakerDecision(
            self.redis, Keys(self.config.redis.namespace), name, breaker
        )
        self.shared_breaker.start()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._begin_drain, signum)
            except (ValueError, RuntimeError, NotImplementedError):
                continue  # not the main thread: whoever runs us stops us
            installed.append(signum)
        return installed

    def _begin_drain(self, signum: int | None) -> None:
        """Refuse new messages, turn ``/healthz`` 503, ask the processor to drain. Idempotent."""
        if self._stopping:
            if signum is not None:
                _logger.warning(
                    "%s again: already draining (at most %gs)",
                    signal.Signals(signum).name,
                    self.config.gateway.shutdown_timeout,
                )
            return
        self._stopping = True
        timeout = self.config.gateway.shutdown_timeout
        if signum is not None:
            _logger.info(
                "received %s: draining (at most %gs); new messages are refused",
                signal.Signals(signum).name,
                timeout,
            )
        self.intake.begin_draining(timeout)
        self.server.begin_draining()
        if self.scale_out is not None:
            self.scale_out.stop_reading()
        self._stop_task = asyncio.get_running_loop().create_task(self.processor.stop())

    async def _close(self) -> None:
        if self.shared_breaker is not None:
            await self.shared_breaker.aclose()
        if self.shared_pause is not None:
            await self.shared_pause.aclose()
        if self.scale_out is not None:
            await self.scale_out.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        for channel in self.channels:
            close = getattr(channel, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    _logger.exception("closing channel %r failed", channel.name)
        await self.server.stop()
        await self.provider.aclose()

    # ------------------------------------------------------------------ /status

    async def status(self) -> dict[str, Any]:
        """The ``/status`` document (docs/gateway.md). Waits for the channels' health checks."""
        stats = self.processor.stats()
        nested = ("worker_pool", "backpressure", "circuit_breaker", "deduplicator")
        processor: dict[str, Any] | None = None
        if stats is not None:
            processor = {
                f.name: getattr(stats, f.name)
                for f in dataclasses.fields(stats)
                if f.name not in nested
            }
        counters = self.processor.channel_stats()
        ledger = self.ledger.snapshot()
        channels: dict[str, Any] = {}
        for channel in self.channels:
            count = counters.get(channel.name)
            channels[channel.name] = {
                "kind": self._kinds.get(channel.name, getattr(channel, "kind", "unknown")),
                "healthy": await _healthy(channel),
                "received": count.received if count else 0,
                "sent": count.sent if count else 0,
                "send_failures": count.send_failures if count else 0,
                "messages": ledger[channel.name].outcomes if channel.name in ledger else {},
            }
        provider = self.provider.stats()
        return {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self._started_at, 3),
            "draining": self._stopping,
            "processor": processor,
            "pool": stats.worker_pool if stats else None,
            "backpressure": stats.backpressure if stats else None,
            "dedup": stats.deduplicator if stats else None,
            "breakers": self.processor.circuit_breaker_stats(),
            "provider": {
                "name": self.provider.name,
                "model": self.model,
                "calls": provider.calls,
                "successes": provider.successes,
                "failures": provider.failures,
                "errors_by_class": provider.errors_by_class,
                "retries": provider.retries,
                "requests_by_status": provider.requests_by_status,
                "concurrency_limit": provider.concurrency_limit,
                "in_flight": provider.in_flight,
            },
            "conversations": len(self.history) if self.shared_history is None else None,
            "redis": _scale_out_status(
                self.scale_out, self.shared_rate, self.shared_breaker, self.shared_history
            ),
            "process": process_figures(),
            "channels": channels,
        }

    def __repr__(self) -> str:
        return f"<Gateway {self.server.url} channels={[c.name for c in self.channels]}>"


def process_figures() -> dict[str, int | None]:
    """The gateway process's own resources: what a soak run watches for leaks. Does not block.

    ``rss_bytes`` and ``open_fds`` are read from ``/proc`` (``None`` where there is none);
    ``asyncio_tasks`` counts the event loop's tasks (call it inside the loop).
    """
    rss: int | None = None
    fds: int | None = None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    return {"rss_bytes": rss, "open_fds": fds, "asyncio_tasks": len(asyncio.all_tasks())}


def _scale_out_status(
    scale_out: ScaleOut | None,
    rate: RedisRateLimiter | None,
    breaker: SharedBreakerDecision | None,
    history: RedisHistory | None,
) -> dict[str, Any] | None:
    """``/status``'s ``redis``: ``None`` without ``[redis]``. ``rate_limit`` and ``breaker``
    say whether the shared limit and decision are in force (``shared``/``connected``) or each
    process falls back to its own."""
    if scale_out is None:
        return None
    stats = scale_out.stats()
    document = dataclasses.asdict(stats)
    document["owned"] = list(stats.owned)
    document["rate_limit"] = dataclasses.asdict(rate.stats()) if rate is not None else None
    document["breaker"] = dataclasses.asdict(breaker.stats()) if breaker is not None else None
    document["history"] = dataclasses.asdict(history.stats()) if history is not None else None
    return document


async def _healthy(channel: Channel) -> bool:
    try:
        async with asyncio.timeout(_HEALTH_CHECK_TIMEOUT):
            return bool(await channel.health_check())
    except Exception:
        return False


def _error(task: asyncio.Task[None]) -> BaseException | None:
    if task.cancelled():
        return None
    return task.exception()
