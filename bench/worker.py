"""A worker process of ``bench.procs``: runs the K-step bench workflow until SIGTERM.

    python -m bench.worker --url URL [--schema S] --steps K [--parallel P] [--concurrency C]
                           [--kafka BOOTSTRAP --namespace NS] [--outbox]

On the SQL streamer the record store appends each event itself (``SQLRecordStore(streamer=)``)
unless ``--outbox``; on Kafka the outbox relay sends them. Prints ``ready`` once its processes
are launched.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Builder, Run, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer

from .memory import Obj, make_status

NAME = "bench procs"
POLL = 0.2  # fallback polling only: in-process sends, NOTIFY and Kafka fetches wake consumers


def engine_for(url: str, schema: str | None, pool: int = 20) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        kwargs = {"pool_size": pool, "max_overflow": pool}
        if schema:
            kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    return make_engine(url, **kwargs)


def build(
    engine: AsyncEngine,
    steps: int,
    *,
    kafka: str | None = None,
    namespace: str = "",
    outbox: bool = False,
    parallel: int = 1,
    concurrency: int = 16,
) -> tuple[Workflow[Obj, Any], list[Any]]:
    """The workflow and the adapters to close afterwards (streamer, role scheduler)."""
    status = make_status(steps)
    members = list(status)[1:]
    b: Builder[Obj, Any] = Builder(NAME, Obj, status)
    for i in range(steps):
        nxt = members[i + 1]

        async def step(run: Run[Obj, Any], nxt: Any = nxt) -> Any:
            run.object.steps += 1
            run.object.last = nxt.name
            return nxt

        b.add_step(members[i], step, nxt).with_options(
            parallel_count=parallel, concurrency=concurrency
        )
    streamer: Any
    if kafka:
        from workflow.adapters.kafkastreamer import KafkaStreamer

        streamer = KafkaStreamer(kafka, namespace=namespace, fetch_max_wait_ms=10)
        store = SQLRecordStore(engine)
    else:
        streamer = SQLStreamer(engine, poll_frequency=POLL)
        store = SQLRecordStore(engine, streamer=None if outbox else streamer)
    roles = SQLRoleScheduler(engine)
    wf = b.build(
        streamer,
        store,
        roles,
        metrics_registry=CollectorRegistry(),
        default_options={"polling_frequency": POLL},
    )
    return wf, [streamer, roles]


async def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    p.add_argument("--url", required=True)
    p.add_argument("--schema")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--kafka")
    p.add_argument("--namespace", default="")
    p.add_argument("--outbox", action="store_true")
    args = p.parse_args()
    engine = engine_for(args.url, args.schema)
    wf, closers = build(
        engine,
        args.steps,
        kafka=args.kafka,
        namespace=args.namespace,
        outbox=args.outbox,
        parallel=args.parallel,
        concurrency=args.concurrency,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await wf.run()
    print("ready", flush=True)
    await stop.wait()
    await wf.stop()
    for c in closers:
        await c.close()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
