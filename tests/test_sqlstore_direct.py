"""SQLRecordStore(streamer=...): each record's event is appended to the SQL streamer's table in
the store's own transaction (no outbox row, no relay), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from enum import IntEnum
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import (
    Builder,
    ConcurrentUpdateError,
    Header,
    Meta,
    Record,
    RunState,
    WorkflowInProgressError,
    make_outbox_event,
)
from workflow._record import CHILD_RUN_ID
from workflow.abc import make_child_finished_event
from workflow.adapters.adaptertest import run_atomic_writes_test
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.sqlschema import (
    create_schema,
    cursors,
    events,
    history,
    make_engine,
    outbox,
    records,
)
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer, insert_events
from workflow.testing import FakeClock

from .test_sqlstreamer import _blocked_inserts, stored_ids, take, until, waiting


@pytest.fixture
async def streamer(sql_engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[SQLStreamer]:
    s = SQLStreamer(sql_engine, clock=clock, poll_frequency=30)  # only wake-ups, no polling
    yield s
    await s.close()


def _record(run_id: str, *, version: int = 1, status: int = 1, foreign_id: str = "") -> Record:
    clock = FakeClock()
    return Record(
        workflow_name="direct",
        foreign_id=foreign_id or f"f-{run_id}",
        run_id=run_id,
        run_state=RunState.INITIATED if version == 1 else RunState.RUNNING,
        status=status,
        object=b'{"n":1}',
        created_at=clock.now(),
        updated_at=clock.now(),
        meta=Meta(version=version),
    )


def _topic(record: Record) -> str:
    return make_outbox_event(record).parts()[2][Header.TOPIC]


async def _count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_conformance_of_what_child_workflows_need(
    sql_engine: AsyncEngine, streamer: SQLStreamer
) -> None:
    """The composition checks (``store_many`` included) on a store that publishes directly:
    what it published is read from the streamer's topics."""

    async def empty() -> SQLRecordStore:
        async with sql_engine.begin() as conn:
            for table in (outbox, history, records, events, cursors):
                await conn.execute(table.delete())
        return SQLRecordStore(sql_engine, streamer=streamer)

    await run_atomic_writes_test(empty)
    assert await _count(sql_engine, outbox) == 0  # events only, never an outbox row


async def test_the_event_is_stored_with_the_record_and_wakes_receivers(
    sql_engine: AsyncEngine, streamer: SQLStreamer
) -> None:
    store = SQLRecordStore(sql_engine, streamer=streamer)
    first = _record("r1")
    second = dataclasses.replace(first, status=2, run_state=RunState.RUNNING, meta=Meta(version=2))
    receivers = [await streamer.new_receiver(_topic(r), "reader") for r in (first, second)]
    got = asyncio.ensure_future(take(receivers[0], 1))
    await waiting(receivers[0])  # polls every 30 s: only the store's wake-up can deliver
    await store.store(first)
    (event,) = await asyncio.wait_for(got, 2)
    assert (event.foreign_id, event.type) == ("r1", 1)
    assert event.headers[Header.RUN_ID] == "r1"
    assert event.headers[Header.RECORD_VERSION] == "1"
    await store.store(second)
    (event,) = await take(receivers[1], 1)
    assert (event.foreign_id, event.type, event.headers[Header.RECORD_VERSION]) == ("r1", 2, "2")
    assert await _count(sql_engine, outbox) == 0  # nothing for the relay
    assert await store.list_outbox_events("direct", 10) == []
    assert (await store.lookup("r1")).meta.version == 2


async def test_a_refused_write_publishes_nothing(
    sql_engine: AsyncEngine, streamer: SQLStreamer
) -> None:
    store = SQLRecordStore(sql_engine, streamer=streamer)
    await store.store(_record("r1", foreign_id="same"))
    with pytest.raises(WorkflowInProgressError):
        await store.store(_record("r2", foreign_id="same"))
    with pytest.raises(ConcurrentUpdateError):
        await store.store(_record("r1", foreign_id="other"))  # version 1 of r1 again
    stale = dataclasses.replace(_record("r1", foreign_id="same"), meta=Meta(version=3))
    with pytest.raises(ConcurrentUpdateError):
        await store.store(stale)
    assert await _count(sql_engine, events) == 1
    assert (await store.lookup("r1")).meta.version == 1


async def test_concurrent_direct_stores_deliver_everything_in_order(
    sql_engine: AsyncEngine, streamer: SQLStreamer
) -> None:
    stores = [SQLRecordStore(sql_engine, streamer=streamer) for _ in range(4)]
    topic = _topic(_record("x"))
    receiver = await streamer.new_receiver(topic, "reader")
    count = 25
    reading = asyncio.ensure_future(take(receiver, len(stores) * count))

    async def write(n: int) -> None:
        for i in range(count):
            await stores[n].store(_record(f"{n}-{i}"))

    await asyncio.gather(*(write(n) for n in range(len(stores))))
    got = await asyncio.wait_for(reading, 10)
    assert sorted(e.foreign_id for e in got) == sorted(
        f"{n}-{i}" for n in range(len(stores)) for i in range(count)
    )
    assert [e.id for e in got] == await stored_ids(sql_engine, topic)  # in id order, no gap


async def test_a_direct_store_waits_for_the_topic_lock(
    pg_engine: AsyncEngine, clock: FakeClock
) -> None:
    """PostgreSQL: a writer holding the topic's insert lock (an open transaction) makes a
    direct store wait, so the store's event id cannot become visible before the writer's."""
    streamer = SQLStreamer(pg_engine, clock=clock, poll_frequency=30)
    store = SQLRecordStore(pg_engine, streamer=streamer)
    record = _record("late")
    topic = _topic(record)
    receiver = await streamer.new_receiver(topic, "reader")
    try:
        async with pg_engine.connect() as conn:
            txn = await conn.begin()
            await insert_events(conn, topic, [("early", 1, {})], clock.now())
            storing = asyncio.ensure_future(store.store(record))

            async def blocked() -> bool:
                return await _blocked_inserts(pg_engine, topic) == 1

            await until(blocked, "the direct store to wait for the topic lock")
            assert not storing.done()
            await txn.commit()
        await asyncio.wait_for(storing, 2)
        got = await take(receiver, 2)
        assert [e.foreign_id for e in got] == ["early", "late"]
        assert got[0].id < got[1].id
    finally:
        await streamer.close()


async def test_a_streamer_on_another_database_is_refused(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    other = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    await create_schema(other)
    streamer = SQLStreamer(other)
    try:
        with pytest.raises(ValueError, match="same database"):
            SQLRecordStore(sqlite_engine, streamer=streamer)
    finally:
        await streamer.close()
        await other.dispose()


class _S(IntEnum):
    UNKNOWN = 0
    A = 1
    B = 2


class _O(BaseModel):
    n: int = 0


async def test_build_refuses_a_store_that_publishes_to_another_streamer(
    sqlite_engine: AsyncEngine,
) -> None:
    mine, other = SQLStreamer(sqlite_engine), SQLStreamer(sqlite_engine)
    b: Builder[_O, _S] = Builder("direct", _O, _S)

    async def step(run: object) -> _S:
        return _S.B

    b.add_step(_S.A, step, _S.B)
    try:
        store = SQLRecordStore(sqlite_engine, streamer=other)
        with pytest.raises(ValueError, match="same streamer"):
            b.build(mine, store, MemRoleScheduler())
        wf = b.build(other, store, MemRoleScheduler())  # the streamer it publishes to: fine
        assert wf.name == "direct"
    finally:
        await mine.close()
        await other.close()


async def test_store_many_wakes_the_receivers_of_every_topic_it_writes(
    sql_engine: AsyncEngine, streamer: SQLStreamer
) -> None:
    store = SQLRecordStore(sql_engine, streamer=streamer)
    parent = _record("p")
    await store.store(parent)
    moved = dataclasses.replace(parent, status=2, run_state=RunState.RUNNING, meta=Meta(version=2))
    child = dataclasses.replace(
        _record("c"), meta=Meta(version=1, parent_workflow="direct", parent_run_id="p")
    )
    told = make_child_finished_event(dataclasses.replace(child, run_state=RunState.COMPLETED))
    topics = [_topic(moved), _topic(child), told.parts()[2][Header.TOPIC]]
    assert len(set(topics)) == 3
    receivers = [
        await streamer.new_receiver(tp, "reader", stream_from_latest=True) for tp in topics
    ]
    got = [asyncio.ensure_future(take(r, 1)) for r in receivers]
    for r in receivers:
        await waiting(r)  # polls every 30 s: only the store's wake-ups can deliver
    await store.store_many([moved, child], [told])
    (a,), (b,), (c,) = await asyncio.wait_for(asyncio.gather(*got), 2)
    assert (a.foreign_id, a.headers[Header.RECORD_VERSION]) == ("p", "2")
    assert (b.foreign_id, b.headers[Header.RECORD_VERSION]) == ("c", "1")
    assert (c.foreign_id, c.headers[CHILD_RUN_ID]) == ("p", "c")
    assert await _count(sql_engine, outbox) == 0


async def test_store_many_takes_the_lock_of_an_extra_event_topic(
    pg_engine: AsyncEngine, clock: FakeClock
) -> None:
    """PostgreSQL: the topic lock of an extra event (no record of the call publishes there)
    is taken too, so its event id cannot become visible before an earlier writer's."""
    streamer = SQLStreamer(pg_engine, clock=clock, poll_frequency=30)
    store = SQLRecordStore(pg_engine, streamer=streamer)
    child = dataclasses.replace(
        _record("c"), meta=Meta(version=1, parent_workflow="parent", parent_run_id="p")
    )
    told = make_child_finished_event(child)
    topic = told.parts()[2][Header.TOPIC]
    receiver = await streamer.new_receiver(topic, "reader")
    try:
        async with pg_engine.connect() as conn:
            txn = await conn.begin()
            await insert_events(conn, topic, [("early", 1, {})], clock.now())
            storing = asyncio.ensure_future(store.store_many([child], [told]))

            async def blocked() -> bool:
                return await _blocked_inserts(pg_engine, topic) == 1

            await until(blocked, "store_many to wait for the topic lock")
            assert not storing.done()
            await txn.commit()
        await asyncio.wait_for(storing, 2)
        got = await take(receiver, 2)
        assert [e.foreign_id for e in got] == ["early", "p"]
        assert got[0].id < got[1].id
    finally:
        await streamer.close()


async def test_store_many_calls_publishing_to_topics_in_opposite_orders_never_deadlock(
    sql_engine: AsyncEngine, streamer: SQLStreamer
) -> None:
    """One call's record publishes to topic 1 and its extra event to topic 2, another's the
    other way round: every topic lock is taken first, in topic order (PostgreSQL), so both
    are written (a lock-order cycle would make PostgreSQL abort one after a second)."""
    store = SQLRecordStore(sql_engine, streamer=streamer)
    for i in range(5):
        one, two = _record(f"a{i}", status=1), _record(f"b{i}", status=2)
        extra_two = make_outbox_event(_record(f"x{i}", status=2))
        extra_one = make_outbox_event(_record(f"y{i}", status=1))
        await asyncio.gather(
            store.store_many([one], [extra_two]), store.store_many([two], [extra_one])
        )
    assert await _count(sql_engine, events) == 5 * 4


async def test_writes_made_together_publish_exactly_the_accepted_ones(
    sql_engine: AsyncEngine, streamer: SQLStreamer
) -> None:
    """Concurrent stores go to the database together (one statement on PostgreSQL): every
    accepted write's event is published once, in id order per topic; a refused write (a stale
    version, a second unfinished run of a foreign id) publishes nothing."""
    store = SQLRecordStore(sql_engine, streamer=streamer)
    runs = [_record(f"r{i}") for i in range(30)]
    for r in runs:
        await store.store(r)
    moved = [
        dataclasses.replace(r, status=2, run_state=RunState.RUNNING, meta=Meta(version=2))
        for r in runs
    ]
    stale = dataclasses.replace(moved[0], status=3)  # version 2 again, after moved[0]
    second = _record("again", foreign_id=runs[1].foreign_id)
    fresh = [_record(f"n{i}") for i in range(30)]
    topics = {_topic(moved[0]), _topic(fresh[0]), _topic(stale)}
    before = {tp: await stored_ids(sql_engine, tp) for tp in topics}
    receiver = await streamer.new_receiver(_topic(moved[0]), "together")
    results = await asyncio.gather(
        *(store.store(r) for r in [*moved, stale, second, *fresh]), return_exceptions=True
    )
    assert results[: len(moved)] == [None] * len(moved)
    assert isinstance(results[len(moved)], ConcurrentUpdateError)
    assert isinstance(results[len(moved) + 1], WorkflowInProgressError)
    assert results[len(moved) + 2 :] == [None] * len(fresh)
    got = await asyncio.wait_for(take(receiver, 30), 10)
    assert sorted(e.foreign_id for e in got) == sorted(r.run_id for r in runs)
    assert {e.headers[Header.RECORD_VERSION] for e in got} == {"2"}
    added = {
        tp: [i for i in await stored_ids(sql_engine, tp) if i not in before[tp]] for tp in topics
    }
    assert len(added[_topic(moved[0])]) == 30
    assert len(added[_topic(fresh[0])]) == 30  # the fresh runs, not the refused "again"
    assert added[_topic(stale)] == []
    for ids in added.values():
        assert ids == sorted(ids)
    assert await _count(sql_engine, events) == 30 + 30 + 30  # first versions, moves, fresh
    assert (await store.lookup(runs[0].run_id)).meta.version == 2
