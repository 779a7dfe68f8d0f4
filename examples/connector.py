"""Connectors: start runs from another system's event stream.

    python -m examples.connector

Workflow B listens to the sign-up events of another system (here a ``MemConnector`` replaying
a fixed list; in production e.g. a ``KafkaConnector``). The connector function triggers one
onboarding run per event, and a step completes each run. Delivery is at least once, so the
same event can arrive twice: the connector function makes a redelivery harmless.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import (
    Builder,
    ConnectorConstructor,
    ConnectorEvent,
    EventStreamer,
    RealClock,
    RecordNotFoundError,
    RecordStore,
    RoleScheduler,
    Run,
    Workflow,
    WorkflowInProgressError,
)
from workflow.adapters.memory import MemConnector
from workflow.testing import wait_for


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    DONE = 2


class Onboarding(BaseModel):
    source_event_id: str = ""  # the connector event that started this run
    read_the_docs: bool = False
    followed_the_example: bool = False


async def on_signup(wf: Workflow[Onboarding, Status], event: ConnectorEvent) -> None:
    # Called for every event, at least once. An exception retries the event after a back-off.
    try:
        latest = await wf.latest(event.foreign_id)
        if latest.object.source_event_id == event.id:
            print(f"  {event.id} seen before (redelivered): ignored")
            return
    except RecordNotFoundError:
        pass  # this user has no run yet
    start = Onboarding(source_event_id=event.id, read_the_docs=True)
    try:
        run_id = await wf.trigger(event.foreign_id, initial_value=start)
    except WorkflowInProgressError:
        # This user's previous run is still going: nothing to start. (Raising here instead
        # would retry the event, after a back-off, until that run finishes.)
        print(f"  {event.id}: {event.foreign_id} already has a run in progress")
        return
    print(f"  {event.id} ({event.type}): triggered run {run_id} for {event.foreign_id!r}")


async def follow_the_example(run: Run[Onboarding, Status]) -> Status:
    run.object.followed_the_example = True
    print(f"  {run.foreign_id}: {run.status.name} -> DONE")
    return Status.DONE


def build(
    streamer: EventStreamer,
    store: RecordStore,
    roles: RoleScheduler,
    connector: ConnectorConstructor,
    **build_kwargs: Any,
) -> Workflow[Onboarding, Status]:
    b = Builder[Onboarding, Status]("workflow B")
    b.add_connector("signups-from-workflow-a", connector, on_signup)
    b.add_step(Status.STARTED, follow_the_example, Status.DONE)
    return b.build(streamer, store, roles, **build_kwargs)


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> None:
    # What the other system published; its event 1 is delivered twice.
    events = [
        ConnectorEvent(id="event-1", foreign_id="andrew", type="user.signed_up"),
        ConnectorEvent(id="event-1", foreign_id="andrew", type="user.signed_up"),
        ConnectorEvent(id="event-2", foreign_id="bongani", type="user.signed_up"),
    ]
    streamer, store, roles, _ = adapters(RealClock())
    wf = build(streamer, store, roles, MemConnector(events), metrics_registry=metrics_registry)
    async with wf:
        for user in ("andrew", "bongani"):
            run = await wait_for(wf, user, lambda r: r.status == Status.DONE, timeout=5)
            print(f"final: {user} is {run.status.name} ({run.run_state.name}): {run.object!r}")
        print(f"{len(await wf.list())} runs for {len(events)} events")


if __name__ == "__main__":
    asyncio.run(main())
