"""Several OS processes on one database: shared load, and a worker killed mid-load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Filter, RunState
from workflow.abc import RecordHistory
from workflow.adapters.sqlschema import create_schema, history

from .procs import family_worker as family
from .procs.worker import Status, build, count_done, engine_for

ROOT = Path(__file__).resolve().parent.parent


class Database:
    def __init__(self, url: str, schema: str | None) -> None:
        self.url = url
        self.schema = schema

    def engine(self) -> AsyncEngine:
        return engine_for(self.url, self.schema)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", None)
    engine: AsyncEngine = request.getfixturevalue("pg_engine")  # schema and tables created
    url = engine.url.render_as_string(hide_password=False)
    return Database(url, request.getfixturevalue("pg_schema"))


async def start_worker(db: Database, *extra: str) -> asyncio.subprocess.Process:
    args = [sys.executable, "-m", "tests.procs.worker", "--url", db.url, "--lease", "3.0"]
    if db.schema:
        args += ["--schema", db.schema]
    proc = await asyncio.create_subprocess_exec(
        *args, *extra, cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ}
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


async def wait_until_done(engine: AsyncEngine, n: int, timeout: float) -> None:
    """Poll the shared database (other processes do the work; there is no in-process
    signal to wait on)."""
    deadline = time.monotonic() + timeout
    while (done := await count_done(engine)) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {done} of {n} runs completed in {timeout}s")
        await asyncio.sleep(0.1)


async def check_each_transition_once(engine: AsyncEngine, n: int) -> None:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    history.c.run_id, history.c.version, history.c.status, history.c.object
                ).order_by(history.c.run_id, history.c.version)
            )
        ).all()
    by_run: dict[str, list[tuple[int, int, bytes]]] = {}
    for run_id, version, status, obj in rows:
        by_run.setdefault(run_id, []).append((version, status, obj))
    assert len(by_run) == n
    for run_id, versions in by_run.items():
        assert [v for v, _, _ in versions] == [1, 2, 3, 4], run_id
        assert [s for _, s, _ in versions] == [1, 2, 3, 4], run_id
        final = json.loads(versions[-1][2])
        assert final["steps"] == ["charge", "ship", "done"], (run_id, final)


async def trigger(db: Database, n: int) -> AsyncEngine:
    engine = db.engine()
    await create_schema(engine)  # idempotent: SQLite starts empty
    wf, streamer, roles = build(engine, registry=CollectorRegistry())
    for i in range(n):
        await wf.trigger(f"order-{i}")  # a producer-only process: never calls run()
    await streamer.close()
    await roles.close()
    return engine


@pytest.mark.parametrize("events", ["outbox", "direct"])
async def test_two_processes_share_one_database(database: Database, events: str) -> None:
    """2,000 runs over two worker processes, with the outbox relay or with each store
    appending its event to the streamer's table itself (``--direct``)."""
    n = 2000
    setup = database.engine()
    await create_schema(setup)
    await setup.dispose()
    extra = ["--parallel", "2"] + (["--direct"] if events == "direct" else [])
    workers = [await start_worker(database, *extra) for _ in range(2)]
    try:
        engine = await trigger(database, n)
        await wait_until_done(engine, n, timeout=120)
        await check_each_transition_once(engine, n)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert await asyncio.wait_for(w.wait(), 30) == 0
    await engine.dispose()


async def test_a_killed_worker_is_replaced_and_every_run_finishes(database: Database) -> None:
    n = 1000
    setup = database.engine()
    await create_schema(setup)
    await setup.dispose()
    first = await start_worker(database, "--direct")
    engine = await trigger(database, n)
    deadline = time.monotonic() + 60
    while await count_done(engine) < n // 5:
        assert time.monotonic() < deadline, "the first worker made no progress"
        await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-load, no clean-up at all
    await first.wait()
    assert await count_done(engine) < n, "the load finished before the kill; raise n"
    second = await start_worker(database, "--direct")
    try:
        await wait_until_done(engine, n, timeout=120)
        await check_each_transition_once(engine, n)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
    await engine.dispose()


_ = Status  # re-exported for readers of this module


async def start_family_worker(db: Database, *extra: str) -> asyncio.subprocess.Process:
    args = [sys.executable, "-m", "tests.procs.family_worker", "--url", db.url, *extra]
    if db.schema:
        args += ["--schema", db.schema]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ}
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


async def test_a_worker_killed_between_parents_and_children_loses_and_doubles_no_child(
    database: Database,
) -> None:
    """The first worker runs only the parents' steps, each starting its children in its
    transition, and is SIGKILLed when half the parents moved (some mid-transition, no child
    stepped yet); a second worker finishes everything. Every parent has exactly its
    children, each stepped once, and every transition was applied once."""
    n = 120
    engine = database.engine()
    await create_schema(engine)
    first = await start_family_worker(database, "--hold-children")
    parents, _children, closers = family.build(engine, CollectorRegistry())
    store = parents._engine.store
    for i in range(n):
        await parents.trigger(f"family-{i}")  # a producer-only process: never calls run()

    async def at(status: int) -> int:
        runs = await store.list("family", 0, 10 * n, "asc", Filter.by_status(status))
        return len(runs)

    deadline = time.monotonic() + 60
    while await at(family.Family.WAITING) < n // 2:
        assert time.monotonic() < deadline, "the first worker made no progress"
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    members = await store.list("member", 0, 10 * n * family.CHILDREN)
    assert members and all(m.meta.version == 1 for m in members)  # none stepped yet
    second = await start_family_worker(database)
    try:
        deadline = time.monotonic() + 120
        while await at(family.Family.DONE) < n:
            assert time.monotonic() < deadline, f"only {await at(family.Family.DONE)} of {n}"
            await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
    assert isinstance(store, RecordHistory)
    members = await store.list("member", 0, 10 * n * family.CHILDREN)
    assert len(members) == n * family.CHILDREN  # none twice
    for parent in await store.list("family", 0, 10 * n):
        history = await store.history(parent.run_id)
        assert [(r.meta.version, r.status) for r in history] == [(1, 1), (2, 2), (3, 3)]
        kids = await store.list("member", 0, 100, "asc", Filter.by_parent(parent.run_id))
        obj = json.loads(parent.object)
        assert [k.run_id for k in kids] == obj["children"] == obj["seen"]  # none lost
        for k in kids:
            assert k.run_state is RunState.COMPLETED and json.loads(k.object)["stepped"] == 1
            assert [r.meta.version for r in await store.history(k.run_id)] == [1, 2]
    for c in closers:
        await c.close()
    await engine.dispose()
