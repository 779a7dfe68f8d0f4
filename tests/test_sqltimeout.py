"""SQLTimeoutStore on SQLite and PostgreSQL: the conformance suite, precision, time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import TimeoutStore
from workflow.adapters.adaptertest import run_timeout_store_test
from workflow.adapters.sqlschema import timeouts
from workflow.adapters.sqltimeout import SQLTimeoutStore
from workflow.testing import FakeClock

NOW = datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=UTC)
PLUS5 = timezone(timedelta(hours=5, minutes=30))


async def test_passes_the_conformance_suite(sql_engine: AsyncEngine) -> None:
    async def fresh() -> SQLTimeoutStore:
        async with sql_engine.begin() as conn:
            await conn.execute(sa.delete(timeouts))
        return SQLTimeoutStore(sql_engine)

    await run_timeout_store_test(fresh)


async def test_is_a_timeout_store(sql_engine: AsyncEngine) -> None:
    assert isinstance(SQLTimeoutStore(sql_engine), TimeoutStore)


async def test_created_at_comes_from_the_clock(sql_engine: AsyncEngine, clock: FakeClock) -> None:
    store = SQLTimeoutStore(sql_engine, clock=clock)
    clock.step(timedelta(microseconds=7))
    tid = await store.create("wf", "fid", "run", 2, NOW, index=3)
    [t] = await store.list("wf")
    assert t.id == tid
    assert t.created_at == clock.now()
    assert t.created_at.utcoffset() == timedelta(0)
    assert (t.workflow_name, t.foreign_id, t.run_id, t.status, t.index) == (
        "wf",
        "fid",
        "run",
        2,
        3,
    )
    assert t.completed is False


@pytest.mark.parametrize("micro", [0, 1, 999_999, 654_321])
async def test_expire_at_round_trips_to_the_microsecond(
    sql_engine: AsyncEngine, micro: int
) -> None:
    store = SQLTimeoutStore(sql_engine)
    at = NOW.replace(microsecond=micro)
    await store.create("wf", "fid", "run", 2, at)
    [t] = await store.list("wf")
    assert t.expire_at == at
    assert t.expire_at.microsecond == micro
    assert t.expire_at.tzinfo is not None and t.expire_at.utcoffset() == timedelta(0)


async def test_list_valid_compares_to_the_microsecond(sql_engine: AsyncEngine) -> None:
    store = SQLTimeoutStore(sql_engine)
    tid = await store.create("wf", "fid", "run", 2, NOW)
    tick = timedelta(microseconds=1)
    assert await store.list_valid("wf", 2, NOW - tick) == []
    assert [t.id for t in await store.list_valid("wf", 2, NOW)] == [tid]
    assert [t.id for t in await store.list_valid("wf", 2, NOW + tick)] == [tid]


async def test_other_time_zones_are_stored_as_the_same_instant(sql_engine: AsyncEngine) -> None:
    store = SQLTimeoutStore(sql_engine)
    local = NOW.astimezone(PLUS5)
    tid = await store.create("wf", "fid", "run", 2, local)
    [t] = await store.list("wf")
    assert t.expire_at == NOW  # the same instant ...
    assert t.expire_at.utcoffset() == timedelta(0)  # ... returned as UTC
    # `now` in another zone is compared as an instant too
    tick = timedelta(microseconds=1)
    assert await store.list_valid("wf", 2, (NOW - tick).astimezone(PLUS5)) == []
    assert [t.id for t in await store.list_valid("wf", 2, local)] == [tid]


async def test_naive_times_are_rejected(sql_engine: AsyncEngine) -> None:
    store = SQLTimeoutStore(sql_engine)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.create("wf", "fid", "run", 2, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.list_valid("wf", 2, NOW.replace(tzinfo=None))
    assert await store.list("wf") == []


async def test_timers_survive_a_new_store_and_engine_object(sql_engine: AsyncEngine) -> None:
    first = SQLTimeoutStore(sql_engine)
    a = await first.create("wf", "a", "run-a", 2, NOW)
    b = await first.create("wf", "b", "run-b", 2, NOW + timedelta(hours=1))
    await first.complete(a)
    again = SQLTimeoutStore(sql_engine)
    assert [t.id for t in await again.list("wf")] == [b]
    assert [t.id for t in await again.list_valid("wf", 2, NOW + timedelta(hours=2))] == [b]
    async with sql_engine.connect() as conn:
        completed = (
            await conn.execute(sa.select(timeouts.c.completed).where(timeouts.c.id == a))
        ).scalar_one()
    assert completed  # complete keeps the row, marked completed
