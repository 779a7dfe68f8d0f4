"""The application the HTTP API tests serve in a real server process:

    python -m workflow.http --app tests.procs.http_app:app --port P
    python -m workflow.http --app tests.procs.http_app:mounted --port P   # under /wf

Three workflows on one SQL database (``HTTP_TEST_DB_URL``, ``HTTP_TEST_DB_SCHEMA``), tokens
from ``AIOWORKFLOW_TOKENS``, a body limit of ``HTTP_TEST_MAX_BODY`` bytes and batches of
``HTTP_TEST_MAX_BATCH`` events:

- ``orders``: a step packs the order; the item "broken" fails it once and it is paused
  (retries exhausted: a dead letter).
- ``payments``: waits at AWAITING for the ``payment.settled`` callback.
- ``notices``: a delayed start waits at SCHEDULED for its delay, then SENT.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.procs.lifetime import die_with_parent
from workflow import Builder, RetryPolicy, Run, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer
from workflow.adapters.sqltimeout import SQLTimeoutStore
from workflow.http import Routes, make_app, running, tokens_from_env


class OrderStatus(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    DONE = 2


class PaymentStatus(enum.IntEnum):
    UNKNOWN = 0
    AWAITING = 1
    SETTLED = 2


class NoticeStatus(enum.IntEnum):
    UNKNOWN = 0
    SCHEDULED = 1
    READY = 2
    SENT = 3


class Order(BaseModel):
    item: str = ""
    qty: int = Field(1, ge=1)
    note: str = ""
    customer: dict[str, str] = {}


class Payment(BaseModel):
    amount: int = 0
    settled_ref: str = ""


class Settlement(BaseModel):
    ref: str


class Notice(BaseModel):
    to: str = ""
    text: str = ""
    delay_s: float = 0.0


class NoticePayload(BaseModel):
    to: str
    text: str


async def pack(run: Run[Order, OrderStatus]) -> OrderStatus:
    if run.object.item == "broken":
        raise ConnectionError("the warehouse is down")
    run.object.note = f"packed {run.object.qty} {run.object.item}"
    return OrderStatus.DONE


async def settled(run: Run[Payment, PaymentStatus], payload: bytes) -> PaymentStatus:
    run.object.settled_ref = Settlement.model_validate_json(payload).ref
    return PaymentStatus.SETTLED


def after_delay(run: Run[Notice, NoticeStatus], now: datetime) -> datetime:
    return now + timedelta(seconds=run.object.delay_s)


async def wake(run: Run[Notice, NoticeStatus], now: datetime) -> NoticeStatus:
    return NoticeStatus.READY


async def send(run: Run[Notice, NoticeStatus]) -> NoticeStatus:
    return NoticeStatus.SENT


def with_delay(payload: NoticePayload | None, delay: timedelta) -> Notice:
    base = payload or NoticePayload(to="", text="")
    return Notice(to=base.to, text=base.text, delay_s=delay.total_seconds())


def build() -> tuple[list[Workflow[Any, Any]], Routes, CollectorRegistry]:
    url = os.environ["HTTP_TEST_DB_URL"]
    schema = os.environ.get("HTTP_TEST_DB_SCHEMA")
    kw: dict[str, Any] = {}
    if schema:
        kw["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = make_engine(url, **kw)
    streamer = SQLStreamer(engine, poll_frequency=0.1)
    store = SQLRecordStore(engine)
    roles = SQLRoleScheduler(engine)
    timers = SQLTimeoutStore(engine)
    registry = CollectorRegistry()
    opts = {"polling_frequency": 0.1, "err_backoff": 0.05}

    orders = Builder[Order, OrderStatus]("orders")
    orders.add_step(OrderStatus.STARTED, pack, OrderStatus.DONE).with_options(
        retry=RetryPolicy(max_attempts=1)
    )
    payments = Builder[Payment, PaymentStatus]("payments")
    payments.add_callback(PaymentStatus.AWAITING, settled, PaymentStatus.SETTLED)
    notices = Builder[Notice, NoticeStatus]("notices")
    notices.add_timeout(NoticeStatus.SCHEDULED, after_delay, wake, NoticeStatus.READY)
    notices.add_step(NoticeStatus.READY, send, NoticeStatus.SENT)

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
        for b in (orders, payments, notices)
    ]
    wf_orders, wf_payments, wf_notices = wfs
    routes = (
        Routes()
        .trigger("order.placed", wf_orders)
        .trigger("payment.started", wf_payments)
        .callback("payment.settled", wf_payments, PaymentStatus.AWAITING, model=Settlement)
        .trigger(
            "notice.send",
            wf_notices,
            model=NoticePayload,
            start=NoticeStatus.READY,
            delayed_start=NoticeStatus.SCHEDULED,
            build=with_delay,
        )
    )
    return wfs, routes, registry


def _limits() -> dict[str, int]:
    return {
        "max_body_bytes": int(os.environ.get("HTTP_TEST_MAX_BODY", "1000000")),
        "max_batch": int(os.environ.get("HTTP_TEST_MAX_BATCH", "500")),
    }


workflows, routes, registry = build()
app = make_app(
    workflows,
    tokens=tokens_from_env(),
    routes=routes,
    run_workflows=True,
    metrics_registry=registry,
    **_limits(),
)


@contextlib.asynccontextmanager
async def _lifespan(_app: Starlette) -> AsyncIterator[None]:
    async with running(workflows):  # a mounted application's lifespan does not run
        yield


mounted = Starlette(
    routes=[
        Mount(
            "/wf",
            make_app(
                workflows,
                tokens=tokens_from_env(),
                routes=routes,
                metrics_registry=CollectorRegistry(),
                **_limits(),
            ),
        )
    ],
    lifespan=_lifespan,
)

die_with_parent()
