"""Dispatching a batch of named events to the workflows that handle them, with delayed starts
and a failed-event path (progressive backoff, then a dead letter).

    python -m examples.dispatch

The real-world need: one inbox of events ("send this e-mail", "notify this user", "charge this
card", "message this chat") that fan out to a workflow each, some to start later ("in 10
minutes"), and events that keep failing must neither block the others nor be lost: they are
retried 1 min, 2 min, 4 min ... at most 120 min apart, then parked as dead letters for a person.
(An HTTP ``POST /dispatch`` endpoint will route through this same function once it exists.)

Every event becomes one run of its workflow: the event's id is the foreign id and the
idempotency key, so dispatching the same batch twice starts nothing twice. A delayed event
waits at SCHEDULED on a durable timer, then its workflow's step runs; an unknown event name
is refused before anything is written.

What to look at in the output: every event delivered except the one whose gateway is down,
which is a dead letter after 8 attempts (1+2+4+...+64 min); the second dispatch of the same
batch started no new run. The demo runs on a ``FakeClock`` moved by hand.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import Builder, PausedBy, RetryPolicy, Run, RunState, Workflow
from workflow.testing import FakeClock, wait_for

FAILED_EVENT_RETRIES = RetryPolicy(
    max_attempts=8,
    initial_backoff=timedelta(minutes=1),
    backoff_coefficient=2.0,
    max_backoff=timedelta(minutes=120),
    on_exhausted="pause",  # a dead letter: pause_retry_for=() keeps it for a person
)


class Status(enum.IntEnum):
    UNKNOWN = 0
    SCHEDULED = 1  # waiting for its delay
    READY = 2  # its step sends it
    SENT = 3


class Message(BaseModel):
    to: str = ""
    body: str = ""
    delay_s: float = 0.0


@dataclass(frozen=True)
class Event:
    id: str
    name: str  # which workflow handles it
    to: str
    body: str
    delay: timedelta = timedelta(0)


class Channel:
    """A pretend delivery channel (an e-mail provider, a push service ...)."""

    def __init__(self, name: str, down_for: set[str] | None = None) -> None:
        self.name = name
        self.down_for = down_for or set()
        self.sent: list[str] = []

    async def send(self, to: str, body: str) -> None:
        if to in self.down_for:
            raise ConnectionError(f"{self.name} gateway refuses {to}")
        self.sent.append(f"{to}: {body}")


def channel_workflow(channel: Channel) -> Builder[Message, Status]:
    async def send(run: Run[Message, Status]) -> Status:
        await channel.send(run.object.to, run.object.body)
        return Status.SENT

    async def wake(run: Run[Message, Status], now: datetime) -> Status:
        return Status.READY

    def after_delay(run: Run[Message, Status], now: datetime) -> datetime:
        return now + timedelta(seconds=run.object.delay_s)

    b = Builder[Message, Status](channel.name)
    b.add_timeout(Status.SCHEDULED, after_delay, wake, Status.READY)
    b.add_step(Status.READY, send, Status.SENT).with_options(retry=FAILED_EVENT_RETRIES)
    return b


class Dispatcher:
    """Routes events by name to their workflows."""

    def __init__(self, workflows: dict[str, Workflow[Message, Status]]) -> None:
        self.workflows = workflows

    async def dispatch(self, batch: list[Event]) -> list[str]:
        unknown = sorted({e.name for e in batch} - set(self.workflows))
        if unknown:  # refused before anything is written
            raise ValueError(f"no workflow handles {unknown}; known: {sorted(self.workflows)}")
        ids = []
        for e in batch:
            wf = self.workflows[e.name]
            start = Status.SCHEDULED if e.delay > timedelta(0) else Status.READY
            msg = Message(to=e.to, body=e.body, delay_s=e.delay.total_seconds())
            ids.append(await wf.trigger(e.id, start, initial_value=msg, idempotency_key=e.id))
        return ids


BATCH = [
    Event("ev-1", "email", "ann@example.com", "welcome"),
    Event("ev-2", "notification", "ann", "you have mail", delay=timedelta(minutes=10)),
    Event("ev-3", "payment", "acct-7", "charge 5.00"),
    Event("ev-4", "messaging", "#ops", "deploy done"),
    Event("ev-5", "email", "bob@broken.example", "welcome"),  # its gateway is down
]


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> dict[str, str]:
    clock = FakeClock(datetime(2024, 1, 1, 9, 0, tzinfo=UTC))
    streamer, store, roles, timers = adapters(clock)  # one set shared by every workflow
    channels = {
        "email": Channel("email", down_for={"bob@broken.example"}),
        "notification": Channel("notification"),
        "payment": Channel("payment"),
        "messaging": Channel("messaging"),
    }
    registry = metrics_registry or CollectorRegistry()
    workflows = {
        name: channel_workflow(ch).build(
            streamer,
            store,
            roles,
            timeout_store=timers,
            clock=clock,
            pause_retry_for=(),
            metrics_registry=registry,
        )
        for name, ch in channels.items()
    }
    dispatcher = Dispatcher(workflows)
    outcome: dict[str, str] = {}
    for wf in workflows.values():
        await wf.run()
    try:
        ids = await dispatcher.dispatch(BATCH)
        assert await dispatcher.dispatch(BATCH) == ids  # the same batch again: nothing new
        try:
            await dispatcher.dispatch([Event("ev-9", "fax", "x", "y")])
        except ValueError as err:
            print(f"  refused: {err}")
        by_id = {e.id: (workflows[e.name], rid) for e, rid in zip(BATCH, ids, strict=True)}
        for eid in ("ev-1", "ev-3", "ev-4"):
            wf, rid = by_id[eid]
            await wf.await_(eid, rid, Status.SENT, timeout=5)
        # ev-5 fails; its retries go 1, 2, 4 ... 64 min apart while the clock moves on
        email = workflows["email"]
        for attempt in range(2, 9):
            run = await wait_for(
                email, "ev-5", lambda r, n=attempt: r.meta.attempt == n and r.meta.retry_at
            )
            assert run.meta.retry_at is not None
            clock.set(max(run.meta.retry_at, clock.now()))
        dead = await wait_for(email, "ev-5", lambda r: r.run_state is RunState.PAUSED)
        assert dead.meta.paused_by == PausedBy.RETRIES_EXHAUSTED
        wf, rid = by_id["ev-2"]  # its 10 minutes have long passed
        await wf.await_("ev-2", rid, Status.SENT, timeout=5)
        for e in BATCH:
            wf, rid = by_id[e.id]
            run = await wf.lookup(rid)
            state = "dead letter" if run.meta.paused_by == PausedBy.RETRIES_EXHAUSTED else "sent"
            outcome[e.id] = state
            print(f"  {e.id} {e.name:12} -> {state} ({run.meta.attempt} attempt(s))")
    finally:
        for wf in workflows.values():
            await wf.stop()
    return outcome


if __name__ == "__main__":
    asyncio.run(main())
