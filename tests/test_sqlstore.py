"""SQLRecordStore: the record-store conformance suite and SQL specifics, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import (
    ConcurrentUpdateError,
    Meta,
    Record,
    RecordNotFoundError,
    RunState,
    WorkflowInProgressError,
)
from workflow.adapters._sqlengine import shared
from workflow.adapters.adaptertest import run_record_store_test
from workflow.adapters.sqlschema import history, outbox, records
from workflow.adapters.sqlstore import SQLRecordStore


async def _empty(engine: AsyncEngine, batch_limit: int = 64) -> SQLRecordStore:
    async with engine.begin() as conn:
        for table in (outbox, history, records):
            await conn.execute(table.delete())
    return SQLRecordStore(engine, batch_limit=batch_limit)


@pytest.mark.parametrize("batch_limit", [64, 1], ids=["batched", "unbatched"])
async def test_conformance(sql_engine: AsyncEngine, batch_limit: int) -> None:
    await run_record_store_test(lambda: _empty(sql_engine, batch_limit))


def _record(foreign_id: str, run_id: str, obj: bytes = b'{"a":1}') -> Record:
    now = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    return Record(
        workflow_name="wf",
        foreign_id=foreign_id,
        run_id=run_id,
        run_state=RunState.INITIATED,
        status=1,
        object=obj,
        created_at=now,
        updated_at=now,
        meta=Meta(status_description="STARTED", version=1, trace_origin="here.py:1"),
    )


async def test_concurrent_inserts_for_one_foreign_id_give_one_run(sql_engine: AsyncEngine) -> None:
    store = SQLRecordStore(sql_engine)
    results = await asyncio.gather(
        *(store.store(_record("same", f"run-{i}")) for i in range(20)), return_exceptions=True
    )
    ok = [r for r in results if r is None]
    assert len(ok) == 1
    assert all(isinstance(r, WorkflowInProgressError) for r in results if r is not None)
    async with sql_engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(records))).scalar() == 1
        assert (await conn.execute(sa.select(sa.func.count()).select_from(outbox))).scalar() == 1


@pytest.mark.parametrize(
    "foreign_id", ["ünïcødé-✓", "x" * 10_000, "'; DROP TABLE workflow_records; --", "%_\\"]
)
async def test_hostile_foreign_ids(sql_engine: AsyncEngine, foreign_id: str) -> None:
    store = SQLRecordStore(sql_engine)
    await store.store(_record(foreign_id, "r1"))
    got = await store.latest("wf", foreign_id)
    assert got.foreign_id == foreign_id and got.run_id == "r1"


async def test_objects_are_queryable_json(sql_engine: AsyncEngine) -> None:
    store = SQLRecordStore(sql_engine)
    await store.store(_record("q", "r1", b'{"email": "a@b.c", "n": 3}'))
    got = await store.lookup("r1")
    assert json.loads(got.object) == {"email": "a@b.c", "n": 3}
    if sql_engine.dialect.name == "postgresql":
        async with sql_engine.connect() as conn:
            email = await conn.scalar(sa.text("SELECT object->>'email' FROM workflow_records"))
        assert email == "a@b.c"
    else:
        async with sql_engine.connect() as conn:
            email = await conn.scalar(
                sa.text("SELECT json_extract(object, '$.email') FROM workflow_records")
            )
        assert email == "a@b.c"


async def test_history_keeps_every_version(sql_engine: AsyncEngine) -> None:
    from dataclasses import replace

    store = SQLRecordStore(sql_engine)
    v1 = _record("h", "r1")
    await store.store(v1)
    v2 = replace(v1, run_state=RunState.RUNNING, status=2, meta=replace(v1.meta, version=2))
    await store.store(v2)
    got = await store.history("r1")
    assert [(r.meta.version, r.status, r.run_state) for r in got] == [
        (1, 1, RunState.INITIATED),
        (2, 2, RunState.RUNNING),
    ]
    assert got[0].created_at == v1.created_at and got[0].meta.trace_origin == "here.py:1"


async def _count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_concurrent_stores_are_applied_or_refused_each_on_its_own(
    sql_engine: AsyncEngine,
) -> None:
    """On SQLite concurrent stores are committed together (one transaction, a savepoint
    each): a refused one must not take the others with it, nor leave anything behind."""
    from dataclasses import replace

    store = SQLRecordStore(sql_engine)
    first = [_record(f"f{i}", f"r{i}") for i in range(12)]
    await asyncio.gather(*(store.store(r) for r in first))
    writes = [
        store.store(
            replace(r, run_state=RunState.RUNNING, status=2, meta=Meta(version=3 if i % 3 else 2))
        )
        for i, r in enumerate(first)
    ]
    writes.append(store.store(_record("f1", "another")))  # f1 has an unfinished run
    results = await asyncio.gather(*writes, return_exceptions=True)
    for i, result in enumerate(results[:12]):
        got = await store.lookup(f"r{i}")
        if i % 3:
            assert isinstance(result, ConcurrentUpdateError), result
            assert (got.meta.version, got.status) == (1, 1)
            assert [h.meta.version for h in await store.history(f"r{i}")] == [1]
        else:
            assert result is None
            assert (got.meta.version, got.status) == (2, 2)
    assert isinstance(results[12], WorkflowInProgressError)
    assert await _count(sql_engine, records) == 12
    assert await _count(sql_engine, outbox) == 12 + 4  # the first versions + the 4 applied


async def test_a_store_cancelled_before_it_is_written_writes_nothing(
    sqlite_engine: AsyncEngine,
) -> None:
    store = SQLRecordStore(sqlite_engine)
    lock = shared(sqlite_engine).writer().lock
    await lock.acquire()  # the group writer takes the first store, then waits for the lock
    first = asyncio.ensure_future(store.store(_record("a", "ra")))
    for _ in range(5):
        await asyncio.sleep(0)
    second = asyncio.ensure_future(store.store(_record("b", "rb")))  # queued behind it
    for _ in range(5):
        await asyncio.sleep(0)
    second.cancel()
    lock.release()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert (await store.lookup("ra")).run_id == "ra"
    with pytest.raises(RecordNotFoundError):
        await store.lookup("rb")
    assert await _count(sqlite_engine, outbox) == 1


# -- store_many ------------------------------------------------------------------------------


async def test_store_many_of_runs_in_opposite_orders_never_deadlocks(
    sql_engine: AsyncEngine,
) -> None:
    """Two calls updating the same runs, listed in opposite orders, at once: the rows are
    locked in one order (PostgreSQL), so one call wins and the other is stale, never a
    deadlock (which PostgreSQL would break after a second with another error)."""
    from dataclasses import replace

    store = SQLRecordStore(sql_engine)
    for round_ in range(5):
        runs = [_record(f"o{round_}-{i}", f"o{round_}-{i}") for i in range(4)]
        await store.store_many(runs)
        nxt = [replace(r, run_state=RunState.RUNNING, status=2, meta=Meta(version=2)) for r in runs]
        results = await asyncio.gather(
            store.store_many(nxt), store.store_many(nxt[::-1]), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["ConcurrentUpdateError", "NoneType"]
        assert {(await store.lookup(r.run_id)).meta.version for r in runs} == {2}


async def test_store_many_alongside_stores_is_applied_or_refused_as_a_whole(
    sql_engine: AsyncEngine,
) -> None:
    """Concurrent single stores and store_many calls (committed together on SQLite, a
    savepoint each): a refused store_many leaves nothing, and takes nothing else with it."""
    from dataclasses import replace

    store = SQLRecordStore(sql_engine)
    first = [_record(f"m{i}", f"m{i}") for i in range(6)]
    await asyncio.gather(*(store.store(r) for r in first))

    def at(r: Record, version: int) -> Record:
        return replace(r, run_state=RunState.RUNNING, status=version, meta=Meta(version=version))

    writes = [
        store.store_many([at(first[0], 2), at(first[1], 2)]),  # applied
        store.store_many([at(first[2], 2), at(first[3], 3)]),  # refused: m3 is at version 1
        store.store(at(first[4], 2)),
        store.store_many([_record("new", "n1"), _record("new", "n2")]),  # refused: one fid
        store.store(at(first[5], 2)),
    ]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert results[0] is None and results[2] is None and results[4] is None
    assert isinstance(results[1], ConcurrentUpdateError) and "m3" in str(results[1])
    assert isinstance(results[3], WorkflowInProgressError)
    versions = {r.run_id: (await store.lookup(r.run_id)).meta.version for r in first}
    assert versions == {"m0": 2, "m1": 2, "m2": 1, "m3": 1, "m4": 2, "m5": 2}
    for run_id in ("n1", "n2"):
        with pytest.raises(RecordNotFoundError):
            await store.lookup(run_id)
    assert await _count(sql_engine, outbox) == 6 + 4
    assert await _count(sql_engine, history) == 6 + 4


async def test_a_cancelled_store_many_is_written_or_not_as_a_whole(
    sql_engine: AsyncEngine,
) -> None:
    from workflow.adapters._fastsql import returned

    store = SQLRecordStore(sql_engine)
    await store.store(_record("warm", "warm"))  # the schema check is behind us
    for i in range(20):
        runs = [_record(f"c{i}-{j}", f"c{i}-{j}") for j in range(3)]
        call = asyncio.ensure_future(store.store_many(runs))
        for _ in range(i % 5):
            await asyncio.sleep(0)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await returned()
        found = [r.run_id for r in await store.list("wf", 0, 100) if r.run_id.startswith(f"c{i}-")]
        assert found in ([], [r.run_id for r in runs])
