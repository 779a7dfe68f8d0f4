"""A trip booking (a DAG and a saga): flight, hotel and car reserved in parallel as child
workflows, then one charge; when something fails, the reservations are released, newest first.

    python -m examples.booking

The real-world need: a travel site must not leave a supplier's reservation held when the trip
cannot be completed (no rooms left, the card cannot be charged), and there is no transaction
across suppliers: a saga undoes the completed steps instead.

- **Fan-out, fan-in.** The trip's first step starts three ``reservation`` runs
  (``run.start_child``, in one transaction with the trip's move to RESERVING); the fan-in
  (``add_children_done``) runs once all three finished, with their final objects.
- **The saga.** That first step ``compensate_with(release)``: ``release`` cancels the
  reservations newest first (car, hotel, flight), each by its run id, the supplier's
  idempotency key. It runs when a later step gives up with ``on_exhausted="compensate"``:
  (a) the charge, after 3 attempts 30 s and 60 s apart; (b) the fan-in, at once, when a
  reservation is UNAVAILABLE (it raises ``NonRetryableError``). The trip ends at COMPENSATED.

What to look at in the output: the order of the releases (trip-b has no hotel to release),
each trip's history, where the give-up and the compensation are versions of their own, and
nothing left held. The demo runs on a ``FakeClock`` moved by hand.
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
from examples.driving import history, run_retries
from workflow import Builder, Clock, NonRetryableError, RetryPolicy, Run, TypedRecord, Workflow
from workflow.testing import FakeClock

KINDS = ("flight", "hotel", "car")  # reserved in this order, released in the reverse


class Trip(enum.IntEnum):
    UNKNOWN = 0
    NEW = 1
    RESERVING = 2  # waits for its three reservations
    RESERVED = 3
    CHARGED = 4
    COMPENSATED = 5


class Reservation(enum.IntEnum):
    UNKNOWN = 0
    REQUESTED = 1
    CONFIRMED = 2
    UNAVAILABLE = 3


class Itinerary(BaseModel):
    customer: str = ""
    reservations: dict[str, str] = {}  # kind -> the reservation's run id
    refs: dict[str, str] = {}  # kind -> the supplier's reference
    released: list[str] = []


class Hold(BaseModel):
    kind: str = ""
    ref: str = ""


@dataclass
class Suppliers:
    """Pretend flight, hotel and car suppliers; ``sold_out``: the foreign ids that get none."""

    sold_out: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # idempotency key -> reference
    log: list[str] = field(default_factory=list)  # what was reserved and released

    async def reserve(self, key: str, foreign_id: str) -> str | None:
        if foreign_id in self.sold_out:
            return None
        if key not in self.held:
            self.held[key] = ref = foreign_id.replace("/", ":")
            self.log.append(f"reserved {ref}")
        return self.held[key]

    async def release(self, key: str) -> str | None:
        ref = self.held.pop(key, None)
        if ref is not None:
            self.log.append(f"released {ref}")
        return ref


@dataclass
class Payments:
    down_for: set[str] = field(default_factory=set)
    charged: list[str] = field(default_factory=list)

    async def charge(self, customer: str) -> None:
        if customer in self.down_for:
            raise ConnectionError("payment gateway timed out")
        self.charged.append(customer)


TRIP_RETRIES = RetryPolicy(
    max_attempts=3,
    initial_backoff=timedelta(seconds=30),
    backoff_coefficient=2,
    on_exhausted="compensate",
)


class Agency:
    """The step functions, methods so that the history names them (``Agency.release``)."""

    def __init__(self, suppliers: Suppliers, payments: Payments) -> None:
        self.suppliers, self.payments = suppliers, payments
        self.reservations: Workflow[Hold, Reservation] | None = None  # set by build()

    async def reserve(self, run: Run[Hold, Reservation]) -> Reservation:
        ref = await self.suppliers.reserve(run.run_id, run.foreign_id)
        if ref is None:
            return Reservation.UNAVAILABLE  # an answer, not an error: the trip decides
        run.object.ref = ref
        return Reservation.CONFIRMED

    async def reserve_all(self, run: Run[Itinerary, Trip]) -> Trip:
        for kind in KINDS:  # three children, stored with the move to RESERVING
            hold = Hold(kind=kind)
            run.object.reservations[kind] = run.start_child(
                self.reservations, kind, initial_value=hold
            )
        return Trip.RESERVING

    async def all_reserved(
        self, run: Run[Itinerary, Trip], children: list[TypedRecord[Any, Any]]
    ) -> Trip:
        missing = [c.object.kind for c in children if c.status is not Reservation.CONFIRMED]
        if missing:  # not worth retrying: compensate at once
            raise NonRetryableError(f"no {' or '.join(missing)} available")
        run.object.refs = {c.object.kind: c.object.ref for c in children}
        return Trip.RESERVED

    async def charge(self, run: Run[Itinerary, Trip]) -> Trip:
        await self.payments.charge(run.object.customer)
        return Trip.CHARGED

    async def release(self, run: Run[Itinerary, Trip]) -> None:
        for kind in reversed(KINDS):  # newest first
            ref = await self.suppliers.release(run.object.reservations[kind])
            run.object.released.append(f"{kind} {ref or '(nothing held)'}")


def build(
    adapters: Adapters,
    suppliers: Suppliers,
    payments: Payments,
    *,
    clock: Clock,
    metrics_registry: CollectorRegistry | None = None,
) -> tuple[Workflow[Itinerary, Trip], Workflow[Hold, Reservation]]:
    """The trip and reservation workflows, on the same adapters (one record store object)."""
    agency = Agency(suppliers, payments)
    holds = Builder[Hold, Reservation]("reservation")
    holds.add_step(
        Reservation.REQUESTED, agency.reserve, Reservation.CONFIRMED, Reservation.UNAVAILABLE
    )

    trips = Builder[Itinerary, Trip]("trip")
    first = trips.add_step(Trip.NEW, agency.reserve_all, Trip.RESERVING)
    first.compensate_with(agency.release)
    trips.add_children_done(Trip.RESERVING, agency.all_reserved, Trip.RESERVED).with_options(
        retry=TRIP_RETRIES
    )
    trips.add_step(Trip.RESERVED, agency.charge, Trip.CHARGED).with_options(retry=TRIP_RETRIES)
    trips.compensate_to(Trip.COMPENSATED)

    streamer, store, roles, _ = adapters  # no timers: no timeout store
    kw: dict[str, Any] = {"clock": clock, "metrics_registry": metrics_registry}
    agency.reservations = holds.build(streamer, store, roles, **kw)
    return trips.build(streamer, store, roles, **kw), agency.reservations


@dataclass
class Outcome:
    trips: dict[str, Run[Itinerary, Trip]]
    histories: dict[str, list[str]]
    suppliers: Suppliers
    payments: Payments


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> Outcome:
    clock = FakeClock(datetime(2024, 6, 1, 10, 0, tzinfo=UTC))
    suppliers = Suppliers(sold_out={"trip-b/hotel"})  # (b) no rooms left
    payments = Payments(down_for={"ann"})  # (a) ann's charge never goes through
    made = adapters(clock)
    trips, reservations = build(
        made, suppliers, payments, clock=clock, metrics_registry=metrics_registry
    )
    customers = {"trip-a": "ann", "trip-b": "bo"}
    async with trips, reservations:
        ids = {
            fid: await trips.trigger(fid, initial_value=Itinerary(customer=who))
            for fid, who in customers.items()
        }
        await trips.await_("trip-a", ids["trip-a"], Trip.RESERVED, timeout=5)
        await run_retries(trips, clock, "trip-a", range(2, 4))  # the charge's retries
        runs = {
            fid: await trips.await_(fid, rid, Trip.COMPENSATED, timeout=5)
            for fid, rid in ids.items()
        }
        histories = {fid: await history(made[1], rid, Trip) for fid, rid in ids.items()}
    for fid, run in runs.items():
        print(f"  {fid}: {run.status.name}, released {', '.join(run.object.released)}")
        for line in histories[fid]:
            print(f"    {line}")
    print(f"  the suppliers still hold: {suppliers.held or 'nothing'}")
    return Outcome(runs, histories, suppliers, payments)


if __name__ == "__main__":
    asyncio.run(main())
