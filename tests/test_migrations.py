"""The alembic migrations in ``migrations/`` create exactly the tables of
``workflow.adapters.sqlschema`` (what ``create_schema`` creates), on SQLite and on PostgreSQL, and
``downgrade base`` removes them again."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflow import Filter, Meta, Record, RunState
from workflow.adapters._sqlsetup import SchemaError
from workflow.adapters.sqlschema import create_schema, foreign_key, make_engine, metadata
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqltimeout import SQLTimeoutStore

from .conftest import _need_postgres

ROOT = Path(__file__).resolve().parents[1]
TABLES = frozenset(metadata.tables)
HEAD = "0004"
UNFINISHED = (RunState.INITIATED, RunState.RUNNING, RunState.PAUSED)


def _config(
    connection: Connection | None = None, *, schema: str | None = None, x: list[str] | None = None
) -> Config:
    """alembic.ini's configuration; ``x`` are ``-x`` arguments as on the command line."""
    config = Config(str(ROOT / "alembic.ini"), cmd_opts=argparse.Namespace(x=x or []))
    config.attributes["configure_logger"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    if schema is not None:
        config.attributes["schema"] = schema
    return config


def _diffs(conn: Connection) -> list[Any]:
    """``compare_metadata`` on the MigrationContext that env.py configures (type and
    server-default comparison on): what ``alembic check`` reports."""
    config = _config(conn)
    script = ScriptDirectory.from_config(config)
    diffs: list[Any] = []

    def compare(_rev: Any, context: MigrationContext) -> list[Any]:
        assert context.opts["compare_type"] and context.opts["compare_server_default"]
        diffs.extend(compare_metadata(context, metadata))
        return []

    with EnvironmentContext(config, script, fn=compare):
        script.run_env()
    return diffs


def _plain(value: Any) -> Any:
    """Reflection output as comparable plain data (types and clauses as their SQL text)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _snapshot(conn: Connection) -> dict[str, Any]:
    """Everything reflection reports about the workflow tables: columns (type, nullability,
    default, autoincrement), primary keys, unique constraints, and indexes with their
    dialect options (the partial index's WHERE clause, which compare_metadata ignores); on
    SQLite also whether the table's key is AUTOINCREMENT (which reflection does not report)."""
    inspector = sa.inspect(conn)
    key = repr
    return {
        table: {
            "columns": _plain(inspector.get_columns(table)),
            "pk": _plain(inspector.get_pk_constraint(table)),
            "unique": sorted(_plain(inspector.get_unique_constraints(table)), key=key),
            "indexes": sorted(_plain(inspector.get_indexes(table)), key=key),
            "autoincrement": _autoincrement(conn, table),
        }
        for table in sorted(TABLES & set(inspector.get_table_names()))
    }


def _autoincrement(conn: Connection, table: str) -> bool | None:
    """SQLite: whether ``table``'s key is AUTOINCREMENT (never reuses an id); else None."""
    if conn.dialect.name != "sqlite":
        return None
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar()
    return re.search(r"\bAUTOINCREMENT\b", sql, re.IGNORECASE) is not None


def _sqlite_sequence(conn: Connection, table: str) -> int | None:
    """The largest id SQLite has handed out in an AUTOINCREMENT table (None: none yet, or
    not SQLite)."""
    if conn.dialect.name != "sqlite":
        return None
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    if conn.exec_driver_sql(exists).scalar() is None:
        return None
    found = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
    return found.scalar()


def _tables(conn: Connection, schema: str | None = None) -> set[str]:
    return set(sa.inspect(conn).get_table_names(schema=schema))


def _version(conn: Connection, schema: str | None = None) -> list[str]:
    table = sa.table("alembic_version", sa.column("version_num"), schema=schema)
    return list(conn.execute(sa.select(table.c.version_num)).scalars())


@dataclasses.dataclass
class Database:
    """An empty database for the migrations, and one made by ``create_schema`` to match."""

    engine: AsyncEngine  # sees the migrated tables (search_path = schema on PostgreSQL)
    schema: str | None = None  # PostgreSQL: alembic is told to migrate this schema
    default: AsyncEngine | None = None  # PostgreSQL: on the server's default search_path
    reference: AsyncEngine | None = None  # workflow.adapters.sqlschema.create_schema ran here


@pytest.fixture
async def empty_sqlite(tmp_path: Path) -> AsyncIterator[Database]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}")
    yield Database(engine)
    await engine.dispose()


@pytest.fixture
async def empty_postgres() -> AsyncIterator[Database]:
    url = _need_postgres()
    schema = f"m_{uuid.uuid4().hex[:16]}"
    default = create_async_engine(url)
    async with default.begin() as conn:
        await conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    try:
        yield Database(engine, schema, default)
    finally:
        await engine.dispose()
        async with default.begin() as conn:
            await conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        await default.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Database:
    empty: Database = request.getfixturevalue(f"empty_{request.param}")
    reference = request.getfixturevalue("pg_engine" if empty.schema else "sqlite_engine")
    return dataclasses.replace(empty, reference=reference)


async def test_upgrade_creates_the_sqlschema_tables_and_downgrade_drops_them(
    database: Database,
) -> None:
    # Alembic runs on the caller's connection (config.attributes["connection"]); on
    # PostgreSQL that connection starts on the default search_path and the schema option
    # points the migration at the test's schema.
    migrating = database.default or database.engine
    async with migrating.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(_config(c, schema=database.schema), "head"))

    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []
        migrated = await conn.run_sync(_snapshot)
        assert await conn.run_sync(_version) == [HEAD]
    assert set(migrated) == TABLES
    assert database.reference is not None
    async with database.reference.connect() as conn:
        assert migrated == await conn.run_sync(_snapshot)
    if database.default is not None:  # nothing landed in the default schema
        async with database.default.connect() as conn:
            assert not await conn.run_sync(_tables) & TABLES

    async with migrating.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(_config(c, schema=database.schema), "base"))
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_tables) == {"alembic_version"}
        assert await conn.run_sync(_version) == []

    # A downgraded database migrates up cleanly again.
    async with migrating.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(_config(c, schema=database.schema), HEAD))
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []


async def test_the_unfinished_run_index_admits_one_unfinished_run_per_key(
    database: Database,
) -> None:
    async with database.engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(_config(c), "head"))

    records = metadata.tables["workflow_records"]
    now = sa.func.current_timestamp()

    def row(run_id: str, run_state: int) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "workflow_name": "wf",
            "foreign_id": "f",
            "foreign_key": "k",
            "run_state": run_state,
            "status": 1,
            "object": b"{}",
            "version": 1,
        }

    insert = records.insert().values(created_at=now, updated_at=now)
    async with database.engine.begin() as conn:
        # Any number of finished runs for the key, and one unfinished run.
        for state in RunState:
            if state not in UNFINISHED:
                await conn.execute(insert, row(f"done-{state.name}", state))
        await conn.execute(insert, row("live", RunState.RUNNING))
    for state in UNFINISHED:
        with pytest.raises(sa.exc.IntegrityError):
            async with database.engine.begin() as conn:
                await conn.execute(insert, row(f"second-{state.name}", state))


async def test_0003_adds_the_composition_columns_to_a_database_at_0002(
    database: Database,
) -> None:
    """A database at 0002 is refused (naming the missing columns), ``upgrade head`` adds them
    (a run written before reads as one without a parent or compensations), and ``downgrade
    0002`` removes them again, keeping the runs."""
    migrating = database.default or database.engine

    async def migrate(how: Any, revision: str) -> None:
        async with migrating.begin() as conn:
            await conn.run_sync(lambda c: how(_config(c, schema=database.schema), revision))

    await migrate(command.upgrade, "0002")
    async with database.engine.connect() as conn:
        at_0002 = await conn.run_sync(_snapshot)
    records, history = (
        metadata.tables["workflow_records"],
        metadata.tables["workflow_record_history"],
    )
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    old = Record("wf", "old", "old-run", RunState.RUNNING, 2, b"{}", at, at, Meta(version=1))
    version = {"run_id": "old-run", "version": 1, "run_state": 2, "status": 2, "object": b"{}"}
    async with database.engine.begin() as conn:  # only the columns of 0002
        await conn.execute(
            records.insert().values(
                **version,
                workflow_name="wf",
                foreign_id="old",
                foreign_key=foreign_key("wf", "old"),
                created_at=at,
                updated_at=at,
            )
        )
        await conn.execute(history.insert().values(**version, updated_at=at))

    store = SQLRecordStore(database.engine)
    child = Record(
        "wf",
        "child",
        "child-run",
        RunState.INITIATED,
        1,
        b"{}",
        at,
        at,
        Meta(version=1, parent_workflow="wf", parent_run_id="old-run", compensations=(1, 2)),
    )
    with pytest.raises(SchemaError) as refused:
        await store.store(child)
    for column in (
        "workflow_records.parent_workflow_name",
        "workflow_records.parent_run_id",
        "workflow_records.compensating",
        "workflow_record_history.compensations",
    ):
        assert f"column {column} is missing" in str(refused.value)
    assert f"revision {HEAD}" in str(refused.value)

    await migrate(command.upgrade, "head")
    # as the application restarted: asyncpg's statement cache on a pooled connection would
    # refuse the schema check's SELECT * once after the table changed (SQLAlchemy then clears it)
    await database.engine.dispose()
    await store.store(child)  # checked again, and accepted
    assert await store.lookup("old-run") == old
    assert await store.history("old-run") == [old]
    assert [r.run_id for r in await store.list("", 0, 10, "asc", Filter.by_parent("old-run"))] == [
        "child-run"
    ]
    assert await store.lookup("child-run") == child
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []

    await migrate(command.downgrade, "0002")
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_version) == ["0002"]
        assert await conn.run_sync(_snapshot) == at_0002  # columns, indexes (WHERE too)
        count = (await conn.execute(sa.select(sa.func.count()).select_from(records))).scalar()
    assert count == 2
    await migrate(command.upgrade, "head")
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []


TIMEOUTS = metadata.tables["workflow_timeouts"]


async def test_0004_makes_timer_ids_never_reused_on_a_database_at_0003(
    database: Database,
) -> None:
    """A SQLite database at 0003 (a plain INTEGER PRIMARY KEY: a removed timer's id is handed
    out again) is refused by the schema check; ``upgrade head`` rebuilds workflow_timeouts with
    AUTOINCREMENT keeping its timers (ids, fields, indexes) and new ids continue above the
    largest kept one; ``downgrade 0003`` rebuilds it as it was. On PostgreSQL (a sequence)
    the migration changes nothing."""
    sqlite = database.schema is None
    migrating = database.default or database.engine

    async def migrate(how: Any, revision: str) -> None:
        async with migrating.begin() as conn:
            await conn.run_sync(lambda c: how(_config(c, schema=database.schema), revision))
        # as the application restarted (asyncpg caches statements per connection)
        await database.engine.dispose()

    await migrate(command.upgrade, "0003")
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    async with database.engine.begin() as conn:  # timers written by 0003's adapters
        for i in range(1, 6):
            await conn.execute(
                TIMEOUTS.insert().values(
                    workflow_name="wf",
                    foreign_id=f"f{i}",
                    run_id=f"run-{i}",
                    status=2,
                    idx=i % 2,
                    completed=i == 2,
                    expire_at=at + timedelta(seconds=i),
                    created_at=at,
                )
            )
        await conn.execute(TIMEOUTS.delete().where(TIMEOUTS.c.id == 3))  # cancelled
        at_0003 = await conn.run_sync(_snapshot)
        before = (await conn.execute(sa.select(TIMEOUTS).order_by(TIMEOUTS.c.id))).all()
    assert [row.id for row in before] == [1, 2, 4, 5]
    if sqlite:
        assert at_0003["workflow_timeouts"]["autoincrement"] is False
        with pytest.raises(SchemaError) as refused:
            await SQLTimeoutStore(database.engine).create("wf", "new", "run-new", 2, at)
        message = str(refused.value)
        assert "table workflow_timeouts reuses ids" in message
        assert "migration 0004 rebuilds the table" in message
        assert "`alembic upgrade head` (revision 0004" in message
        assert "at alembic revision 0003" in message

    await migrate(command.upgrade, "head")
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []
        migrated = await conn.run_sync(_snapshot)
        after = (await conn.execute(sa.select(TIMEOUTS).order_by(TIMEOUTS.c.id))).all()
        sequence = await conn.run_sync(_sqlite_sequence, "workflow_timeouts")
    assert after == before  # every timer, completed or not, with its id and fields
    assert database.reference is not None
    async with database.reference.connect() as conn:  # as create_schema makes it
        assert (
            migrated["workflow_timeouts"] == (await conn.run_sync(_snapshot))["workflow_timeouts"]
        )
    if sqlite:
        assert migrated["workflow_timeouts"]["autoincrement"] is True
        assert sequence == 5  # seeded: ids continue above the largest kept one
    else:
        assert migrated == at_0003  # nothing to do on PostgreSQL

    store = SQLTimeoutStore(database.engine)  # accepted now
    listed = await store.list("wf")
    assert [(t.id, t.run_id, t.index, t.expire_at) for t in listed] == [
        (i, f"run-{i}", i % 2, at + timedelta(seconds=i)) for i in (1, 4, 5)
    ]
    # the bug: the newest timer is removed while it fires, another run arms a timer, and the
    # timeout process completes the removed id
    newest = await store.create("wf", "fast", "run-fast", 2, at)
    assert newest > 5
    await store.cancel_run("wf", "run-fast", 2)
    slow = await store.create("wf", "slow", "run-slow", 2, at)
    assert slow > newest
    await store.complete(newest)
    await store.cancel(newest)
    assert [t.id for t in await store.list("wf")] == [1, 4, 5, slow]

    await migrate(command.downgrade, "0003")
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_version) == ["0003"]
        assert await conn.run_sync(_snapshot) == at_0003  # columns, indexes, no AUTOINCREMENT
        ids = (await conn.execute(sa.select(TIMEOUTS.c.id).order_by(TIMEOUTS.c.id))).scalars()
        assert list(ids) == [1, 2, 4, 5, slow]
    if sqlite:
        # a new process (a new engine; this one passed its check) refuses it again
        downgraded = make_engine(database.engine.url.render_as_string(hide_password=False))
        try:
            with pytest.raises(SchemaError, match="workflow_timeouts reuses ids"):
                await SQLTimeoutStore(downgraded).create("wf", "f", "r", 2, at)
        finally:
            await downgraded.dispose()
    await migrate(command.upgrade, "head")
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []
        if sqlite:
            assert await conn.run_sync(_sqlite_sequence, "workflow_timeouts") == slow
    assert await SQLTimeoutStore(database.engine).create("wf", "f", "r", 2, at) > slow


async def test_a_sqlite_database_made_by_an_earlier_create_schema_is_refused_until_migrated(
    tmp_path: Path,
) -> None:
    """A database of ``create_schema`` before 0004 (no alembic revision, timers keyed by a
    plain INTEGER PRIMARY KEY) is refused with the way out: ``alembic stamp 0003``, then
    ``alembic upgrade head``, which keeps the timers."""
    db = tmp_path / "old.db"
    engine = make_engine(f"sqlite+aiosqlite:///{db}")
    try:
        await create_schema(engine)
        async with engine.begin() as conn:  # workflow_timeouts as create_schema made it before
            await conn.run_sync(TIMEOUTS.drop)
            await conn.run_sync(_timeouts_at_0003().create)
        store = SQLTimeoutStore(engine)
        at = datetime(2026, 1, 2, tzinfo=UTC)
        async with engine.begin() as conn:
            await conn.execute(
                TIMEOUTS.insert().values(
                    workflow_name="wf",
                    foreign_id="f",
                    run_id="r",
                    status=1,
                    expire_at=at,
                    created_at=at,
                )
            )
        with pytest.raises(SchemaError) as refused:
            await store.create("wf", "f", "r", 1, at)
        message = str(refused.value)
        assert "workflow_timeouts reuses ids" in message
        assert "the database has no alembic revision" in message
        assert "`alembic stamp 0003`, then `alembic upgrade head`" in message
    finally:
        await engine.dispose()

    sync = sa.create_engine(f"sqlite:///{db}")
    try:
        with sync.begin() as conn:
            command.stamp(_config(conn), "0003")
            command.upgrade(_config(conn), "head")
            assert _version(conn) == [HEAD]
            assert _autoincrement(conn, "workflow_timeouts") is True
            command.check(_config(conn))
    finally:
        sync.dispose()
    engine = make_engine(f"sqlite+aiosqlite:///{db}")
    try:
        store = SQLTimeoutStore(engine)
        assert await store.create("wf", "g", "s", 1, at) == 2  # accepted, above the kept timer
        assert [t.run_id for t in await store.list("wf")] == ["r", "s"]
    finally:
        await engine.dispose()


def _timeouts_at_0003() -> sa.Table:
    """workflow_timeouts as create_schema made it before 0004 (no sqlite_autoincrement)."""
    table = TIMEOUTS.to_metadata(sa.MetaData())
    table.dialect_kwargs["sqlite_autoincrement"] = False
    return table


def test_alembic_command_line_upgrades_the_database_in_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_DATABASE_")}
    env["WORKFLOW_DATABASE_URL"] = f"sqlite+aiosqlite:///{db}"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Running upgrade  -> 0001" in done.stderr  # alembic.ini's logging is on

    sync = sa.create_engine(f"sqlite:///{db}")
    try:
        with sync.connect() as conn:
            assert _tables(conn) == TABLES | {"alembic_version"}
            assert _version(conn) == [HEAD]
            assert _diffs(conn) == []
    finally:
        sync.dispose()


@pytest.mark.parametrize("how", ["-x", "env"])
async def test_migrating_a_postgres_schema_named_by_option_or_environment(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _need_postgres()
    schema = f"m_{uuid.uuid4().hex[:16]}"
    monkeypatch.setenv("WORKFLOW_DATABASE_URL", url)
    if how == "env":
        monkeypatch.setenv("WORKFLOW_DATABASE_SCHEMA", schema)
        config = _config()
    else:
        monkeypatch.delenv("WORKFLOW_DATABASE_SCHEMA", raising=False)
        config = _config(x=[f"schema={schema}"])
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        # env.py makes its own async engine from the URL (asyncio.run, hence a thread).
        await asyncio.to_thread(command.upgrade, config, "head")
        async with admin.connect() as conn:
            assert await conn.run_sync(_tables, schema) == TABLES | {"alembic_version"}
            assert await conn.run_sync(_version, schema) == [HEAD]
            assert not await conn.run_sync(_tables) & TABLES

        await asyncio.to_thread(command.downgrade, config, "base")
        async with admin.connect() as conn:
            assert await conn.run_sync(_tables, schema) == {"alembic_version"}
    finally:
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        await admin.dispose()


FAILING_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("workflow_half_done", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("SELECT * FROM no_such_table")
"""


async def test_a_failing_sqlite_migration_leaves_no_tables_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    shutil.copy(ROOT / "migrations" / "env.py", scripts / "env.py")
    (scripts / "versions" / "0001_fails.py").write_text(FAILING_MIGRATION)
    config = Config(cmd_opts=argparse.Namespace(x=[]))
    config.set_main_option("script_location", str(scripts))
    db = tmp_path / "failed.db"
    monkeypatch.setenv("WORKFLOW_DATABASE_URL", f"sqlite+aiosqlite:///{db}")

    with pytest.raises(sa.exc.OperationalError, match="no_such_table"):
        await asyncio.to_thread(command.upgrade, config, "head")

    sync = sa.create_engine(f"sqlite:///{db}")
    try:
        with sync.connect() as conn:
            assert "workflow_half_done" not in _tables(conn)
    finally:
        sync.dispose()


def test_alembic_check_passes_on_head_and_fails_on_a_drifted_database(tmp_path: Path) -> None:
    """docs/migrations.md: ``alembic check`` fails if the database differs from
    ``adapters/sqlschema.py``."""
    from alembic.util.exc import AutogenerateDiffsDetected

    sync = sa.create_engine(f"sqlite:///{tmp_path / 'check.db'}")
    try:
        with sync.begin() as conn:
            command.upgrade(_config(conn), "head")
            command.check(_config(conn))  # raises on any difference
            conn.exec_driver_sql("ALTER TABLE workflow_records ADD COLUMN drift TEXT")
            with pytest.raises(AutogenerateDiffsDetected, match="drift"):
                command.check(_config(conn))
    finally:
        sync.dispose()


async def test_stamp_head_puts_a_create_schema_database_under_alembic(tmp_path: Path) -> None:
    """docs/migrations.md: a database made by ``create_schema`` is put under alembic with
    ``alembic stamp head``; ``upgrade head`` then has nothing to do and ``check`` passes."""
    db = tmp_path / "stamped.db"
    engine = make_engine(f"sqlite+aiosqlite:///{db}")
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()
    sync = sa.create_engine(f"sqlite:///{db}")
    try:
        with sync.begin() as conn:
            before = _snapshot(conn)
            command.stamp(_config(conn), "head")
            assert _version(conn) == [HEAD]
            command.upgrade(_config(conn), "head")  # nothing to do: the tables stay as they are
            assert _snapshot(conn) == before
            command.check(_config(conn))
            assert _tables(conn) == TABLES | {"alembic_version"}
    finally:
        sync.dispose()
