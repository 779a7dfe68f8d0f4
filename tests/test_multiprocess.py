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

from workflow.adapters.sqlschema import create_schema, history

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
