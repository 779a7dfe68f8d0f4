"""Schedules: trigger a run on a cron schedule.

    python -m examples.schedule

``wf.schedule("hourly-run", "@hourly")`` triggers a run for the foreign id "hourly-run" at the
top of every hour while the workflow runs (a run still in progress at a tick is skipped, not
queued; a tick never triggers twice, even with several replicas). A step completes each run.

A real deployment uses the wall clock and waits for the hours to pass. This demo gives the
engine a ``FakeClock`` and moves it forward one hour at a time, so it finishes at once.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import Builder, EventStreamer, RecordStore, RoleScheduler, Run, Workflow
from workflow.testing import FakeClock, wait_for

FOREIGN_ID = "hourly-run"


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    DONE = 2


class Report(BaseModel):
    hour: datetime | None = None  # the hour this run reports on


async def write_report(run: Run[Report, Status]) -> Status:
    run.object.hour = run.created_at.replace(minute=0, second=0, microsecond=0)
    print(f"  run {run.run_id} (triggered {run.created_at:%H:%M}): STARTED -> DONE")
    return Status.DONE


def build(
    streamer: EventStreamer, store: RecordStore, roles: RoleScheduler, **build_kwargs: Any
) -> Workflow[Report, Status]:
    b = Builder[Report, Status]("schedule trigger example")
    b.add_step(Status.STARTED, write_report, Status.DONE)
    wf = b.build(streamer, store, roles, **build_kwargs)
    # Registered now; it runs while the workflow runs. A bad spec is a ValueError right here.
    wf.schedule(FOREIGN_ID, "@hourly")
    return wf


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> None:
    clock = FakeClock(datetime(2024, 1, 1, 8, 0, tzinfo=UTC))
    streamer, store, roles, _ = adapters(clock)
    wf = build(
        streamer,
        store,
        roles,
        clock=clock,  # leave it out in production: the engine then uses the wall clock
        metrics_registry=metrics_registry,
    )
    run_ids: list[str] = []
    async with wf:
        for _ in range(2):
            # Only for a hand-moved FakeClock: wait until the scheduler sleeps on the clock,
            # so that moving the clock wakes it (a real deployment uses the wall clock).
            await clock.until_waiting()
            clock.step(timedelta(hours=1))
            print(f"{clock.now():%H:%M} the clock strikes the hour")
            run = await wait_for(
                wf,
                FOREIGN_ID,
                lambda r: r.status == Status.DONE and r.run_id not in run_ids,
                timeout=5,
            )
            run_ids.append(run.run_id)
            print(f"  final object: {run.object.model_dump_json()}")
    print(f"{len(set(run_ids))} different runs, one per hour: {run_ids}")


if __name__ == "__main__":
    asyncio.run(main())
