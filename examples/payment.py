"""A payment: a charge retried with the run id as the provider's idempotency key, a declined
card that ends the order at FAILED, and a refund when fulfilment gives up.

    python -m examples.payment

The real-world need: take a customer's money at most once, and give it back when the order
cannot be fulfilled. The charge is tried at most 3 times (30 s, then 60 s apart); the run id,
the same on every retry, is the provider's idempotency key, so a charge whose reply was lost
is not taken twice. Fulfilment is tried 3 times too (1 min, 2 min apart); when it gives up
(``on_exhausted="compensate"``) the charge's compensation, ``refund``, runs and the order
ends at REFUNDED (``compensate_to``).

A declined card is caught by the step, which returns FAILED, rather than listed as
``non_retryable`` with ``on_exhausted=Status.FAILED``: a decline is an answer, not an error
(no error counted or logged, the bank's reason kept on the order), and the charge's policy
can then pause when its attempts run out. A charge whose replies never came may have gone
through: a person should look (and resume it, same run id, same key) rather than FAILED
telling the customer they were not charged.

What to look at in the output: alice's reply was lost once, yet the provider holds one charge
for her after 2 calls; bob's card is declined (FAILED); carol is charged, fulfilment fails 3
times and her history shows the compensation, then REFUNDED. The demo runs on a ``FakeClock``
moved by hand, so the waits take no time.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import Adapters, MakeAdapters, memory
from examples.driving import history, retry_scheduled, run_retries
from workflow import Builder, Clock, RetryPolicy, Run, Workflow
from workflow.testing import FakeClock


class Status(enum.IntEnum):
    UNKNOWN = 0
    NEW = 1
    PAID = 2
    SHIPPED = 3
    FAILED = 4
    REFUNDED = 5


class Order(BaseModel):
    customer: str = ""
    card: str = ""
    cents: int = 4900
    charge_id: str = ""
    declined: str = ""  # the bank's reason
    tracking: str = ""
    refunded: bool = False


class CardDeclined(Exception):
    """The bank said no: another attempt will not change that."""


class ProviderTimeout(Exception):
    """No reply from the provider: the charge may or may not have been taken."""


@dataclass
class Provider:
    """A pretend payment provider that deduplicates charges by idempotency key."""

    declined_cards: set[str] = field(default_factory=set)
    lose_reply_once: set[str] = field(default_factory=set)  # cards whose first reply is lost
    charges: dict[str, str] = field(default_factory=dict)  # idempotency key -> charge id
    calls: dict[str, int] = field(default_factory=dict)  # idempotency key -> charge calls
    refunds: list[str] = field(default_factory=list)  # refunded charge ids

    async def charge(self, key: str, card: str, cents: int) -> str:
        self.calls[key] = self.calls.get(key, 0) + 1
        if card in self.declined_cards:
            raise CardDeclined(f"card {card}: insufficient funds")
        charge_id = self.charges.setdefault(key, f"ch_{len(self.charges) + 1}")
        if card in self.lose_reply_once:
            self.lose_reply_once.discard(card)
            raise ProviderTimeout(f"charge {charge_id} taken, but the reply was lost")
        return charge_id

    async def refund(self, charge_id: str) -> None:
        if charge_id not in self.refunds:  # idempotent too: a retried refund refunds once
            self.refunds.append(charge_id)


@dataclass
class Warehouse:
    """A pretend warehouse that cannot ship to some customers."""

    broken_for: set[str] = field(default_factory=set)

    async def ship(self, customer: str) -> str:
        if customer in self.broken_for:
            raise ConnectionError(f"warehouse cannot ship {customer}'s parcel")
        return f"TRK-{customer.upper()}"


CHARGE_RETRIES = RetryPolicy(
    max_attempts=3,
    initial_backoff=timedelta(seconds=30),
    backoff_coefficient=2,
    on_exhausted="pause",  # outcome unknown: a person looks
)
FULFIL_RETRIES = RetryPolicy(
    max_attempts=3,
    initial_backoff=timedelta(minutes=1),
    backoff_coefficient=2,
    on_exhausted="compensate",  # undo the charge: refund
)


class Steps:
    """The step functions, methods so that the history names them (``Steps.refund``)."""

    def __init__(self, provider: Provider, warehouse: Warehouse) -> None:
        self.provider, self.warehouse = provider, warehouse

    async def charge(self, run: Run[Order, Status]) -> Status:
        o = run.object
        try:  # the run id: the same on every retry of this charge
            o.charge_id = await self.provider.charge(run.run_id, o.card, o.cents)
        except CardDeclined as declined:
            o.declined = str(declined)
            return Status.FAILED
        return Status.PAID

    async def refund(self, run: Run[Order, Status]) -> None:
        await self.provider.refund(run.object.charge_id)
        run.object.refunded = True

    async def fulfil(self, run: Run[Order, Status]) -> Status:
        run.object.tracking = await self.warehouse.ship(run.object.customer)
        return Status.SHIPPED


def builder(provider: Provider, warehouse: Warehouse) -> Builder[Order, Status]:
    steps = Steps(provider, warehouse)
    b = Builder[Order, Status]("payment")
    b.add_step(Status.NEW, steps.charge, Status.PAID, Status.FAILED).with_options(
        retry=CHARGE_RETRIES
    ).compensate_with(steps.refund)
    b.add_step(Status.PAID, steps.fulfil, Status.SHIPPED).with_options(retry=FULFIL_RETRIES)
    b.compensate_to(Status.REFUNDED)
    return b


def build(
    adapters: Adapters,
    provider: Provider,
    warehouse: Warehouse,
    *,
    clock: Clock,
    metrics_registry: CollectorRegistry | None = None,
) -> Workflow[Order, Status]:
    streamer, store, roles, _ = adapters  # no timers: no timeout store
    return builder(provider, warehouse).build(
        streamer, store, roles, clock=clock, metrics_registry=metrics_registry
    )


@dataclass
class Outcome:
    statuses: dict[str, str]
    orders: dict[str, Order]
    provider: Provider
    histories: dict[str, list[str]]


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> Outcome:
    clock = FakeClock(datetime(2024, 1, 1, 9, 0, tzinfo=UTC))
    provider = Provider(declined_cards={"4000-0002"}, lose_reply_once={"4242-alice"})
    warehouse = Warehouse(broken_for={"carol"})
    made = adapters(clock)
    wf = build(made, provider, warehouse, clock=clock, metrics_registry=metrics_registry)
    cards = {"alice": "4242-alice", "bob": "4000-0002", "carol": "4242-carol"}
    async with wf:
        ids = {
            who: await wf.trigger(who, initial_value=Order(customer=who, card=card))
            for who, card in cards.items()
        }
        await wf.await_("bob", ids["bob"], Status.FAILED, timeout=5)
        await retry_scheduled(wf, "carol", 2)  # her first fulfilment failed at 09:00
        await run_retries(wf, clock, "alice", range(2, 3))  # the charge, 30 s later
        await wf.await_("alice", ids["alice"], Status.SHIPPED, timeout=5)
        await run_retries(wf, clock, "carol", range(2, 4))  # fulfilment, 1 and 2 min later
        await wf.await_("carol", ids["carol"], Status.REFUNDED, timeout=5)
        runs = {who: await wf.lookup(rid) for who, rid in ids.items()}
        histories = {who: await history(made[1], rid, Status) for who, rid in ids.items()}
    for who, run in runs.items():
        o, key = run.object, run.run_id
        said = o.tracking or o.declined or ("refunded" if o.refunded else "")
        calls, charged = provider.calls[key], provider.charges.get(key, "no charge")
        print(f"  {who:5} {run.status.name:8} {calls} charge call(s), {charged}: {said}")
    print(f"  the provider holds {len(provider.charges)} charges, refunded {provider.refunds}")
    print("  carol's history:")
    for line in histories["carol"]:
        print(f"    {line}")
    return Outcome(
        statuses={who: run.status.name for who, run in runs.items()},
        orders={who: run.object for who, run in runs.items()},
        provider=provider,
        histories=histories,
    )


if __name__ == "__main__":
    asyncio.run(main())
