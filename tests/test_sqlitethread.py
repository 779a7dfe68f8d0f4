"""SQLite's own threads (adapters/_sqlitethread.py): jobs from the event loop run in the
thread on its connection, errors come back to their caller, an idle thread ends and a new job
starts another, and close() leaves the database file whole (its WAL moved into it)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from workflow.adapters import _sqlitethread
from workflow.adapters._sqlitethread import SQLiteThread
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("workflow-sqlite-test")]


async def test_jobs_run_in_the_thread_and_errors_reach_their_caller(tmp_path: Path) -> None:
    worker = SQLiteThread(str(tmp_path / "a.db"), "FULL", "test")
    try:
        await worker.submit(lambda c: c.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"))

        def insert(i: int) -> asyncio.Future[str]:
            def job(c: sqlite3.Connection) -> str:
                c.execute("INSERT INTO t VALUES (?)", (i,))
                return threading.current_thread().name

            return worker.submit(job)

        names = await asyncio.gather(*(insert(i) for i in range(20)))
        assert set(names) == {"workflow-sqlite-test"}
        with pytest.raises(sqlite3.IntegrityError):
            await worker.submit(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        rows = await worker.submit(lambda c: c.execute("SELECT count(*) FROM t").fetchone())
        assert rows == (20,)
        mode = await worker.submit(lambda c: c.execute("PRAGMA journal_mode").fetchone())
        assert mode == ("wal",)
    finally:
        worker.close()
    assert _threads() == []


async def test_an_idle_thread_ends_and_a_new_job_starts_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlitethread, "IDLE_EXIT", 0.05)
    worker = SQLiteThread(str(tmp_path / "b.db"), "FULL", "test")
    first = await worker.submit(lambda c: threading.current_thread())
    first.join(5)  # ends by itself once idle
    assert not first.is_alive()
    second = await worker.submit(lambda c: threading.current_thread())
    assert second is not first and second.is_alive()
    worker.close()
    assert not second.is_alive()


async def test_closing_the_engine_leaves_the_file_whole(tmp_path: Path) -> None:
    """After dispose(), a copy of the database file alone has every committed run (the
    thread closed its connection, which moved the WAL into the file)."""
    from workflow import Meta, Record, RunState
    from workflow.testing import FakeClock

    path = tmp_path / "c.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    from workflow.adapters.sqlschema import create_schema

    await create_schema(engine)
    store = SQLRecordStore(engine)
    now = FakeClock().now()
    for i in range(10):
        await store.store(
            Record("w", f"f{i}", f"r{i}", RunState.RUNNING, 1, b"{}", now, now, Meta(version=1))
        )
    await engine.dispose()
    copy = tmp_path / "copy.db"
    shutil.copy(path, copy)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM workflow_records").fetchone() == (10,)


async def test_a_file_that_cannot_be_opened_is_said_clearly(tmp_path: Path) -> None:
    def clearer(err: Exception) -> None:
        raise RuntimeError(f"cannot open: {err}")

    worker = SQLiteThread(str(tmp_path / "missing" / "d.db"), "FULL", "test", clearer)
    try:
        with pytest.raises(RuntimeError, match="cannot open"):
            await worker.submit(lambda c: 1)
    finally:
        worker.close()
