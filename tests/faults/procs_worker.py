"""A worker process for the fault tests: the 3-step "load" workflow of ``tests.procs.worker``
(same name, statuses and steps) with an ``on_complete`` hook that records each call in the
table ``hook_calls(run_id)`` (the test creates it), on the SQL streamer (the store appending
each event itself: ``SQLRecordStore(streamer=...)``) or on Kafka (the outbox relay).

    python -m tests.faults.procs_worker --url URL [--schema S] [--lease 1.0] [--parallel 1]
        [--kafka HOST:PORT --namespace NS] [--pre-ping] [--wait-go]

``--pre-ping`` builds the engine with ``pool_pre_ping=True`` (a pooled connection is tested
before use, so connections of a restarted database are replaced). With ``--wait-go`` it prints
"armed" once imported and waits for a line on stdin before it starts (a warm spare: a fresh
process that joins at once when a test replaces a killed worker). It prints "ready" once its
processes are launched, exits 0 on SIGTERM after a graceful stop, and exits at once when its
parent (the test) is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.procs.lifetime import die_with_parent
from workflow import Builder, Run, TypedRecord, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer

from ..procs.worker import Order, Status

__all__ = ["HOOK_TABLE", "build", "main"]

HOOK_TABLE = "CREATE TABLE IF NOT EXISTS hook_calls (run_id VARCHAR(64) NOT NULL)"
"""The hook's table (no unique key: a hook may fire more than once, each call is a row)."""


def build(
    engine: AsyncEngine,
    *,
    lease: float = 1.0,
    parallel: int = 1,
    kafka: str | None = None,
    namespace: str = "",
    registry: CollectorRegistry,
) -> tuple[Workflow[Order, Status], Any, SQLRoleScheduler]:
    def step(name: str, nxt: Status) -> Any:
        async def fn(run: Run[Order, Status]) -> Status:
            run.object.steps.append(name)
            return nxt

        fn.__name__ = name
        return fn

    async def completed(record: TypedRecord[Order, Status]) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO hook_calls (run_id) VALUES (:r)"), {"r": record.run_id}
            )

    b = Builder[Order, Status]("load")
    b.add_step(Status.STARTED, step("charge", Status.CHARGED), Status.CHARGED).with_options(
        parallel_count=parallel
    )
    b.add_step(Status.CHARGED, step("ship", Status.SHIPPED), Status.SHIPPED).with_options(
        parallel_count=parallel
    )
    b.add_step(Status.SHIPPED, step("done", Status.DONE), Status.DONE)
    b.on_complete(completed)
    streamer: Any
    if kafka:
        from workflow.adapters.kafkastreamer import KafkaStreamer

        from ..procs.kafka_worker import FAST

        streamer = KafkaStreamer(kafka, namespace=namespace, **FAST)
    else:
        streamer = SQLStreamer(engine, poll_frequency=0.2)
    roles = SQLRoleScheduler(engine, lease=timedelta(seconds=lease))
    # On the SQL streamer each store appends its event itself (the recommended set-up); on
    # Kafka events go through the outbox relay.
    store = SQLRecordStore(engine, streamer=None if kafka else streamer)
    wf = b.build(
        streamer,
        store,
        roles,
        metrics_registry=registry,
        default_options={"err_backoff": 0.05, "polling_frequency": 0.2, "concurrency": 16},
    )
    return wf, streamer, roles


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--kafka", default=None)
    parser.add_argument("--namespace", default="")
    parser.add_argument("--pre-ping", action="store_true")
    parser.add_argument("--wait-go", action="store_true")
    args = parser.parse_args()
    die_with_parent()
    loop = asyncio.get_running_loop()
    if args.wait_go:
        print("armed", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
    kwargs: dict[str, Any] = {"pool_pre_ping": True} if args.pre_ping else {}
    if args.schema:
        kwargs["connect_args"] = {"server_settings": {"search_path": args.schema}}
    engine = make_engine(args.url, **kwargs)
    wf, streamer, roles = build(
        engine,
        lease=args.lease,
        parallel=args.parallel,
        kafka=args.kafka,
        namespace=args.namespace,
        registry=CollectorRegistry(),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await wf.run()
    print("ready", flush=True)
    await stop.wait()
    await wf.stop()
    await roles.close()
    await streamer.close()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
