"""Statements run on the driver's own connection, the connection itself coming from (and going
back to) the engine's SQLAlchemy pool.

A transition reads its run, writes it back and moves a cursor: a handful of small statements.
Through SQLAlchemy's execution layer each costs about 1 ms of CPU here (compiled-cache
lookup, parameter processing, result wrapping, and on aiosqlite several thread hand-offs per
statement), against about 0.1 ms on the driver itself (see ``bench/RESULTS.md``). So the
statements on the path of every transition (:mod:`adapters._statements`) run on the asyncpg /
aiosqlite connection that SQLAlchemy's pool hands out: the connection still comes from, and
goes back to, the engine's pool (same settings, same limits, same ``dispose``). Everything
else stays on SQLAlchemy.

This module is the dialect-neutral part: checking a connection out and back in (also for
cancelled callers), :class:`Statement` (one text for both parameter styles) and the
statement observers of the benchmarks. The dialects' runners are in :mod:`adapters._sqlite`
and :mod:`adapters._postgres`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

__all__ = [
    "Statement",
    "aware_utc",
    "driver",
    "note",
    "observe",
    "returned",
    "track",
]

Observer = Callable[[str, bool], None]
_observers: list[Observer] = []


def observe(fn: Observer) -> Callable[[], None]:
    """Call ``fn(sql, starts_transaction)`` for every statement run here (benchmarks count
    statements and transactions with it); returns the function that removes it."""
    _observers.append(fn)
    return lambda: _observers.remove(fn)


def note(sql: str, starts_transaction: bool = False) -> None:
    """Report a statement to the observers (for statements run inside a SQLite group write,
    :class:`adapters._sqlite.GroupWriter`)."""
    if _observers:
        _note(sql, starts_transaction)


def _note(sql: str, starts_transaction: bool) -> None:
    for fn in _observers:
        fn(sql, starts_transaction)


class Statement:
    """One SQL text with ``:name`` parameters (``text``: what SQLite and SQLAlchemy's ``text()``
    take), and the same for asyncpg (``pg``: ``$1, $2, ...``, the values in ``names`` order)."""

    __slots__ = ("names", "pg", "text")

    def __init__(self, sql: str) -> None:
        self.text = sql
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.pg = re.sub(r"(?<![:\w]):(\w+)", number, sql)
        self.names = tuple(names)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[n] for n in self.names]

    def __repr__(self) -> str:
        return f"Statement({self.text!r})"


def aware_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive time is refused (both dialects store UTC, and a naive time
    could be anything)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the SQL adapters store aware UTC times")
    return value.astimezone(UTC)


_returning: set[asyncio.Future[Any]] = set()
"""Connections of cancelled users on their way back to the pool (see :func:`driver`), and the
SQLite group writers' tasks (:func:`track`): what :func:`returned` waits for."""


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
    track(asyncio.ensure_future(work))


def track(task: asyncio.Future[Any]) -> None:
    """Count ``task`` as work :func:`returned` waits for (the SQLite group writers' tasks)."""
    _returning.add(task)
    task.add_done_callback(_returning.discard)


async def returned() -> None:
    """Wait until every connection of a cancelled user of this event loop is back in its pool,
    and the SQLite group writers of this event loop are idle (tests)."""
    loop = asyncio.get_running_loop()
    while True:
        busy = {f for f in _returning if f.get_loop() is loop}
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
