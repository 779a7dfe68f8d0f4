"""A worker process for the tracing test: runs ONE step of the 2-step "traced" workflow on a
shared SQL database, with an OpenTelemetry SDK tracer provider that prints every finished
span as a JSON line on stdout, until SIGTERM.

    python -m tests.procs.traced_worker --url URL --step charge|ship

Each process declares the whole graph (STARTED -> CHARGED -> DONE), but only its own move is
a step; the other is a callback nobody calls, so the other worker's step never runs here.
It prints "ready" once its processes are launched, then ``span {json}`` per span.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.procs.lifetime import die_with_parent
from workflow import Builder, Run, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer

STEPS = ("charge", "ship")


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    CHARGED = 2
    DONE = 3


class Order(BaseModel):
    steps: list[str] = []


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the test reads it back (ids as hex, as exporters show them)."""
    assert span.context is not None
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "attributes": dict(span.attributes or {}),
    }


class PrintExporter(SpanExporter):
    """Prints each span as ``span {json}`` on stdout."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            print("span", json.dumps(span_json(span)), flush=True)
        return SpanExportResult.SUCCESS


async def _charge(run: Run[Order, Status]) -> Status:
    run.object.steps.append("charge")
    return Status.CHARGED


async def _ship(run: Run[Order, Status]) -> Status:
    run.object.steps.append("ship")
    return Status.DONE


async def _never(run: Run[Order, Status], payload: bytes) -> None:
    raise AssertionError("not called")


def builder(step: str | None) -> Builder[Order, Status]:
    """The workflow with ``step`` as its only step (None: both, for a producer process)."""
    b = Builder[Order, Status]("traced")
    if step in ("charge", None):
        b.add_step(Status.STARTED, _charge, Status.CHARGED)
    else:
        b.add_callback(Status.STARTED, _never, Status.CHARGED)
    if step in ("ship", None):
        b.add_step(Status.CHARGED, _ship, Status.DONE)
    else:
        b.add_callback(Status.CHARGED, _never, Status.DONE)
    return b


def build(
    engine: AsyncEngine, step: str | None, registry: CollectorRegistry
) -> tuple[Workflow[Order, Status], SQLStreamer, SQLRoleScheduler]:
    streamer = SQLStreamer(engine, poll_frequency=0.2)
    roles = SQLRoleScheduler(engine, lease=timedelta(seconds=3))
    wf = builder(step).build(
        streamer,
        SQLRecordStore(engine),
        roles,
        metrics_registry=registry,
        default_options={"err_backoff": 0.05, "polling_frequency": 0.2},
    )
    return wf, streamer, roles


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--step", choices=STEPS, required=True)
    args = parser.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(PrintExporter()))
    trace.set_tracer_provider(provider)
    engine = make_engine(args.url)
    wf, streamer, roles = build(engine, args.step, CollectorRegistry())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await wf.run()
    print("ready", flush=True)
    await stop.wait()
    await wf.stop()
    await roles.close()
    await streamer.close()
    await engine.dispose()
    provider.shutdown()
    sys.stdout.flush()


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
