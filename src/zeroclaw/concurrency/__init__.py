"""The ZeroClaw concurrency core: pure asyncio, standard library only.

Every primitive here is usable on its own; ``zeroclaw.concurrency.channel_integration`` composes
them into the message-processing pipeline. Like asyncio's own primitives, an instance belongs to one
event loop; constructors never need a running loop.
"""

from zeroclaw.concurrency.backpressure import (
    AdaptiveLimiter,
    AdaptiveLimiterStats,
    AdaptivePermit,
    Backpressure,
    BackpressureStats,
    Permit,
    RateLimiter,
    RateLimiterStats,
)
from zeroclaw.concurrency.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerGroup,
    CircuitBreakerStats,
    CircuitConfig,
    CircuitState,
)
from zeroclaw.concurrency.dedup_store import DedupStore, MemoryDedupStore
from zeroclaw.concurrency.deduplicator import (
    DedupKey,
    Deduplicator,
    DedupStats,
    DedupStrategy,
)
from zeroclaw.concurrency.errors import (
    CircuitOpenError,
    ConcurrencyError,
    Overloaded,
    PoolClosed,
    QueueFull,
    Rejected,
    TaskCancelled,
)
from zeroclaw.concurrency.worker_pool import (
    Task,
    TaskHandle,
    TaskPriority,
    TaskResult,
    TaskStatus,
    WorkerPool,
    WorkerPoolStats,
)

__all__ = [
    "AdaptiveLimiter",
    "AdaptiveLimiterStats",
    "AdaptivePermit",
    "Backpressure",
    "BackpressureStats",
    "CircuitBreaker",
    "CircuitBreakerGroup",
    "CircuitBreakerStats",
    "CircuitConfig",
    "CircuitOpenError",
    "CircuitState",
    "ConcurrencyError",
    "DedupKey",
    "DedupStats",
    "DedupStore",
    "DedupStrategy",
    "Deduplicator",
    "MemoryDedupStore",
    "Overloaded",
    "Permit",
    "PoolClosed",
    "QueueFull",
    "RateLimiter",
    "RateLimiterStats",
    "Rejected",
    "Task",
    "TaskCancelled",
    "TaskHandle",
    "TaskPriority",
    "TaskResult",
    "TaskStatus",
    "WorkerPool",
    "WorkerPoolStats",
]
