"""OpenTelemetry traces (the ``otel`` extra): one trace per run, on every back end and across
worker processes; spans for triggers, steps, callbacks, timeouts and hooks; ``run.logger``;
and an engine without a tracer provider or without ``opentelemetry`` at all."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import (
    Builder,
    RetryPolicy,
    Run,
    RunState,
    TypedRecord,
    WorkflowInProgressError,
    duration_timer,
)
from workflow.abc import make_outbox_event
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.adapters.sqlschema import create_schema
from workflow.testing import FakeClock, await_timeout_insert

from .backends import Backend
from .procs import traced_worker
from .procs.kafka_worker import namespace, need_kafka
from .support import Obj, Status, build
from .test_kafka_e2e import KafkaBackend

ROOT = Path(__file__).resolve().parent.parent


def _reset_provider() -> None:
    # set_tracer_provider works once per process; OpenTelemetry's own test utilities reset
    # these two globals the same way, so each test gets (and then drops) its provider
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


class Spans(InMemorySpanExporter):
    """The in-memory exporter, and a way to wait for a span without polling."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        for loop, event in self._waiters:
            loop.call_soon_threadsafe(event.set)
        return result

    async def wait(self, name: str, /, **attributes: Any) -> None:
        """Until a span called ``name`` with these ``workflow.*`` attributes has ended."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(10):
                while not matching(self, name, attributes):
                    event.clear()
                    await event.wait()
        finally:
            self._waiters.remove(waiter)


@pytest.fixture
def spans() -> Iterator[Spans]:
    """A global SDK tracer provider for this test, exporting to memory as spans end."""
    exporter = Spans()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        _reset_provider()  # tracing off again for the tests after this one
        provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def matching(
    exporter: InMemorySpanExporter, name: str, attributes: dict[str, Any]
) -> list[ReadableSpan]:
    return [
        s
        for s in named(exporter, name)
        if all((s.attributes or {}).get(f"workflow.{k}") == v for k, v in attributes.items())
    ]


def one(exporter: InMemorySpanExporter, name: str, /, **attributes: Any) -> ReadableSpan:
    found = matching(exporter, name, attributes)
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in found])
    return found[0]


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.context is not None and parent.context is not None
    return (
        span.parent is not None
        and span.context.trace_id == parent.context.trace_id
        and span.parent.span_id == parent.context.span_id
    )


def traceparent(span: ReadableSpan) -> str:
    assert span.context is not None
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def chain() -> Builder[Obj, Status]:
    async def first(run: Run[Obj, Status]) -> Status:
        run.object.count += 1
        return Status.MIDDLE

    def second(run: Run[Obj, Status]) -> Status:  # a plain def: runs on a worker thread
        run.object.count += 10
        return Status.DONE

    b = Builder[Obj, Status]("traced")
    b.add_step(Status.STARTED, first, Status.MIDDLE)
    b.add_step(Status.MIDDLE, second, Status.DONE)
    return b


# -- one trace per run -----------------------------------------------------------------


async def check_one_trace(backend: Backend, exporter: InMemorySpanExporter) -> None:
    caller = trace.get_tracer("test")
    wf = backend.build(chain())
    async with wf:
        with caller.start_as_current_span("POST /orders") as request:
            rid = await wf.trigger("o-1")
        await wf.await_("o-1", rid, Status.DONE, timeout=20)
    # stop() has waited for the event in hand: every span has ended
    trigger = one(exporter, "workflow.trigger")
    first = one(exporter, "workflow.step", status="STARTED")
    second = one(exporter, "workflow.step", status="MIDDLE")
    http = one(exporter, "POST /orders")
    assert ids(http) == (request.get_span_context().trace_id, request.get_span_context().span_id)
    assert child_of(trigger, http)  # the trigger joins the caller's trace
    assert child_of(first, trigger) and child_of(second, first)
    assert trigger.kind is SpanKind.PRODUCER and first.kind is SpanKind.CONSUMER
    assert dict(trigger.attributes or {}) == {
        "workflow.name": "traced",
        "workflow.foreign_id": "o-1",
        "workflow.run_id": rid,
        "workflow.next_status": "STARTED",
        "workflow.next_run_state": "INITIATED",
    }
    assert dict(first.attributes or {}) == {
        "workflow.name": "traced",
        "workflow.run_id": rid,
        "workflow.foreign_id": "o-1",
        "workflow.status": "STARTED",
        "workflow.run_state": "INITIATED",
        "workflow.attempt": 1,
        "workflow.process": "started-consumer-1-of-1",
        "workflow.next_status": "MIDDLE",
        "workflow.next_run_state": "RUNNING",
    }
    assert (second.attributes or {})["workflow.next_run_state"] == "COMPLETED"
    for span in (trigger, first, second):
        assert span.status.status_code is StatusCode.UNSET


async def test_a_run_is_one_trace(backend: Backend, spans: Spans) -> None:
    """Memory, SQLite and PostgreSQL, each with the outbox relay and with the store
    appending events to the SQL streamer itself."""
    await check_one_trace(backend, spans)


async def test_runs_written_together_keep_their_own_traces(backend: Backend, spans: Spans) -> None:
    """Runs triggered at once, each from its own request, and stepped by consumers that take
    many events at once: the SQL store writes them in batches from another task, and each
    run's event still carries its own writer's trace context (made in the caller's task)."""

    async def first(run: Run[Obj, Status]) -> Status:
        return Status.MIDDLE

    async def second(run: Run[Obj, Status]) -> Status:
        return Status.DONE

    b = Builder[Obj, Status]("traced")
    b.add_step(Status.STARTED, first, Status.MIDDLE).with_options(concurrency=16)
    b.add_step(Status.MIDDLE, second, Status.DONE).with_options(concurrency=16)
    wf = backend.build(b)
    caller = trace.get_tracer("test")
    n = 24

    async def request(i: int) -> str:
        with caller.start_as_current_span(f"POST /orders/{i}"):
            return await wf.trigger(f"o-{i}")

    async with wf:
        rids = await asyncio.gather(*(request(i) for i in range(n)))
        for i, rid in enumerate(rids):
            await wf.await_(f"o-{i}", rid, Status.DONE, timeout=20)
    for i in range(n):
        http = one(spans, f"POST /orders/{i}")
        trigger = one(spans, "workflow.trigger", foreign_id=f"o-{i}")
        step1 = one(spans, "workflow.step", foreign_id=f"o-{i}", status="STARTED")
        step2 = one(spans, "workflow.step", foreign_id=f"o-{i}", status="MIDDLE")
        assert child_of(trigger, http), f"run o-{i}: its trigger left its request's trace"
        assert child_of(step1, trigger), f"run o-{i}: its first step joined another trace"
        assert child_of(step2, step1), f"run o-{i}: its second step joined another trace"


async def test_a_run_is_one_trace_over_kafka(
    sql_engine: AsyncEngine,
    clock: FakeClock,
    registry: CollectorRegistry,
    spans: Spans,
) -> None:
    b = KafkaBackend("kafka", clock, registry, sql_engine)
    b.bootstrap, b.ns = need_kafka(), namespace()
    try:
        await check_one_trace(b, spans)
    finally:
        await b.close()


async def test_the_event_carries_the_writers_trace_context(
    clock: FakeClock, registry: CollectorRegistry, spans: Spans
) -> None:
    streamer = MemStreamer(clock)
    wf = chain().build(
        streamer, MemRecordStore(), MemRoleScheduler(), clock=clock, metrics_registry=registry
    )
    async with wf:
        rid = await wf.trigger("o-1")
        done = await wf.await_("o-1", rid, Status.DONE, timeout=10)
    trigger = one(spans, "workflow.trigger")
    first = one(spans, "workflow.step", status="STARTED")
    heard = {}
    for status in (Status.STARTED, Status.MIDDLE):
        receiver = await streamer.new_receiver(f"traced-{int(status)}", "test-reader")
        event, _ = await receiver.recv()
        heard[status] = event.headers
        await receiver.close()
    assert heard[Status.STARTED]["traceparent"] == traceparent(trigger)
    assert heard[Status.MIDDLE]["traceparent"] == traceparent(first)
    assert "tracestate" not in heard[Status.MIDDLE]  # none was set
    # the run keeps its trigger's context: work that no event carries hangs under it
    assert done.meta.trace_origin.splitlines()[-1] == f"traceparent: {traceparent(trigger)}"
    assert "test_tracing.py" in done.meta.trace_origin  # the call site is still there


# -- errors, retries, callbacks, timeouts, hooks, compensation -------------------------


async def test_a_failing_step_records_the_error_and_its_retry_joins_the_trace(
    clock: FakeClock, registry: CollectorRegistry, spans: Spans
) -> None:
    async def flaky(run: Run[Obj, Status]) -> Status:
        if run.attempt == 1:
            raise RuntimeError("card declined")
        return Status.MIDDLE

    async def last(run: Run[Obj, Status]) -> Status:
        return Status.DONE

    b = Builder[Obj, Status]("traced")
    b.add_step(Status.STARTED, flaky, Status.MIDDLE).with_options(
        retry=RetryPolicy(initial_backoff=0)
    )
    b.add_step(Status.MIDDLE, last, Status.DONE)
    wf = build(b, clock, registry)
    async with wf:
        rid = await wf.trigger("o-1")
        await wf.await_("o-1", rid, Status.DONE, timeout=10)
    trigger = one(spans, "workflow.trigger")
    failed = one(spans, "workflow.step", status="STARTED", attempt=1)
    retried = one(spans, "workflow.step", status="STARTED", attempt=2)
    after = one(spans, "workflow.step", status="MIDDLE")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError: card declined"
    (event,) = failed.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "RuntimeError"
    assert (event.attributes or {})["exception.message"] == "card declined"
    # the failed attempt stored the scheduled retry: same status, next attempt
    assert (failed.attributes or {})["workflow.next_status"] == "STARTED"
    assert child_of(failed, trigger)
    # the retry process reads the run, not an event: the retry hangs under the trigger span
    assert child_of(retried, trigger) and retried.status.status_code is StatusCode.UNSET
    assert (retried.attributes or {})["workflow.process"] == "started-retry-consumer"
    assert child_of(after, retried)


async def test_callback_timeout_and_hook_spans(
    clock: FakeClock, registry: CollectorRegistry, spans: Spans
) -> None:
    class S(enum.IntEnum):
        UNKNOWN = 0
        WAITING = 1
        APPROVED = 2
        REMINDED = 3
        DONE = 4

    hooked = asyncio.Event()

    async def approve(run: Run[Obj, S], payload: bytes) -> S:
        run.object.note = payload.decode()
        return S.APPROVED

    async def remind(run: Run[Obj, S], now: Any) -> S:
        return S.REMINDED

    async def finish(run: Run[Obj, S]) -> S:
        return S.DONE

    async def on_complete(record: TypedRecord[Obj, S]) -> None:
        hooked.set()

    b = Builder[Obj, S]("traced")
    b.add_callback(S.WAITING, approve, S.APPROVED)
    b.add_timeout(S.WAITING, duration_timer(timedelta(hours=1)), remind, S.REMINDED)
    b.add_step(S.APPROVED, finish, S.DONE)
    b.add_step(S.REMINDED, finish, S.DONE)
    b.on_complete(on_complete)
    wf = build(b, clock, registry)  # type: ignore[arg-type]
    caller = trace.get_tracer("test")
    async with wf:
        by_callback = await wf.trigger("c")
        by_timeout = await wf.trigger("t")
        with caller.start_as_current_span("POST /approve") as webhook:
            assert await wf.callback("c", S.WAITING, b"yes")
        await wf.await_("c", by_callback, S.DONE, timeout=10)
        await hooked.wait()
        hooked.clear()
        await await_timeout_insert(wf, "t", by_timeout, S.WAITING)
        clock.step(timedelta(hours=2))
        await wf.await_("t", by_timeout, S.DONE, timeout=10)
        await hooked.wait()

    trigger = one(spans, "workflow.trigger", foreign_id="c")
    callback = one(spans, "workflow.callback")
    step = one(spans, "workflow.step", foreign_id="c")
    hook = one(spans, "workflow.hook", foreign_id="c")
    # a callback stays in its run's trace, under the trigger, and links the request
    assert child_of(callback, trigger)
    (link,) = callback.links
    assert link.context.span_id == webhook.get_span_context().span_id
    assert (callback.attributes or {})["workflow.next_status"] == "APPROVED"
    assert child_of(step, callback) and child_of(hook, step)
    assert (hook.attributes or {})["workflow.run_state"] == "COMPLETED"

    t_trigger = one(spans, "workflow.trigger", foreign_id="t")
    timeout = one(spans, "workflow.timeout")
    assert child_of(timeout, t_trigger)  # a timer carries no event: under the trigger
    assert (timeout.attributes or {})["workflow.status"] == "WAITING"
    assert (timeout.attributes or {})["workflow.next_status"] == "REMINDED"
    assert child_of(one(spans, "workflow.step", foreign_id="t"), timeout)


async def test_a_failing_callback_and_hook_record_their_errors(
    clock: FakeClock, registry: CollectorRegistry, spans: Spans
) -> None:
    hooked = asyncio.Event()

    async def refuse(run: Run[Obj, Status], payload: bytes) -> Status:
        raise ValueError("bad payload")

    async def done(run: Run[Obj, Status]) -> Status:
        return Status.DONE

    calls = 0

    async def on_complete(record: TypedRecord[Obj, Status]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("hook down")
        hooked.set()

    b = Builder[Obj, Status]("traced")
    b.add_callback(Status.STARTED, refuse, Status.MIDDLE)
    b.add_step(Status.MIDDLE, done, Status.DONE)
    b.on_complete(on_complete)
    wf = build(b, clock, registry, default_options={"err_backoff": 0})
    async with wf:
        await wf.trigger("c")
        with pytest.raises(ValueError, match="bad payload"):
            await wf.callback("c", Status.STARTED, b"?")
        rid = await wf.trigger("m", start_at=Status.MIDDLE)
        await wf.await_("m", rid, Status.DONE, timeout=10)
        await hooked.wait()
    callback = one(spans, "workflow.callback")
    assert callback.status.status_code is StatusCode.ERROR
    assert (callback.events[0].attributes or {})["exception.type"] == "ValueError"
    hooks = named(spans, "workflow.hook")
    assert [h.status.status_code for h in hooks] == [StatusCode.ERROR, StatusCode.UNSET]
    assert all(child_of(h, one(spans, "workflow.step")) for h in hooks)


async def test_a_trigger_that_fails_records_its_error(
    clock: FakeClock, registry: CollectorRegistry, spans: Spans
) -> None:
    wf = build(chain(), clock, registry)
    await wf.trigger("busy")
    with pytest.raises(WorkflowInProgressError):
        await wf.trigger("busy")
    first, second = named(spans, "workflow.trigger")
    assert first.status.status_code is StatusCode.UNSET
    assert second.status.status_code is StatusCode.ERROR
    exc = second.events[0].attributes or {}
    assert exc["exception.type"] == "workflow.WorkflowInProgressError"


async def test_children_join_their_parents_trace(
    clock: FakeClock, registry: CollectorRegistry, spans: Spans
) -> None:
    async def fan_out(run: Run[Obj, Status]) -> Status:
        run.start_child(child_wf, "a")
        return Status.MIDDLE

    release = asyncio.Event()

    async def child_step(run: Run[Obj, Status]) -> Status:
        await release.wait()  # until the parent waits for it
        return Status.DONE

    async def fan_in(run: Run[Obj, Status], children: Any) -> Status:
        return Status.DONE

    cb = Builder[Obj, Status]("child")
    cb.add_step(Status.STARTED, child_step, Status.DONE)
    pb = Builder[Obj, Status]("parent")
    pb.add_step(Status.STARTED, fan_out, Status.MIDDLE)
    pb.add_children_done(Status.MIDDLE, fan_in, Status.DONE)
    store = MemRecordStore()
    child_wf = build(cb, clock, registry, store=store)
    parent_wf = build(pb, clock, CollectorRegistry(), store=store)
    async with child_wf, parent_wf:
        rid = await parent_wf.trigger("p")
        await spans.wait("workflow.step", name="parent", process="middle-consumer-1-of-1")
        release.set()
        await parent_wf.await_("p", rid, Status.DONE, timeout=10)
    out = one(spans, "workflow.step", name="parent", status="STARTED")
    child = one(spans, "workflow.step", name="child")
    waits = one(spans, "workflow.step", name="parent", process="middle-consumer-1-of-1")
    woken = one(spans, "workflow.step", name="parent", process="child-finished-consumer")
    assert child_of(child, out)  # started in the parent's step, which wrote its first version
    assert child_of(waits, out)  # the parent's own event: its children are not done yet
    assert "workflow.next_status" not in (waits.attributes or {})
    assert child_of(woken, child)  # the child's finishing event wakes the parent
    assert (woken.attributes or {})["workflow.next_status"] == "DONE"


# -- run.logger -------------------------------------------------------------------------


def logging_chain() -> Builder[Obj, Status]:
    async def first(run: Run[Obj, Status]) -> Status:
        run.logger.info("charged %s%%", 100)
        return Status.MIDDLE

    def second(run: Run[Obj, Status]) -> Status:  # on a worker thread
        run.logger.warning("shipped to 50% of addresses", extra={"carrier": "dhl"})
        return Status.DONE

    b = Builder[Obj, Status]("logged")
    b.add_step(Status.STARTED, first, Status.MIDDLE)
    b.add_step(Status.MIDDLE, second, Status.DONE)
    return b


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("test.run.logger")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def run_logged(clock: FakeClock, registry: CollectorRegistry) -> str:
    wf = build(logging_chain(), clock, registry, logger=logging.getLogger("test.run.logger"))
    async with wf:
        rid = await wf.trigger("o-%1")
        await wf.await_("o-%1", rid, Status.DONE, timeout=10)
    return rid


async def test_run_logger_adds_the_runs_context_and_its_span(
    clock: FakeClock, registry: CollectorRegistry, spans: Spans, lines: Lines
) -> None:
    rid = await run_logged(clock, registry)
    charged, shipped = (r for r in lines.records if r.getMessage().startswith(("charged", "ship")))
    first = one(spans, "workflow.step", status="STARTED")
    second = one(spans, "workflow.step", status="MIDDLE")
    trace_id, span_id = ids(first)
    assert charged.workflow_context == {  # type: ignore[attr-defined]
        "workflow": "logged",
        "foreign_id": "o-%1",
        "run_id": rid,
        "status": "STARTED",
        "attempt": 1,
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
    }
    assert charged.getMessage() == (
        f"charged 100% [workflow=logged foreign_id=o-%1 run_id={rid} status=STARTED attempt=1 "
        f"trace_id={trace_id:032x} span_id={span_id:016x}]"
    )
    assert charged.filename == "test_tracing.py" and charged.funcName == "first"
    # a plain def on a worker thread sees its step's span too; the user's extra is kept
    assert shipped.workflow_context["span_id"] == f"{ids(second)[1]:016x}"  # type: ignore[attr-defined]
    assert shipped.carrier == "dhl"  # type: ignore[attr-defined]
    assert shipped.getMessage().startswith("shipped to 50% of addresses [workflow=logged")
    assert shipped.levelno == logging.WARNING and shipped.funcName == "second"


async def test_run_logger_without_tracing(
    clock: FakeClock, registry: CollectorRegistry, lines: Lines
) -> None:
    rid = await run_logged(clock, registry)
    charged = next(r for r in lines.records if r.getMessage().startswith("charged"))
    assert charged.workflow_context == {  # type: ignore[attr-defined]
        "workflow": "logged",
        "foreign_id": "o-%1",
        "run_id": rid,
        "status": "STARTED",
        "attempt": 1,
    }


# -- without a tracer provider, without opentelemetry ---------------------------------


async def test_without_a_tracer_provider_nothing_is_added(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    streamer = MemStreamer(clock)
    wf = chain().build(
        streamer, MemRecordStore(), MemRoleScheduler(), clock=clock, metrics_registry=registry
    )
    async with wf:
        with trace.get_tracer("test").start_as_current_span("request"):
            rid = await wf.trigger("o-1")
        done = await wf.await_("o-1", rid, Status.DONE, timeout=10)
    assert "traceparent" not in done.meta.trace_origin
    receiver = await streamer.new_receiver("traced-2", "test-reader")
    event, _ = await receiver.recv()
    await receiver.close()
    assert set(event.headers) == {
        "foreign_id",
        "workflow_name",
        "topic",
        "run_id",
        "run_state",
        "record_version",
    }
    assert "traceparent" not in make_outbox_event(done.record).parts()[2]


NO_OTEL = textwrap.dedent(
    """
    import asyncio, logging, sys
    sys.modules["opentelemetry"] = None  # every import of it fails, as if not installed

    from prometheus_client import CollectorRegistry
    from tests.support import Obj, Status, build
    from workflow import Builder
    from workflow.testing import FakeClock

    async def step(run):
        run.logger.info("logged")  # run.logger needs no tracing either
        run.object.count += 1
        return Status.DONE

    async def main() -> None:
        b = Builder[Obj, Status]("plain")
        b.add_step(Status.STARTED, step, Status.DONE)
        wf = build(b, FakeClock(), CollectorRegistry())
        async with wf:
            rid = await wf.trigger("o-1")
            done = await wf.await_("o-1", rid, Status.DONE, timeout=10)
        assert "traceparent" not in done.meta.trace_origin
        print("ok", done.run_state.name, done.object.count)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main())
    assert sys.modules["opentelemetry"] is None
    """
)


async def test_the_engine_works_without_opentelemetry() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NO_OTEL,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["ok", "COMPLETED", "1"]
    assert "logged [workflow=plain foreign_id=o-1" in err.decode()


# -- across processes ------------------------------------------------------------------


class Worker:
    """A ``tests.procs.traced_worker`` process and the spans it prints."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, step: str) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.procs.traced_worker", "--url", url, "--step", step),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        worker = cls(proc)
        assert await worker.line() == "ready"
        return worker

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert raw, "the worker exited"
        return raw.decode().strip()

    async def span(self, name: str) -> dict[str, Any]:
        """The next span called ``name`` that this worker finishes."""
        while True:
            kind, _, data = (await self.line()).partition(" ")
            assert kind == "span", kind
            span: dict[str, Any] = json.loads(data)
            if span["name"] == name:
                return span

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.communicate(), 30)
        assert self.proc.returncode == 0


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[tuple[str, list[Worker]]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    started: list[Worker] = []
    try:
        yield url, started
    finally:
        for w in started:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()


async def test_one_trace_across_two_worker_processes(
    workers: tuple[str, list[Worker]], registry: CollectorRegistry, spans: Spans
) -> None:
    """This process triggers; worker A runs the first step, worker B the second (on one
    SQLite file, through the outbox and the SQL streamer). One trace, each span the child
    of the one before it."""
    url, started = workers
    engine = traced_worker.make_engine(url)
    await create_schema(engine)
    charge = await Worker.start(url, "charge")
    started.append(charge)
    ship = await Worker.start(url, "ship")
    started.append(ship)
    wf, streamer, roles = traced_worker.build(engine, None, registry)  # a producer: no run()
    try:
        rid = await wf.trigger("order-1")
        first = await charge.span("workflow.step")
        second = await ship.span("workflow.step")
        run = await wf.await_("order-1", rid, traced_worker.Status.DONE, timeout=30)
        assert run.object.steps == ["charge", "ship"]
    finally:
        await streamer.close()
        await roles.close()
        await engine.dispose()
    for w in (charge, ship):
        await w.stop()
    trigger = one(spans, "workflow.trigger")
    trace_id, span_id = ids(trigger)
    assert first["trace_id"] == second["trace_id"] == f"{trace_id:032x}"
    assert first["parent_id"] == f"{span_id:016x}"
    assert second["parent_id"] == first["span_id"]
    assert first["attributes"]["workflow.run_id"] == second["attributes"]["workflow.run_id"] == rid
    assert first["attributes"]["workflow.status"] == "STARTED"
    assert second["attributes"]["workflow.status"] == "CHARGED"
    assert second["attributes"]["workflow.next_run_state"] == RunState.COMPLETED.name
