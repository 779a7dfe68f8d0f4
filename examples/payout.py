"""A payout with a retry policy: three attempts with exponential backoff, then FAILED.

    python -m examples.payout

A payout calls a payment gateway. A gateway error is retried, 30 s after the first attempt
and 60 s after the second; a third failure moves the payout to FAILED, a status the step
declares, where a refund or a human can take over. A declined card is not worth retrying:
``non_retryable=(CardDeclined,)`` fails it at once. Retries are scheduled for the payout
alone (stored with the run, so they survive a restart): other payouts never wait for it.

The demo runs on a ``FakeClock`` and moves it by hand, so the waits take no time.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import MakeAdapters, memory
from workflow import Builder, RetryPolicy, Run, Workflow
from workflow.testing import FakeClock, wait_for


class Status(enum.IntEnum):
    UNKNOWN = 0
    REQUESTED = 1
    PAID = 2
    FAILED = 3


class Payout(BaseModel):
    account: str = ""
    cents: int = 0
    attempts: list[int] = []
    reference: str = ""


class GatewayError(Exception):
    """The gateway did not answer: worth another attempt."""


class CardDeclined(Exception):
    """The bank said no: retrying will not change that."""


class Gateway:
    """A pretend payment gateway: fails the first ``outages`` calls per account."""

    def __init__(self, outages: dict[str, int], declined: set[str]) -> None:
        self.outages = dict(outages)
        self.declined = declined

    async def pay(self, account: str, cents: int) -> str:
        if account in self.declined:
            raise CardDeclined(f"account {account} declined")
        if self.outages.get(account, 0) > 0:
            self.outages[account] -= 1
            raise GatewayError("gateway timed out")
        return f"ref-{account}-{cents}"


PAYOUT_RETRIES = RetryPolicy(
    max_attempts=3,
    initial_backoff=timedelta(seconds=30),
    backoff_coefficient=2.0,
    max_backoff=timedelta(minutes=10),
    non_retryable=(CardDeclined,),
    on_exhausted=Status.FAILED,
)


def builder(gateway: Gateway) -> Builder[Payout, Status]:
    async def pay(run: Run[Payout, Status]) -> Status:
        run.object.attempts.append(run.attempt)  # 1, 2, 3: which try this is
        run.object.reference = await gateway.pay(run.object.account, run.object.cents)
        return Status.PAID

    b = Builder[Payout, Status]("payout")
    # FAILED must be a declared destination of the step: on_exhausted moves the run there.
    b.add_step(Status.REQUESTED, pay, Status.PAID, Status.FAILED).with_options(retry=PAYOUT_RETRIES)
    return b


async def _until_retry_scheduled(wf: Workflow[Payout, Status], run_id: str, attempt: int) -> None:
    """Wait until the run's retry number ``attempt`` is scheduled (its record says so)."""
    run = await wf.lookup(run_id)
    await wait_for(
        wf, run.foreign_id, lambda r: r.meta.attempt == attempt and r.meta.retry_at is not None
    )


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> dict[str, Status]:
    clock = FakeClock(datetime(2024, 1, 1, 9, 0, tzinfo=UTC))
    gateway = Gateway(outages={"flaky": 1, "down": 10}, declined={"declined"})
    streamer, store, roles, _ = adapters(clock)  # no timers: no timeout store
    wf = builder(gateway).build(
        streamer, store, roles, clock=clock, metrics_registry=metrics_registry
    )
    outcome: dict[str, Status] = {}
    async with wf:
        ids = {
            account: await wf.trigger(account, initial_value=Payout(account=account, cents=500))
            for account in ("ok", "flaky", "down", "declined")
        }
        expected = {"ok": Status.PAID, "declined": Status.FAILED}
        # "ok" pays at once and "declined" fails at once: neither waits for other retries
        for account, final in expected.items():
            await wf.await_(account, ids[account], final, timeout=5)
        # "flaky" pays on its second attempt (30 s later), "down" fails after its third
        clock.step(timedelta(seconds=30))
        await wf.await_("flaky", ids["flaky"], Status.PAID, timeout=5)
        await _until_retry_scheduled(wf, ids["down"], attempt=3)
        clock.step(timedelta(seconds=60))
        await wf.await_("down", ids["down"], Status.FAILED, timeout=5)
        for account, rid in ids.items():
            run = await wf.lookup(rid)
            outcome[account] = run.status
            why = f" ({run.meta.run_state_reason})" if run.status is Status.FAILED else ""
            print(f"  {account:9} attempts {run.object.attempts or '-'} -> {run.status.name}{why}")
    return outcome


if __name__ == "__main__":
    asyncio.run(main())
