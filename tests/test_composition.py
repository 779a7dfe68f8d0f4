"""Composition on every back end (memory, SQLite, PostgreSQL, with the outbox and with direct
publishing; Kafka in test_kafka_e2e.py): child workflows started atomically with their
parent's transition, fan-in, cascading cancel and data deletion, and sagas."""

from __future__ import annotations

import asyncio
import enum
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import (
    Builder,
    Filter,
    InvalidTransitionError,
    PausedBy,
    RetryPolicy,
    Run,
    RunState,
    TypedRecord,
    Workflow,
    mermaid,
)
from workflow.abc import RecordHistory
from workflow.adapters.memory import MemRecordStore, MemRoleScheduler, MemStreamer
from workflow.testing import FakeClock, wait_for

from .backends import Backend


class Order(enum.IntEnum):
    UNKNOWN = 0
    NEW = 1
    WAITING = 2
    SHIPPED = 3
    FAILED = 4
    EXPIRED = 5


class Item(enum.IntEnum):
    UNKNOWN = 0
    PENDING = 1
    PACKED = 2
    OUT_OF_STOCK = 3
    HELD = 4


class Basket(BaseModel):
    items: list[str] = []
    children: list[str] = []
    outcome: dict[str, str] = {}


class Line(BaseModel):
    sku: str = ""
    packed: bool = False


def item_builder(held: set[str] | None = None) -> Builder[Line, Item]:
    held = held if held is not None else set()

    async def pack(run: Run[Line, Item]) -> Item:
        if run.object.sku in held:
            return Item.HELD
        if run.object.sku.startswith("x"):
            return Item.OUT_OF_STOCK
        run.object.packed = True
        return Item.PACKED

    async def release(run: Run[Line, Item], payload: bytes) -> Item:
        run.object.packed = True
        return Item.PACKED

    b = Builder[Line, Item]("item")
    b.add_step(Item.PENDING, pack, Item.PACKED, Item.OUT_OF_STOCK, Item.HELD)
    b.add_callback(Item.HELD, release, Item.PACKED)
    return b


def order_builder(item_wf: list[Workflow[Any, Any]], calls: list[int] | None = None) -> Any:
    async def start(run: Run[Basket, Order]) -> Order:
        for sku in run.object.items:
            run.object.children.append(
                run.start_child(item_wf[0], sku, initial_value=Line(sku=sku))
            )
        if calls is not None:
            calls.append(1)
        return Order.WAITING

    async def done(run: Run[Basket, Order], children: list[TypedRecord[Any, Any]]) -> Order:
        run.object.outcome = {c.object.sku: c.status.name for c in children}
        bad = any(c.status is not Item.PACKED for c in children)
        return Order.FAILED if bad else Order.SHIPPED

    b = Builder[Basket, Order]("orders")
    b.add_step(Order.NEW, start, Order.WAITING)
    handle = b.add_children_done(Order.WAITING, done, Order.SHIPPED, Order.FAILED)
    return b, handle


def build_pair(
    backend: Backend, held: set[str] | None = None, calls: list[int] | None = None, **kw: Any
) -> tuple[Workflow[Basket, Order], Workflow[Line, Item]]:
    holder: list[Workflow[Any, Any]] = []
    ob, handle = order_builder(holder, calls)
    if kw.pop("deadline", None):
        handle.with_deadline(timedelta(hours=1), Order.EXPIRED)
    orders, items = backend.build_group(ob, item_builder(held), **kw)
    holder.append(items)
    return orders, items


async def test_children_start_with_their_parent_and_the_parent_collects_them(
    backend: Backend,
) -> None:
    orders, items = build_pair(backend)
    async with orders, items:
        rid = await orders.trigger("o1", initial_value=Basket(items=["a", "b", "c"]))
        done = await orders.await_("o1", rid, Order.SHIPPED, timeout=15)
    assert done.object.outcome == {"a": "PACKED", "b": "PACKED", "c": "PACKED"}
    kids = await items.list(Filter.by_parent(rid))
    assert [k.run_id for k in kids] == done.object.children
    assert {k.foreign_id for k in kids} == {"o1/a", "o1/b", "o1/c"}
    for k in kids:
        assert (k.meta.parent_workflow, k.meta.parent_run_id) == ("orders", rid)
        assert k.run_state is RunState.COMPLETED
        assert (await items.lookup(k.run_id)).meta.parent_run_id == rid
    # the children were created in the transaction of the parent's move to WAITING
    store = orders._engine.store
    assert isinstance(store, RecordHistory)
    waiting = next(r for r in await store.history(rid) if r.status == Order.WAITING)
    for k in kids:
        first = (await store.history(k.run_id))[0]
        assert first.created_at == waiting.updated_at


async def test_a_failed_child_is_seen_by_the_fan_in(backend: Backend) -> None:
    orders, items = build_pair(backend)
    async with orders, items:
        rid = await orders.trigger("o2", initial_value=Basket(items=["a", "x9"]))
        done = await orders.await_("o2", rid, Order.FAILED, timeout=15)
    assert done.object.outcome == {"a": "PACKED", "x9": "OUT_OF_STOCK"}


async def test_the_parent_waits_until_the_last_child_finishes(backend: Backend) -> None:
    orders, items = build_pair(backend, held={"b"})
    async with orders, items:
        rid = await orders.trigger("o3", initial_value=Basket(items=["a", "b"]))
        await orders.await_("o3", rid, Order.WAITING, timeout=15)
        await items.await_("o3/a", (await items.latest("o3/a")).run_id, Item.PACKED, timeout=15)
        held = await items.latest("o3/b")
        await items.await_("o3/b", held.run_id, Item.HELD, timeout=15)
        assert (await orders.lookup(rid)).status is Order.WAITING
        await items.callback("o3/b", Item.HELD, b"")
        done = await orders.await_("o3", rid, Order.SHIPPED, timeout=15)
    assert done.object.outcome == {"a": "PACKED", "b": "PACKED"}


async def test_no_child_is_stored_when_the_parent_write_is_refused(backend: Backend) -> None:
    """The step starts children, then its run changes under it (an operator pauses it): the
    parent's compare-and-set fails and not one child exists."""
    gate = asyncio.Event()
    started = asyncio.Event()
    holder: list[Workflow[Any, Any]] = []

    async def start(run: Run[Basket, Order]) -> Order:
        run.start_child(holder[0], "a", initial_value=Line(sku="a"))
        run.start_child(holder[0], "b", initial_value=Line(sku="b"))
        started.set()
        await gate.wait()
        return Order.WAITING

    async def done(run: Run[Basket, Order], children: list[Any]) -> Order:
        return Order.SHIPPED

    b = Builder[Basket, Order]("orders")
    b.add_step(Order.NEW, start, Order.WAITING)
    b.add_children_done(Order.WAITING, done, Order.SHIPPED)
    orders, items = backend.build_group(b, item_builder(), pause_retry=None)
    holder.append(items)
    async with orders, items:
        rid = await orders.trigger("o4")
        await asyncio.wait_for(started.wait(), 15)
        await orders.pause(rid, "hold on")
        gate.set()  # the step returns; stop() waits for its write to be refused
    assert (await orders.lookup(rid)).run_state is RunState.PAUSED
    assert await items.list(Filter.by_parent(rid)) == []
    assert await items.list() == []


async def test_a_step_that_runs_again_starts_its_children_once(backend: Backend) -> None:
    """The first attempt starts the children and fails before storing; the retry starts
    them again: the same run ids, stored once."""
    holder: list[Workflow[Any, Any]] = []
    seen: list[list[str]] = []
    first = asyncio.Event()

    async def start(run: Run[Basket, Order]) -> Order:
        ids = [run.start_child(holder[0], k, initial_value=Line(sku=k)) for k in ("a", "b")]
        seen.append(ids)
        first.set()
        if run.attempt == 1:
            raise ConnectionError("lost the reply")
        return Order.WAITING

    async def done(run: Run[Basket, Order], children: list[Any]) -> Order:
        return Order.SHIPPED

    b = Builder[Basket, Order]("orders")
    b.add_step(Order.NEW, start, Order.WAITING).with_options(
        retry=RetryPolicy(initial_backoff=timedelta(seconds=1))
    )
    b.add_children_done(Order.WAITING, done, Order.SHIPPED)
    orders, items = backend.build_group(b, item_builder())
    holder.append(items)
    async with orders, items:
        rid = await orders.trigger("o5")
        await asyncio.wait_for(first.wait(), 15)
        await backend.clock.until_waiting()
        backend.clock.step(timedelta(seconds=1))
        await orders.await_("o5", rid, Order.SHIPPED, timeout=15)
    assert seen[0] == seen[1]
    kids = await items.list(Filter.by_parent(rid))
    assert sorted(k.run_id for k in kids) == sorted(seen[0])


async def test_cancelling_a_parent_cancels_its_unfinished_children(backend: Backend) -> None:
    orders, items = build_pair(backend, held={"b", "c"})
    async with orders, items:
        rid = await orders.trigger("o6", initial_value=Basket(items=["a", "b", "c"]))
        await orders.await_("o6", rid, Order.WAITING, timeout=15)
        for sku, st in (("a", Item.PACKED), ("b", Item.HELD), ("c", Item.HELD)):
            kid = await items.latest(f"o6/{sku}")
            await items.await_(f"o6/{sku}", kid.run_id, st, timeout=15)
        await orders.cancel(rid, "customer changed their mind")
    kids = {k.object.sku: k for k in await items.list(Filter.by_parent(rid))}
    assert kids["a"].run_state is RunState.COMPLETED  # finished children stay as they are
    for sku in ("b", "c"):
        assert kids[sku].run_state is RunState.CANCELLED
        assert kids[sku].meta.run_state_reason == f"parent run {rid} (orders) was cancelled"
    assert (await orders.lookup(rid)).run_state is RunState.CANCELLED


async def test_deleting_a_parents_data_deletes_its_childrens(backend: Backend) -> None:
    """Data deletion (GDPR) goes to every child, finished or not."""
    orders, items = build_pair(backend, held={"b"})
    async with orders, items:
        rid = await orders.trigger("o7", initial_value=Basket(items=["a", "b"]))
        await orders.await_("o7", rid, Order.WAITING, timeout=15)
        kid = await items.latest("o7/a")
        await items.await_("o7/a", kid.run_id, Item.PACKED, timeout=15)
        await orders.cancel(rid, "customer left")
        await orders.delete_data(rid, "GDPR request")
        for sku in ("a", "b"):
            await wait_for(items, f"o7/{sku}", lambda r: r.run_state is RunState.DATA_DELETED)
        await wait_for(orders, "o7", lambda r: r.run_state is RunState.DATA_DELETED)
    for kid in await items.list(Filter.by_parent(rid)):
        assert kid.object == Line()  # {"result": "deleted"} decodes to the defaults
        assert kid.meta.parent_run_id == rid


async def test_a_fan_in_deadline_moves_the_parent_on(backend: Backend) -> None:
    orders, items = build_pair(backend, held={"a"}, deadline=True)
    async with orders, items:
        rid = await orders.trigger("o8", initial_value=Basket(items=["a"]))
        await orders.await_("o8", rid, Order.WAITING, timeout=15)
        await backend.clock.until_waiting()
        backend.clock.step(timedelta(hours=1))
        await orders.await_("o8", rid, Order.EXPIRED, timeout=15)


# -- sagas -------------------------------------------------------------------------------


class Trip(enum.IntEnum):
    UNKNOWN = 0
    NEW = 1
    FLIGHT = 2
    HOTEL = 3
    CHARGED = 4
    COMPENSATED = 5


class Booking(BaseModel):
    log: list[str] = []


def saga(
    backend: Backend, charge_fails: bool = True, undo_fails: int = 0
) -> tuple[Workflow[Booking, Trip], list[str]]:
    undone: list[str] = []
    failures = {"left": undo_fails}

    async def flight(run: Run[Booking, Trip]) -> Trip:
        run.object.log.append("flight")
        return Trip.FLIGHT

    async def hotel(run: Run[Booking, Trip]) -> Trip:
        run.object.log.append("hotel")
        return Trip.HOTEL

    async def charge(run: Run[Booking, Trip]) -> Trip:
        if charge_fails:
            raise ConnectionError("payment provider down")
        return Trip.CHARGED

    async def cancel_flight(run: Run[Booking, Trip]) -> None:
        undone.append("flight")
        run.object.log.append("flight cancelled")

    async def cancel_hotel(run: Run[Booking, Trip]) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("hotel system down")
        undone.append("hotel")
        run.object.log.append("hotel cancelled")

    b = Builder[Booking, Trip]("trip")
    b.add_step(Trip.NEW, flight, Trip.FLIGHT).compensate_with(cancel_flight)
    b.add_step(Trip.FLIGHT, hotel, Trip.HOTEL).compensate_with(
        cancel_hotel,
        retry=RetryPolicy(max_attempts=2, initial_backoff=timedelta(seconds=1)),
    )
    b.add_step(Trip.HOTEL, charge, Trip.CHARGED).with_options(
        retry=RetryPolicy(max_attempts=2, on_exhausted="compensate")
    )
    b.compensate_to(Trip.COMPENSATED)
    return backend.build(b, pause_retry=None), undone


async def test_a_saga_undoes_the_completed_steps_newest_first(backend: Backend) -> None:
    wf, undone = saga(backend)
    async with wf:
        rid = await wf.trigger("t1")
        await wf.await_("t1", rid, Trip.HOTEL, timeout=15)
        await backend.clock.until_waiting()
        backend.clock.step(timedelta(seconds=1))  # the charge's second and last attempt
        done = await wf.await_("t1", rid, Trip.COMPENSATED, timeout=15)
    assert undone == ["hotel", "flight"]
    assert done.run_state is RunState.COMPLETED
    assert done.object.log == ["flight", "hotel", "hotel cancelled", "flight cancelled"]
    store = wf._engine.store
    assert isinstance(store, RecordHistory)
    reasons = [r.meta.run_state_reason for r in await store.history(rid)]
    assert any(x.startswith("retries exhausted") and x.endswith("compensating") for x in reasons)
    assert any(x.startswith("compensated the step at FLIGHT (") for x in reasons)
    assert "cancel_hotel" in reasons[-2]
    assert (
        reasons[-1].startswith("compensated the step at NEW (") and "cancel_flight" in reasons[-1]
    )


async def test_a_failing_compensation_pauses_for_a_person_and_resumes(backend: Backend) -> None:
    wf, undone = saga(backend, undo_fails=2)
    async with wf:
        rid = await wf.trigger("t2")
        await wf.await_("t2", rid, Trip.HOTEL, timeout=15)
        await backend.clock.until_waiting()
        backend.clock.step(timedelta(seconds=1))
        # cancel_hotel fails twice (its policy: 2 attempts): the run waits for a person
        await backend.clock.until_waiting()
        backend.clock.step(timedelta(seconds=1))
        paused = await wait_for(wf, "t2", lambda r: r.run_state is RunState.PAUSED)
        assert paused.meta.paused_by == PausedBy.COMPENSATION_FAILED
        assert paused.meta.compensating and paused.meta.compensations == (1, 2)
        assert undone == []
        await wf.resume(rid)
        done = await wf.await_("t2", rid, Trip.COMPENSATED, timeout=15)
    assert undone == ["hotel", "flight"]
    assert done.run_state is RunState.COMPLETED


async def test_a_run_that_succeeds_keeps_its_saga_unused(backend: Backend) -> None:
    wf, undone = saga(backend, charge_fails=False)
    async with wf:
        rid = await wf.trigger("t3")
        done = await wf.await_("t3", rid, Trip.CHARGED, timeout=15)
    assert undone == [] and done.meta.compensations == (1, 2)


# -- declarations ------------------------------------------------------------------------


def test_compensate_needs_a_terminal_compensate_to() -> None:
    async def step(run: Any) -> Trip:
        return Trip.FLIGHT

    b = Builder[Booking, Trip]("t")
    b.add_step(Trip.NEW, step, Trip.FLIGHT).with_options(
        retry=RetryPolicy(on_exhausted="compensate")
    )
    clock = FakeClock()
    with pytest.raises(ValueError, match="compensate_to"):
        b.build(MemStreamer(clock), MemRecordStore(), MemRoleScheduler(), clock=clock)
    b.compensate_to(Trip.NEW)
    with pytest.raises(ValueError, match="terminal"):
        b.build(MemStreamer(clock), MemRecordStore(), MemRoleScheduler(), clock=clock)


def test_mermaid_draws_compensations() -> None:
    wf = saga(Backend("memory", FakeClock(), CollectorRegistry()))[0]
    text = mermaid(wf)
    assert "\t2 --> 1: compensate (cancel_flight)" in text
    assert "\t3 --> 2: compensate (cancel_hotel)" in text
    assert "\t3 --> 5: retries exhausted" in text


async def test_start_child_refuses_bad_use(clock: FakeClock) -> None:
    errors: list[BaseException] = []
    other = item_builder().build(MemStreamer(clock), MemRecordStore(), MemRoleScheduler())
    store = MemRecordStore()
    holder: list[Any] = []

    async def start(run: Run[Basket, Order]) -> Any:
        for call in (
            lambda: run.start_child(other, "a"),  # another store
            lambda: run.start_child("items", "a"),  # not a workflow
            lambda: run.start_child(holder[0], ""),  # no key
            lambda: run.start_child(holder[0], "a", start_at=Item.PACKED),  # terminal
        ):
            try:
                call()
            except (ValueError, TypeError) as err:
                errors.append(err)
        run.start_child(holder[0], "a")
        with pytest.raises(ValueError, match="already started"):
            run.start_child(holder[0], "a")
        return run.skip()  # started a child but stores nothing

    b = Builder[Basket, Order]("orders")
    b.add_step(Order.NEW, start, Order.WAITING).with_options(retry=RetryPolicy(max_attempts=1))
    streamer, roles = MemStreamer(clock), MemRoleScheduler()
    orders = b.build(streamer, store, roles, clock=clock, pause_retry=None)
    holder.append(item_builder().build(streamer, store, roles, clock=clock))
    async with orders:
        await orders.trigger("bad")
        run = await wait_for(orders, "bad", lambda r: r.run_state is RunState.PAUSED)
    assert len(errors) == 4, errors
    assert "another record store" in str(errors[0])
    assert InvalidTransitionError.__name__ in run.meta.run_state_reason
    assert "stores no new version" in run.meta.run_state_reason
    assert await holder[0].list() == []
