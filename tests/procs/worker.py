"""A worker process for multi-process tests: runs the 3-step "load" workflow on a shared
SQL database until SIGTERM (graceful) or SIGKILL.

    python -m tests.procs.worker --url URL [--schema S] [--lease 1.0] [--parallel 2] [--direct]

``--direct``: the record store appends events to the SQL streamer itself (no outbox relay).

It prints "ready" once its processes are launched. Each step appends its name to the run's
object, so a run's stored history shows exactly which transitions were applied.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import signal
from datetime import timedelta

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.procs.lifetime import die_with_parent
from workflow import Builder, Run, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    CHARGED = 2
    SHIPPED = 3
    DONE = 4


class Order(BaseModel):
    steps: list[str] = []


def build(
    engine: AsyncEngine,
    *,
    lease: float = 1.0,
    parallel: int = 1,
    registry: CollectorRegistry,
    direct: bool = False,
) -> tuple[Workflow[Order, Status], SQLStreamer, SQLRoleScheduler]:
    def step(name: str, nxt: Status) -> object:
        async def fn(run: Run[Order, Status]) -> Status:
            run.object.steps.append(name)
            return nxt

        fn.__name__ = name
        return fn

    b = Builder[Order, Status]("load")
    b.add_step(Status.STARTED, step("charge", Status.CHARGED), Status.CHARGED).with_options(  # type: ignore[arg-type]
        parallel_count=parallel
    )
    b.add_step(Status.CHARGED, step("ship", Status.SHIPPED), Status.SHIPPED).with_options(  # type: ignore[arg-type]
        parallel_count=parallel
    )
    b.add_step(Status.SHIPPED, step("done", Status.DONE), Status.DONE)  # type: ignore[arg-type]
    streamer = SQLStreamer(engine, poll_frequency=0.2)
    roles = SQLRoleScheduler(engine, lease=timedelta(seconds=lease))
    wf = b.build(
        streamer,
        SQLRecordStore(engine, streamer=streamer if direct else None),
        roles,
        metrics_registry=registry,
        default_options={"err_backoff": 0.05, "polling_frequency": 0.2, "concurrency": 16},
    )
    return wf, streamer, roles


def engine_for(url: str, schema: str | None) -> AsyncEngine:
    if schema:
        return make_engine(url, connect_args={"server_settings": {"search_path": schema}})
    return make_engine(url)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--direct", action="store_true")
    args = parser.parse_args()
    engine = engine_for(args.url, args.schema)
    wf, streamer, roles = build(
        engine,
        lease=args.lease,
        parallel=args.parallel,
        registry=CollectorRegistry(),
        direct=args.direct,
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


async def count_done(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(sa.text("SELECT count(*) FROM workflow_records WHERE run_state = 5"))
    return int(n or 0)


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
