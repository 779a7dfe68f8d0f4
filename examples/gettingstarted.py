"""Getting started: one run moves through four steps, each ticking off a field.

    python -m examples.gettingstarted

It shows the basics: statuses as an ``enum.IntEnum``, the object as a pydantic model, steps
that change the object and return the next status, an ``on_complete`` hook, and
``wf.await_`` to wait for a run. It runs on the embedded default: a SQLite file (no server),
with the SQL adapters; ``build()`` takes any adapters (the tests use memory and SQLite).

    python -m examples.gettingstarted --db ./my.db   # keep the database to look at it
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import Builder, EventStreamer, RecordStore, RoleScheduler, Run, TypedRecord, Workflow
from workflow.adapters.sql import (
    SQLRecordStore,
    SQLRoleScheduler,
    SQLStreamer,
    create_schema,
    make_engine,
)


class Status(enum.IntEnum):
    UNKNOWN = 0  # 0 is reserved: never a real status
    STARTED = 1
    READ_THE_DOCS = 2
    FOLLOWED_A_TUTORIAL = 3
    CREATED_A_WORKFLOW = 4
    SHARED_IT = 5  # no step leaves this status, so reaching it completes the run


class GettingStarted(BaseModel):
    """The run's object: stored as JSON with every change of status."""

    read_the_docs: bool = False
    followed_a_tutorial: bool = False
    created_a_workflow: bool = False
    shared_it: bool = False


def moved(run: Run[GettingStarted, Status], to: Status) -> Status:
    print(f"  {run.foreign_id}: {run.status.name} -> {to.name}")
    return to


# A step receives the run, changes ``run.object`` and returns the next status.
async def read_the_docs(run: Run[GettingStarted, Status]) -> Status:
    run.object.read_the_docs = True
    return moved(run, Status.READ_THE_DOCS)


async def follow_a_tutorial(run: Run[GettingStarted, Status]) -> Status:
    run.object.followed_a_tutorial = True
    return moved(run, Status.FOLLOWED_A_TUTORIAL)


async def create_a_workflow(run: Run[GettingStarted, Status]) -> Status:
    run.object.created_a_workflow = True
    return moved(run, Status.CREATED_A_WORKFLOW)


def share_it(run: Run[GettingStarted, Status]) -> Status:
    # A plain ``def`` works too: it runs in a worker thread, so blocking calls are fine here.
    run.object.shared_it = True
    return moved(run, Status.SHARED_IT)


async def announce(record: TypedRecord[GettingStarted, Status]) -> None:
    print(f"  on_complete: {record.foreign_id} finished at {record.status.name}")


def build(
    streamer: EventStreamer,
    store: RecordStore,
    roles: RoleScheduler,
    *,
    on_complete: Callable[[TypedRecord[GettingStarted, Status]], Awaitable[None]] = announce,
    **build_kwargs: Any,
) -> Workflow[GettingStarted, Status]:
    b = Builder[GettingStarted, Status]("getting started")
    # Each step consumes runs at its first status and may only move them to the ones listed.
    b.add_step(Status.STARTED, read_the_docs, Status.READ_THE_DOCS)
    b.add_step(Status.READ_THE_DOCS, follow_a_tutorial, Status.FOLLOWED_A_TUTORIAL)
    b.add_step(Status.FOLLOWED_A_TUTORIAL, create_a_workflow, Status.CREATED_A_WORKFLOW)
    b.add_step(Status.CREATED_A_WORKFLOW, share_it, Status.SHARED_IT)
    # Hooks run in the background, at least once, after a run changes run state.
    b.on_complete(on_complete)
    return b.build(streamer, store, roles, **build_kwargs)


async def main(
    metrics_registry: CollectorRegistry | None = None, db_path: str | None = None
) -> None:
    # The hook runs in its own background process: let it tell us when it has run.
    hook_ran = asyncio.Event()

    async def on_complete(record: TypedRecord[GettingStarted, Status]) -> None:
        await announce(record)
        hook_ran.set()

    with tempfile.TemporaryDirectory() as tmp:
        path = db_path or os.path.join(tmp, "gettingstarted.db")
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        await create_schema(engine)  # production: `alembic upgrade head` (docs/migrations.md)
        streamer, roles = SQLStreamer(engine), SQLRoleScheduler(engine)
        wf = build(
            streamer,
            SQLRecordStore(engine, streamer=streamer),  # events straight to the streamer
            roles,
            on_complete=on_complete,
            metrics_registry=metrics_registry,  # None: Prometheus' default registry
        )
        print(f"database: {path}")
        async with wf:  # starts the background processes; stops them on the way out
            foreign_id = "andrew"
            run_id = await wf.trigger(foreign_id)  # a new run at the first status, STARTED
            print(f"triggered run {run_id} for {foreign_id!r}")
            run = await wf.await_(foreign_id, run_id, Status.SHARED_IT, timeout=10)
            await asyncio.wait_for(hook_ran.wait(), timeout=10)
        await roles.close()
        await streamer.close()
        await engine.dispose()
    print(f"final status: {run.status.name} ({run.run_state.name})")
    print(f"final object: {run.object!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    asyncio.run(main(db_path=parser.parse_args().db))
