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
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.sqlschema import create_schema, events, make_engine, outbox
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
