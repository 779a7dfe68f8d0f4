"""A worker process for the child-workflow crash test: a "family" parent workflow whose first
step starts ``CHILDREN`` runs of the "member" workflow and whose fan-in finishes it, on a
shared SQL database, until SIGTERM or SIGKILL.

    python -m tests.procs.family_worker --url URL [--schema S] [--hold-children]

``--hold-children``: run the parent workflow only (its children are created, never stepped),
so a kill lands between parents' transitions and their children's first step. It prints
"ready" once its processes are launched.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import signal
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.procs.lifetime import die_with_parent
from tests.procs.worker import engine_for
from workflow import Builder, Run, TypedRecord, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer

CHILDREN = 4


class Family(enum.IntEnum):
    UNKNOWN = 0
    NEW = 1
    WAITING = 2
    DONE = 3


class Member(enum.IntEnum):
    UNKNOWN = 0
    PENDING = 1
    DONE = 2


class Tree(BaseModel):
    children: list[str] = []
    seen: list[str] = []


class Leaf(BaseModel):
    n: int = 0
    stepped: int = 0


def build(
    engine: AsyncEngine, registry: CollectorRegistry
) -> tuple[Workflow[Tree, Family], Workflow[Leaf, Member], list[Any]]:
    holder: list[Workflow[Leaf, Member]] = []

    async def start(run: Run[Tree, Family]) -> Family:
        run.object.children = [
            run.start_child(holder[0], f"m{i}", initial_value=Leaf(n=i)) for i in range(CHILDREN)
        ]
        return Family.WAITING

    async def gather(run: Run[Tree, Family], children: list[TypedRecord[Any, Any]]) -> Family:
        run.object.seen = [c.run_id for c in children]
        return Family.DONE

    async def step(run: Run[Leaf, Member]) -> Member:
        run.object.stepped += 1
        return Member.DONE

    family = Builder[Tree, Family]("family")
    family.add_step(Family.NEW, start, Family.WAITING)
    family.add_children_done(Family.WAITING, gather, Family.DONE)
    member = Builder[Leaf, Member]("member")
    member.add_step(Member.PENDING, step, Member.DONE)
    streamer = SQLStreamer(engine, poll_frequency=0.2)
    roles = SQLRoleScheduler(engine, lease=timedelta(seconds=3))
    store = SQLRecordStore(engine, streamer=streamer)
    options = {"err_backoff": 0.05, "polling_frequency": 0.2, "concurrency": 8}
    parents = family.build(
        streamer, store, roles, metrics_registry=registry, default_options=options
    )
    children = member.build(
        streamer, store, roles, metrics_registry=registry, default_options=options
    )
    holder.append(children)
    return parents, children, [streamer, roles]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--hold-children", action="store_true")
    args = parser.parse_args()
    engine = engine_for(args.url, args.schema)
    parents, children, closers = build(engine, CollectorRegistry())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    running = [parents] if args.hold_children else [parents, children]
    for wf in running:
        await wf.run()
    print("ready", flush=True)
    await stop.wait()
    for wf in running:
        await wf.stop()
    for c in closers:
        await c.close()
    await engine.dispose()


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
