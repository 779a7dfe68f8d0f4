"""A dead letter an operator resumes: progressive backoff, then a pause that stays put.

    python -m examples.deadletter

Webhook deliveries to a partner are retried 1 min, 2 min, 4 min ... (at most 2 hours apart)
for eight attempts. After the eighth failure the delivery is a dead letter: paused, with
``paused_by`` "retries exhausted". ``pause_retry_for=()`` keeps dead letters paused until
someone looks (by default, ``pause_retry`` would try them again after an hour). An operator
lists the dead letters, fixes the cause (here: the partner's endpoint) and resumes them; a
resumed dead letter gets a fresh set of attempts.

The demo runs on a ``FakeClock`` and moves it by hand, so the waits take no time.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import Builder, Filter, PausedBy, RetryPolicy, Run, RunState
from workflow.testing import FakeClock, wait_for


class Status(enum.IntEnum):
    UNKNOWN = 0
    QUEUED = 1
    DELIVERED = 2


class Delivery(BaseModel):
    url: str = ""
    body: str = ""


class Partner:
    """A pretend partner endpoint, down until ``fixed`` is set."""

    def __init__(self) -> None:
        self.fixed = False
        self.received: list[str] = []

    async def post(self, url: str, body: str) -> None:
        if not self.fixed:
            raise ConnectionError(f"{url}: 503 Service Unavailable")
        self.received.append(body)


DELIVERY_RETRIES = RetryPolicy(
    max_attempts=8,
    initial_backoff=timedelta(minutes=1),
    backoff_coefficient=2.0,
    max_backoff=timedelta(hours=2),
    jitter=0.0,  # a real deployment would spread retries, e.g. jitter=0.2
    on_exhausted="pause",
)


def builder(partner: Partner) -> Builder[Delivery, Status]:
    async def deliver(run: Run[Delivery, Status]) -> Status:
        await partner.post(run.object.url, run.object.body)
        return Status.DELIVERED

    b = Builder[Delivery, Status]("webhook deliveries")
    b.add_step(Status.QUEUED, deliver, Status.DELIVERED).with_options(retry=DELIVERY_RETRIES)
    return b


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> list[str]:
    clock = FakeClock(datetime(2024, 1, 1, 9, 0, tzinfo=UTC))
    partner = Partner()
    streamer, store, roles, _ = adapters(clock)  # no timers: no timeout store
    wf = builder(partner).build(
        streamer,
        store,
        roles,
        clock=clock,
        metrics_registry=metrics_registry,
        pause_retry_for=(),  # a dead letter stays paused until someone resumes it
    )
    async with wf:
        rid = await wf.trigger(
            "order-1", initial_value=Delivery(url="https://partner/hook", body="paid")
        )
        for attempt in range(2, 9):  # attempts 2..8, each after its backoff
            scheduled = await wait_for(
                wf, "order-1", lambda r, n=attempt: r.meta.attempt == n and r.meta.retry_at
            )
            assert scheduled.meta.retry_at is not None
            clock.set(scheduled.meta.retry_at)
        dead = await wait_for(wf, "order-1", lambda r: r.run_state is RunState.PAUSED)
        print(f"  dead letter after {dead.meta.attempt} attempts, at {clock.now():%H:%M}: ")
        print(f"    paused by {dead.meta.paused_by!s}: {dead.meta.run_state_reason}")
        clock.step(timedelta(hours=3))
        assert (await wf.lookup(rid)).run_state is RunState.PAUSED  # nobody resumed it

        # The operator: list the dead letters, fix the cause, resume them.
        letters = [
            r
            for r in await wf.list(Filter.by_run_state(RunState.PAUSED), limit=100)
            if r.meta.paused_by == PausedBy.RETRIES_EXHAUSTED
        ]
        partner.fixed = True
        for letter in letters:
            await wf.resume(letter.run_id)
        done = await wf.await_("order-1", rid, Status.DELIVERED, timeout=5)
        print(f"  resumed by the operator: {done.status.name} on attempt 1 of a fresh set")
    return partner.received


if __name__ == "__main__":
    asyncio.run(main())
