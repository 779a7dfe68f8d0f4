"""What every SQL adapter on one engine shares: one :class:`EngineShared` per engine, kept on
the engine itself (:func:`shared`), never in a module-level registry.

It holds the engine's setup (:func:`adapters._sqlsetup.prepare`), whether its schema was
checked (:mod:`adapters._schemacheck`), the SQLite group writer of each event loop
(:class:`adapters._sqlite.GroupWriter`), the wake-ups of this process's event receivers
(:class:`TopicHub`) and role waiters (:class:`RoleWakeups`), and the dialect's runners for the
statements that go to the driver. Every adapter built on the same engine object (or on an
engine made from it by ``execution_options``) shares it; another engine on the same database
is what another process would have: its receivers and role waiters are woken through the
database (NOTIFY on PostgreSQL, else polling), and its SQLite writers meet this engine's in
SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from . import _postgres, _sqlite
from ._fastsql import Statement, note
from ._sqlitethread import SQLiteThread

__all__ = ["EngineShared", "RoleWakeups", "TopicHub", "shared"]

R = TypeVar("R")

_ATTRIBUTE = "_workflow_shared"
"""The attribute of the (root) ``sqlalchemy.Engine`` that holds its :class:`EngineShared`."""


def shared(engine: AsyncEngine) -> EngineShared:
    """The :class:`EngineShared` of ``engine``, made at the first call. An engine made by
    ``engine.execution_options(...)`` shares its parent's (same pool, same database)."""
    sync = engine.sync_engine
    found = getattr(sync, _ATTRIBUTE, None)
    if found is None:
        root = sync
        while isinstance(getattr(root, "_proxied", None), sa.Engine):
            root = root._proxied  # type: ignore[attr-defined]
        found = getattr(root, _ATTRIBUTE, None)
        if found is None:
            found = EngineShared(engine, root)
            setattr(root, _ATTRIBUTE, found)
        if sync is not root:
            setattr(sync, _ATTRIBUTE, found)
    assert isinstance(found, EngineShared)
    return found


class EngineShared:
    """The shared machinery of one engine (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, root: sa.Engine) -> None:
        self.engine = engine
        self.sync = root
        self.postgres = engine.dialect.name == "postgresql"
        self.url = engine.url.render_as_string(hide_password=True)
        # adapters._sqlsetup.prepare: the engine's `synchronous` once it is set up
        self.synchronous: str | None = None
        # adapters._schemacheck: passed once, or the check under way
        self.schema_ok = False
        self.schema_check: asyncio.Future[None] | None = None
        self.topics = TopicHub()
        self.roles = RoleWakeups()
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _sqlite.GroupWriter]
        self._writers = weakref.WeakKeyDictionary()
        # SQLite on a file: the threads that own its writing and reading connections
        # (adapters._sqlitethread; set by adapters._sqlsetup.prepare), else None.
        self.sqlite_writer: SQLiteThread | None = None
        self.sqlite_reader: SQLiteThread | None = None
        # The dialect's conversions and driver runners, chosen once (no per-call dispatch).
        self.encode_time: Callable[[datetime], Any]
        self.clock: Callable[[timedelta | None], sa.ColumnElement[Any]]
        self.fetch: Callable[[Statement, Mapping[str, Any]], Awaitable[Sequence[Sequence[Any]]]]
        """The rows of one read statement, on the driver."""
        self.fetchval: Callable[[Statement, Mapping[str, Any]], Awaitable[Any]]
        """PostgreSQL: the first value of one statement in a transaction of its own."""
        self.execute: Callable[[Statement, Mapping[str, Any]], Awaitable[int]]
        """One write statement in a transaction of its own; its row count (on SQLite through
        :meth:`write`: committed there whatever the engine's settings)."""
        if self.postgres:
            self.encode_time, self.clock = _postgres.encode_time, _postgres.clock
            self.fetch = partial(_postgres.fetch, engine)
            self.fetchval = partial(_postgres.fetchval, engine)
            self.execute = partial(_postgres.execute, engine)
        else:
            self.encode_time, self.clock = _sqlite.encode_time, _sqlite.clock
            self.fetch = self._sqlite_fetch
            self.fetchval = self._no_fetchval
            self.execute = self._sqlite_execute

    def __repr__(self) -> str:
        return f"<EngineShared {self.url}>"

    # -- the driver ----------------------------------------------------------------------

    async def _no_fetchval(self, stmt: Statement, params: Mapping[str, Any]) -> Any:
        raise NotImplementedError("fetchval is for PostgreSQL (autocommit statements)")

    def _sqlite_fetch(
        self, stmt: Statement, params: Mapping[str, Any]
    ) -> Awaitable[Sequence[Sequence[Any]]]:
        reader = self.sqlite_reader
        if reader is None:
            return _sqlite.fetch(self.engine, stmt, params)
        note(stmt.text, True)
        return reader.submit(partial(_sqlite.rows, stmt, params))

    def close_threads(self) -> None:
        """End the SQLite threads (the engine is disposed; a later use starts them again)."""
        for thread in (self.sqlite_writer, self.sqlite_reader):
            if thread is not None:
                thread.close()

    def _sqlite_execute(self, stmt: Statement, params: Mapping[str, Any]) -> Awaitable[int]:
        return self.write(partial(_sqlite.execute, stmt, params))

    def write(self, fn: Callable[[sqlite3.Connection], R]) -> asyncio.Future[R]:
        """SQLite: ``fn(conn)`` in a group write of this event loop (see
        :meth:`adapters._sqlite.GroupWriter.submit`); its result."""
        return self.writer().submit(fn)

    def writer(self) -> _sqlite.GroupWriter:
        """SQLite: this event loop's group writer of the engine."""
        loop = asyncio.get_running_loop()
        found = self._writers.get(loop)
        if found is None:
            found = self._writers[loop] = _sqlite.GroupWriter(self.engine, self.sqlite_writer)
        return found


class TopicHub:
    """Wakes this process's event receivers waiting on a topic (of one engine).

    Its ``token`` marks the NOTIFYs of sends made through it (payload ``topic + "\\x1f" +
    token``): they woke its receivers already, so its LISTEN connections ignore them (each
    would cost a receiver an empty read). A NOTIFY without a token (a plain topic, as
    :func:`adapters.sqlstreamer.insert_events` sends by default) always wakes."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(6)
        self._futs: dict[str, dict[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}

    def waiter(self, topic: str) -> asyncio.Future[None]:
        """A future resolved by the next :meth:`wake` of ``topic``. Take it *before* looking
        for events, so an event committed in between is not missed."""
        loop = asyncio.get_running_loop()
        per_loop = self._futs.setdefault(topic, {})
        fut = per_loop.get(loop)
        if fut is None or fut.done():
            fut = per_loop[loop] = loop.create_future()
        return fut

    def wake(self, topic: str) -> None:
        per_loop = self._futs.pop(topic, None)
        if not per_loop:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, fut in per_loop.items():
            if loop is running:
                _resolve(fut)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)

    def wake_all(self) -> None:
        for topic in list(self._futs):
            self.wake(topic)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RoleWakeups:
    """Wakes the role waiters of this process (of one engine) when a lease of the role is
    released here."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def subscribe(self, role: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(role, set()).add(fut)
        return fut

    def unsubscribe(self, role: str, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(role)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[role]

    def wake(self, role: str) -> None:
        for fut in self._waiters.pop(role, set()):
            if not fut.done():
                fut.set_result(None)
