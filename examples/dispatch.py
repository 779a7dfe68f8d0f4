"""Dispatching a batch of named events to the workflows that handle them, with delayed starts
and a failed-event path (progressive backoff, then a dead letter), through the HTTP API's
``POST /dispatch``.

    python -m examples.dispatch      # needs the http extra and httpx

The real-world need: one inbox of events ("send this e-mail", "notify this user", "charge this
card", "message this chat") that fan out to a workflow each, some to start later ("in 10
minutes"), and events that keep failing must neither block the others nor be lost: they are
retried 1 min, 2 min, 4 min ... at most 120 min apart, then parked as dead letters for a person.

The routing table (``workflow.http.Routes``) names each event's workflow; ``make_app`` serves
it as ``POST /dispatch`` (here called in process through httpx's ASGI transport; in production
the same application runs under uvicorn, see docs/operations.md). Every event becomes one run
of its workflow: the event's id is the foreign id and the idempotency key, so dispatching the
same batch twice starts nothing twice (each event is a "duplicate" the second time). A delayed
event starts at SCHEDULED, whose durable timer reads the delay from the object and moves it
on to READY; an unknown event name is answered "unknown_name", and the others in its batch
are dispatched all the same.

What to look at in the output: every event delivered except the one whose gateway is down,
which is a dead letter after 8 attempts (1+2+4+...+64 min); the second dispatch of the same
batch started no new run. The demo runs on a ``FakeClock`` moved by hand.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import Builder, PausedBy, RetryPolicy, Run, RunState, Workflow
from workflow.http import Routes, make_app
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


class Payload(BaseModel):
    """What an event carries (``POST /dispatch`` validates it; a bad one is "invalid")."""

    to: str
    body: str


def to_message(payload: Payload | None, delay: timedelta) -> Message:
    """The run's object: the payload, and the delay that the SCHEDULED timer reads."""
    p = payload or Payload(to="", body="")
    return Message(to=p.to, body=p.body, delay_s=delay.total_seconds())


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


def routes_for(workflows: dict[str, Workflow[Message, Status]]) -> Routes:
    """Each event name triggers its channel's workflow: at READY, or at SCHEDULED when the
    event has a delay."""
    routes = Routes()
    for name, wf in workflows.items():
        routes.trigger(
            name,
            wf,
            model=Payload,
            start=Status.READY,
            delayed_start=Status.SCHEDULED,
            build=to_message,
        )
    return routes


class Dispatcher:
    """Sends batches of events to ``POST /dispatch`` with a token of the dispatch scope."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    async def dispatch(self, batch: list[Event]) -> list[dict[str, Any]]:
        """One result per event: ``{index, status, run_id?, error?}``."""
        events = [
            {
                "name": e.name,
                "foreign_id": e.id,
                "payload": {"to": e.to, "body": e.body},
                "delay": e.delay.total_seconds(),
                "idempotency_key": e.id,
            }
            for e in batch
        ]
        r = await self.client.post("/dispatch", json={"events": events}, headers=self.headers)
        r.raise_for_status()
        results: list[dict[str, Any]] = r.json()["results"]
        return results


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
    token = secrets.token_urlsafe(32)  # in production: from configuration (tokens_from_env)
    app = make_app(
        list(workflows.values()),
        tokens={token: {"dispatch"}},
        routes=routes_for(workflows),
        metrics_registry=registry,
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inbox")
    dispatcher = Dispatcher(client, token)
    outcome: dict[str, str] = {}
    for wf in workflows.values():
        await wf.run()
    try:
        first = await dispatcher.dispatch(BATCH)
        assert [r["status"] for r in first] == ["accepted"] * len(BATCH), first
        ids = [str(r["run_id"]) for r in first]
        again = await dispatcher.dispatch(BATCH)  # the same batch again: nothing new
        assert [(r["status"], r["run_id"]) for r in again] == [("duplicate", i) for i in ids]
        (fax,) = await dispatcher.dispatch([Event("ev-9", "fax", "x", "y")])
        print(f"  {fax['status']}: {fax['error']}")
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
        await client.aclose()
        for wf in workflows.values():
            await wf.stop()
    return outcome


if __name__ == "__main__":
    asyncio.run(main())
