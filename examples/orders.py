"""An order that waits for its fulfilment: a child workflow whose result (the tracking number)
the order uses in its next step, and a deadline after which the order stops waiting.

    python -m examples.orders

The real-world need: an order hands the parcel to a fulfilment process run by another team
(picking, packing, a courier label; days when the item is backordered) and must tell the
customer the tracking number once there is one, or tell them it is late.

- **Chaining.** The order's first step starts a ``fulfilment`` run (``run.start_child``) and
  moves to FULFILLING, a fan-in (``add_children_done``): when the fulfilment finishes, the
  fan-in gets its final object and keeps the tracking number on the order; the next step,
  at SHIPPED, sends it to the customer.
- **A deadline.** ``.with_deadline(48 h, Status.DELAYED)``: a durable timer moves an order
  whose fulfilment has not finished to DELAYED (customer service takes over). The
  fulfilment goes on: a deadline does not cancel children (cancelling the order would).

What to look at in the output: order-1's tracking number reaches the customer; order-2's item
is backordered, so 48 h later the order is DELAYED while its fulfilment still waits for
stock, and the stock arriving later ships the parcel without moving the order. The demo runs
on a ``FakeClock`` moved by hand, so the two days take no time.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import Adapters, MakeAdapters, memory
from workflow import Builder, Clock, Run, TypedRecord, Workflow
from workflow.testing import FakeClock, await_timeout_insert, wait_for

DEADLINE = timedelta(hours=48)


class Status(enum.IntEnum):
    UNKNOWN = 0
    PLACED = 1
    FULFILLING = 2  # waits for its fulfilment, at most DEADLINE
    SHIPPED = 3
    NOTIFIED = 4
    DELAYED = 5


class Fulfilment(enum.IntEnum):
    UNKNOWN = 0
    QUEUED = 1
    BACKORDERED = 2  # waits for the warehouse's "restocked" callback
    SHIPPED = 3


class Order(BaseModel):
    customer: str = ""
    sku: str = ""
    fulfilment: str = ""  # the child's run id
    tracking: str = ""


class Parcel(BaseModel):
    sku: str = ""
    tracking: str = ""


@dataclass
class Shop:
    """A pretend warehouse (``in_stock``) and the messages sent to customers."""

    in_stock: set[str] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)

    def label(self, run: Run[Parcel, Fulfilment]) -> Fulfilment:
        run.object.tracking = "TRK-" + run.foreign_id.split("/")[0].upper()
        return Fulfilment.SHIPPED

    async def pick(self, run: Run[Parcel, Fulfilment]) -> Fulfilment:
        return self.label(run) if run.object.sku in self.in_stock else Fulfilment.BACKORDERED

    async def restocked(self, run: Run[Parcel, Fulfilment], payload: bytes) -> Fulfilment:
        return self.label(run)

    async def notify(self, run: Run[Order, Status]) -> Status:
        self.messages.append(f"to {run.object.customer}: shipped, track {run.object.tracking}")
        return Status.NOTIFIED


def build(
    adapters: Adapters,
    shop: Shop,
    *,
    clock: Clock,
    metrics_registry: CollectorRegistry | None = None,
) -> tuple[Workflow[Order, Status], Workflow[Parcel, Fulfilment]]:
    """The order and fulfilment workflows, on the same adapters (one record store object)."""
    parcels = Builder[Parcel, Fulfilment]("fulfilment")
    parcels.add_step(Fulfilment.QUEUED, shop.pick, Fulfilment.SHIPPED, Fulfilment.BACKORDERED)
    parcels.add_callback(Fulfilment.BACKORDERED, shop.restocked, Fulfilment.SHIPPED)

    async def place(run: Run[Order, Status]) -> Status:
        parcel = Parcel(sku=run.object.sku)
        run.object.fulfilment = run.start_child(fulfilments, "fulfilment", initial_value=parcel)
        return Status.FULFILLING

    async def fulfilled(run: Run[Order, Status], children: list[TypedRecord[Any, Any]]) -> Status:
        [parcel] = children  # its final version: status, object, run state
        run.object.tracking = parcel.object.tracking
        return Status.SHIPPED

    orders = Builder[Order, Status]("orders")
    orders.add_step(Status.PLACED, place, Status.FULFILLING)
    orders.add_children_done(Status.FULFILLING, fulfilled, Status.SHIPPED).with_deadline(
        DEADLINE, Status.DELAYED
    )
    orders.add_step(Status.SHIPPED, shop.notify, Status.NOTIFIED)

    streamer, store, roles, timeouts = adapters
    kw: dict[str, Any] = {"clock": clock, "metrics_registry": metrics_registry}
    fulfilments = parcels.build(streamer, store, roles, **kw)
    return orders.build(streamer, store, roles, timeout_store=timeouts, **kw), fulfilments


@dataclass
class Outcome:
    orders: dict[str, Run[Order, Status]]
    parcels: dict[str, Run[Parcel, Fulfilment]]  # at the time each order finished
    late_parcel: Run[Parcel, Fulfilment]  # order-2's, once the stock arrived
    messages: list[str]


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> Outcome:
    clock = FakeClock(datetime(2024, 11, 25, 9, 0, tzinfo=UTC))
    shop = Shop(in_stock={"mug"})
    orders, fulfilments = build(
        adapters(clock), shop, clock=clock, metrics_registry=metrics_registry
    )
    wanted = {"order-1": ("ann", "mug"), "order-2": ("bo", "lamp")}  # no lamps in stock
    async with orders, fulfilments:
        ids = {
            fid: await orders.trigger(fid, initial_value=Order(customer=who, sku=sku))
            for fid, (who, sku) in wanted.items()
        }
        done = {
            "order-1": await orders.await_("order-1", ids["order-1"], Status.NOTIFIED, timeout=5)
        }
        late_fid, backordered = "order-2/fulfilment", Fulfilment.BACKORDERED
        await wait_for(fulfilments, late_fid, lambda r: r.status is backordered)
        await await_timeout_insert(orders, "order-2", ids["order-2"], Status.FULFILLING)
        clock.step(DEADLINE)
        done["order-2"] = await orders.await_("order-2", ids["order-2"], Status.DELAYED, timeout=5)
        parcels = {fid: await fulfilments.lookup(r.object.fulfilment) for fid, r in done.items()}
        for fid, run in done.items():
            p = parcels[fid]
            print(
                f"  {fid}: {run.status.name:8} tracking {run.object.tracking or '-':12} "
                f"fulfilment {p.status.name} ({p.run_state.name})"
            )

        await fulfilments.callback(late_fid, backordered, b"")  # the stock arrives
        late = await fulfilments.await_(
            late_fid, parcels["order-2"].run_id, Fulfilment.SHIPPED, timeout=5
        )
        still = await orders.lookup(ids["order-2"])
        print(
            f"  later, order-2's parcel ships ({late.object.tracking}); the order stays "
            f"{still.status.name}"
        )
    for message in shop.messages:
        print(f"  message {message}")
    return Outcome(done, parcels, late, shop.messages)


if __name__ == "__main__":
    asyncio.run(main())
