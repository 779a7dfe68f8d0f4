"""An approval that escalates: a request waits up to 48 h for a person's decision; past that
it goes to a second approver for another 24 h; past that it expires.

    python -m examples.approval

The real-world need: purchase or access requests that must not wait for ever on one busy
person. Decisions arrive as callbacks (a web form, a chat button: ``wf.callback``); the
waits are durable timers, counted from when the request arrived at each status, so they
survive restarts and a lagging worker does not stretch them.

What to look at in the output: "quick" is approved by the first approver at once; "late" is
escalated after 48 h and approved by the second; "ignored" expires 72 h after it was made.
The demo runs on a ``FakeClock`` and moves it by hand, so the days take no time.
"""

from __future__ import annotations

import asyncio
import enum
import json
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import Builder, Run, duration_timer
from workflow.testing import FakeClock, await_timeout_insert

FIRST_WAIT = timedelta(hours=48)
SECOND_WAIT = timedelta(hours=24)


class Status(enum.IntEnum):
    UNKNOWN = 0
    REQUESTED = 1
    ESCALATED = 2
    APPROVED = 3
    REJECTED = 4
    EXPIRED = 5


class Request(BaseModel):
    what: str = ""
    approver: str = "alice"
    escalate_to: str = "bob"
    decided_by: str = ""
    comment: str = ""


def decide(run: Run[Request, Status], payload: bytes) -> Status:
    """A decision, ``{"by": ..., "approve": true|false, "comment": ...}``, from the person
    the request is waiting for; anyone else's is ignored (the run stays where it is)."""
    decision = json.loads(payload)
    expected = run.object.approver if run.status is Status.REQUESTED else run.object.escalate_to
    if decision.get("by") != expected:
        return run.skip()
    run.object.decided_by = expected
    run.object.comment = str(decision.get("comment", ""))
    return Status.APPROVED if decision.get("approve") else Status.REJECTED


def _hours(d: timedelta) -> str:
    return f"{d.total_seconds() / 3600:g} h"


def escalate(run: Run[Request, Status], now: datetime) -> Status:
    run.object.comment = f"no answer from {run.object.approver} within {_hours(FIRST_WAIT)}"
    return Status.ESCALATED


def expire(run: Run[Request, Status], now: datetime) -> Status:
    run.object.comment = (
        f"no answer from {run.object.escalate_to} within {_hours(SECOND_WAIT)} either"
    )
    return Status.EXPIRED


def builder() -> Builder[Request, Status]:
    b = Builder[Request, Status]("approval")
    b.add_callback(Status.REQUESTED, decide, Status.APPROVED, Status.REJECTED)
    b.add_timeout(Status.REQUESTED, duration_timer(FIRST_WAIT), escalate, Status.ESCALATED)
    b.add_callback(Status.ESCALATED, decide, Status.APPROVED, Status.REJECTED)
    b.add_timeout(Status.ESCALATED, duration_timer(SECOND_WAIT), expire, Status.EXPIRED)
    return b


def _decision(by: str, approve: bool, comment: str = "") -> bytes:
    return json.dumps({"by": by, "approve": approve, "comment": comment}).encode()


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> dict[str, str]:
    clock = FakeClock(datetime(2024, 1, 1, 9, 0, tzinfo=UTC))
    streamer, store, roles, timeouts = adapters(clock)
    wf = builder().build(
        streamer,
        store,
        roles,
        timeout_store=timeouts,
        clock=clock,
        metrics_registry=metrics_registry,
    )
    outcome: dict[str, str] = {}
    async with wf:
        ids = {
            fid: await wf.trigger(fid, initial_value=Request(what=f"laptop for {fid}"))
            for fid in ("quick", "late", "ignored")
        }
        for fid, rid in ids.items():
            await await_timeout_insert(wf, fid, rid, Status.REQUESTED)
        await wf.callback("quick", Status.REQUESTED, _decision("alice", True, "go ahead"))
        clock.step(FIRST_WAIT)  # alice never answered the other two
        for fid in ("late", "ignored"):
            await wf.await_(fid, ids[fid], Status.ESCALATED, timeout=5)
            await await_timeout_insert(wf, fid, ids[fid], Status.ESCALATED)
        assert not await wf.callback("late", Status.ESCALATED, _decision("mallory", True))
        await wf.callback("late", Status.ESCALATED, _decision("bob", True, "approved late"))
        clock.step(SECOND_WAIT)
        await wf.await_("ignored", ids["ignored"], Status.EXPIRED, timeout=5)
        for fid, rid in ids.items():
            run = await wf.lookup(rid)
            outcome[fid] = run.status.name
            by = f" by {run.object.decided_by}" if run.object.decided_by else ""
            print(f"  {fid:8} {run.status.name}{by}: {run.object.comment}")
    return outcome


if __name__ == "__main__":
    asyncio.run(main())
