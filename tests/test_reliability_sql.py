"""Reliability of the SQL adapters: plain ``create_async_engine`` engines, an unreachable
database, an unusable SQLite directory, strings no database can store, a damaged schema and
cancelled callers. Each on SQLite and PostgreSQL where it applies."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflow import (
    Builder,
    Filter,
    Meta,
    NonRetryableError,
    ProcessOptions,
    Record,
    RecordNotFoundError,
    Run,
    RunState,
)
from workflow.adapters import _fastsql
from workflow.adapters._schemacheck import SCHEMA_REVISION
from workflow.adapters._sqlsetup import DatabaseFileError, SchemaError
from workflow.adapters.adaptertest import (
    run_event_streamer_test,
    run_record_store_test,
    run_role_scheduler_test,
    run_timeout_store_test,
)
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import create_schema, drop_schema, make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer
from workflow.adapters.sqltimeout import SQLTimeoutStore
from workflow.testing import FakeClock, wait_for

from .backends import Backend
from .conftest import _need_postgres
from .support import Obj, Status
from .test_migrations import _config

# -- 3. an engine from plain create_async_engine -----------------------------------------


@pytest.fixture
async def plain_sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """SQLite from plain ``create_async_engine`` (not ``make_engine``), with a connection
    opened before any adapter sees the engine."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
    await create_schema(engine)
    yield engine
    await engine.dispose()


async def _cursor(engine: AsyncEngine, topic: str, name: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT position FROM workflow_cursors WHERE topic = :t AND name = :n"),
            {"t": topic, "n": name},
        )
        return int(found.scalar_one())


async def test_plain_sqlite_engine_stores_cursors_so_a_restart_delivers_nothing_again(
    tmp_path: Path, plain_sqlite: AsyncEngine
) -> None:
    streamer = SQLStreamer(plain_sqlite)
    sender = await streamer.new_sender("topic")
    await sender.send_many([(f"f{i}", 1, {}) for i in range(3)])
    receiver = await streamer.new_receiver("topic", "hook")
    for _ in range(3):
        _, ack = await receiver.recv()
        await ack()
    await streamer.close()
    assert await streamer.prune() == 2  # everything the cursor passed but the newest row
    await plain_sqlite.dispose()

    # "after a restart": a new plain engine on the same file
    again = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    try:
        assert await _cursor(again, "topic", "hook") == 3
        restarted = SQLStreamer(again)
        await (await restarted.new_sender("topic")).send("f3", 1, {})
        receiver = await restarted.new_receiver("topic", "hook")
        event, _ = await receiver.recv()
        assert event.foreign_id == "f3"  # nothing of before the restart again
        await restarted.close()
    finally:
        await again.dispose()


async def test_plain_sqlite_engine_passes_every_conformance_suite(
    plain_sqlite: AsyncEngine, clock: FakeClock
) -> None:
    async def empty() -> AsyncEngine:
        await drop_schema(plain_sqlite)
        await create_schema(plain_sqlite)
        return plain_sqlite

    streamers: list[SQLStreamer] = []

    async def streamer() -> SQLStreamer:
        made = SQLStreamer(await empty(), poll_frequency=0.05)
        streamers.append(made)
        return made

    async def roles(n: int) -> list[Any]:
        engine = await empty()
        return [SQLRoleScheduler(engine, lease=2) for _ in range(n)]

    try:
        await run_event_streamer_test(streamer)
        await run_record_store_test(lambda: _store(empty))
        await run_timeout_store_test(lambda: _timeouts(empty, clock))
        await run_role_scheduler_test(roles)
    finally:
        for s in streamers:
            await s.close()


async def _store(empty: Any) -> SQLRecordStore:
    return SQLRecordStore(await empty())


async def _timeouts(empty: Any, clock: FakeClock) -> SQLTimeoutStore:
    return SQLTimeoutStore(await empty(), clock=clock)


# -- 11. the database is down at start ---------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there any more


def _count(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


async def test_an_unreachable_database_is_said_once_and_retried_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _need_postgres()
    caplog.set_level(logging.INFO)
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/x")
    roles = SQLRoleScheduler(engine, poll_interval=0.01)
    try:
        for _ in range(40):  # every process of a workflow retries its role like this
            with pytest.raises(OSError):
                await roles.await_role(f"role-{random.randrange(4)}")
        await roles.close()
    finally:
        await engine.dispose()
    assert _count(caplog, "cannot reach the database") == 1
    assert f"127.0.0.1:{engine.url.port}" in caplog.text
    assert _count(caplog, "could not delete lease row") == 0  # nothing was sent
    adapters = [r for r in caplog.records if r.name.startswith("adapters")]
    assert len(adapters) == 1, [r.getMessage() for r in adapters]


async def test_a_workflow_on_an_unreachable_database_says_so_once(
    caplog: pytest.LogCaptureFixture, registry: CollectorRegistry
) -> None:
    _need_postgres()
    caplog.set_level(logging.INFO)
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/x")
    attempts = 0
    enough = asyncio.Event()

    class Counting(SQLRoleScheduler):
        async def _acquire(self, role: str, token: int) -> bool:
            nonlocal attempts
            attempts += 1
            if attempts >= 30:
                enough.set()
            return await super()._acquire(role, token)

    b = Builder[Obj, Status]("down")
    b.add_step(Status.STARTED, _to_middle, Status.MIDDLE)
    streamer = SQLStreamer(engine)
    roles = Counting(engine, poll_interval=0.01)
    wf = b.build(
        streamer,
        SQLRecordStore(engine, streamer=streamer),
        roles,
        metrics_registry=registry,  # the real clock: the processes' backoff must pass
        timeout_store=SQLTimeoutStore(engine),
        default_options=ProcessOptions(err_backoff=timedelta(milliseconds=1)),
    )
    try:
        await wf.run()
        await asyncio.wait_for(enough.wait(), 30)
        await wf.stop()
        await roles.close()
        await streamer.close()
    finally:
        await engine.dispose()
    assert _count(caplog, "cannot reach the database") == 1
    assert _count(caplog, "could not delete lease row") == 0
    assert len([r for r in caplog.records if r.name.startswith("adapters")]) == 1


async def _to_middle(run: Run[Obj, Status]) -> Status:
    return Status.MIDDLE


async def test_a_failing_lease_clean_up_is_logged_once_per_30_s(
    sqlite_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(SQLRoleScheduler):
        async def _delete(self, role: str, token: int) -> None:
            raise RuntimeError("the database refused")

    roles = Failing(sqlite_engine)
    for i in range(20):
        lease = await roles.await_role(f"r{i}")
        await lease.release()
    await roles.close()
    assert _count(caplog, "could not delete lease row") == 1


# -- 12. SQLite in a directory it cannot write -------------------------------------------


@pytest.fixture
async def failed_connects_end() -> AsyncIterator[None]:
    """Wait for the threads of aiosqlite connections that failed to open: aiosqlite stops
    such a thread without waiting, and a thread that outlives the test's event loop fails
    posting its last result to it."""
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 10)


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory even root cannot create files in (``chattr +i``), holding a WAL
    database made before it became immutable."""
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    directory = tmp_path / "ro"
    directory.mkdir()

    async def make() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{directory / 'wf.db'}")
        await create_schema(engine)
        await engine.dispose()

    asyncio.run(make())
    for side in ("wf.db-wal", "wf.db-shm"):
        (directory / side).unlink(missing_ok=True)
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.mark.parametrize("maker", ["make_engine", "create_async_engine"])
@pytest.mark.usefixtures("failed_connects_end")
async def test_sqlite_in_a_read_only_directory_names_the_directory(
    immutable_dir: Path, maker: str
) -> None:
    assert not os.access(immutable_dir, os.W_OK)  # genuinely read-only, even for root
    path = immutable_dir / "wf.db"
    url = f"sqlite+aiosqlite:///{path}"
    engine = make_engine(url) if maker == "make_engine" else create_async_engine(url)
    try:
        store = SQLRecordStore(engine)
        with pytest.raises(DatabaseFileError) as caught:
            await store.lookup("some-run")
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert str(path) in message and f"{immutable_dir} is not writable" in message
    assert "wf.db-wal" in message


@pytest.mark.usefixtures("failed_connects_end")
async def test_sqlite_under_a_regular_file_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    engine = make_engine(f"sqlite+aiosqlite:///{blocker / 'wf.db'}")
    try:
        with pytest.raises(DatabaseFileError, match=f"{blocker} is a file, not a directory"):
            await create_schema(engine)
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("failed_connects_end")
async def test_sqlite_in_a_missing_directory_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "deeper"
    engine = create_async_engine(f"sqlite+aiosqlite:///{missing / 'wf.db'}")
    try:
        with pytest.raises(DatabaseFileError, match=f"its directory {missing} does not exist"):
            await SQLTimeoutStore(engine).list("wf")
    finally:
        await engine.dispose()


# -- 13. strings no back end can store ---------------------------------------------------

SURROGATE = "a\ud800b"


def _backend_workflow(backend: Backend, **steps: Any) -> Any:
    b = Builder[Obj, Status]("texts")
    b.add_step(Status.STARTED, steps.get("step", _to_middle), Status.MIDDLE)
    return backend.build(b)


async def test_lone_surrogates_are_refused_alike_on_every_backend(backend: Backend) -> None:
    wf = _backend_workflow(backend)
    with pytest.raises(ValueError, match="foreign_id must be valid Unicode") as caught:
        await wf.trigger(SURROGATE)
    assert not isinstance(caught.value, UnicodeError)
    with pytest.raises(ValueError, match="lone surrogate"):
        wf.schedule(SURROGATE, "@every 1h")
    with pytest.raises(ValueError):  # inside the object: refused before any store
        await wf.trigger("ok", initial_value=Obj(note=SURROGATE))
    rid = await wf.trigger("ok")
    for verb in (wf.pause, wf.cancel):
        with pytest.raises(ValueError, match="reason must be valid Unicode"):
            await verb(rid, reason=SURROGATE)
    with pytest.raises(ValueError, match="reason must not contain NUL"):
        await wf.pause(rid, reason="a\x00b")
    assert (await wf.lookup(rid)).run_state is RunState.INITIATED  # nothing was written
    with pytest.raises(RecordNotFoundError):
        await wf.lookup(SURROGATE)
    with pytest.raises(RecordNotFoundError):
        await wf.latest(SURROGATE)
    assert await wf._engine.store.list("texts", 0, 10, "asc", Filter.by_foreign_id(SURROGATE)) == []
    with pytest.raises(ValueError, match="workflow name must be valid Unicode"):
        Builder[Obj, Status](f"wf-{SURROGATE}")


async def test_an_error_text_with_a_surrogate_still_pauses_the_run(backend: Backend) -> None:
    async def fails(run: Run[Obj, Status]) -> Status:
        raise NonRetryableError(f"bad input {SURROGATE}\x00")

    wf = _backend_workflow(backend, step=fails)
    async with wf:
        await wf.trigger("f")
        paused = await wait_for(wf, "f", lambda r: r.run_state is RunState.PAUSED)
    assert paused.meta.run_state_reason == "bad input a\ufffdb\ufffd"


# -- 14. a schema that is not the adapters' -----------------------------------------------


async def _execute(engine: AsyncEngine, sql: str) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(sql)


async def test_a_schema_without_the_unique_index_is_refused(sql_engine: AsyncEngine) -> None:
    await _execute(sql_engine, "DROP INDEX uq_workflow_records_unfinished")
    store = SQLRecordStore(sql_engine)
    b = Builder[Obj, Status]("idx")
    b.add_step(Status.STARTED, _to_middle, Status.MIDDLE)
    wf = b.build(SQLStreamer(sql_engine), store, SQLRoleScheduler(sql_engine))
    for _ in range(2):  # refused every time, never a run
        with pytest.raises(SchemaError) as caught:
            await wf.trigger("same")
    message = str(caught.value)
    assert "index uq_workflow_records_unfinished on workflow_records is missing" in message
    assert "alembic upgrade head" in message and SCHEMA_REVISION in message
    assert "CREATE UNIQUE INDEX uq_workflow_records_unfinished" in message
    with pytest.raises(RecordNotFoundError):
        await wf.latest("same")

    # re-created as the message says: accepted at the next use
    await _execute(sql_engine, message.rsplit("re-created with: ", 1)[1])
    await wf.trigger("same")
    await wf._engine.streamer.close()  # type: ignore[attr-defined]


async def test_a_non_unique_index_is_refused(sql_engine: AsyncEngine) -> None:
    await _execute(sql_engine, "DROP INDEX uq_workflow_records_unfinished")
    await _execute(
        sql_engine,
        "CREATE INDEX uq_workflow_records_unfinished ON workflow_records (foreign_key)",
    )
    with pytest.raises(SchemaError, match="is not UNIQUE"):
        await SQLTimeoutStore(sql_engine).create("wf", "f", "r", 1, datetime.now(UTC))


async def test_a_database_without_the_failure_handling_columns_is_refused(
    sql_engine: AsyncEngine,
) -> None:
    """A database at migration 0001 (no attempt, retry_at ... columns) is refused with the
    migration to apply, before any write, instead of failing each write."""
    await _execute(sql_engine, "ALTER TABLE workflow_record_history DROP COLUMN paused_by")
    with pytest.raises(SchemaError, match=r"column workflow_record_history\.paused_by is missing"):
        await SQLRecordStore(sql_engine).store(
            Record(
                workflow_name="wf",
                foreign_id="f",
                run_id=str(uuid.uuid4()),
                run_state=RunState.INITIATED,
                status=1,
                object=b"{}",
                created_at=datetime.now(UTC),
                updated_at=datetime.now(UTC),
                meta=Meta(version=1),
            )
        )


async def test_a_missing_table_is_refused(sql_engine: AsyncEngine) -> None:
    await _execute(sql_engine, "DROP TABLE workflow_events")
    streamer = SQLStreamer(sql_engine)
    with pytest.raises(SchemaError, match="table workflow_events is missing"):
        await streamer.new_sender("t")
    with pytest.raises(SchemaError, match="table workflow_events is missing"):
        await SQLRoleScheduler(sql_engine).await_role("r")
    await streamer.close()


Engines = Callable[[], AsyncEngine]


@pytest.fixture(params=["sqlite", "postgres"])
async def alembic_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engines]:
    """A database whose tables were made by ``alembic upgrade head``: a maker of engines on
    it (each a new process's engine)."""
    made: list[AsyncEngine] = []
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'alembic.db'}"
        kwargs: dict[str, Any] = {}
        schema = None
    else:
        url = _need_postgres()
        schema = f"t_{uuid.uuid4().hex[:16]}"
        kwargs = {"connect_args": {"server_settings": {"search_path": schema}}}
        admin = create_async_engine(url)
        await _execute(admin, f"CREATE SCHEMA {schema}")

    def engine() -> AsyncEngine:
        made.append(create_async_engine(url, **kwargs))
        return made[-1]

    try:
        async with engine().begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_config(c, schema=schema), "head"))
        yield engine
    finally:
        for e in made:
            await e.dispose()
        if schema is not None:
            await _execute(admin, f"DROP SCHEMA {schema} CASCADE")
            await admin.dispose()


async def test_schemas_made_by_alembic_pass_the_check_and_fail_it_once_damaged(
    alembic_db: Engines,
) -> None:
    assert ScriptDirectory.from_config(_config()).get_current_head() == SCHEMA_REVISION
    engine = alembic_db()
    b = Builder[Obj, Status]("ok")
    b.add_step(Status.STARTED, _to_middle, Status.MIDDLE)
    wf = b.build(SQLStreamer(engine), SQLRecordStore(engine), MemRoleScheduler())
    rid = await wf.trigger("f")  # checked, and accepted
    assert (await wf.lookup(rid)).run_state is RunState.INITIATED
    await wf._engine.streamer.close()  # type: ignore[attr-defined]

    await _execute(engine, "DROP INDEX uq_workflow_records_unfinished")
    # a new process (a new engine) on the damaged database refuses it
    with pytest.raises(SchemaError, match=f"alembic revision {SCHEMA_REVISION}"):
        await SQLRecordStore(alembic_db()).store(_record())


def _record() -> Record:
    now = datetime.now(UTC)
    return Record(
        workflow_name="ok",
        foreign_id="g",
        run_id=str(uuid.uuid4()),
        run_state=RunState.INITIATED,
        status=1,
        object=b"{}",
        created_at=now,
        updated_at=now,
        meta=Meta(version=1),
    )


# -- 15. cancelled callers ----------------------------------------------------------------


async def test_cancelled_triggers_log_no_errors_and_leak_no_connections(
    pg_engine: AsyncEngine, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    sql_engine = pg_engine  # SQLite writes go through the group writer, never interrupted
    caplog.set_level(logging.WARNING)
    rng = random.Random(15)
    streamer = SQLStreamer(sql_engine)
    for direct in (False, True):
        b = Builder[Obj, Status]("cancel")
        b.add_step(Status.STARTED, _to_middle, Status.MIDDLE)
        store = SQLRecordStore(sql_engine, streamer=streamer if direct else None)
        wf = b.build(streamer, store, SQLRoleScheduler(sql_engine), clock=clock)
        for round_ in range(12):
            triggers = [
                asyncio.ensure_future(wf.trigger(f"{direct}-{round_}-{i}")) for i in range(20)
            ]
            await asyncio.sleep(rng.random() * 0.03)  # a random point of their progress
            for t in triggers:
                t.cancel()
            await asyncio.gather(*triggers, return_exceptions=True)
    await _fastsql.returned()
    pool = sql_engine.sync_engine.pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    # the pool still works: every connection in it is usable
    await asyncio.gather(*(wf.trigger(f"after-{i}") for i in range(10)))
    await streamer.close()
    await _fastsql.returned()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, [f"{r.name}: {r.getMessage()[:200]}" for r in problems]
