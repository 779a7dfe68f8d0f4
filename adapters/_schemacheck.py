"""The SQL adapters refuse to run on a database whose tables are not theirs.

Before an engine's first write (the record store's first ``store``, a streamer's first
sender or receiver, a role scheduler's first grant, a timeout store's first timer) the
adapters check, once per engine, that every table of :mod:`adapters.sqlschema` exists with
the columns of the head revision, that ``workflow_records`` has its unique partial index (one
unfinished run per workflow and foreign id: without it duplicate runs are silently possible),
and on SQLite that ``workflow_timeouts`` never reuses an id (``AUTOINCREMENT``, migration
0004: without it the timeout process can complete another run's timer). A wrong schema raises
:class:`~adapters._sqlsetup.SchemaError` saying which migration to apply; the check runs
again at the next use (someone may be applying it), and once it passes it is never repeated
for that engine. A check that cannot reach the database raises what the database raised.
"""

from __future__ import annotations

import asyncio
from functools import partial

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import _postgres, _sqlite
from ._sqlengine import EngineShared, shared
from ._sqlsetup import SchemaError
from .sqlschema import history, metadata, reading, records, timeouts

__all__ = ["SCHEMA_REVISION", "check_schema"]

SCHEMA_REVISION = "0004"
"""The alembic revision (``migrations/versions``) these adapters need: the head."""

UNIQUE_INDEX = "uq_workflow_records_unfinished"

TIMER_IDS = (
    "table workflow_timeouts reuses ids (its key is not INTEGER PRIMARY KEY AUTOINCREMENT): "
    "SQLite would give a removed timer's id to another run's new timer, which the timeout "
    "process could then complete or cancel unfired; migration 0004 rebuilds the table, "
    "keeping its timers"
)
"""The problem of a SQLite ``workflow_timeouts`` made before migration 0004."""


async def check_schema(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaError` unless the engine's database has the adapters' schema;
    checked once per engine (concurrent first callers share one check, which a cancelled
    caller does not interrupt)."""
    db = shared(engine)
    if db.schema_ok:
        return
    running = db.schema_check
    if running is None or running.get_loop() is not asyncio.get_running_loop():
        running = db.schema_check = asyncio.ensure_future(_check(engine))
        running.add_done_callback(partial(_finished, db))
    await asyncio.shield(running)


def _finished(db: EngineShared, fut: asyncio.Future[None]) -> None:
    if db.schema_check is fut:
        db.schema_check = None
    if not fut.cancelled() and fut.exception() is None:
        db.schema_ok = True


async def _check(engine: AsyncEngine) -> None:
    async with reading(engine) as conn:
        reuses_ids = False  # PostgreSQL: a sequence never gives an id twice
        if engine.dialect.name == "postgresql":
            names = [*metadata.tables, "alembic_version"]
            tables, index = await _postgres.schema_facts(conn, names, UNIQUE_INDEX)
        else:
            created, index = await _sqlite.schema_facts(conn, UNIQUE_INDEX)
            tables = set(created)
            reuses_ids = timeouts.name in created and not _sqlite.autoincrements(
                created[timeouts.name]
            )
        revision = await _revision(conn, "alembic_version" in tables)
        problems = [f"table {name} is missing" for name in metadata.tables if name not in tables]
        for name in (records.name, history.name):  # the columns added by later migrations
            if name in tables:
                problems += await _column_problems(conn, metadata.tables[name])
    if reuses_ids:
        problems.append(TIMER_IDS)
    if "workflow_records" in tables:
        problems += _index_problems(index)
    if not problems:
        return
    raise SchemaError(_message(engine, problems, revision))


async def _column_problems(conn: AsyncConnection, table: sa.Table) -> list[str]:
    result = await conn.execute(sa.text(f"SELECT * FROM {table.name} WHERE 1 = 0"))
    have = set(result.keys())
    return [f"column {table.name}.{c.name} is missing" for c in table.columns if c.name not in have]


def _index_problems(index: str | None) -> list[str]:
    wrong = f"index {UNIQUE_INDEX} on workflow_records"
    if index is None:
        return [f"{wrong} is missing"]
    flat = "".join(index.split()).lower()
    if "unique" not in flat or "(foreign_key)" not in flat or "where" not in flat:
        return [f"{wrong} is not UNIQUE (foreign_key) WHERE unfinished: {index}"]
    return []


def _message(engine: AsyncEngine, problems: list[str], revision: str | None) -> str:
    index = next(i for i in records.indexes if i.name == UNIQUE_INDEX)
    ddl = str(sa.schema.CreateIndex(index).compile(dialect=engine.dialect)).strip()
    if revision is None:
        where = "the database has no alembic revision"
    else:
        where = f"the database says it is at alembic revision {revision}"
    stamp = ""
    if revision is None and problems == [TIMER_IDS]:  # made by create_schema before 0004
        stamp = (
            " (a database made by an earlier `create_schema`: `alembic stamp 0003`, then "
            "`alembic upgrade head`)"
        )
    return (
        f"the database of {engine.url.render_as_string(hide_password=True)} does not have "
        f"the workflow schema: {'; '.join(problems)}. Without it runs would be lost or "
        "duplicated (the unique index keeps one unfinished run per foreign id), so the SQL "
        f"adapters refuse it. Apply the migrations: `alembic upgrade head` (revision "
        f"{SCHEMA_REVISION}; {where}){stamp}, or `await create_schema(engine)` on a new "
        f"database; a dropped index is re-created with: {ddl}"
    )


async def _revision(conn: AsyncConnection, present: bool) -> str | None:
    if not present:
        return None
    found = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)
