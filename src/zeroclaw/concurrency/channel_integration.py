"""The message pipeline: chat channels in, provider replies out.

Each message goes through::

    dedup claim → circuit breaker → backpressure admission → its conversation's lane
        → priority worker pool → handler under processing_timeout → responses

:class:`MessageProcessor` is that pipeline; :class:`ConcurrentMessageProcessor` runs it between
real channels and an LLM provider. What the Rust original got wrong and this gets right
(from its own defect list): ``process_message`` returns as soon as the message is
admitted or refused, never reports success for a failure, never loses a message silently, keys
dedup on the platform's message id (so a user's second "ok" is answered), and releases the dedup
claim of a message that was refused or failed (so the platform's redelivery is processed); the
breaker sees the handler's real outcomes; and messages really run concurrently, one at a time per
conversation (aiogram's per-chat isolation, OpenClaw's lanes).

Lanes: messages of one conversation (by default channel + reply target) run one at a time, in
arrival order; different conversations run in parallel on the pool; between conversations the pool
runs the more urgent first. A lane feeds the pool only when the pool's queue has room (counting
the idle workers about to take a message from it), so an accepted message is never shed by the
pool; lanes waiting for room are served most urgent first, then in the order they became ready
(round robin between conversations).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import heapq
import inspect
import itertools
import logging
import math
import signal
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, NamedTuple, cast

from zeroclaw.concurrency._clock import Cancellable, Clock, call_later, resolve_clock
from zeroclaw.concurrency._mypyc import describe_compiled, mypyc_attr
from zeroclaw.concurrency._validate import to_positive_number, to_seconds, to_timeout
from zeroclaw.concurrency.backpressure import Backpressure, BackpressureStats, Permit
from zeroclaw.concurrency.channels import Channel, ChannelMessage, DeliveringChannel, Provider
from zeroclaw.concurrency.circuit_breaker import (
    CallTicket,
    CircuitBreaker,
    CircuitBreakerGroup,
    CircuitBreakerStats,
    CircuitConfig,
    CircuitState,
)
from zeroclaw.concurrency.dedup_store import DedupStore
from zeroclaw.concurrency.deduplicator import DedupKey, Deduplicator, DedupStats
from zeroclaw.concurrency.errors import PoolClosed, Rejected
from zeroclaw.concurrency.worker_pool import (
    TaskPriority,
    TaskStatus,
    WorkerPool,
    WorkerPoolStats,
    _Job,
)

__all__ = [
    "Admission",
    "AdmissionKind",
    "Channel",
    "ChannelCounters",
    "ChannelMessage",
    "ConcurrentMessageProcessor",
    "DeliveringChannel",
    "MessageProcessor",
    "MessageProcessorConfig",
    "MessageResult",
    "MessageResultKind",
    "Notices",
    "ProcessedMessage",
    "ProcessorStats",
    "Provider",
    "channel_priority",
]

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- messages and peers


# ---------------------------------------------------------------------------- results


class AdmissionKind(enum.StrEnum):
    """What :meth:`MessageProcessor.process_message` did with a message (``str()``: its value)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of :meth:`MessageProcessor.process_message`.

    ``reason`` says why a message was refused (``"circuit open"``, ``"overloaded"``,
    ``"shutting down"``); ``retry_after`` is when a retry can succeed, in seconds, if known.
    """

    kind: AdmissionKind
    reason: str | None = None
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        """``True`` when the message will produce a :class:`ProcessedMessage`."""
        return self.kind is AdmissionKind.ACCEPTED


# Admissions without a reason are immutable and alike: one instance each (hot path).
_ACCEPTED = Admission(AdmissionKind.ACCEPTED)
_DUPLICATE = Admission(AdmissionKind.DUPLICATE)


class MessageResultKind(enum.StrEnum):
    """How an accepted message ended (``str()``: its value)."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    #: Collected into a later message's turn (``queue_mode="collect"``): that message's result
    #: is the answer; ``merged_into`` names it.
    MERGED = "merged"
    #: Its turn was cancelled, or it was superseded before it ran, by a newer message of its
    #: conversation (``queue_mode="interrupt"``) or by :meth:`MessageProcessor.interrupt`.
    INTERRUPTED = "interrupted"


class MessageResult(NamedTuple):
    """The outcome of an accepted message (immutable): ``value`` on SUCCESS, ``error`` otherwise.

    ``wait_time`` is the seconds it waited for a worker after it reached the pool, ``run_time`` the
    seconds its handler ran; ``merged_into`` is, for a MERGED message, the id of the message whose
    turn answered it. (A NamedTuple: one is built per message on the hot path.)
    """

    kind: MessageResultKind
    value: str | None = None
    error: BaseException | None = None
    wait_time: float = 0.0
    run_time: float = 0.0
    merged_into: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` when the handler succeeded (``kind`` is ``SUCCESS``)."""
        return self.kind is MessageResultKind.SUCCESS


class ProcessedMessage(NamedTuple):
    """One accepted message and its result: ``for channel, message, result in ...``."""

    channel: Channel | str
    message: ChannelMessage
    result: MessageResult


Handler = Callable[[ChannelMessage], Coroutine[Any, Any, str]]

# Builds the per-message NamedTuples without their Python-level __new__ (hot path).
_new_tuple = tuple.__new__
_SUCCESS = MessageResultKind.SUCCESS
_OPEN = CircuitState.OPEN  # an enum member read from the class costs ~60 ns in CPython 3.11
_COMPLETED = TaskStatus.COMPLETED

_PRIORITY_MEMO_SIZE = 1024  # channels whose default priority is remembered (a bound, not a cache)
_CoroutineType = types.CoroutineType
_NOT_CHECKED = object()  # no handler checked yet (None is a handler to refuse)

# Failure logs: at most _LOG_BURST lines per _LOG_INTERVAL seconds each, then one summary line.
_LOG_BURST = 10
_LOG_INTERVAL = 60.0


def _check_handler(handler: object, what: str) -> None:
    """Refuse, at the call, a handler that cannot be an ``async (message) -> str``.

    Refused (``TypeError``): what is not callable; a generator or async generator function; a
    plain ``def`` (not a lambda) declared to return ``str`` or ``None`` — a sync handler. A lambda
    or an undeclared plain function may well return a coroutine (``lambda m: reply(m)``): it is
    let through, and if it returns something that cannot be awaited, its message ends FAILED with
    a ``TypeError`` saying so (:meth:`_Item._call`).
    """
    if not callable(handler):
        raise TypeError(f"{what} must be an async function, not {type(handler).__name__}")
    if inspect.iscoroutinefunction(handler):
        return
    if inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
        raise TypeError(
            f"{what} must be an async function (async def), not a generator function: {handler!r}"
        )
    function: Any = handler  # a plain function or anything else callable
    if isinstance(function, types.FunctionType) and function.__name__ != "<lambda>":
        returns = function.__annotations__.get("return", ...)
        if returns in (str, "str", None, "None"):
            raise TypeError(
                f"{what} must be an async function (async def ...) -> str; {function.__qualname__} "
                f"is a plain function returning {getattr(returns, '__name__', returns)}"
            )


class _FailureLog:
    """How often one kind of failure is logged: at most ``burst`` lines per ``interval`` seconds.

    :meth:`admit` says whether to log this failure; those beyond the burst are counted and summed
    up in one warning ("... and 120 more handler failures") when their interval ends, or at
    :meth:`flush`. An outage then costs a few lines a minute, and no failure goes unmentioned.
    """

    __slots__ = (
        "_burst",
        "_clock",
        "_interval",
        "_logged",
        "_suppressed",
        "_timer",
        "_what",
        "_window_start",
    )

    def __init__(
        self, what: str, clock: Clock, burst: int = _LOG_BURST, interval: float = _LOG_INTERVAL
    ) -> None:
        self._what = what
        self._clock = clock
        self._burst = burst
        self._interval = interval
        self._window_start = -math.inf
        self._logged = 0
        self._suppressed = 0
        self._timer: Cancellable | None = None

    def admit(self) -> bool:
        """``True``: log this failure now; ``False``: it is counted for the summary line."""
        now = self._clock.now()
        if now - self._window_start >= self._interval:
            self.flush()
            self._window_start = now
            self._logged = 0
        if self._logged < self._burst:
            self._logged += 1
            return True
        self._suppressed += 1
        if self._timer is None:
            self._timer = call_later(
                self._clock, self._window_start + self._interval - now, self._window_ended
            )
        return False

    def _window_ended(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Log the summary of the failures not logged one by one, if any. Does not block."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._suppressed:
            _logger.warning(
                "... and %d more %s in the last %gs (not logged one by one)",
                self._suppressed,
                self._what,
                self._interval,
            )
            self._suppressed = 0


_SEED_CHANNEL_PRIORITIES = {
    "cli": TaskPriority.CRITICAL,
    "telegram": TaskPriority.HIGH,
    "discord": TaskPriority.HIGH,
    "slack": TaskPriority.HIGH,
    "email": TaskPriority.NORMAL,
}


def channel_priority(channel: str, message: ChannelMessage) -> TaskPriority:
    """The seed's priorities: ``cli`` CRITICAL; ``telegram``/``discord``/``slack`` HIGH; others
    NORMAL. A message whose ``metadata["priority"]`` names a :class:`TaskPriority` gets that."""
    if not message.metadata:
        return _SEED_CHANNEL_PRIORITIES.get(channel) or _SEED_CHANNEL_PRIORITIES.get(
            channel.lower(), TaskPriority.NORMAL
        )
    named = message.metadata.get("priority")
    if isinstance(named, TaskPriority):
        return named
    if isinstance(named, str) and named.upper() in TaskPriority.__members__:
        return TaskPriority[named.upper()]
    return _SEED_CHANNEL_PRIORITIES.get(channel.lower(), TaskPriority.NORMAL)


def _scoped_key(channel: str, sender: str, tail: str) -> str:
    """An injective dedup key for ``(channel, sender, tail)``, cheap in the common case.

    Common case, no NUL in ``channel`` or ``sender``: ``channel NUL sender NUL tail`` (the first two
    NULs split it back). Otherwise a length-prefixed form (injective whatever the parts hold) with
    every NUL escaped away: it holds no NUL, so it never equals a common-case key, which holds two.
    """
    if "\0" not in channel and "\0" not in sender:
        return f"{channel}\0{sender}\0{tail}"
    prefixed = f"{len(channel)}:{channel}{len(sender)}:{sender}{tail}"
    return prefixed.replace("\x01", "\x01\x01").replace("\0", "\x01\x02")


def _message_id_key(channel: str, message: ChannelMessage) -> str:
    sender = message.sender
    if "\0" not in channel and "\0" not in sender:  # _scoped_key's common case, inlined
        return f"{channel}\0{sender}\0{message.id}"
    return _scoped_key(channel, sender, message.id)


def _content_key(channel: str, message: ChannelMessage) -> str:
    return _scoped_key(channel, message.sender, DedupKey.content_hash(message.content))


def _dedup_key_function(
    dedup_key: Literal["message_id", "content"] | Callable[[str, ChannelMessage], DedupKey | str],
) -> Callable[[str, ChannelMessage], DedupKey | str]:
    """The function a configuration's ``dedup_key`` names."""
    if dedup_key == "message_id":
        return _message_id_key
    if dedup_key == "content":
        return _content_key
    return dedup_key


def _conversation_key(channel: str, message: ChannelMessage) -> Hashable:
    return (channel, message.reply_to)


def _checked_key(key: object) -> Hashable:
    """A custom conversation key, refused with a clear TypeError if it is unhashable."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            "MessageProcessorConfig.conversation_key must return a hashable key, "
            f"got {type(key).__name__}: {key!r}"
        ) from None
    return key


# ---------------------------------------------------------------------------- configuration

QUEUE_MODES = ("followup", "collect", "interrupt")


def _check_queue_mode(mode: object, what: str) -> None:
    if mode not in QUEUE_MODES:
        raise ValueError(f"{what} must be 'followup', 'collect' or 'interrupt', got {mode!r}")


# A plain Python class, not a compiled one: a compiled int field would turn True into 1 before
# the validation could refuse it.
@mypyc_attr(native_class=False)
@dataclass
class MessageProcessorConfig:
    """How a :class:`MessageProcessor` is sized and which stages it runs.

    Defaults are the original's. Beyond it:

    - ``admission``: at the ``max_concurrent_requests`` bound, ``"wait"`` makes
      ``process_message`` wait for room, ``"reject"`` refuses at once.
    - ``dedup_key``: ``"message_id"`` (channel + sender + platform id, the default),
      ``"content"`` (channel + sender + content hash, the seed's key) or a function
      ``(channel_name, message) -> DedupKey | str``.
    - ``conversation_key``: ``(channel_name, message) -> hashable``; messages with the same key
      run one at a time in arrival order. Default: channel + reply target.
    - ``priority``: ``(channel_name, message) -> TaskPriority``; default :func:`channel_priority`.
    - ``dedup_max_entries``: bound of the dedup memory.
    - ``max_undelivered_results``: results finished but not yet read from ``responses`` beyond
      which admission stops, as at the ``max_concurrent_requests`` bound (``admission`` decides:
      wait for a reader, or refuse with reason ``"results unread"``). The buffer then holds at most
      this many plus the messages still in flight. ``None`` (the default): no bound, for callers
      that read ``responses`` (as :class:`ConcurrentMessageProcessor` does).
    - ``queue_mode``: what a message that finds its conversation busy does (docs:
      channel_integration.md, "Queue modes"). ``"followup"`` (the default): it is its own turn,
      after the ones before it. ``"collect"``: messages arriving while a turn runs, or within
      ``collect_window`` seconds of the previous one (a debounce), become one handler call with
      one merged message (contents joined by newlines; the last one's id;
      ``metadata["merged_ids"]``); the earlier ones end MERGED. ``"interrupt"``: it cancels the
      running turn and supersedes the waiting ones (INTERRUPTED), and runs once the cancelled
      handler has finished.
    - ``max_pending_per_conversation``: past this many messages waiting in one conversation,
      admission refuses the newest (REJECTED, reason ``"conversation busy"``); 0: no limit.
    - ``channel_queue_modes``: per channel name, ``(queue_mode, collect_window)`` in place of
      the two fields above, for that channel's messages.

    Raises:
        ValueError: on a size below 1, a negative TTL or timeout, or an unknown ``admission`` or
            ``queue_mode``.
    """

    worker_pool_size: int = 4
    task_queue_size: int = 100
    max_concurrent_requests: int = 10
    dedup_ttl: float = 60.0
    circuit_config: CircuitConfig = field(default_factory=CircuitConfig)
    enable_dedup: bool = True
    enable_circuit_breaker: bool = True
    enable_backpressure: bool = True
    processing_timeout: float | None = 30.0
    admission: Literal["wait", "reject"] = "wait"
    dedup_key: (
        Literal["message_id", "content"] | Callable[[str, ChannelMessage], DedupKey | str]
    ) = "message_id"
    conversation_key: Callable[[str, ChannelMessage], Hashable] = _conversation_key
    priority: Callable[[str, ChannelMessage], TaskPriority] = channel_priority
    dedup_max_entries: int = 100_000
    max_undelivered_results: int | None = None
    queue_mode: Literal["followup", "collect", "interrupt"] = "followup"
    collect_window: float = 0.5
    max_pending_per_conversation: int = 20
    channel_queue_modes: Mapping[str, tuple[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "worker_pool_size",
            "task_queue_size",
            "max_concurrent_requests",
            "dedup_max_entries",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"MessageProcessorConfig.{name} must be an int >= 1, got {value!r}"
                )
        bound = getattr(self, "max_undelivered_results")  # noqa: B009  (compiled: see above)
        if bound is not None and (
            not isinstance(bound, int) or isinstance(bound, bool) or bound < 1
        ):
            raise ValueError(
                "MessageProcessorConfig.max_undelivered_results must be None or an int >= 1, "
                f"got {bound!r}"
            )
        self.dedup_ttl = to_seconds(self.dedup_ttl, what="MessageProcessorConfig.dedup_ttl")
        if self.processing_timeout is not None:
            self.processing_timeout = to_seconds(
                self.processing_timeout, what="MessageProcessorConfig.processing_timeout"
            )
        if self.admission not in ("wait", "reject"):
            raise ValueError(
                f"MessageProcessorConfig.admission must be 'wait' or 'reject', "
                f"got {self.admission!r}"
            )
        _check_queue_mode(self.queue_mode, "MessageProcessorConfig.queue_mode")
        self.collect_window = to_seconds(
            self.collect_window,
            what="MessageProcessorConfig.collect_window",
            allow_infinite=False,
        )
        cap = getattr(self, "max_pending_per_conversation")  # noqa: B009  (compiled: see above)
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise ValueError(
                "MessageProcessorConfig.max_pending_per_conversation must be an int >= 0, "
                f"got {cap!r}"
            )
        modes: dict[str, tuple[str, float]] = {}
        # object, not the field's type: a compiled build would check each pair's type itself,
        # with its own wording, before this could.
        given: dict[str, object] = dict(getattr(self, "channel_queue_modes"))  # noqa: B009
        for channel_name, setting in given.items():
            what = f"MessageProcessorConfig.channel_queue_modes[{channel_name!r}]"
            if not isinstance(setting, tuple | list) or len(setting) != 2:
                raise ValueError(f"{what} must be a pair (queue_mode, collect_window)")
            _check_queue_mode(setting[0], what)
            window = to_seconds(setting[1], what=f"{what} collect_window", allow_infinite=False)
            modes[channel_name] = (setting[0], window)
        self.channel_queue_modes = modes
        if not callable(self.dedup_key) and self.dedup_key not in ("message_id", "content"):
            raise ValueError(
                "MessageProcessorConfig.dedup_key must be 'message_id', 'content' or a function, "
                f"got {self.dedup_key!r}"
            )

    @classmethod
    def small(cls) -> MessageProcessorConfig:
        """Fewer than 100 concurrent users: 2 workers, 5 concurrent requests, 30 s dedup."""
        return cls(worker_pool_size=2, max_concurrent_requests=5, dedup_ttl=30.0)

    @classmethod
    def medium(cls) -> MessageProcessorConfig:
        """100 to 1000 concurrent users: 4 workers, 20 concurrent requests, 60 s dedup."""
        return cls(worker_pool_size=4, max_concurrent_requests=20, dedup_ttl=60.0)

    @classmethod
    def large(cls) -> MessageProcessorConfig:
        """Over 1000 concurrent users: 8 workers, 50 concurrent requests, 120 s dedup,
        a lenient breaker."""
        return cls(
            worker_pool_size=8,
            max_concurrent_requests=50,
            dedup_ttl=120.0,
            circuit_config=CircuitConfig.lenient(),
        )


@dataclass(frozen=True, slots=True)
class ProcessorStats:
    """A snapshot of a processor and of each stage it runs (``None`` for a disabled stage)."""

    worker_pool: WorkerPoolStats
    backpressure: BackpressureStats | None
    circuit_breaker: CircuitBreakerStats | None
    deduplicator: DedupStats | None
    accepted: int
    duplicates: int
    rejected: int
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int
    rejected_after_accept: int  # accepted, then refused: the breaker opened while it waited
    in_flight: int  # accepted, no result yet
    conversations: int  # conversations with a message in flight
    undelivered_results: int  # results waiting to be read from ``responses``
    merged: int = 0  # collected into a later message's turn (queue_mode="collect")
    interrupted: int = 0  # cancelled or superseded by a newer message, or by interrupt()


# ---------------------------------------------------------------------------- the processor


class _Item(_Job):
    """An accepted message on its way through the pipeline; the pool runs it as a job.

    Being the pool's job itself (rather than a ``Task`` with a ``TaskHandle`` and a done callback)
    saves three objects and a callback per message: the pipeline's hot path.
    """

    __slots__ = (
        "batch",
        "channel",
        "dedup_key",
        "handler",
        "interrupted",
        "key",
        "message",
        "original",
        "permit",
        "processor",
        "ticket",
    )

    def __init__(
        self,
        processor: MessageProcessor,
        channel: Channel | str,
        message: ChannelMessage,
        handler: Handler,
        dedup_key: DedupKey | str | None,
        permit: Permit | bool,
        key: Hashable,
        priority: TaskPriority,
        ticket: CallTicket | None,
    ) -> None:
        self.processor = processor
        self.channel = channel
        self.message = message
        self.handler = handler
        self.dedup_key = dedup_key
        # True: one permit taken with Backpressure._try_take; a Permit: one that was waited for.
        self.permit = permit
        self.key = key  # the conversation
        self.ticket = ticket  # the breaker's admission of this call (None: no breaker)
        # queue_mode="collect": the earlier messages merged into this one's turn, and this one's
        # own message (``message`` is then the merged one the handler sees).
        self.batch: list[_Item] | None = None
        self.original: ChannelMessage | None = None
        self.interrupted = False  # cancelled by a newer message, or by interrupt()
        self._priority = priority
        self._timeout = processor._processing_timeout
        self._cancel_reason = None

    def _call(self) -> Coroutine[Any, Any, str]:
        """Call the handler, unless the breaker opened while this message waited.

        Raising here fails the job just as raising inside the handler would.
        """
        breaker = self.processor._breaker
        if breaker is not None and breaker.state is _OPEN:
            raise _OpenAtStart(f"circuit {breaker.name!r} opened while the message waited")
        work = self.handler(self.message)
        if work.__class__ is not _CoroutineType and not inspect.isawaitable(work):
            raise TypeError(
                f"the handler {self.handler!r} returned {type(work).__name__}, which cannot be "
                "awaited: a handler must be an async function (async def ...) -> str"
            )
        return work

    def _completed(self, value: Any, wait_time: float, run_time: float) -> None:
        """The handler returned: record the success, deliver the result, move the lane on."""
        processor = self.processor
        processor._succeeded += 1
        breaker = processor._breaker
        if breaker is not None:
            breaker.record_success(self.ticket)
        processor._give_permit_back(self.permit)
        processor._in_flight -= 1
        if self.batch is not None:
            processor._settle_batch(self, True)
        processor._results.append(
            _new_tuple(
                ProcessedMessage,
                (
                    self.channel,
                    self.message if self.original is None else self.original,
                    _new_tuple(MessageResult, (_SUCCESS, value, None, wait_time, run_time, None)),
                ),
            )
        )
        processor._wake_results()
        lanes = processor._lanes
        key = self.key
        if lanes[key] is self:  # the common case: the conversation has nothing more waiting
            del lanes[key]
        else:
            processor._advance(cast(_Lane, lanes[key]))
        if processor._ready:
            processor._pump()
        if processor._closing:
            processor._check_drained()

    def _ended(
        self, status: TaskStatus, error: BaseException, wait_time: float, run_time: float
    ) -> None:
        if status is TaskStatus.FAILED:
            opened = isinstance(error, _OpenAtStart)
            kind = MessageResultKind.REJECTED if opened else MessageResultKind.FAILED
        elif status is TaskStatus.TIMED_OUT:
            kind = MessageResultKind.TIMEOUT
        elif status is TaskStatus.CANCELLED:
            kind = (
                MessageResultKind.INTERRUPTED if self.interrupted else MessageResultKind.CANCELLED
            )
        else:
            kind = MessageResultKind.REJECTED
        self.processor._message_ended(self, kind, error, wait_time, run_time)

    def _discard(self) -> None:
        pass  # the handler's coroutine is only made when the message runs

    def _describe(self) -> str:
        return f"message {self.message.id!r} of conversation {self.key!r}"


# A lane is READY (its head waits for room in the pool) or RUNNING (one of its messages is in the
# pool; ``pending`` holds only those behind it), or COLLECTING (queue_mode="collect": its messages
# wait out the debounce window); IDLE only in passing, when it is being retired.
_IDLE, _READY, _RUNNING, _COLLECTING = 0, 1, 2, 3
_FOLLOWUP, _COLLECT, _INTERRUPT = 0, 1, 2
_MODE_CODES = {"followup": _FOLLOWUP, "collect": _COLLECT, "interrupt": _INTERRUPT}


class _Lane:
    """A conversation with messages waiting: them in arrival order, at most one in the pool.

    A conversation with one message in the pool and none waiting has no lane: the processor's
    conversation table holds that message's :class:`_Item` itself (the common case costs no lane).
    """

    __slots__ = (
        "key",
        "last_arrival",
        "mode",
        "pending",
        "priority",
        "running",
        "state",
        "timer",
        "window",
    )

    def __init__(
        self, key: Hashable, priority: TaskPriority, state: int, running: _Item | None = None
    ) -> None:
        self.key = key
        self.priority = priority
        self.pending: deque[_Item] = deque()
        self.state = state
        self.running = running  # the message of this lane in the pool, if any
        self.mode = _FOLLOWUP
        self.window = 0.0
        self.last_arrival = 0.0
        self.timer: Cancellable | None = None  # the collect debounce


class _ResultStream:
    """An iterator over a processor's results (:attr:`MessageProcessor.responses`).

    A class rather than an async generator: mypyc, which compiles this module, does not compile
    async generators, and ``__anext__`` returning a result without suspending is the common case.
    """

    __slots__ = ("_processor",)

    def __init__(self, processor: MessageProcessor) -> None:
        self._processor = processor

    def __aiter__(self) -> _ResultStream:
        return self

    async def __anext__(self) -> ProcessedMessage:
        """The next result; blocks while none is ready. Raises ``StopAsyncIteration`` at the end."""
        processor = self._processor
        results = processor._results
        while not results:
            if processor._finished():
                raise StopAsyncIteration
            waiter = processor._results_waiter
            if waiter is None or waiter.done():
                waiter = processor._results_waiter = asyncio.get_running_loop().create_future()
            # Readers share the future: shielded, a reader cancelled while it waits cancels only
            # itself, not every other reader.
            await asyncio.shield(waiter)
        result = results.popleft()
        if processor._result_room_waiters:
            processor._wake_result_room()
        return result


class _OpenAtStart(Exception):
    """The breaker opened while the message waited: the handler is not called."""


@mypyc_attr(allow_interpreted_subclasses=True)
class MessageProcessor:
    """Admit chat messages and process them concurrently, one at a time per conversation.

    Args:
        config: sizes and stages; :class:`MessageProcessorConfig` defaults when ``None``.
        breaker: use this circuit breaker (e.g. one from a :class:`CircuitBreakerGroup`) instead
            of creating one from ``config.circuit_config``.
        clock: time source of every stage (see :mod:`zeroclaw.testing`).
        name: used in logs and in the stages' names.

    A processor belongs to one event loop. Results are buffered until read from
    :attr:`responses`; read them (``ConcurrentMessageProcessor`` does), or the buffer grows by
    one small object per message (``stats().undelivered_results`` tells). The configuration is
    read when the processor is built; changing the config object later does not affect it.
    """

    def __init__(
        self,
        config: MessageProcessorConfig | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        name: str = "processor",
    ) -> None:
        self.config = config = config if config is not None else MessageProcessorConfig()
        self.name = name
        self._clock = resolve_clock(clock)
        self._pool = WorkerPool(
            config.worker_pool_size, config.task_queue_size, name=f"{name}.pool", clock=clock
        )
        self._dedup = (
            Deduplicator(
                config.dedup_ttl,
                max_entries=config.dedup_max_entries,
                clock=clock,
                name=f"{name}.dedup",
            )
            if config.enable_dedup
            else None
        )
        if config.enable_circuit_breaker:
            self._breaker: CircuitBreaker | None = breaker or CircuitBreaker(
                config.circuit_config, name=f"{name}.breaker", clock=clock
            )
        else:
            self._breaker = None
        self._backpressure = (
            Backpressure(config.max_concurrent_requests, name=f"{name}.admission", clock=clock)
            if config.enable_backpressure
            else None
        )
        # Without backpressure, this still bounds what a processor holds.
        self._hard_limit = config.worker_pool_size + config.task_queue_size
        self._dedup_key: Callable[[str, ChannelMessage], DedupKey | str] = _dedup_key_function(
            config.dedup_key
        )
        # The configuration's functions and timeout are read once, here (the per-message path).
        self._processing_timeout = config.processing_timeout
        self._reject_at_capacity = config.admission == "reject"
        self._check_duplicate = self._dedup.check_and_update if self._dedup is not None else None
        # None: the default conversation key (channel + reply target), computed inline.
        self._conversation_key_of = (
            None if config.conversation_key is _conversation_key else config.conversation_key
        )
        # Typed object: what a user's function returns is checked (_priority_for), the same way
        # on both builds (a compiled call would otherwise raise its own TypeError first).
        self._priority_of: Callable[[str, ChannelMessage], object] = config.priority
        self._last_handler: object = _NOT_CHECKED  # the last handler process_message checked
        self._failure_log = _FailureLog(f"failures in {name}", self._clock)
        # The default priority depends only on the channel for a message without metadata.
        self._channel_priorities: dict[str, TaskPriority] | None = (
            {} if config.priority is channel_priority else None
        )
        # Each conversation with a message in flight: that message, or its lane when more wait.
        self._lanes: dict[Hashable, _Item | _Lane] = {}
        self._ready: list[tuple[int, int, _Lane]] = []  # lanes waiting for room in the pool
        self._ready_order = itertools.count()
        self._results: deque[ProcessedMessage] = deque()
        self._results_waiter: asyncio.Future[None] | None = None
        self._results_limit = config.max_undelivered_results
        # Admissions waiting for a reader to make room under _results_limit, oldest first.
        self._result_room_waiters: deque[asyncio.Future[None]] = deque()
        self._closing = False
        self._drain = True
        self._drained: asyncio.Future[None] | None = None
        self._stopping_pool: asyncio.Future[None] | None = None
        self._in_flight = 0
        self._admitting = 0
        self._duplicates = 0
        self._rejected = 0
        self._succeeded = 0
        self._failed = 0
        self._timed_out = 0
        self._cancelled = 0
        self._rejected_after_accept = 0
        self._merged = 0
        self._interrupted = 0
        self._mode = _MODE_CODES[config.queue_mode]
        self._window = config.collect_window
        self._channel_modes: dict[str, tuple[int, float]] | None = {
            name: (_MODE_CODES[m], w) for name, (m, w) in config.channel_queue_modes.items()
        } or None
        self._max_pending = config.max_pending_per_conversation

    # -------------------------------------------------------------- admission

    async def process_message(
        self, channel: Channel | str, message: ChannelMessage, handler: Handler
    ) -> Admission:
        """Admit ``message`` for processing by ``handler(message)``, or refuse it.

        Returns as soon as the message is admitted or refused; it does not wait for the handler.
        With ``admission="wait"`` it waits while ``max_concurrent_requests`` messages are in
        flight. An ACCEPTED message produces exactly one :class:`ProcessedMessage` on
        :attr:`responses`; DUPLICATE and REJECTED produce none. If this call is cancelled while
        it waits, it raises ``CancelledError`` and leaves no dedup claim, breaker probe slot or
        permit behind.

        Raises:
            TypeError: ``handler`` cannot be an async function (see :func:`_check_handler`); the
                configuration's ``conversation_key`` returned an unhashable key, or its
                ``priority`` something other than a :class:`TaskPriority`.
            Exception: whatever the configuration's ``dedup_key``, ``conversation_key`` or
                ``priority`` function raised.
            In every case nothing is taken: no dedup claim, probe slot, permit or count is left.
        """
        if handler is not self._last_handler:
            _check_handler(handler, "process_message's handler")
            self._last_handler = handler
        if self._closing:
            return self._refuse("shutting down")
        channel_name = channel if channel.__class__ is str else channel.name  # type: ignore[union-attr]
        # The conversation first: a key function that fails must fail before anything is taken.
        key_of = self._conversation_key_of
        key = (
            (channel_name, message.reply_target or message.sender)
            if key_of is None
            else _checked_key(key_of(channel_name, message))
        )
        dedup_key: DedupKey | str | None = None
        check_duplicate = self._check_duplicate
        if check_duplicate is not None:
            dedup_key = self._dedup_key(channel_name, message)
            if check_duplicate(dedup_key):
                self._duplicates += 1
                return _DUPLICATE
        breaker = self._breaker
        ticket: CallTicket | None = None
        if breaker is not None:
            # The call's own ticket: its result is matched to it, so a result from before a
            # transition (a stale probe, a call of an earlier closed period) changes nothing.
            ticket = breaker.allow_request()
            if ticket is None:
                self._forget(dedup_key)
                return self._refuse("circuit open", breaker.retry_after)
        limit = self._results_limit
        if limit is not None and (self._result_room_waiters or len(self._results) >= limit):
            refused = await self._wait_for_result_room(dedup_key, limit, ticket)
            if refused is not None:
                return refused
        permit: Permit | bool = False
        backpressure = self._backpressure
        if backpressure is not None:
            # A failed try is a refusal only if it refuses; otherwise acquire() counts the attempt.
            if backpressure._try_take(self._reject_at_capacity):
                permit = True
            elif self._reject_at_capacity:
                self._undo_admission(dedup_key, False, ticket)
                return self._refuse("overloaded")
            else:
                self._admitting += 1
                try:
                    permit = await backpressure.acquire()
                except BaseException:
                    self._abandon_wait(dedup_key, ticket)
                    raise
                self._admitting -= 1
                # The property, not _closing: mypy would keep the narrowing from the top across
                # the await. Shutdown may have begun while this call waited.
                if self.closing:
                    return self._refuse_after_wait(dedup_key, permit, ticket)
        elif self._in_flight >= self._hard_limit:
            self._undo_admission(dedup_key, False, ticket)
            return self._refuse("overloaded")
        mode = self._mode
        window = self._window
        modes = self._channel_modes
        if modes is not None:
            mode, window = modes.get(channel_name, (mode, window))
        entry = self._lanes.get(key)
        if entry is None:  # a new conversation
            cached = self._channel_priorities
            priority = (
                cached.get(channel_name) if cached is not None and not message.metadata else None
            )
            if priority is None:
                try:
                    priority = self._priority_for(channel_name, message)
                except BaseException:
                    self._undo_admission(dedup_key, permit, ticket)
                    if self.closing:
                        self._check_drained()
                    raise
            self._in_flight += 1
            item = _Item(self, channel, message, handler, dedup_key, permit, key, priority, ticket)
            # Its turn starts once the debounce window has passed; with no window at once (what
            # arrives while it runs is merged all the same), and without a timer.
            if mode == _COLLECT and window > 0:
                lane = self._lanes[key] = _Lane(key, priority, _COLLECTING)
                lane.mode = mode
                lane.window = window
                lane.last_arrival = self._clock.now()
                lane.pending.append(item)
                self._collect_after(lane, window)
                return _ACCEPTED
            pool = self._pool
            if not self._ready and pool._job_room() > 0:
                self._lanes[key] = item  # the common case: no lane, straight into the pool
                try:
                    pool._queue_job(item)
                except PoolClosed as closed:
                    self._not_started(item, closed)
            else:
                lane = self._lanes[key] = _Lane(key, item._priority, _IDLE)
                lane.pending.append(item)
                self._make_ready(lane)
                self._pump()
            return _ACCEPTED
        cap = self._max_pending
        if (
            cap
            and mode != _INTERRUPT  # in interrupt mode the newest supersedes the waiting ones
            and entry.__class__ is _Lane
            and len(entry.pending) >= cap
        ):
            self._undo_admission(dedup_key, permit, ticket)
            if self.closing:
                self._check_drained()
            return self._refuse("conversation busy")
        self._in_flight += 1
        if entry.__class__ is _Item:  # its one message runs: open a lane behind it
            running = entry
            lane = self._lanes[key] = _Lane(key, running._priority, _RUNNING, running)
            lane.mode = mode
            lane.window = window
        else:
            lane = cast(_Lane, entry)
        item = _Item(self, channel, message, handler, dedup_key, permit, key, lane.priority, ticket)
        lane.pending.append(item)
        if mode != _FOLLOWUP:
            lane.mode = mode
            lane.window = window
            if mode == _INTERRUPT:
                self._supersede(lane, item)
            else:
                # The window restarts with each arrival: the timer, when it fires, looks again.
                lane.last_arrival = self._clock.now()
        return _ACCEPTED

    async def _wait_for_result_room(
        self, dedup_key: DedupKey | str | None, limit: int, ticket: CallTicket | None
    ) -> Admission | None:
        """Hold an admission while ``limit`` results are unread (``None``: go on), or refuse it.

        Waits in arrival order, woken by the reader of :attr:`responses` one result at a time.
        On refusal, cancellation or shutdown it gives back the dedup claim and the breaker's slot.
        """
        if self._reject_at_capacity:
            self._undo_admission(dedup_key, False, ticket)
            return self._refuse("results unread")
        loop = asyncio.get_running_loop()
        waiters = self._result_room_waiters
        first_wait = True
        self._admitting += 1
        try:
            while not self._closing and (first_wait or len(self._results) >= limit):
                waiter = loop.create_future()
                if first_wait:
                    waiters.append(waiter)
                    first_wait = False
                else:  # woken, but new results filled the room before it ran: keep its place
                    waiters.appendleft(waiter)
                try:
                    await waiter
                except asyncio.CancelledError:
                    if waiter in waiters:
                        waiters.remove(waiter)
                    elif waiter.done() and not waiter.cancelled():
                        self._wake_result_room()  # pass the room it was given to the next one
                    raise
        except BaseException:
            self._abandon_wait(dedup_key, ticket)
            raise
        self._admitting -= 1
        if self._closing:
            return self._refuse_after_wait(dedup_key, False, ticket)
        if waiters and len(self._results) < limit:
            self._wake_result_room()  # more room than this admission needs
        return None

    def _wake_result_room(self) -> None:
        """Wake the oldest admission waiting for room among the unread results."""
        waiters = self._result_room_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _abandon_wait(self, dedup_key: DedupKey | str | None, ticket: CallTicket | None) -> None:
        """An admission that waited was cancelled or failed: undo it.

        A shutdown may be waiting for this admission to end, so the drain check runs again.
        """
        self._admitting -= 1
        self._undo_admission(dedup_key, False, ticket)
        if self._closing:
            self._check_drained()

    def _refuse_after_wait(
        self, dedup_key: DedupKey | str | None, permit: Permit | bool, ticket: CallTicket | None
    ) -> Admission:
        """Shutdown began while an admission waited: undo it, and let the drain see it gone."""
        self._undo_admission(dedup_key, permit, ticket)
        self._check_drained()
        return self._refuse("shutting down")

    def _refuse(self, reason: str, retry_after: float | None = None) -> Admission:
        self._rejected += 1
        return Admission(AdmissionKind.REJECTED, reason, retry_after)

    def _forget(self, dedup_key: DedupKey | str | None) -> None:
        if dedup_key is not None and self._dedup is not None:
            self._dedup.remove(dedup_key)

    def _undo_admission(
        self, dedup_key: DedupKey | str | None, permit: Permit | bool, ticket: CallTicket | None
    ) -> None:
        """Refused after the breaker admitted it: give back the claim, the probe, the permit."""
        self._forget(dedup_key)
        if self._breaker is not None:
            self._breaker.record_ignored(ticket)
        self._give_permit_back(permit)

    def _give_permit_back(self, permit: Permit | bool) -> None:
        if permit is True:
            assert self._backpressure is not None
            self._backpressure._give_back()
        elif permit:
            permit.release()

    # -------------------------------------------------------------- lanes → pool

    def _make_ready(self, lane: _Lane) -> None:
        lane.state = _READY
        heapq.heappush(self._ready, (-lane.priority, next(self._ready_order), lane))

    def _pump(self) -> None:
        """Move the heads of ready lanes into the pool while it has room (:meth:`_pool_room`)."""
        ready = self._ready
        while ready and self._pool_room() > 0:
            _, _, lane = heapq.heappop(ready)
            lane.state = _RUNNING
            item = lane.pending.popleft()
            if lane.mode == _COLLECT and lane.pending:
                item = self._merge(item, lane)
            lane.running = item
            item._priority = lane.priority
            self._start(item)

    def _pool_room(self) -> int:
        """How many more messages the pool takes now (:meth:`WorkerPool._job_room`): the queue's
        places alone are not enough, with a queue smaller than the pool workers would stay idle
        while lanes wait, until some message ended."""
        return self._pool._job_room()

    def _priority_for(self, channel_name: str, message: ChannelMessage) -> TaskPriority:
        """The configuration's priority for a message; TypeError if it is not a TaskPriority."""
        priority = self._priority_of(channel_name, message)
        if not isinstance(priority, TaskPriority):
            raise TypeError(
                "MessageProcessorConfig.priority must return a TaskPriority, "
                f"got {priority!r} ({type(priority).__name__})"
            )
        cached = self._channel_priorities
        if cached is not None and not message.metadata and len(cached) < _PRIORITY_MEMO_SIZE:
            cached[channel_name] = priority
        return priority

    def _start(self, item: _Item) -> None:
        """Hand a conversation's next message to the pool (which has room)."""
        try:
            self._pool._queue_job(item)
        except PoolClosed as closed:
            self._not_started(item, closed)

    def _not_started(self, item: _Item, closed: PoolClosed) -> None:
        """The pool was stopped under us (a shutdown's timeout): cancel the conversation."""
        self._settle(item, MessageResultKind.CANCELLED, error=closed)
        entry = self._lanes.get(item.key)
        if entry is item:
            del self._lanes[item.key]
        elif entry is not None:
            cast(_Lane, entry).state = _IDLE
            self._cancel_pending(entry)

    # -------------------------------------------------------------- results of the pool

    def _message_ended(
        self,
        item: _Item,
        kind: MessageResultKind,
        error: BaseException,
        wait_time: float,
        run_time: float,
    ) -> None:
        """The message ended without success (or never ran): settle it, move its lane on."""
        self._settle(item, kind, error=error, wait_time=wait_time, run_time=run_time)
        entry = self._lanes.get(item.key)
        if entry is item:
            del self._lanes[item.key]
        elif entry is not None:
            self._advance(cast(_Lane, entry))
        if self._ready:
            self._pump()
        if self._closing:
            self._check_drained()

    def _settle(
        self,
        item: _Item,
        kind: MessageResultKind,
        value: str | None = None,
        error: BaseException | None = None,
        wait_time: float = 0.0,
        run_time: float = 0.0,
    ) -> None:
        """Put an unsuccessful message's effects in place, then deliver its result."""
        self._count_unsuccessful(kind)
        if kind is MessageResultKind.FAILED or kind is MessageResultKind.TIMEOUT:
            self._log_failure(item, kind, error)
        breaker = self._breaker
        if breaker is not None:
            if kind is MessageResultKind.TIMEOUT or (
                kind is MessageResultKind.FAILED and self._counts_as_failure(error)
            ):
                breaker.record_failure(item.ticket)
            else:
                breaker.record_ignored(item.ticket)
        self._forget(item.dedup_key)
        self._give_permit_back(item.permit)
        self._in_flight -= 1
        message = item.message
        if item.batch is not None:
            self._settle_batch(item, False)
            message = item.original or message
        self._results.append(
            ProcessedMessage(
                item.channel, message, MessageResult(kind, value, error, wait_time, run_time)
            )
        )
        self._wake_results()

    def _log_failure(
        self, item: _Item, kind: MessageResultKind, error: BaseException | None
    ) -> None:
        """One line per failed or timed-out message (rate-limited: :class:`_FailureLog`)."""
        if not self._failure_log.admit():
            return
        _logger.warning(
            "%s: message %r of conversation %r %s: %s: %s",
            self.name,
            item.message.id,
            item.key,
            "failed" if kind is MessageResultKind.FAILED else "timed out",
            type(error).__name__,
            error,
            exc_info=error if kind is MessageResultKind.FAILED else None,
        )

    def _count_unsuccessful(self, kind: MessageResultKind) -> None:
        if kind is MessageResultKind.FAILED:
            self._failed += 1
        elif kind is MessageResultKind.TIMEOUT:
            self._timed_out += 1
        elif kind is MessageResultKind.CANCELLED:
            self._cancelled += 1
        elif kind is MessageResultKind.INTERRUPTED:
            self._interrupted += 1
        else:
            self._rejected_after_accept += 1

    def _advance(self, lane: _Lane) -> None:
        """The lane's running message finished: queue its next one, or retire the lane.

        In collect mode the next batch starts once ``collect_window`` has passed since its last
        message arrived (at once if it has already).
        """
        lane.state = _IDLE
        lane.running = None
        if lane.pending and (self._drain or not self._closing):
            if lane.mode == _COLLECT:
                left = lane.last_arrival + lane.window - self._clock.now()
                if left > 0:
                    lane.state = _COLLECTING
                    self._collect_after(lane, left)
                    return
            self._make_ready(lane)
        else:
            self._cancel_pending(lane)

    # -------------------------------------------------------------- queue modes

    def _collect_after(self, lane: _Lane, delay: float) -> None:
        """Arm the lane's debounce timer for ``delay`` seconds from now.

        One timer per batch, not one per arrival: arrivals only move ``last_arrival``, and the
        timer, when it fires, waits on for what is left of the window since the last one.
        """
        if lane.timer is None:
            lane.timer = call_later(self._clock, delay, lambda: self._collected(lane))

    def _collected(self, lane: _Lane) -> None:
        """The debounce timer fired: wait out the rest of the window since the last arrival, or
        hand the batch on; it waits for room in the pool like any turn."""
        lane.timer = None
        if lane.state != _COLLECTING or self._lanes.get(lane.key) is not lane:
            return  # retired meanwhile (a shutdown that does not drain)
        left = lane.last_arrival + lane.window - self._clock.now()
        if left > 0:
            self._collect_after(lane, left)
            return
        self._make_ready(lane)
        self._pump()

    def _merge(self, first: _Item, lane: _Lane) -> _Item:
        """Make one turn of ``first`` and every message behind it: the last one carries it."""
        batch = [first, *lane.pending]
        lane.pending.clear()
        last = batch.pop()
        original = last.message
        merged_ids = [part.message.id for part in batch]
        merged_ids.append(original.id)
        last.original = original
        last.batch = batch
        last.message = ChannelMessage(
            id=original.id,
            sender=original.sender,
            content="\n".join([part.message.content for part in batch] + [original.content]),
            channel=original.channel,
            timestamp=original.timestamp,
            reply_target=original.reply_target,
            thread_id=original.thread_id,
            metadata={**original.metadata, "merged_ids": merged_ids},
        )
        return last

    def _settle_batch(self, carrier: _Item, succeeded: bool) -> None:
        """Resolve the messages merged into ``carrier``'s turn: MERGED, in arrival order.

        Their dedup claims follow the turn's outcome (kept on success, released otherwise); the
        breaker hears of the turn once, through the carrier's ticket.
        """
        batch = carrier.batch
        assert batch is not None
        carrier.batch = None
        into = carrier.message.id
        breaker = self._breaker
        for part in batch:
            if breaker is not None:
                breaker.record_ignored(part.ticket)
            if not succeeded:
                self._forget(part.dedup_key)
            self._give_permit_back(part.permit)
            self._in_flight -= 1
            self._merged += 1
            self._results.append(
                ProcessedMessage(
                    part.channel,
                    part.message,
                    MessageResult(MessageResultKind.MERGED, merged_into=into),
                )
            )

    def _supersede(self, lane: _Lane, newest: _Item) -> None:
        """Interrupt mode: ``newest`` arrived; every other message of the lane ends INTERRUPTED
        (the waiting ones now, the running one once its handler has unwound)."""
        while lane.pending[0] is not newest:
            self._settle(
                lane.pending.popleft(),
                MessageResultKind.INTERRUPTED,
                error=asyncio.CancelledError("superseded by a newer message"),
            )
        running = lane.running
        if running is not None:
            self._interrupt_running(running)

    def _interrupt_running(self, item: _Item) -> bool:
        """Cancel ``item``'s turn (INTERRUPTED); a turn still queued in the pool never starts."""
        if item.interrupted:
            return False
        item.interrupted = True  # first: a queued turn resolves inside _cancel_job
        if self._pool._cancel_job(item, asyncio.CancelledError("interrupted")):
            return True
        item.interrupted = False  # it had already finished
        return False

    def interrupt(self, key: Hashable) -> bool:
        """Cancel the running turn of conversation ``key`` (see :meth:`conversation_of`).

        Its result is INTERRUPTED, not a failure for the breaker; the messages waiting behind it
        run as usual, once its handler has unwound. Returns ``False`` when the conversation has
        no turn running (or it is already being interrupted). Does not block.
        """
        entry = self._lanes.get(key)
        if entry is None:
            return False
        if entry.__class__ is _Item:
            return self._interrupt_running(entry)
        running = cast(_Lane, entry).running
        return running is not None and self._interrupt_running(running)

    def conversation_of(self, channel_name: str, message: ChannelMessage) -> Hashable:
        """The conversation key of ``message`` (the configuration's ``conversation_key``).

        Raises what that function raises; TypeError for an unhashable key.
        """
        key_of = self._conversation_key_of
        if key_of is None:
            return (channel_name, message.reply_target or message.sender)
        return _checked_key(key_of(channel_name, message))

    def _counts_as_failure(self, error: BaseException | None) -> bool:
        """The breaker's own ``is_failure`` decides (it may come from a group, with a config other
        than this processor's); a predicate that raises counts the call as a failure, as the
        breaker does, and never stops the worker that settles the message."""
        assert self._breaker is not None
        predicate = self._breaker.config.is_failure
        if predicate is None or error is None:
            return True
        try:
            return bool(predicate(error))
        except Exception:
            _logger.exception(
                "%r: is_failure raised on %r; counting it as a failure", self, type(error).__name__
            )
            return True

    # -------------------------------------------------------------- results

    @property
    def responses(self) -> AsyncIterator[ProcessedMessage]:
        """Every accepted message's :class:`ProcessedMessage`, in the order they finish.

        Ends after :meth:`shutdown` began, once every accepted message's result was delivered.
        Blocks while no result is ready. Each result goes to one reader.
        """
        return _ResultStream(self)

    def _wake_results(self) -> None:
        """Wake the readers of :attr:`responses`.

        The future is dropped once woken: the results after the first of a burst find ``None``
        instead of asking a future whether it is done.
        """
        waiter = self._results_waiter
        if waiter is not None:
            self._results_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _finished(self) -> bool:
        return self._closing and self._in_flight == 0 and self._admitting == 0

    # -------------------------------------------------------------- shutdown

    async def shutdown(self, *, drain: bool = True, timeout: float | timedelta = 30.0) -> None:
        """Stop admitting messages, finish (or cancel) the accepted ones, stop the pool.

        New messages are refused at once (``REJECTED``, reason ``"shutting down"``), including
        those waiting for admission. ``drain=True`` lets every accepted message finish, up to
        ``timeout``; ``drain=False`` cancels messages not yet started and gives running ones
        ``timeout``. What still runs then is cancelled. Every accepted message gets its result,
        and :attr:`responses` ends after the last one. Blocks until then. Idempotent.
        """
        seconds = to_seconds(timeout, what="timeout")
        self._closing = True
        self._wake_results()
        while self._result_room_waiters:  # they see the shutdown and refuse
            self._wake_result_room()
        if not drain and self._drain:
            self._drain = False
            for lane in list(self._lanes.values()):
                self._cancel_pending(lane)
            self._check_drained()
        drained = self._drained_future()
        self._check_drained()
        timer: Cancellable | None = None
        if not drained.done():
            timer = call_later(self._clock, seconds, self._give_up)
            try:
                await asyncio.shield(drained)
            finally:
                timer.cancel()
        await self._pool.shutdown(drain=False, timeout=0)
        self._failure_log.flush()

    def _give_up(self) -> None:
        """The shutdown timeout ended: cancel what has not started; the pool cancels the rest."""
        self._drain = False
        for lane in list(self._lanes.values()):
            self._cancel_pending(lane)
        self._check_drained()
        self._stopping_pool = asyncio.ensure_future(self._pool.shutdown(drain=False, timeout=0))

    def _cancel_pending(self, lane: _Item | _Lane) -> None:
        """Resolve CANCELLED the lane's messages that have not reached the pool.

        A running message is left to the pool; the lane is retired once nothing of it is left.
        """
        if lane.__class__ is _Item:
            return  # one message, running
        lane = cast(_Lane, lane)
        if lane.state == _READY:
            self._ready = [entry for entry in self._ready if entry[2] is not lane]
            heapq.heapify(self._ready)
            lane.state = _IDLE
        elif lane.state == _COLLECTING:
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            lane.state = _IDLE
        while lane.pending:
            self._settle(
                lane.pending.popleft(),
                MessageResultKind.CANCELLED,
                error=asyncio.CancelledError("cancelled by the processor's shutdown"),
            )
        if lane.state == _IDLE:
            del self._lanes[lane.key]

    def _drained_future(self) -> asyncio.Future[None]:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained

    def _check_drained(self) -> None:
        if self._finished():
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            self._wake_results()

    async def __aenter__(self) -> MessageProcessor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown(drain=True)

    # -------------------------------------------------------------- introspection

    @property
    def closing(self) -> bool:
        """``True`` once :meth:`shutdown` has begun."""
        return self._closing

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker guarding the handler, if enabled."""
        return self._breaker

    def stats(self) -> ProcessorStats:
        """A snapshot of the processor and its stages. Does not block."""
        return ProcessorStats(
            worker_pool=self._pool.stats(),
            # "is not None": an empty deduplicator (or one with len 0) is falsy, yet enabled.
            backpressure=self._backpressure.stats() if self._backpressure is not None else None,
            circuit_breaker=self._breaker.stats() if self._breaker is not None else None,
            deduplicator=self._dedup.stats() if self._dedup is not None else None,
            # Every accepted message is in flight or has exactly one outcome.
            accepted=self._in_flight
            + self._succeeded
            + self._failed
            + self._timed_out
            + self._cancelled
            + self._rejected_after_accept
            + self._merged
            + self._interrupted,
            duplicates=self._duplicates,
            rejected=self._rejected,
            succeeded=self._succeeded,
            failed=self._failed,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            rejected_after_accept=self._rejected_after_accept,
            in_flight=self._in_flight,
            merged=self._merged,
            interrupted=self._interrupted,
            conversations=len(self._lanes),
            undelivered_results=len(self._results),
        )

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return (
            f"<MessageProcessor {self.name!r} {state} in_flight={self._in_flight} "
            f"conversations={len(self._lanes)}>"
        )


# ---------------------------------------------------------------------------- the gateway loop


@dataclass(frozen=True, slots=True)
class Notices:
    """The short texts a user gets when their message could not be answered.

    ``None`` for a text means: send nothing in that case. ``unavailable`` replaces ``refused``
    while the provider's circuit breaker is open (the refusal's reason is ``"circuit open"``, or the
    breaker opened while the message waited): the service is down, not merely busy.
    """

    failed: str | None = "Sorry, something went wrong while answering. Please try again."
    timeout: str | None = "Sorry, that took too long to answer. Please try again."
    refused: str | None = "I'm busy right now. Please try again in a moment."
    cancelled: str | None = None
    unavailable: str | None = "The service is unavailable right now. Please try again later."


@dataclass(frozen=True, slots=True)
class ChannelCounters:
    """What one channel did under a :class:`ConcurrentMessageProcessor` (a snapshot).

    ``received``: messages taken from its listener or passed to
    :meth:`~ConcurrentMessageProcessor.submit`; ``sent``: replies and notices sent (or delivered)
    without error; ``send_failures``: sends that raised, exceeded ``send_timeout`` or were cancelled
    by :meth:`~ConcurrentMessageProcessor.stop`; ``admission_errors``: messages whose admission
    raised (a ``priority``/``conversation_key``/``dedup_key`` function that failed).
    """

    received: int = 0
    sent: int = 0
    send_failures: int = 0
    admission_errors: int = 0


class _Tally:
    """A channel's counters while they change (:class:`ChannelCounters` is their snapshot)."""

    __slots__ = ("admission_errors", "received", "send_failures", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.send_failures = 0
        self.admission_errors = 0


class _SendTimer:
    """Cancels a send that outlived ``send_timeout``, and remembers that it did.

    A small class rather than a closure: mypyc compiles this module, and one is made per send.
    """

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


_GRACE_CAP = 30.0  # seconds sends get after the drain when send_timeout is None


@mypyc_attr(allow_interpreted_subclasses=True)
class ConcurrentMessageProcessor:
    """Run a :class:`MessageProcessor` between chat channels and an LLM provider.

    ``await start(channels, provider, system_prompt)`` listens on every channel (each listener
    supervised: a listener that fails is restarted after a capped exponential backoff), admits
    each incoming message, answers each conversation in order and different conversations
    concurrently, sends each reply with ``channel.send(reply, message.reply_target or
    message.sender)``, and sends a short notice (:class:`Notices`) when a message failed, timed
    out or was refused. A channel that has a ``deliver`` method
    (:class:`~zeroclaw.concurrency.channels.DeliveringChannel`) gets every result through it
    instead of ``send``. Push channels (webhooks) hand messages in with :meth:`submit`.
    :meth:`start` returns after :meth:`stop`, SIGINT or SIGTERM (installed while it runs, when it
    runs in the main thread), once in-flight messages are drained, or once every listener ended
    on its own and every message was answered.

    One circuit breaker guards each provider and model, kept in :attr:`breakers`.

    Args:
        config: the processor's configuration.
        model: passed to the provider.
        temperature: passed to the provider.
        notices: the user-facing texts for failures.
        drain_timeout: how long :meth:`stop` lets in-flight messages finish.
        listener_backoff: first and longest wait before restarting a failed listener, in seconds
            (both > 0, the first not above the longest).
        handle_signals: install SIGINT/SIGTERM handlers while :meth:`start` runs.
        send_timeout: longest a ``send``/``deliver`` may take, in seconds; one that exceeds it is
            cancelled, logged and counted as a send failure. ``None``: no limit.
        handler: ``async (message) -> str`` answering every message instead of
            ``provider.chat_with_system(system_prompt, message.content, model, temperature)``.
        clock: time source of every stage.
        interrupt_command: a message whose content is exactly this (``"/stop"``) first cancels
            its conversation's running turn (INTERRUPTED), then is admitted like any message
            (its handler answers it). ``None`` (the default): no command.
        dedup_store: an async :class:`~zeroclaw.concurrency.DedupStore` that takes the place of
            the processor's in-memory deduplicator (which is then not made): each message's
            dedup key (the configuration's ``dedup_key``) is claimed there before admission, a
            duplicate is not admitted, and the claim is released when admission refuses the
            message or it ends without success (so a redelivery is processed), as the in-memory
            one does. A Redis store (``zeroclaw.backends.redis.dedup.RedisDedupStore``) makes
            several processes one dedup. Ignored stage settings are said: with a store,
            ``enable_dedup`` must be ``True`` (``ValueError`` otherwise: a store and no dedup
            contradict each other).

    Raises:
        TypeError: an argument of the wrong type (a ``handler`` that is not an async function).
        ValueError: a ``listener_backoff`` or timeout out of range; a ``dedup_store`` with
            ``enable_dedup=False``.
    """

    def __init__(
        self,
        config: MessageProcessorConfig | None = None,
        *,
        model: str = "default",
        temperature: float = 0.7,
        notices: Notices | None = None,
        drain_timeout: float | timedelta = 30.0,
        # Sequence, not tuple[float, float]: a compiled build would check (and convert) a native
        # tuple's items itself, with its own wording, before _backoff_bounds could.
        listener_backoff: Sequence[float] = (1.0, 60.0),
        handle_signals: bool = True,
        send_timeout: float | timedelta | None = 30.0,
        handler: Handler | None = None,
        clock: Clock | None = None,
        interrupt_command: str | None = None,
        dedup_store: DedupStore | None = None,
    ) -> None:
        self.config = config if config is not None else MessageProcessorConfig()
        if dedup_store is not None and not self.config.enable_dedup:
            raise ValueError(
                "dedup_store is given but the config has enable_dedup=False: give one or the other"
            )
        self.dedup_store = dedup_store
        self._store_key = _dedup_key_function(self.config.dedup_key)
        self._store_releases: set[asyncio.Task[None]] = set()
        self.interrupt_command = interrupt_command
        self.model = model
        self.temperature = temperature
        self.notices = notices if notices is not None else Notices()
        self.breakers = CircuitBreakerGroup(self.config.circuit_config, clock=clock)
        self._drain_timeout = to_seconds(drain_timeout, what="drain_timeout")
        self._backoff_first, self._backoff_max = _backoff_bounds(listener_backoff)
        self._send_timeout = to_timeout(send_timeout, what="send_timeout")
        if self._send_timeout == 0.0:
            raise ValueError("send_timeout must be > 0 seconds or None, got 0")
        if handler is not None:
            _check_handler(handler, "ConcurrentMessageProcessor(handler=...)")
        self._handler = handler
        self._handle_signals = handle_signals
        self._clock = resolve_clock(clock)
        self._processor: MessageProcessor | None = None
        self._active_handler: Handler | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stop_pending = False  # stop() came while no start() was running
        self._running = False
        self._stopping = False
        self._start_waiters: list[asyncio.Future[None]] = []
        self._listener_restarts = 0
        self._unroutable = 0
        self._tallies: dict[str, _Tally] = {}
        self._send_tails: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._send_log = _FailureLog("send failures", self._clock)
        self._admission_log = _FailureLog("admission errors", self._clock)

    @property
    def processor(self) -> MessageProcessor | None:
        """The running processor (``None`` before :meth:`start`)."""
        return self._processor

    @property
    def started(self) -> bool:
        """``True`` while :meth:`start` has its processor running (until it returns)."""
        return self._running

    async def wait_started(self) -> None:
        """Return once :meth:`start` has its processor running (at once if it has).

        Blocks until then. Raises ``RuntimeError`` if the ``start()`` it waited for ended without
        running (it raised, or :meth:`stop` came first).
        """
        if self._running:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._start_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._start_waiters:
                self._start_waiters.remove(waiter)

    def _resolve_start_waiters(self, failure: str | None) -> None:
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if failure is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(RuntimeError(failure))

    async def start(
        self, channels: Sequence[Channel], provider: Provider, system_prompt: str | None
    ) -> None:
        """Process messages from ``channels`` with ``provider`` until stopped. Blocks until then.

        If :meth:`stop` was called while no ``start()`` ran, this returns at once without
        starting (and says so in the log): the stop is not lost.

        Raises:
            ValueError: two channels share a name.
            RuntimeError: already running.
        """
        by_name = {channel.name: channel for channel in channels}
        if len(by_name) != len(channels):
            self._resolve_start_waiters("start() failed: channels must have distinct names")
            raise ValueError("channels must have distinct names")
        if self._running:
            raise RuntimeError("ConcurrentMessageProcessor is already running")
        if self._stop_pending:
            self._stop_pending = False
            _logger.info("stop() was called before start() ran: not starting")
            self._resolve_start_waiters("stop() was called before start() ran")
            return
        provider_name = getattr(provider, "name", type(provider).__name__)
        breaker = self.breakers.get_or_create(f"{provider_name}:{self.model}")
        config = self.config
        if self.dedup_store is not None:  # the store dedups in its place
            config = dataclasses.replace(config, enable_dedup=False)
        processor = self._processor = MessageProcessor(
            config, breaker=breaker, clock=self._clock, name="gateway"
        )
        stop = self._stop_requested = asyncio.Event()
        model, temperature = self.model, self.temperature

        async def answer(message: ChannelMessage) -> str:
            return await provider.chat_with_system(
                system_prompt, message.content, model, temperature
            )

        handler = self._active_handler = self._handler if self._handler is not None else answer
        for name in by_name:
            self._tally(name)
        inbox: asyncio.Queue[ChannelMessage] = asyncio.Queue(maxsize=1000)
        loop = asyncio.get_running_loop()
        listeners = [
            loop.create_task(self._supervise(channel, inbox), name=f"listen:{channel.name}")
            for channel in channels
        ]
        replier = loop.create_task(self._reply_all(processor), name="gateway:replies")
        intake = loop.create_task(
            self._intake(inbox, by_name, processor, handler), name="gateway:intake"
        )
        channels_ended = loop.create_task(self._all_ended(listeners, inbox))
        waiting_for_stop = loop.create_task(stop.wait())
        installed = self._install_signal_handlers(loop)
        self._running = True
        self._resolve_start_waiters(None)
        try:
            await asyncio.wait(
                [intake, channels_ended, waiting_for_stop], return_when=asyncio.FIRST_COMPLETED
            )
            if intake.done() and not intake.cancelled() and intake.exception() is not None:
                _logger.error("intake failed", exc_info=intake.exception())
        finally:
            self._stopping = True
            for signum in installed:
                loop.remove_signal_handler(signum)
            ended = [*listeners, channels_ended, waiting_for_stop]
            for task in ended:
                task.cancel()
            await asyncio.gather(*ended, return_exceptions=True)
            # The intake keeps admitting while the processor drains; the processor refuses what
            # comes after its shutdown began, and those messages get the refusal notice.
            await processor.shutdown(drain=True, timeout=self._drain_timeout)
            intake.cancel()
            await asyncio.gather(intake, return_exceptions=True)
            while not inbox.empty():  # taken from a channel, never admitted: refuse each aloud
                leftover = inbox.get_nowait()
                inbox.task_done()
                await self._admit_queued(leftover, by_name, processor, handler)
            await replier
            await self._finish_sends()
            self._send_log.flush()
            self._admission_log.flush()
            self._active_handler = None
            self._stop_requested = None
            self._stop_pending = False
            self._stopping = False
            self._running = False

    async def submit(self, channel: Channel, message: ChannelMessage) -> Admission:
        """Admit ``message`` from a push channel (a webhook), as the listeners' messages are.

        Same handler, dedup, breaker, backpressure and lanes; the result goes to ``channel``'s
        ``deliver`` (or ``send``). Sends no refusal notice: the caller answers the platform. Blocks
        as :meth:`MessageProcessor.process_message` does (at the admission bound, in ``"wait"``
        mode). Returns REJECTED ``"shutting down"`` once a stop began.

        Raises:
            RuntimeError: :meth:`start` is not running.
            Exception: what the configuration's ``priority``/``conversation_key``/``dedup_key``
                function raised (TypeError for a result of the wrong type); nothing is taken.
        """
        processor = self._processor
        handler = self._active_handler
        if not self._running or processor is None or handler is None:
            raise RuntimeError("ConcurrentMessageProcessor.submit() needs start() to be running")
        tally = self._tally(channel.name)
        tally.received += 1
        stop = self._stop_requested
        if self._stopping or (stop is not None and stop.is_set()):
            return processor._refuse("shutting down")
        try:
            if self.interrupt_command is not None:
                self._maybe_interrupt(processor, channel, message)
            if self.dedup_store is not None:
                return await self._admit_claimed(processor, channel, message, handler)
            return await processor.process_message(channel, message, handler)
        except Exception:
            tally.admission_errors += 1
            raise

    def _store_key_of(self, channel_name: str, message: ChannelMessage) -> str:
        key = self._store_key(channel_name, message)
        return key.digest if isinstance(key, DedupKey) else key

    async def _admit_claimed(
        self,
        processor: MessageProcessor,
        channel: Channel,
        message: ChannelMessage,
        handler: Handler,
    ) -> Admission:
        """Claim the message in the dedup store, then admit it; a refusal (or an error, or a
        cancellation) releases the claim."""
        store = cast(DedupStore, self.dedup_store)
        key = self._store_key_of(channel.name, message)
        if not await store.claim(key):
            return _DUPLICATE
        try:
            admission = await processor.process_message(channel, message, handler)
        except BaseException:
            await asyncio.shield(store.release(key))
            raise
        if admission.kind is AdmissionKind.REJECTED:
            await store.release(key)
        return admission

    @staticmethod
    async def _all_ended(
        listeners: list[asyncio.Task[None]], inbox: asyncio.Queue[ChannelMessage]
    ) -> None:
        """Return once every listener ended on its own and every message was admitted."""
        await asyncio.gather(*listeners, return_exceptions=True)
        await inbox.join()

    async def stop(self) -> None:
        """Ask :meth:`start` to stop: no new messages, in-flight ones drained. Does not wait.

        Called while no ``start()`` runs (e.g. before a ``start()`` task got to run), it makes the
        next ``start()`` return at once instead of being lost.
        """
        if self._stop_requested is not None:
            self._stop_requested.set()
        elif not self._running:
            self._stop_pending = True

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if not self._handle_signals:
            return []
        installed: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (ValueError, RuntimeError, NotImplementedError):
                continue  # not the main thread, or a loop without signal support
            installed.append(signum)
        return installed

    def _on_signal(self, signum: int) -> None:
        _logger.info("received %s: draining in-flight messages", signal.Signals(signum).name)
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _supervise(self, channel: Channel, inbox: asyncio.Queue[ChannelMessage]) -> None:
        """Run ``channel.listen``; restart it with a capped exponential backoff when it fails."""
        delay = self._backoff_first
        while True:
            started = self._clock.now()
            try:
                await channel.listen(inbox)
                return  # the channel ended on its own
            except Exception:
                _logger.exception(
                    "listener of channel %r failed; restarting in %.1fs", channel.name, delay
                )
            self._listener_restarts += 1
            if self._clock.now() - started > self._backoff_max:
                delay = self._backoff_first  # it had been healthy for a while: start over
            await self._clock.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _intake(
        self,
        inbox: asyncio.Queue[ChannelMessage],
        by_name: Mapping[str, Channel],
        processor: MessageProcessor,
        handler: Handler,
    ) -> None:
        """Admit every message from the inbox; refused ones get a notice at once.

        With ``admission="wait"`` this waits at the processor's bound, the inbox fills, and the
        listeners wait on it: backpressure reaches the channels. An error admitting one message is
        logged and counted (:meth:`_admit_queued`); the loop goes on.
        """
        while True:
            message = await inbox.get()
            try:
                await self._admit_queued(message, by_name, processor, handler)
            except Exception:  # a defect of ours: keep answering the others
                _logger.exception("intake: message %r could not be handled", message.id)
            finally:
                inbox.task_done()

    async def _admit_queued(
        self,
        message: ChannelMessage,
        by_name: Mapping[str, Channel],
        processor: MessageProcessor,
        handler: Handler,
    ) -> None:
        """Admit one message taken from a channel; a refusal or an error gets its notice."""
        channel = by_name.get(message.channel)
        if channel is None:
            self._unroutable += 1
            _logger.warning(
                "message %r names unknown channel %r; dropped", message.id, message.channel
            )
            return
        tally = self._tally(channel.name)
        tally.received += 1
        try:
            if self.interrupt_command is not None:
                self._maybe_interrupt(processor, channel, message)
            if self.dedup_store is not None:
                admission = await self._admit_claimed(processor, channel, message, handler)
            else:
                admission = await processor.process_message(channel, message, handler)
        except Exception as error:
            tally.admission_errors += 1
            if self._admission_log.admit():
                _logger.error(
                    "message %r of channel %r could not be admitted: %s: %s",
                    message.id,
                    channel.name,
                    type(error).__name__,
                    error,
                    exc_info=error,
                )
            self._answer(
                channel,
                message,
                MessageResult(MessageResultKind.FAILED, error=error),
                self.notices.failed,
            )
            return
        if admission.kind is AdmissionKind.REJECTED:
            notices = self.notices
            text = notices.unavailable if admission.reason == "circuit open" else notices.refused
            refusal = Rejected(admission.reason or "refused", retry_after=admission.retry_after)
            self._answer(
                channel, message, MessageResult(MessageResultKind.REJECTED, error=refusal), text
            )

    async def _reply_all(self, processor: MessageProcessor) -> None:
        """Send every result's reply or notice; sends of one conversation keep their order."""
        notices = self.notices
        async for channel, message, result in processor.responses:
            if isinstance(channel, str):
                continue
            kind = result.kind
            if kind is MessageResultKind.SUCCESS:
                text: str | None = result.value
            elif kind is MessageResultKind.TIMEOUT:
                text = notices.timeout
            elif kind is MessageResultKind.FAILED:
                text = notices.failed
            elif kind is MessageResultKind.REJECTED:  # the breaker opened while it waited
                text = notices.unavailable
            elif kind is MessageResultKind.MERGED or kind is MessageResultKind.INTERRUPTED:
                text = None  # the turn that merged or superseded it answers the conversation
            else:
                text = notices.cancelled
            if self.dedup_store is not None and kind in _RELEASED_KINDS:
                self._release_claim(channel.name, message)
            self._answer(channel, message, result, text)

    def _release_claim(self, channel_name: str, message: ChannelMessage) -> None:
        """Release ``message``'s claim in the dedup store, in the background (an error there
        is logged: the redelivery would then be taken for a duplicate until the TTL ends)."""
        store = cast(DedupStore, self.dedup_store)
        task = asyncio.get_running_loop().create_task(
            _release(store, self._store_key_of(channel_name, message), message.id)
        )
        self._store_releases.add(task)
        task.add_done_callback(self._store_releases.discard)

    def _answer(
        self, channel: Channel, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Queue the answer to ``message``: ``channel.deliver(...)`` when the channel has it (for
        every result, ``text`` or not), else ``channel.send(text, ...)`` when there is a text.

        Runs in the background, after the previous answer to the same conversation.
        """
        deliver = getattr(channel, "deliver", None)
        if deliver is None and not text:
            return
        key = (channel.name, message.reply_to)
        previous = self._send_tails.get(key)
        task = asyncio.get_running_loop().create_task(
            self._send_after(previous, key, channel, deliver, message, result, text)
        )
        self._send_tails[key] = task
        self._sends.add(task)

    async def _send_after(
        self,
        previous: asyncio.Task[None] | None,
        key: tuple[str, str],
        channel: Channel,
        deliver: Any,
        message: ChannelMessage,
        result: MessageResult,
        text: str | None,
    ) -> None:
        me = asyncio.current_task()
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await self._send(channel, deliver, message, result, text)
        except asyncio.CancelledError:
            self._send_failed(channel, message, "cancelled by stop() after the drain")
            raise
        finally:
            if self._send_tails.get(key) is me:
                del self._send_tails[key]
            if me is not None:
                self._sends.discard(cast("asyncio.Task[None]", me))

    async def _send(
        self,
        channel: Channel,
        deliver: Any,
        message: ChannelMessage,
        result: MessageResult,
        text: str | None,
    ) -> None:
        """One send (or deliver) under ``send_timeout``; its outcome is counted and, if it
        failed, logged. Raises only ``CancelledError`` (a cancellation from outside)."""
        timer: _SendTimer | None = None
        handle: Cancellable | None = None
        if self._send_timeout is not None:
            me = asyncio.current_task()
            assert me is not None
            timer = _SendTimer(me)
            handle = call_later(self._clock, self._send_timeout, timer.fire)
        try:
            if deliver is not None:
                await deliver(message, result, text)
            else:
                await channel.send(cast(str, text), message.reply_to)
        except asyncio.CancelledError:
            if timer is None or not timer.fired:
                raise
            timer.task.uncancel()
            self._send_failed(channel, message, f"timed out after {self._send_timeout:g}s")
            return
        except Exception as error:
            self._send_failed(channel, message, f"{type(error).__name__}: {error}", error)
            return
        finally:
            if handle is not None:
                handle.cancel()
        self._tally(channel.name).sent += 1

    def _send_failed(
        self,
        channel: Channel,
        message: ChannelMessage,
        why: str,
        error: BaseException | None = None,
    ) -> None:
        self._tally(channel.name).send_failures += 1
        if self._send_log.admit():
            _logger.warning(
                "answer to message %r (to %r on channel %r) not sent: %s",
                message.id,
                message.reply_to,
                channel.name,
                why,
                exc_info=error,
            )

    async def _finish_sends(self) -> None:
        """After the drain: let the sends still running finish within a grace period (one
        ``send_timeout``), then cancel the rest (each is counted and logged as a send failure).
        Claims being released in the dedup store are waited for too."""
        if self._store_releases:
            await asyncio.gather(*self._store_releases, return_exceptions=True)
        if not self._sends:
            return
        grace = self._send_timeout if self._send_timeout is not None else _GRACE_CAP
        loop = asyncio.get_running_loop()
        timer = loop.create_task(self._clock.sleep(grace))
        try:
            while self._sends and not timer.done():
                await asyncio.wait([*self._sends, timer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        remaining = list(self._sends)
        for task in remaining:
            task.cancel()
        await asyncio.gather(*remaining, timer, return_exceptions=True)

    def _tally(self, name: str) -> _Tally:
        tally = self._tallies.get(name)
        if tally is None:
            tally = self._tallies[name] = _Tally()
        return tally

    def channel_stats(self) -> dict[str, ChannelCounters]:
        """Per channel name: messages received, answers sent, send failures, admission errors.

        Counts since this object was made (across runs). Does not block.
        """
        return {
            name: ChannelCounters(t.received, t.sent, t.send_failures, t.admission_errors)
            for name, t in self._tallies.items()
        }

    def stats(self) -> ProcessorStats | None:
        """The running processor's statistics (``None`` before :meth:`start`)."""
        return self._processor.stats() if self._processor is not None else None

    def _maybe_interrupt(
        self, processor: MessageProcessor, channel: Channel, message: ChannelMessage
    ) -> None:
        if message.content.strip() == self.interrupt_command:
            key = processor.conversation_of(channel.name, message)
            if processor.interrupt(key):
                _logger.info("%s: conversation %r interrupted by %r", channel.name, key, message.id)

    def interrupt(self, channel_name: str, message: ChannelMessage) -> bool:
        """Cancel the running turn of ``message``'s conversation (``/stop``): its result is
        INTERRUPTED. Returns ``False`` when nothing runs there (or :meth:`start` is not running).
        Does not block.

        Raises:
            Exception: what the configuration's ``conversation_key`` raised.
        """
        processor = self._processor
        if processor is None:
            return False
        return processor.interrupt(processor.conversation_of(channel_name, message))

    def circuit_breaker_stats(self) -> dict[str, CircuitBreakerStats]:
        """One entry per provider and model (``"<provider>:<model>"``)."""
        return self.breakers.all_stats()


# Results after which a message's dedup claim is given back (the in-memory dedup forgets them).
_RELEASED_KINDS = frozenset(
    {
        MessageResultKind.FAILED,
        MessageResultKind.TIMEOUT,
        MessageResultKind.CANCELLED,
        MessageResultKind.REJECTED,
    }
)


async def _release(store: DedupStore, key: str, message_id: str) -> None:
    try:
        await store.release(key)
    except Exception as error:
        _logger.warning(
            "the dedup claim of message %r could not be released: %s: %s",
            message_id,
            type(error).__name__,
            error,
        )


def _backoff_bounds(listener_backoff: object) -> tuple[float, float]:
    """``listener_backoff`` checked: two positive numbers of seconds, the first <= the second."""
    if not isinstance(listener_backoff, tuple | list) or len(listener_backoff) != 2:
        raise TypeError(
            "listener_backoff must be a pair (first, longest) of seconds, "
            f"not {type(listener_backoff).__name__}"
        )
    first = to_positive_number(listener_backoff[0], what="listener_backoff[0]")
    longest = to_positive_number(listener_backoff[1], what="listener_backoff[1]")
    if longest < first:
        raise ValueError(
            f"listener_backoff's longest wait ({longest:g}s) is below its first ({first:g}s)"
        )
    return first, longest


describe_compiled(__name__)  # docstrings and signatures the compiled build lacks (_mypyc.py)
