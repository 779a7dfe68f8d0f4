"""Polling an external job with exponential backoff until it is done or a deadline passes.

    python -m examples.polling

The real-world need: a report, a video transcode or a bank transfer runs elsewhere and can
only be asked "are you done yet?". Each check is a durable timer: 10 s after the job was
started, then 20 s, 40 s ... (at most 5 min apart). A check that finds the job still running
stores the poll count and waits again (``run.save_and_repeat()`` re-arms the timer); one that
finds it done moves on; past the deadline the run gives up at TIMED_OUT. Nothing polls in a
loop and nothing is lost in a restart: the waits are timers in the timeout store.

What to look at in the output: "fast" is done at the third check; "slow" is still running at
its deadline (1 hour) and ends TIMED_OUT after its last check. The demo runs on a
``FakeClock`` and moves it by hand, so the hour takes no time.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import Builder, Run
from workflow.testing import FakeClock, wait_for

FIRST_CHECK = timedelta(seconds=10)
LONGEST_WAIT = timedelta(minutes=5)
DEADLINE = timedelta(hours=1)


class Status(enum.IntEnum):
    UNKNOWN = 0
    RUNNING = 1
    DONE = 2
    TIMED_OUT = 3


class Job(BaseModel):
    job_id: str = ""
    deadline: datetime | None = None
    checks: int = 0


class JobService:
    """A pretend external service: a job is done after ``needed`` checks."""

    def __init__(self, needed: dict[str, int]) -> None:
        self.needed = needed
        self.asked: dict[str, int] = {}

    async def is_done(self, job_id: str) -> bool:
        self.asked[job_id] = self.asked.get(job_id, 0) + 1
        return self.asked[job_id] >= self.needed.get(job_id, 10**9)


def next_check(run: Run[Job, Status], now: datetime) -> datetime:
    """``now`` is when the run arrived at RUNNING (or was saved there after a check)."""
    wait = min(FIRST_CHECK * 2**run.object.checks, LONGEST_WAIT)
    assert run.object.deadline is not None
    return min(now + wait, run.object.deadline)


def builder(jobs: JobService) -> Builder[Job, Status]:
    async def check(run: Run[Job, Status], now: datetime) -> Any:
        run.object.checks += 1
        if await jobs.is_done(run.object.job_id):
            return Status.DONE
        assert run.object.deadline is not None
        if now >= run.object.deadline:
            return Status.TIMED_OUT
        return run.save_and_repeat()  # stored, and the timer is armed again

    b = Builder[Job, Status]("job polling")
    b.add_timeout(Status.RUNNING, next_check, check, Status.DONE, Status.TIMED_OUT)
    return b


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> dict[str, tuple[str, int]]:
    clock = FakeClock(datetime(2024, 1, 1, 9, 0, tzinfo=UTC))
    jobs = JobService(needed={"fast": 3})
    streamer, store, roles, timeouts = adapters(clock)
    wf = builder(jobs).build(
        streamer,
        store,
        roles,
        timeout_store=timeouts,
        clock=clock,
        metrics_registry=metrics_registry,
    )
    out: dict[str, tuple[str, int]] = {}
    async with wf:
        ids = {
            name: await wf.trigger(
                name, initial_value=Job(job_id=name, deadline=clock.now() + DEADLINE)
            )
            for name in ("fast", "slow")
        }
        # The demo's stand-in for time passing: move the clock to the earliest next check,
        # wait for that check to be stored, and again, until no job is RUNNING. A check is due
        # at next_check(run, when the run was stored at RUNNING), what its timer is armed
        # with: counted from then, it fires as soon as it is armed if the clock is past it.
        while running := [
            run
            for run in [await wf.lookup(rid) for rid in ids.values()]
            if run.status is Status.RUNNING
        ]:
            due = {run.run_id: next_check(run, run.updated_at) for run in running}
            clock.set(min(due.values()))
            for run in running:
                if due[run.run_id] == clock.now():
                    version = run.meta.version
                    await wait_for(wf, run.foreign_id, lambda r, v=version: r.meta.version > v)
        for name, rid in ids.items():
            run = await wf.lookup(rid)
            out[name] = (run.status.name, run.object.checks)
            print(f"  {name:5} {run.status.name} after {run.object.checks} checks")
    return out


if __name__ == "__main__":
    asyncio.run(main())
