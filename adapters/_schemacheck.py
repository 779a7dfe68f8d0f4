"""The SQL adapters refuse to run on a database whose tables are not theirs.

Before an engine's first write (the record store's first ``store``, a streamer's first
sender or receiver, a role scheduler's first grant, a timeout store's first timer) the
adapters check, once per engine, that every table of :mod:`adapters.sqlschema` exists and
that ``workflow_records`` has its unique partial index (one unfinished run per workflow and
foreign id: without it duplicate runs are silently possible). A wrong schema raises
:class:`~adapters._sqlsetup.SchemaError` saying which migration to apply; the check runs
again at the next use (someone may be applying it), and once it passes it is never repeated
for that engine. A check that cannot reach the database raises what the database raised.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._sqlsetup import SchemaError
from .sqlschema import metadata, reading, records

__all__ = ["SCHEMA_REVISION", "check_schema"]

SCHEMA_REVISION = "0001"
"""The alembic revision (``migrations/versions``) these adapters need: the head."""

UNIQUE_INDEX = "uq_workflow_records_unfinished"

_checked: weakref.WeakKeyDictionary[sa.Engine, bool] = weakref.WeakKeyDictionary()
_running: weakref.WeakKeyDictionary[sa.Engine, asyncio.Future[None]] = weakref.WeakKeyDictionary()


async def check_schema(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaError` unless the engine's database has the adapters' schema;
    checked once per engine (concurrent first callers share one check, which a cancelled
    caller does not interrupt)."""
    sync = engine.sync_engine
    if sync in _checked:
        return
    running = _running.get(sync)
    if running is None or running.get_loop() is not asyncio.get_running_loop():
        running = _running[sync] = asyncio.ensure_future(_check(engine))
        running.add_done_callback(lambda fut: _finished(sync, fut))
    await asyncio.shield(running)


def _finished(sync: sa.Engine, fut: asyncio.Future[None]) -> None:
    if _running.get(sync) is fut:
        del _running[sync]
    if not fut.cancelled() and fut.exception() is None:
        _checked[sync] = True


async def _check(engine: AsyncEngine) -> None:
    async with reading(engine) as conn:
        if engine.dialect.name == "postgresql":
            tables, index, revision = await _postgres(conn)
        else:
            tables, index, revision = await _sqlite(conn)
    problems = [f"table {name} is missing" for name in metadata.tables if name not in tables]
    if "workflow_records" in tables:
        problems += _index_problems(index)
    if not problems:
        return
    raise SchemaError(_message(engine, problems, revision))


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
    return (
        f"the database of {engine.url.render_as_string(hide_password=True)} does not have "
        f"the workflow schema: {'; '.join(problems)}. Without it runs would be lost or "
        "duplicated (the unique index keeps one unfinished run per foreign id), so the SQL "
        f"adapters refuse it. Apply the migrations: `alembic upgrade head` (revision "
        f"{SCHEMA_REVISION}; {where}), or `await create_schema(engine)` on a new database; "
        f"a dropped index is re-created with: {ddl}"
    )


async def _sqlite(conn: AsyncConnection) -> tuple[set[str], str | None, str | None]:
    rows: list[Any] = list(
        await conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'index')"
        )
    )
    tables = {r[1] for r in rows if r[0] == "table"}
    index = next((r[2] for r in rows if r[0] == "index" and r[1] == UNIQUE_INDEX), None)
    return tables, index, await _revision(conn, "alembic_version" in tables)


async def _postgres(conn: AsyncConnection) -> tuple[set[str], str | None, str | None]:
    # Names resolve through the search_path, as the adapters' own statements do.
    names = [*metadata.tables, "alembic_version"]
    found = await conn.execute(
        sa.text(
            "SELECT name FROM unnest(CAST(:names AS TEXT[])) AS name "
            "WHERE to_regclass(quote_ident(name)) IS NOT NULL"
        ),
        {"names": names},
    )
    tables = {r[0] for r in found}
    index: Any = None
    if "workflow_records" in tables:
        index = (
            await conn.execute(
                sa.text(
                    "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = to_regclass('workflow_records') AND c.relname = :name"
                ),
                {"name": UNIQUE_INDEX},
            )
        ).scalar()
    return tables, index, await _revision(conn, "alembic_version" in tables)


async def _revision(conn: AsyncConnection, present: bool) -> str | None:
    if not present:
        return None
    found = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)
