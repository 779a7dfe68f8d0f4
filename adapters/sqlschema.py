"""The SQL tables of every SQL adapter, on SQLite (aiosqlite) and PostgreSQL (asyncpg).

One :class:`sqlalchemy.MetaData` holds them all; ``migrations/`` creates the same schema with
alembic, and :func:`create_schema` creates it directly (tests, the quick start).

Times are stored as UTC: ``timestamptz`` on PostgreSQL, ISO text on SQLite, and always come
back timezone-aware. Run objects are JSON: ``jsonb`` on PostgreSQL (queryable), text on SQLite.
How each dialect stores them is said once, in :mod:`adapters._sqlite` and
:mod:`adapters._postgres`; the statements the adapters write by hand take their column lists
from these tables (:mod:`adapters._statements`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import _postgres, _sqlite
from ._sqlsetup import prepare

__all__ = [
    "JSONBytes",
    "UTCDateTime",
    "create_schema",
    "cursors",
    "drop_schema",
    "events",
    "foreign_key",
    "history",
    "leases",
    "make_engine",
    "metadata",
    "outbox",
    "reading",
    "records",
    "timeouts",
]


class _SQLiteTime(sa.types.UserDefinedType[str]):
    """SQLite: a ``DATETIME`` column whose values pass as they are (the text of
    :func:`adapters._sqlite.encode_time`)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "DATETIME"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (microsecond precision), stored as
    :mod:`adapters._sqlite` and :mod:`adapters._postgres` say."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteTime())
        return dialect.type_descriptor(self.impl_instance)

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return _sqlite.encode_time(value)
        return _postgres.encode_time(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return _sqlite.decode_time(value)
        return _postgres.decode_time(value)


class _JSONBText(sa.types.UserDefinedType[str]):
    """``jsonb`` passed to and from the driver as JSON text (no re-serialisation)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "JSONB"

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.cast(bindvalue, JSONB)


class _TextBytes(sa.types.TypeDecorator[bytes]):
    """Text read back as UTF-8 bytes."""

    impl = sa.Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> bytes | None:
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)


class JSONBytes(sa.types.TypeDecorator[bytes]):
    """JSON given and returned as UTF-8 bytes: ``jsonb`` on PostgreSQL, text elsewhere.

    Reads select ``CAST(col AS TEXT)`` so that no driver decodes the JSON on the way.
    """

    impl = sa.Text
    cache_ok = True

    def column_expression(self, col: Any) -> Any:
        return sa.type_coerce(sa.cast(col, sa.Text()), _TextBytes())

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_JSONBText())
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: bytes | str | None, dialect: sa.Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return bytes(value).decode()

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> bytes | None:
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)


def foreign_key(workflow_name: str, foreign_id: str) -> str:
    """A fixed-size key for a (workflow, foreign id) pair: foreign ids may be long (indexes
    have row-size limits), so indexes use this digest and queries also compare the id."""
    return hashlib.sha256(f"{workflow_name}\x00{foreign_id}".encode()).hexdigest()


_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""Auto-increment ids: SQLite only auto-increments ``INTEGER PRIMARY KEY`` (which reuses the
largest id once its row is deleted, unless the table says ``sqlite_autoincrement``)."""

_RETRYING = "retry_at IS NOT NULL"
_KEYED = "idempotency_key IS NOT NULL"
_CHILD = "parent_run_id IS NOT NULL"
_UNFINISHED = "run_state IN (1, 2, 3)"  # Initiated, Running, Paused

metadata = sa.MetaData()

records = sa.Table(
    "workflow_records",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("workflow_name", sa.String(255), nullable=False),
    sa.Column("foreign_id", sa.Text(), nullable=False),
    sa.Column("foreign_key", sa.String(64), nullable=False),
    sa.Column("run_state", sa.SmallInteger(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("object", JSONBytes(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("run_state_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("status_description", sa.Text(), nullable=False, server_default=""),
    sa.Column("trace_origin", sa.Text(), nullable=False, server_default=""),
    sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("retry_at", UTCDateTime(), nullable=True),
    sa.Column("paused_by", sa.Text(), nullable=False, server_default=""),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    # composition (0003): a child names its parent run (NULL: no parent); the saga's stack of
    # compensable statuses as text ("3,5", oldest first; NULL: empty) and whether it unwinds
    sa.Column("parent_workflow_name", sa.String(255), nullable=True),
    sa.Column("parent_run_id", sa.String(64), nullable=True),
    sa.Column("compensations", sa.Text(), nullable=True),
    sa.Column("compensating", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("run_id", name="uq_workflow_records_run_id"),
    sa.Index("ix_workflow_records_key", "foreign_key", "id"),
    sa.Index("ix_workflow_records_workflow", "workflow_name", "id"),
    sa.Index("ix_workflow_records_run_state", "run_state"),
    # At most one unfinished run per (workflow, foreign id), enforced by the database.
    sa.Index(
        "uq_workflow_records_unfinished",
        "foreign_key",
        unique=True,
        sqlite_where=sa.text(_UNFINISHED),
        postgresql_where=sa.text(_UNFINISHED),
    ),
    # Due retries, found by the retry process of each status.
    sa.Index(
        "ix_workflow_records_retry_due",
        "workflow_name",
        "status",
        "retry_at",
        sqlite_where=sa.text(_RETRYING),
        postgresql_where=sa.text(_RETRYING),
    ),
    # An idempotency key names one run of a workflow, for as long as the run's row exists.
    sa.Index(
        "uq_workflow_records_idempotency_key",
        "workflow_name",
        "idempotency_key",
        unique=True,
        sqlite_where=sa.text(_KEYED),
        postgresql_where=sa.text(_KEYED),
    ),
    # The children of a run (Filter.by_parent); most runs have no parent.
    sa.Index(
        "ix_workflow_records_parent",
        "parent_run_id",
        sqlite_where=sa.text(_CHILD),
        postgresql_where=sa.text(_CHILD),
    ),
)

history = sa.Table(
    "workflow_record_history",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("run_state", sa.SmallInteger(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("object", JSONBytes(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("run_state_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("status_description", sa.Text(), nullable=False, server_default=""),
    sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("retry_at", UTCDateTime(), nullable=True),
    sa.Column("paused_by", sa.Text(), nullable=False, server_default=""),
    sa.Column("compensations", sa.Text(), nullable=True),
    sa.Column("compensating", sa.Boolean(), nullable=False, server_default=sa.false()),
)

outbox = sa.Table(
    "workflow_outbox",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("workflow_name", sa.String(255), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("event_id", name="uq_workflow_outbox_event_id"),
    sa.Index("ix_workflow_outbox_workflow_id", "workflow_name", "id"),
)

timeouts = sa.Table(
    "workflow_timeouts",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("workflow_name", sa.String(255), nullable=False),
    sa.Column("foreign_id", sa.Text(), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("idx", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("completed", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("expire_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_workflow_timeouts_due", "workflow_name", "status", "completed", "expire_at"),
    sa.Index("ix_workflow_timeouts_run", "run_id", "status"),
    # A timer's id is never reused (0004): the timeout process completes or cancels the timer
    # it fired by id, after the run's move may have removed it; a plain INTEGER PRIMARY KEY
    # would hand the removed id to another run's new timer. PostgreSQL's sequence never reuses.
    sqlite_autoincrement=True,
)

events = sa.Table(
    "workflow_events",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("foreign_id", sa.Text(), nullable=False),
    sa.Column("type", sa.Integer(), nullable=False),
    sa.Column("headers", JSONBytes(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_workflow_events_topic_id", "topic", "id"),
)

cursors = sa.Table(
    "workflow_cursors",
    metadata,
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

leases = sa.Table(
    "workflow_leases",
    metadata,
    sa.Column("role", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("token", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> AsyncEngine:
    """An :class:`AsyncEngine` for the workflow adapters: ``create_async_engine(url,
    **kwargs)`` set up by :func:`adapters._sqlsetup.prepare` (which every SQL adapter also
    applies to the engine it is given, so a plain engine works too).

    On SQLite: WAL journal (readers never block the writer), a 30 s busy timeout, foreign
    processes on the same file serialised by ``BEGIN IMMEDIATE`` (no deadlocks between a
    read and a later write), and ``synchronous=FULL`` unless told otherwise (a committed
    transition survives power loss).
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    if url.startswith("sqlite"):
        # Every user of these connections ends its own transaction (SQLAlchemy's Connection
        # rolls back on close; the adapters' driver-level writes commit or roll back in one
        # go), so the pool's extra ROLLBACK on every check-in (a round trip to the
        # connection's thread) is skipped. Pass pool_reset_on_return="rollback" to have it.
        kwargs.setdefault("pool_reset_on_return", None)
    return prepare(create_async_engine(url, **kwargs), sqlite_synchronous=sqlite_synchronous)


@contextlib.asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads only. On SQLite its transaction does not take the write lock
    (writers use ``engine.begin()``, which does); elsewhere it is ``engine.connect()``."""
    async with engine.connect() as conn:
        yield await conn.execution_options(workflow_read_only=True)


async def create_schema(engine: AsyncEngine) -> None:
    """Create every SQL adapter's tables (idempotent). Production deployments use the
    alembic migrations in ``migrations/`` instead; both give the same schema."""
    prepare(engine)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def drop_schema(engine: AsyncEngine) -> None:
    """Drop every SQL adapter's table (tests)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
