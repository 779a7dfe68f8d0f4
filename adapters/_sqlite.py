"""SQLite as the SQL adapters use it: how a time is stored, how a connection is set up, how
writes are grouped into one transaction, how the schema is read back, and the driver-level
runners. Every SQLite-specific SQL text and value conversion of the adapters is here, except
the statements on the adapters' tables, which :mod:`adapters._statements` writes out from
:mod:`adapters.sqlschema`.

**Times** are text ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC (:func:`encode_time`; the form
SQLAlchemy's ``DateTime`` wrote on SQLite, so older databases read the same), in ``DATETIME``
columns: the text sorts as the time does, so comparisons in SQL are comparisons of times.
:func:`clock` is the database's own clock in the same form (leases). **JSON** is text.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._fastsql import Statement, aware_utc, driver, note, track

if TYPE_CHECKING:
    from ._sqlitethread import SQLiteThread

__all__ = [
    "MAX_GROUP",
    "SYNCHRONOUS",
    "GroupWriter",
    "autoincrements",
    "begin",
    "clock",
    "decode_time",
    "encode_time",
    "execute",
    "fetch",
    "schema_facts",
    "set_up",
]

R = TypeVar("R")

# -- values ----------------------------------------------------------------------------------


def encode_time(value: datetime) -> str:
    """An aware time as stored: ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC."""
    value = aware_utc(value)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    )


def decode_time(value: str) -> datetime:
    """A stored time (text of :func:`encode_time`, or of :func:`clock`), aware UTC."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def clock(shift: timedelta | None = None) -> sa.ColumnElement[Any]:
    """The database's clock (plus ``shift``) as :func:`encode_time` writes a time:
    ``strftime``'s ``%f`` is seconds with milliseconds, ``'000'`` pads them to microseconds."""
    args: list[Any] = ["%Y-%m-%d %H:%M:%f", "now"]
    if shift is not None:
        args.append(f"{shift.total_seconds():+.6f} seconds")
    return sa.func.strftime(*args, type_=sa.String) + "000"


# -- connections -----------------------------------------------------------------------------

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
"""The values of ``PRAGMA synchronous``."""

_BEGIN_WRITE = "BEGIN IMMEDIATE"
"""Writers take the write lock up front: no read-then-write lock upgrade, which SQLite's busy
timeout cannot resolve (it fails at once with "database is locked")."""


def set_up(dbapi_conn: Any, synchronous: str) -> None:
    """Set up a pooled connection (the DB-API connection SQLAlchemy hands out): the driver's
    own transaction handling off (``isolation_level = None``: whoever writes says ``BEGIN``
    and ``COMMIT``), WAL journal (readers never block the writer), a 30 s busy timeout and
    ``synchronous``."""
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.close()


def begin(read_only: bool) -> str:
    """The statement that opens a SQLAlchemy transaction: a deferred one for readers (they
    block nobody), ``BEGIN IMMEDIATE`` for writers."""
    return "BEGIN" if read_only else _BEGIN_WRITE


async def schema_facts(
    conn: AsyncConnection, index: str
) -> tuple[dict[str, str | None], str | None]:
    """The database's tables (each name with its ``CREATE TABLE`` text) and the ``CREATE``
    text of index ``index`` (or ``None``)."""
    rows: list[Any] = list(
        await conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'index')"
        )
    )
    tables = {r[1]: r[2] for r in rows if r[0] == "table"}
    found = next((r[2] for r in rows if r[0] == "index" and r[1] == index), None)
    return tables, found


def autoincrements(create_table: str | None) -> bool:
    """Whether a ``CREATE TABLE`` text gives the table an ``AUTOINCREMENT`` key: SQLite never
    reuses such a table's ids, where a plain ``INTEGER PRIMARY KEY`` hands a deleted row's id
    (the largest one) to the next row."""
    if create_table is None:
        return False
    return re.search(r"\bAUTOINCREMENT\b", create_table, re.IGNORECASE) is not None


# -- statements on the driver ----------------------------------------------------------------


async def fetch(
    engine: AsyncEngine, stmt: Statement, params: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """The rows of one read statement (a deferred transaction of its own, as every SQLite
    statement outside one)."""
    note(stmt.text, True)
    async with driver(engine) as db:
        return list(await db.execute_fetchall(stmt.text, params))


def rows(
    stmt: Statement, params: Mapping[str, Any], conn: sqlite3.Connection
) -> list[Sequence[Any]]:
    """A read job (for a :class:`adapters._sqlitethread.SQLiteThread`): the rows of one
    statement."""
    return conn.execute(stmt.text, params).fetchall()


def execute(stmt: Statement, params: Mapping[str, Any], conn: sqlite3.Connection) -> int:
    """A write job (for :meth:`GroupWriter.submit`): one statement; its row count."""
    note(stmt.text)
    return int(conn.execute(stmt.text, params).rowcount)


# -- group commit ----------------------------------------------------------------------------

MAX_GROUP = 64
"""Most write jobs committed together by a :class:`GroupWriter`."""

Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


def _run_group(conn: sqlite3.Connection, jobs: list[Job]) -> list[tuple[bool, Any]]:
    """In the connection's thread: every job in one transaction, each inside a savepoint so
    that a job that raises is undone alone. Returns (ok, result or exception) per job; if the
    COMMIT fails, it raises and nothing was written."""
    out: list[tuple[bool, Any]] = []
    conn.execute(_BEGIN_WRITE)
    try:
        for fn, _ in jobs:
            conn.execute("SAVEPOINT job")
            try:
                result = fn(conn)
            except Exception as err:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                out.append((False, err))
            else:
                conn.execute("RELEASE job")
                out.append((True, result))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


class GroupWriter:
    """The write jobs of one engine in one event loop, committed in groups: a job submitted
    while a group is being written goes into the next one. One hand-over to the connection's
    thread and one commit (one ``fsync`` with ``synchronous=FULL``) per group instead of per
    job; alone, a job is written at once.

    Why: every aiosqlite call is a round trip between the event loop and the connection's
    thread (a queue, a thread switch, a self-pipe write back to the loop, an epoll wake-up:
    each a system call, slow on a VM), so a store of five statements made one at a time cost
    five of them, and every commit its own ``fsync``. Uses aiosqlite's
    ``Connection._execute`` (present since its first release; checked at first use).

    ``lock`` is taken before ``BEGIN IMMEDIATE``: SQLite has one writer at a time, and this
    engine's writers hand over at once instead of meeting in SQLite's busy handler, which
    sleeps in steps of up to 100 ms (other engines and processes still meet there)."""

    def __init__(self, engine: AsyncEngine, thread: SQLiteThread | None = None) -> None:
        self.engine = engine
        self.thread = thread
        self.lock = asyncio.Lock()
        self.queue: list[Job] = []
        self.task: asyncio.Task[None] | None = None

    def submit(self, fn: Callable[[sqlite3.Connection], R]) -> asyncio.Future[R]:
        """Run ``fn(conn)`` in a write transaction on the ``sqlite3`` connection of a pooled
        aiosqlite connection, in that connection's thread, inside a savepoint of its own; the
        future of its result or exception (then nothing of it was written). Once handed
        over, a job runs to its end even if its caller is cancelled; a caller cancelled
        before its job is taken drops the job (as with any cancelled database write, the
        caller cannot know which)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self.queue.append((fn, fut))
        if self.task is None:
            self.task = loop.create_task(self._drain())
            track(self.task)
        return fut

    async def _drain(self) -> None:
        try:
            while self.queue:
                jobs = [j for j in self.queue[:MAX_GROUP] if not j[1].cancelled()]
                del self.queue[:MAX_GROUP]
                if not jobs:
                    continue
                try:
                    results = await self._write(jobs)
                except BaseException as err:  # nothing of this group was written
                    for _, fut in jobs:
                        if not fut.done():
                            fut.set_exception(err)
                    if not isinstance(err, Exception):
                        raise
                    continue
                for (_, fut), (ok, value) in zip(jobs, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            self.task = None
            for _, fut in self.queue:  # only if this task was cancelled (the loop closes)
                fut.cancel()
            self.queue.clear()

    async def _write(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        note("BEGIN", True)
        if self.thread is not None:  # the database file's own writing thread
            async with self.lock:
                return await self.thread.submit(partial(_run_group, jobs=jobs))
        async with self.lock, driver(self.engine) as db:
            run = getattr(db, "_execute", None)
            if run is None or not hasattr(db, "_conn"):
                raise RuntimeError(
                    "this aiosqlite has no Connection._execute: install aiosqlite>=0.17,<1"
                )
            results: list[tuple[bool, Any]] = await run(_run_group, db._conn, jobs)
            return results
