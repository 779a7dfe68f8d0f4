"""The application the web UI tests serve in a real server process:

    python -m workflow.http --app tests.procs.ui_app:app --port P

Workflows on one SQLite (or other SQL) database (``UI_TEST_DB_URL``), tokens from
``AIOWORKFLOW_TOKENS``:

- ``orders``: PLACED -> PACKED -> SHIPPED -> DELIVERED, with RETURNED -> PACKED (a cycle, while
  ``returns`` is above 0) and PLACED -> REJECTED (no item). Packing fails while the file
  named after the run's foreign id (:func:`marker`) exists in ``UI_TEST_DOWN_DIR``: with one
  attempt allowed, the run is paused (retries exhausted: a dead letter); remove the file and
  resume it, and it completes.
- ``payments``: waits at AWAITING for a callback (a run that stays Running).
- ``bookings``: a saga (reserve, charge with a compensation, compensated to REFUNDED): only
  drawn, for its labelled arrows.
"""

from __future__ import annotations

import enum
import hashlib
import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from tests.procs.lifetime import die_with_parent
from workflow import Builder, RetryPolicy, Run, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer
from workflow.adapters.sqltimeout import SQLTimeoutStore
from workflow.http import Routes, make_app, tokens_from_env


class OrderStatus(enum.IntEnum):
    UNKNOWN = 0
    PLACED = 1
    PACKED = 2
    SHIPPED = 3
    DELIVERED = 4
    RETURNED = 5
    REJECTED = 6


class PaymentStatus(enum.IntEnum):
    UNKNOWN = 0
    AWAITING = 1
    SETTLED = 2


class BookingStatus(enum.IntEnum):
    UNKNOWN = 0
    REQUESTED = 1
    RESERVED = 2
    CHARGED = 3
    CONFIRMED = 4
    REFUNDED = 5


class Order(BaseModel):
    item: str = ""
    qty: int = 1
    customer: dict[str, str] = {}
    note: str = ""
    returns: int = 0
    tracking: str = ""


class Payment(BaseModel):
    amount: int = 0
    ref: str = ""


class Booking(BaseModel):
    seats: int = 1
    log: list[str] = []


def marker(down_dir: Path, foreign_id: str) -> Path:
    """The file whose presence fails the packing of ``foreign_id``'s run."""
    return down_dir / hashlib.sha256(foreign_id.encode()).hexdigest()


async def pack(run: Run[Order, OrderStatus]) -> OrderStatus:
    if not run.object.item:
        run.object.note = "rejected: no item"
        return OrderStatus.REJECTED
    if marker(Path(os.environ["UI_TEST_DOWN_DIR"]), run.foreign_id).exists():
        raise ConnectionError("the warehouse is down")
    run.object.note = f"packed {run.object.qty} {run.object.item}"
    return OrderStatus.PACKED


async def ship(run: Run[Order, OrderStatus]) -> OrderStatus:
    run.object.tracking = f"TRK-{run.object.item.upper()}"
    return OrderStatus.SHIPPED


async def deliver(run: Run[Order, OrderStatus]) -> OrderStatus:
    if run.object.returns > 0:
        return OrderStatus.RETURNED
    run.object.note = "delivered"
    return OrderStatus.DELIVERED


async def restock(run: Run[Order, OrderStatus]) -> OrderStatus:
    run.object.returns -= 1
    return OrderStatus.PACKED


async def settled(run: Run[Payment, PaymentStatus], payload: bytes) -> PaymentStatus:
    run.object.ref = payload.decode()
    return PaymentStatus.SETTLED


async def reserve(run: Run[Booking, BookingStatus]) -> BookingStatus:
    return BookingStatus.RESERVED


async def charge(run: Run[Booking, BookingStatus]) -> BookingStatus:
    return BookingStatus.CHARGED


async def confirm(run: Run[Booking, BookingStatus]) -> BookingStatus:
    return BookingStatus.CONFIRMED


async def release(run: Run[Booking, BookingStatus]) -> None:
    run.object.log.append("released")


async def refund(run: Run[Booking, BookingStatus]) -> None:
    run.object.log.append("refunded")


def build() -> tuple[list[Workflow[Any, Any]], Routes, CollectorRegistry]:
    engine = make_engine(os.environ["UI_TEST_DB_URL"])
    streamer = SQLStreamer(engine, poll_frequency=0.1)
    store = SQLRecordStore(engine)
    roles = SQLRoleScheduler(engine)
    timers = SQLTimeoutStore(engine)
    registry = CollectorRegistry()
    opts = {"polling_frequency": 0.1, "err_backoff": 0.05}

    orders = Builder[Order, OrderStatus]("orders")
    orders.add_step(
        OrderStatus.PLACED, pack, OrderStatus.PACKED, OrderStatus.REJECTED
    ).with_options(retry=RetryPolicy(max_attempts=1))
    orders.add_step(OrderStatus.PACKED, ship, OrderStatus.SHIPPED)
    orders.add_step(OrderStatus.SHIPPED, deliver, OrderStatus.DELIVERED, OrderStatus.RETURNED)
    orders.add_step(OrderStatus.RETURNED, restock, OrderStatus.PACKED)
    payments = Builder[Payment, PaymentStatus]("payments")
    payments.add_callback(PaymentStatus.AWAITING, settled, PaymentStatus.SETTLED)
    bookings = Builder[Booking, BookingStatus]("bookings")
    bookings.add_step(BookingStatus.REQUESTED, reserve, BookingStatus.RESERVED).compensate_with(
        release
    )
    bookings.add_step(BookingStatus.RESERVED, charge, BookingStatus.CHARGED).compensate_with(refund)
    bookings.add_step(BookingStatus.CHARGED, confirm, BookingStatus.CONFIRMED).with_options(
        retry=RetryPolicy(max_attempts=2, on_exhausted="compensate")
    )
    bookings.compensate_to(BookingStatus.REFUNDED)

    wfs: list[Workflow[Any, Any]] = [
        b.build(
            streamer,
            store,
            roles,
            timeout_store=timers,
            default_options=opts,
            pause_retry=None,
            metrics_registry=registry,
        )
        for b in (orders, payments, bookings)
    ]
    routes = Routes().trigger("order.placed", wfs[0]).trigger("payment.started", wfs[1])
    return wfs, routes, registry


workflows, routes, registry = build()
app = make_app(
    workflows,
    tokens=tokens_from_env(),
    routes=routes,
    run_workflows=True,
    metrics_registry=registry,
)

die_with_parent()
