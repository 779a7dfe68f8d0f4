"""What an engine needs to serve the SQL adapters, set up by the adapters themselves.

Every SQL adapter calls :func:`prepare` on the engine it is given, so an engine made by plain
``create_async_engine`` works exactly like one from :func:`adapters.sqlschema.make_engine`
(which calls it too). On SQLite each pooled connection is set up the first time it is checked
out (also connections opened before the adapter existed): the driver's own transaction
handling is turned off (``isolation_level = None``: the adapters' driver-level writes commit
when they say so, and SQLAlchemy's ``begin`` emits ``BEGIN`` itself), WAL journal, a 30 s busy
timeout and ``synchronous``; SQLAlchemy transactions take the write lock up front (``BEGIN
IMMEDIATE``) unless opened by :func:`adapters.sqlschema.reading`. A database file that cannot
be opened raises :class:`DatabaseFileError` naming the file and what is wrong with it.

PostgreSQL needs nothing of the engine. The SQLite statements are in :mod:`adapters._sqlite`;
whether an engine is set up is kept by its :class:`~adapters._sqlengine.EngineShared`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import WorkflowError

from . import _sqlite
from ._sqlengine import EngineShared, shared
from ._sqlitethread import SQLiteThread

__all__ = ["DatabaseFileError", "SQLSetupError", "SchemaError", "prepare"]


class SQLSetupError(WorkflowError):
    """The database cannot serve the workflow as it is set up; the message says what to
    change. Retrying the same call does not help until it is changed."""


class DatabaseFileError(SQLSetupError):
    """The SQLite database file cannot be opened: the message names it and says why (its
    directory must exist and be writable: WAL keeps ``-wal``/``-shm`` files next to it)."""


class SchemaError(SQLSetupError):
    """The database's tables are not the ones the SQL adapters need (missing, or missing
    the index that keeps one unfinished run per foreign id): apply the migrations."""


def prepare(engine: AsyncEngine, *, sqlite_synchronous: str = "FULL") -> AsyncEngine:
    """Set ``engine`` up for the SQL adapters (once per engine; later calls change nothing)
    and return it. See the module docstring."""
    db = shared(engine)
    if db.synchronous is not None:
        return engine
    synchronous = sqlite_synchronous.upper()
    if db.sync.dialect.name == "sqlite":
        if synchronous not in _sqlite.SYNCHRONOUS:
            raise ValueError(
                f"sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA: {sqlite_synchronous!r}"
            )
        _prepare_sqlite(db, synchronous)
    db.synchronous = synchronous
    return engine


def _prepare_sqlite(db: EngineShared, synchronous: str) -> None:
    sync = db.sync
    path = _database_path(sync.url)

    def do_connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as err:
            _raise_file_error(err, path)
            raise

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("workflow_ready") is dbapi_conn:
            return
        try:
            _sqlite.set_up(dbapi_conn, synchronous)
        except Exception as err:
            _raise_file_error(err, path)
            raise
        record.info["workflow_ready"] = dbapi_conn

    def begin(conn: sa.Connection) -> None:
        # Readers (see `reading`) do not block anyone; writers take the write lock up front.
        read_only = conn.get_execution_options().get("workflow_read_only", False)
        conn.exec_driver_sql(_sqlite.begin(read_only))

    if path is not None:  # a file: the threads that own its connections (_sqlitethread)

        def open_error(err: Exception) -> None:
            _raise_file_error(err, path)

        db.sqlite_writer = SQLiteThread(str(path), synchronous, "writer", open_error)
        db.sqlite_reader = SQLiteThread(str(path), synchronous, "reader", open_error)
        event.listen(sync, "engine_disposed", lambda _engine: db.close_threads())
    event.listen(sync, "do_connect", do_connect)
    event.listen(sync, "checkout", checkout)
    event.listen(sync, "begin", begin)


def _database_path(url: sa.URL) -> Path | None:
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute()


def _cannot_open(err: BaseException) -> bool:
    for e in (err, getattr(err, "orig", None), err.__cause__):
        if isinstance(e, sqlite3.Error) and (
            getattr(e, "sqlite_errorname", "") == "SQLITE_CANTOPEN"
            or "unable to open database file" in str(e)
        ):
            return True
    return "unable to open database file" in str(err)


def _raise_file_error(err: Exception, path: Path | None) -> None:
    """Raise :class:`DatabaseFileError` if ``err`` is SQLite failing to open the file."""
    if path is not None and _cannot_open(err):
        raise DatabaseFileError(f"cannot open the SQLite database {path}: {_why(path)}") from err


def _why(path: Path) -> str:
    side = f"{path.name}-wal and {path.name}-shm"
    directory = path.parent
    if not directory.exists():
        blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a directory: choose a path in a directory"
        return f"its directory {directory} does not exist: create it (writable) first"
    if not directory.is_dir():
        return f"{directory} is a file, not a directory: choose a path in a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"its directory {directory} is not writable: make it writable (SQLite in WAL "
            f"mode creates {side} next to the database file), or move the database"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "the file is not readable and writable: fix its permissions"
    return (
        f"check that the file and its directory {directory} are readable and writable "
        f"(WAL mode also needs {side} there)"
    )
