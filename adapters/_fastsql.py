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

import asyncio
import contextlib
import re
import sqlite3
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

__all__ = [
    "Statement",
    "db_time",
    "driver",
    "execute",
    "fetch",
    "fetchval",
    "from_db_time",
    "observe",
    "note",
    "returned",
    "sqlite_write",
    "sqlite_writer",
]

R = TypeVar("R")
Observer = Callable[[str, bool], None]
_observers: list[Observer] = []


def observe(fn: Observer) -> Callable[[], None]:
    """Call ``fn(sql, starts_transaction)`` for every statement run here (benchmarks count
    statements and transactions with it); returns the function that removes it."""
    _observers.append(fn)
    return lambda: _observers.remove(fn)


def note(sql: str, starts_transaction: bool = False) -> None:
    """Report a statement to the observers (for statements run inside :func:`sqlite_write`)."""
    if _observers:
        _note(sql, starts_transaction)


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


_returning: set[asyncio.Future[Any]] = set()
"""Connections of cancelled users on their way back to the pool (see :func:`driver`)."""


@contextlib.asynccontextmanager
async def driver(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The driver connection (``asyncpg.Connection`` or ``aiosqlite.Connection``) of a
    connection checked out of the engine's pool (straight from the pool: an
    ``AsyncConnection`` around it costs about 0.1 ms more per use here, for nothing this
    module needs). A PostgreSQL connection found closed after an error is invalidated, so the
    pool opens a fresh one (a restarted server). One whose user was cancelled (its command
    may still be running on the server) goes back to the pool from a background task once
    the command has ended (see :func:`_settle`): a cancelled caller is normal, and closing or
    reusing a busy asyncpg connection fails with errors in the log."""
    fairy = await _checkout(engine)
    try:
        yield fairy.driver_connection
    except asyncio.CancelledError:
        if engine.dialect.name == "postgresql":
            _background(_settle(fairy))
            fairy = None
        raise
    except BaseException:
        is_closed = getattr(fairy.driver_connection, "is_closed", None)
        if is_closed is not None and is_closed():
            with contextlib.suppress(Exception):
                await greenlet_spawn(fairy.invalidate)
        raise
    finally:
        if fairy is not None:
            await _checkin(engine, fairy)


async def _checkin(engine: AsyncEngine, fairy: Any) -> None:
    """Give a connection back to its pool, uninterrupted: a cancellation arriving meanwhile
    leaves it to finish in the background. Giving one back into a pool that has room for it
    does not wait for anything (unless the pool resets it: a ROLLBACK), so cannot be
    interrupted; closing one (the pool is full, or with NullPool) or resetting it waits for
    the driver, and the pool logs an interrupted close or reset as an ERROR."""
    pool = engine.sync_engine.pool
    size, idle = getattr(pool, "size", None), getattr(pool, "checkedin", None)
    if (
        size is not None
        and idle is not None
        and idle() < size()
        and (engine.dialect.name == "postgresql" or _no_reset(pool))
    ):
        await greenlet_spawn(fairy.close)
        return
    closing = asyncio.ensure_future(greenlet_spawn(fairy.close))
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        _background(closing)
        raise


def _no_reset(pool: Any) -> bool:
    """Whether the pool gives connections back without a reset (``make_engine`` on SQLite).
    The asyncpg adapter's ROLLBACK does nothing outside a transaction it began."""
    reset = getattr(pool, "_reset_on_return", "unknown")
    return reset is None or str(reset).endswith("reset_none")


SETTLE_TIMEOUT = 10.0
"""Seconds a cancelled user's PostgreSQL connection may take to finish its command before
it is closed instead of going back to the pool."""


async def _settle(fairy: Any) -> None:
    """Return an asyncpg connection whose user was cancelled to the pool: asyncpg runs a
    new command only once the cancelled one has ended, so a trivial one waits for that; a
    connection that fails it (or takes too long) is closed instead."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await fairy.driver_connection.execute("SELECT 1")
    except Exception:
        with contextlib.suppress(Exception):
            await greenlet_spawn(fairy.invalidate)
    with contextlib.suppress(Exception):
        await greenlet_spawn(fairy.close)


def _background(work: Any) -> None:
    """Let ``work`` (a coroutine or a future) finish on its own; :func:`returned` waits for it."""
    task = asyncio.ensure_future(work)
    _returning.add(task)
    task.add_done_callback(_returning.discard)


async def returned() -> None:
    """Wait until every connection of a cancelled user is back in its pool, and the SQLite
    group writers of this event loop are idle (tests)."""
    while True:
        busy = set(_returning)
        busy.update(w.task for w in _groups.get(asyncio.get_running_loop(), {}).values() if w.task)
        if not busy:
            return
        await asyncio.wait(busy)


async def _checkout(engine: AsyncEngine) -> Any:
    """A connection out of the engine's pool. Opening a new one is never interrupted: a
    caller cancelled meanwhile leaves it to finish opening in the background and go back to
    the pool (asyncpg interrupted mid-handshake logs errors, and a cancelled caller is
    normal). An idle pooled connection is handed out without a pause, so nothing to shield."""
    pool = engine.sync_engine.pool
    idle = getattr(pool, "checkedin", None)
    if idle is not None and idle() > 0:
        return await greenlet_spawn(pool.connect)
    opening = asyncio.ensure_future(greenlet_spawn(pool.connect))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_give_back)
        raise


def _give_back(opening: asyncio.Future[Any]) -> None:
    """A connection opened for a caller that was cancelled: back to the pool."""
    if opening.cancelled() or opening.exception() is not None:
        return  # the exception is retrieved: the caller is gone, nothing to report
    _background(greenlet_spawn(opening.result().close))


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
    """One write statement in a transaction of its own; its row count."""
    if engine.dialect.name == "postgresql":
        if _observers:
            _note(stmt.sqlite, True)
        async with driver(engine) as db:
            status: str = await db.execute(stmt.pg, *stmt.args(params))
            return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
    # An explicit transaction (not the driver's autocommit, which depends on how the
    # connection was set up): committed here, whatever the engine's settings.
    return await sqlite_write(engine, partial(_execute_sqlite, stmt.sqlite, params))


def _execute_sqlite(sql: str, params: Mapping[str, Any], conn: sqlite3.Connection) -> int:
    note(sql)
    return int(conn.execute(sql, params).rowcount)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def sqlite_writer(engine: AsyncEngine) -> asyncio.Lock:
    """The lock this process's writers of one SQLite database take before ``BEGIN
    IMMEDIATE``. SQLite has one writer at a time; without it, concurrent writers of this
    process would wait for each other inside SQLite's busy handler, which sleeps in steps of
    up to 100 ms instead of handing over at once. Other processes still meet in the busy
    handler."""
    locks = _writers.setdefault(asyncio.get_running_loop(), {})
    key = engine.url.render_as_string(hide_password=True)
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    return lock


MAX_GROUP = 64
"""Most write jobs committed together by :func:`sqlite_write`."""

Job = tuple[AsyncEngine, Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


def _run_group(conn: sqlite3.Connection, jobs: list[Job]) -> list[tuple[bool, Any]]:
    """In the connection's thread: every job in one transaction, each inside a savepoint so
    that a job that raises is undone alone. Returns (ok, result or exception) per job; if the
    COMMIT fails, it raises and nothing was written."""
    out: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for _, fn, _ in jobs:
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


class _GroupWriter:
    """Write jobs of one SQLite database file in this process (one per event loop), committed
    in groups: a job queued while a group is being written goes into the next one. One
    hand-over to the connection's thread and one commit (one ``fsync`` with
    ``synchronous=FULL``) per group instead of per job; alone, a job is written at once. A
    group runs on the engine of its first job (every engine of one URL reaches one file)."""

    def __init__(self) -> None:
        self.queue: list[Job] = []
        self.task: asyncio.Task[None] | None = None

    def submit(
        self, engine: AsyncEngine, fn: Callable[[sqlite3.Connection], Any]
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((engine, fn, fut))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        try:
            while self.queue:
                jobs = [j for j in self.queue[:MAX_GROUP] if not j[2].cancelled()]
                del self.queue[:MAX_GROUP]
                if not jobs:
                    continue
                try:
                    results = await self._write(jobs)
                except BaseException as err:  # nothing of this group was written
                    for _, _, fut in jobs:
                        if not fut.done():
                            fut.set_exception(err)
                    if not isinstance(err, Exception):
                        raise
                    continue
                for (_, _, fut), (ok, value) in zip(jobs, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            self.task = None
            for _, _, fut in self.queue:  # only if this task was cancelled (the loop closes)
                fut.cancel()
            self.queue.clear()

    async def _write(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        if _observers:
            _note("BEGIN", True)
        engine = jobs[0][0]
        async with sqlite_writer(engine), driver(engine) as db:
            run = getattr(db, "_execute", None)
            if run is None or not hasattr(db, "_conn"):
                raise RuntimeError(
                    "this aiosqlite has no Connection._execute: install aiosqlite>=0.17,<1"
                )
            results: list[tuple[bool, Any]] = await run(_run_group, db._conn, jobs)
            return results


_groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _GroupWriter]] = (
    weakref.WeakKeyDictionary()
)


async def sqlite_write(engine: AsyncEngine, fn: Callable[[sqlite3.Connection], R]) -> R:
    """Run ``fn(conn)`` in a write transaction on the ``sqlite3`` connection of a pooled
    aiosqlite connection, in that connection's thread; return its result or raise its
    exception (then nothing of it was written). Jobs submitted while another group is being
    written are committed together (see :class:`_GroupWriter`), each in its own savepoint.

    Why: every aiosqlite call is a round trip between the event loop and the connection's
    thread (a queue, a thread switch, a self-pipe write back to the loop, an epoll wake-up:
    each a system call, slow on a VM), so a store of five statements made one at a time cost
    five of them, and every commit its own ``fsync``. Once handed over, a job runs to its end
    even if its caller is cancelled. Uses aiosqlite's ``Connection._execute`` (present since
    its first release; checked at first use)."""
    groups = _groups.setdefault(asyncio.get_running_loop(), {})
    key = engine.url.render_as_string(hide_password=True)
    writer = groups.get(key)
    if writer is None:
        writer = groups[key] = _GroupWriter()
    # Not shielded: a caller cancelled before its job is taken drops the job; once taken, the
    # job is written anyway (the caller cannot know: as with any cancelled database write).
    result: R = await writer.submit(engine, fn)
    return result
