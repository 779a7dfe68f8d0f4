"""The SQL adapters' hot statements, run on the driver's own connection.

A transition reads its run, writes it back and moves a cursor: a handful of small statements.
Through SQLAlchemy's execution layer each costs about 1 ms of CPU here (compiled-cache
lookup, parameter processing, result wrapping, and on aiosqlite several thread hand-offs per
statement), against about 0.1 ms on the driver itself (see ``bench/RESULTS.md``). So the
statements on the path of every transition are written once per dialect below and run on the
asyncpg / aiosqlite connection that SQLAlchemy's pool hands out: the connection still comes
from, and goes back to, the engine's pool (same settings, same limits, same ``dispose``).
Everything else stays on SQLAlchemy.

The values are converted here exactly as the SQLAlchemy column types in
:mod:`adapters.sqlschema` do (the conformance suites read with one path what the other
wrote):

* times: PostgreSQL ``timestamptz`` from an aware datetime; SQLite text
  ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC;
* JSON: PostgreSQL ``jsonb`` from and to text; SQLite text.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "Statement",
    "Transaction",
    "db_time",
    "driver",
    "execute",
    "fetch",
    "fetchval",
    "from_db_time",
    "observe",
    "transaction",
]

Observer = Callable[[str, bool], None]
_observers: list[Observer] = []


def observe(fn: Observer) -> Callable[[], None]:
    """Call ``fn(sql, starts_transaction)`` for every statement run here (benchmarks count
    statements and transactions with it); returns the function that removes it."""
    _observers.append(fn)
    return lambda: _observers.remove(fn)


def _note(sql: str, starts_transaction: bool) -> None:
    for fn in _observers:
        fn(sql, starts_transaction)


class Statement:
    """One SQL text with ``:name`` parameters, prepared for both dialects: SQLite takes the
    names as they are; PostgreSQL gets ``$1, $2, ...`` and the values in that order."""

    __slots__ = ("names", "pg", "sqlite")

    def __init__(self, sql: str, *, pg: str | None = None) -> None:
        self.sqlite = sql
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.pg = re.sub(r"(?<![:\w]):(\w+)", number, pg if pg is not None else sql)
        self.names = tuple(names)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[n] for n in self.names]


def db_time(value: datetime, pg: bool) -> datetime | str:
    """A time as the database column takes it (aware times only)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the SQL adapters store aware UTC times")
    value = value.astimezone(UTC)
    if pg:
        return value
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    )


def from_db_time(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@contextlib.asynccontextmanager
async def driver(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The driver connection (``asyncpg.Connection`` or ``aiosqlite.Connection``) of a pooled
    connection. A PostgreSQL connection found closed after an error is invalidated, so the
    pool opens a fresh one (a restarted server)."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        dbapi = raw.driver_connection
        try:
            yield dbapi
        except BaseException:
            is_closed = getattr(dbapi, "is_closed", None)
            if is_closed is not None and is_closed():
                with contextlib.suppress(Exception):
                    await conn.invalidate()
            raise


async def fetch(
    engine: AsyncEngine, stmt: Statement, params: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """The rows of one read statement (no transaction of its own on PostgreSQL; a deferred
    one, as every SQLite statement, on SQLite)."""
    if _observers:
        _note(stmt.sqlite, True)
    async with driver(engine) as db:
        if engine.dialect.name == "postgresql":
            rows: Sequence[Sequence[Any]] = await db.fetch(stmt.pg, *stmt.args(params))
            return rows
        return list(await db.execute_fetchall(stmt.sqlite, params))


async def fetchval(engine: AsyncEngine, stmt: Statement, params: Mapping[str, Any]) -> Any:
    """PostgreSQL: the first value of one statement run in autocommit (its own transaction)."""
    if _observers:
        _note(stmt.sqlite, True)
    async with driver(engine) as db:
        return await db.fetchval(stmt.pg, *stmt.args(params))


async def execute(engine: AsyncEngine, stmt: Statement, params: Mapping[str, Any]) -> int:
    """One write statement in a transaction of its own (autocommit); its row count."""
    if _observers:
        _note(stmt.sqlite, True)
    async with driver(engine) as db:
        if engine.dialect.name == "postgresql":
            status: str = await db.execute(stmt.pg, *stmt.args(params))
            return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
        cursor = await db.execute(stmt.sqlite, params)
        return int(cursor.rowcount)


class Transaction:
    """Statements of one write transaction."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        raise NotImplementedError

    async def executemany(self, stmt: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError


class SQLiteTransaction(Transaction):
    """Statements of one SQLite write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``)."""

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """Run ``stmt``; return its row count."""
        if _observers:
            _note(stmt.sqlite, False)
        cursor = await self.db.execute(stmt.sqlite, params)
        return int(cursor.rowcount)

    async def executemany(self, stmt: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        await self.db.executemany(stmt.sqlite, rows)


class PGTransaction(Transaction):
    """Statements of one PostgreSQL transaction."""

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """Run ``stmt``: a statement that returns one value (a count) returns it, others 0."""
        if _observers:
            _note(stmt.sqlite, False)
        value = await self.db.fetchval(stmt.pg, *stmt.args(params))
        return int(value or 0)

    async def executemany(self, stmt: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        await self.db.executemany(stmt.pg, [stmt.args(r) for r in rows])


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Transaction]:
    """A write transaction on a pooled connection: committed when the block ends, rolled
    back if it raises. SQLite takes the write lock up front (``BEGIN IMMEDIATE``, as
    ``make_engine`` does for SQLAlchemy's transactions)."""
    if _observers:
        _note("BEGIN", True)
    async with driver(engine) as db:
        if engine.dialect.name == "postgresql":
            async with db.transaction():
                yield PGTransaction(db)
            return
        await db.execute("BEGIN IMMEDIATE")
        try:
            yield SQLiteTransaction(db)
        except BaseException:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")
