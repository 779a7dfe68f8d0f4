"""Timeouts: a run moves on by itself once it has waited long enough at a status.

    python -m examples.timeout

When a run reaches STARTED a durable timer is armed for one hour later; when it expires the
timeout function records the time into the object and moves the run to DONE. Timers live in a
timeout store, so they survive restarts.

A real deployment uses the wall clock (the default) and really waits the hour. This demo gives
the engine a ``FakeClock`` and moves it forward by hand, so it finishes at once.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import (
    Builder,
    EventStreamer,
    RecordStore,
    RoleScheduler,
    Run,
    TimeoutStore,
    Workflow,
    duration_timer,
)
from workflow.testing import FakeClock, await_timeout_insert

TIMEOUT = timedelta(hours=1)


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    DONE = 2


class Reminder(BaseModel):
    now: datetime | None = None  # when the timeout fired


async def record_the_time(run: Run[Reminder, Status], now: datetime) -> Status:
    # ``now`` is the engine's clock at the moment the timer fired.
    run.object.now = now
    print(f"  {now:%H:%M} {run.foreign_id}: timer expired, {run.status.name} -> DONE")
    return Status.DONE


def builder() -> Builder[Reminder, Status]:
    b = Builder[Reminder, Status]("timeout example")
    # duration_timer(d) arms the timer d after the run reaches STARTED. Any function
    # timer(run, now) -> datetime | None works too (None: no timer for this run).
    b.add_timeout(Status.STARTED, duration_timer(TIMEOUT), record_the_time, Status.DONE)
    return b


def build(
    streamer: EventStreamer,
    store: RecordStore,
    roles: RoleScheduler,
    timeout_store: TimeoutStore,
    **build_kwargs: Any,
) -> Workflow[Reminder, Status]:
    """The workflow on the adapters you choose (production: the SQL adapters)."""
    return builder().build(streamer, store, roles, timeout_store=timeout_store, **build_kwargs)


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> None:
    # A clock that moves only when told to (the engine uses the wall clock unless given one),
    # and the adapters on it: fresh memory ones unless told otherwise.
    clock = FakeClock(datetime(2024, 1, 1, 9, 0, tzinfo=UTC))
    wf = build(*adapters(clock), clock=clock, metrics_registry=metrics_registry)
    async with wf:
        run_id = await wf.trigger("andrew")
        print(f"  {clock.now():%H:%M} triggered run {run_id} for 'andrew'")
        # Wait until the timer is stored, so that moving the clock is sure to pass it.
        await await_timeout_insert(wf, "andrew", run_id, Status.STARTED, timeout=5)
        print(
            f"  {clock.now():%H:%M} andrew: timer armed, expires at {clock.now() + TIMEOUT:%H:%M}"
        )

        clock.step(TIMEOUT)  # "an hour passes"
        run = await wf.await_("andrew", run_id, Status.DONE, timeout=5)
    print(f"final status: {run.status.name} ({run.run_state.name})")
    print(f"final object: {run.object.model_dump_json()}")


if __name__ == "__main__":
    asyncio.run(main())
