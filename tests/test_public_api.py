"""The public names are the project's contract: code outside this repo imports them."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import subprocess
import sys
from types import ModuleType

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
    "zeroclaw.concurrency.dedup_store": {"DedupStore", "MemoryDedupStore"},
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


# Importable from its module; not re-exported from zeroclaw.concurrency (the contract says so).
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


def source_module(name: str) -> ModuleType:
    """``name`` as plain Python, loaded from its ``.py`` file even where the build compiled it.

    The source is what the contract is written in; tests/test_help_and_signatures.py checks that
    the compiled build shows the same signatures.
    """
    module = importlib.import_module(name)
    source = pathlib.Path(module.__file__ or "").with_suffix("")
    source = source.with_name(source.name.split(".")[0] + ".py")
    spec = importlib.util.spec_from_file_location(f"_source_of_{name.replace('.', '_')}", source)
    assert spec is not None
    assert spec.loader is not None
    plain = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = plain  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(plain)
    finally:
        del sys.modules[spec.name]
    return plain


def test_worker_pool_signatures_match_the_contract() -> None:
    worker_pool = source_module("zeroclaw.concurrency.worker_pool")
    Task, WorkerPool = worker_pool.Task, worker_pool.WorkerPool

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
        # mypyc's runtime for the compiled modules: built from our sources, named by their hash.
        "ours |= {m for m in sys.modules if m.endswith('__mypyc')}\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} - stdlib - ours)\n"
        # Nor does it load the gateway's packages (which would pull in aiohttp).
        "bad += sorted(m for m in sys.modules if m.startswith(('zeroclaw.providers',"
        " 'zeroclaw.gateway', 'zeroclaw.channels')))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_build_compiles_the_modules_the_package_lists() -> None:
    """pyproject.toml's mypyc hook and ``_mypyc.COMPILED`` (which the tests and benchmarks read to
    tell a compiled build) name the same modules."""
    import tomllib

    from zeroclaw.concurrency._mypyc import COMPILED

    root = pathlib.Path(__file__).parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    hook = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    listed = [
        path.removeprefix("src/").removesuffix(".py").replace("/", ".") for path in hook["include"]
    ]
    assert listed == list(COMPILED)


async def test_the_primitives_can_be_subclassed_in_python_compiled_or_not() -> None:
    """mypyc-compiled classes refuse Python subclasses unless told otherwise; these are told, and
    an override is called from compiled code too."""
    from zeroclaw.concurrency import (
        AdaptiveLimiter,
        Backpressure,
        CircuitBreaker,
        CircuitBreakerGroup,
        DedupKey,
        Deduplicator,
        DedupStrategy,
        RateLimiter,
        Task,
        WorkerPool,
    )
    from zeroclaw.concurrency.channel_integration import (
        ChannelMessage,
        ConcurrentMessageProcessor,
        MessageProcessor,
    )
    from zeroclaw.concurrency.circuit_breaker import CallTicket

    asked: list[str] = []

    class CountingBreaker(CircuitBreaker):
        def allow_request(self) -> CallTicket | None:
            asked.append("allow_request")
            return super().allow_request()

    async def echo(message: ChannelMessage) -> str:
        return message.content

    processor = MessageProcessor(breaker=CountingBreaker(name="counting"))
    message = ChannelMessage(id="1", sender="u", content="hi", channel="cli", timestamp=0.0)
    admission = await processor.process_message("cli", message, echo)
    assert admission.accepted
    assert asked == ["allow_request"]  # MessageProcessor (compiled) called the override
    await processor.shutdown()
    results = [result async for result in processor.responses]
    assert [r.result.value for r in results] == ["hi"]

    for cls, args in [
        (WorkerPool, (1, 1)),
        (Backpressure, (2,)),
        (RateLimiter, (10.0,)),
        (AdaptiveLimiter, (4, 1, 16, None, 100.0)),
        (CircuitBreakerGroup, ()),
        (MessageProcessor, ()),
        (ConcurrentMessageProcessor, ()),
        (Task, (lambda: None,)),
        (Deduplicator, (60.0,)),
        (DedupKey, ("k",)),
    ]:
        subclass = type(f"My{cls.__name__}", (cls,), {})
        assert isinstance(subclass(*args), cls)

    # Deduplicator(strategy=...) is an instance of a compiled subclass per strategy.
    for strategy in DedupStrategy:
        dedup = Deduplicator(60.0, strategy=strategy)
        assert isinstance(dedup, Deduplicator)
        assert dedup.strategy is strategy
        assert dedup.check_and_update("k") is False
        assert dedup.check_and_update("k") is True

    class MyDedupKey(DedupKey):
        pass

    composite = MyDedupKey.combine(["a", 1])
    assert isinstance(composite, MyDedupKey)
    assert composite == DedupKey.combine(["a", "1"])
