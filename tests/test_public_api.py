"""The public names match DESIGN.md (sections 1-3): code outside this repo imports them."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import zeroclaw.concurrency

ERRORS = {
    "CircuitOpenError",
    "ConcurrencyError",
    "Overloaded",
    "PoolClosed",
    "QueueFull",
    "Rejected",
    "TaskCancelled",
}

CONTRACT: dict[str, set[str]] = {
    "zeroclaw.concurrency.deduplicator": {
        "DedupKey",
        "DedupStats",
        "DedupStrategy",
        "Deduplicator",
    },
    "zeroclaw.concurrency.backpressure": {
        "AdaptiveLimiter",
        "AdaptiveLimiterStats",
        "AdaptivePermit",
        "Backpressure",
        "BackpressureStats",
        "Permit",
        "RateLimiter",
        "RateLimiterStats",
    },
    "zeroclaw.concurrency.circuit_breaker": {
        "CircuitBreaker",
        "CircuitBreakerGroup",
        "CircuitBreakerStats",
        "CircuitConfig",
        "CircuitState",
    },
    "zeroclaw.concurrency.worker_pool": {
        "Task",
        "TaskHandle",
        "TaskPriority",
        "TaskResult",
        "TaskStatus",
        "WorkerPool",
        "WorkerPoolStats",
    },
}


# Importable from its module; not re-exported from zeroclaw.concurrency (DESIGN.md section 1).
CHANNEL_INTEGRATION = {
    "Admission",
    "AdmissionKind",
    "Channel",
    "ChannelMessage",
    "ConcurrentMessageProcessor",
    "MessageProcessor",
    "MessageProcessorConfig",
    "MessageResult",
    "MessageResultKind",
    "ProcessedMessage",
    "ProcessorStats",
    "Provider",
}


def test_channel_integration_exports_its_contract() -> None:
    module = importlib.import_module("zeroclaw.concurrency.channel_integration")
    assert set(module.__all__) >= CHANNEL_INTEGRATION
    assert list(module.__all__) == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


def test_all_is_sorted_and_unique() -> None:
    names = list(zeroclaw.concurrency.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_package_reexports_exactly_the_contract() -> None:
    expected = ERRORS.union(*CONTRACT.values())
    assert set(zeroclaw.concurrency.__all__) == expected
    for name in expected:
        assert hasattr(zeroclaw.concurrency, name), name


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_each_module_exports_its_names_and_they_are_the_same_objects(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert CONTRACT[module_name] <= set(module.__all__)
    for name in CONTRACT[module_name]:
        assert getattr(module, name) is getattr(zeroclaw.concurrency, name)


def test_error_tree() -> None:
    from zeroclaw.concurrency import (
        CircuitOpenError,
        ConcurrencyError,
        Overloaded,
        PoolClosed,
        QueueFull,
        Rejected,
        TaskCancelled,
    )

    for refusal in (QueueFull, Overloaded, CircuitOpenError):
        assert issubclass(refusal, Rejected)
    for base in (Rejected, PoolClosed, TaskCancelled):
        assert issubclass(base, ConcurrencyError)
    refused = CircuitOpenError("openai", "Open", 12.5)
    assert str(refused) == "circuit 'openai' is Open; retry in 12.5s"
    assert refused.retry_after == 12.5
    assert QueueFull("full", retry_after=None).retry_after is None


def test_worker_pool_signatures_match_the_contract() -> None:
    from zeroclaw.concurrency import Task, WorkerPool

    pool = inspect.signature(WorkerPool)
    assert list(pool.parameters)[:2] == ["workers", "queue_size"]
    for keyword in ("default_timeout", "name", "clock"):
        assert pool.parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY
    task = inspect.signature(Task)
    assert next(iter(task.parameters)) == "fn"
    for keyword in ("priority", "timeout", "name"):
        assert task.parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY
    shutdown = inspect.signature(WorkerPool.shutdown)
    assert shutdown.parameters["drain"].default is True
    assert shutdown.parameters["timeout"].default == 30.0


def test_the_core_imports_only_the_standard_library() -> None:
    code = (
        "import sys, zeroclaw.concurrency, zeroclaw.testing\n"
        "stdlib = sys.stdlib_module_names\n"
        "ours = {'zeroclaw', '__main__', '_distutils_hack'}\n"  # the last: setuptools' .pth shim
        "bad = sorted({m.split('.')[0] for m in sys.modules} - stdlib - ours)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
