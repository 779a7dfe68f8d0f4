"""A record store on SQL (SQLite or PostgreSQL) through SQLAlchemy 2 async.

Every ``store`` is one transaction: the run's row (compare-and-set on its version), a row of
its history, and its outbox row. The database itself keeps at most one unfinished run per
(workflow, foreign id): a partial unique index, so concurrent triggers from any number of
processes give one run and a :class:`~workflow.WorkflowInProgressError` for the others.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Sequence
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import (
    ConcurrentUpdateError,
    Meta,
    OutboxEvent,
    Record,
    RecordNotFoundError,
    RunState,
    WorkflowInProgressError,
)
from workflow.abc import Clock, Filter, Header, Order, make_outbox_event

from ._fastsql import (
    Statement,
    db_time,
    fetch,
    fetchval,
    from_db_time,
    note,
    sqlite_write,
)
from ._schemacheck import check_schema
from ._sqlsetup import prepare
from .sqlschema import create_schema, foreign_key, history, outbox, reading, records
from .sqlstreamer import LOCK_NAMESPACE, SQLStreamer

__all__ = ["SQLRecordStore", "create_schema"]

_RECORD_COLUMNS = (
    records.c.workflow_name,
    records.c.foreign_id,
    records.c.run_id,
    records.c.run_state,
    records.c.status,
    records.c.object,
    records.c.created_at,
    records.c.updated_at,
    records.c.run_state_reason,
    records.c.status_description,
    records.c.version,
    records.c.trace_origin,
)


# -- the hot statements, on the driver (adapters._fastsql) ---------------------------------

_COLUMNS = (
    "workflow_name, foreign_id, run_id, run_state, status, CAST(object AS TEXT), created_at, "
    "updated_at, run_state_reason, status_description, version, trace_origin"
)
_LOOKUP = Statement(f"SELECT {_COLUMNS} FROM workflow_records WHERE run_id = :run_id")

_INSERT_RECORD = Statement(
    """INSERT INTO workflow_records
        (run_id, workflow_name, foreign_id, foreign_key, run_state, status, object,
         created_at, updated_at, version, run_state_reason, status_description, trace_origin)
    VALUES (:run_id, :workflow_name, :foreign_id, :foreign_key, :run_state, :status,
            :object, :run_created_at, :updated_at, :version, :run_state_reason,
            :status_description, :trace_origin)"""
)
_UPDATE_RECORD = Statement(
    """UPDATE workflow_records SET run_state = :run_state, status = :status,
        object = :object, updated_at = :updated_at, version = :version,
        run_state_reason = :run_state_reason, status_description = :status_description
    WHERE run_id = :run_id AND version = :prev"""
)
_INSERT_HISTORY = Statement(
    """INSERT INTO workflow_record_history
        (run_id, version, run_state, status, object, updated_at, run_state_reason,
         status_description)
    VALUES (:run_id, :version, :run_state, :status, :object, :updated_at,
            :run_state_reason, :status_description)"""
)
_SCRUB_HISTORY = Statement(
    """UPDATE workflow_record_history SET object = :object
    WHERE run_id = :run_id AND version < :version"""
)
"""On the DATA_DELETED write: every earlier version's object is replaced by the deleted one
(a run's personal data must not survive its deletion in the history)."""
_INSERT_OUTBOX = Statement(
    """INSERT INTO workflow_outbox (event_id, workflow_name, data, created_at)
    VALUES (:event_id, :workflow_name, :data, :created_at)"""
)
_INSERT_EVENT = Statement(
    """INSERT INTO workflow_events (topic, foreign_id, type, headers, created_at)
    VALUES (:topic, :run_id, :status, :headers, :created_at)"""
)

# PostgreSQL: the record, its history row and its outbox row (or event) in ONE autocommit
# statement (data-modifying CTEs): one round trip, still all or nothing. The count says
# whether the compare-and-set matched.
_PG_UPDATE_HEAD = """WITH r AS (
    UPDATE workflow_records SET run_state = :run_state, status = :status,
        object = CAST(:object AS JSONB), updated_at = :updated_at, version = :version,
        run_state_reason = :run_state_reason, status_description = :status_description
    WHERE run_id = :run_id AND version = :prev{gate}
    RETURNING run_id"""
_PG_INSERT_HEAD = """WITH r AS (
    INSERT INTO workflow_records
        (run_id, workflow_name, foreign_id, foreign_key, run_state, status, object,
         created_at, updated_at, version, run_state_reason, status_description, trace_origin)
    SELECT :run_id, :workflow_name, :foreign_id, :foreign_key, :run_state, :status,
            CAST(:object AS JSONB), :run_created_at, :updated_at, :version, :run_state_reason,
            :status_description, :trace_origin{gate_from}
    RETURNING run_id"""
_PG_HISTORY = """
), h AS (
    INSERT INTO workflow_record_history
        (run_id, version, run_state, status, object, updated_at, run_state_reason,
         status_description)
    SELECT run_id, CAST(:version AS INTEGER), CAST(:run_state AS SMALLINT),
           CAST(:status AS INTEGER), CAST(:object AS JSONB), CAST(:updated_at AS TIMESTAMPTZ),
           CAST(:run_state_reason AS TEXT), CAST(:status_description AS TEXT) FROM r"""
_PG_SCRUB = """
), s AS (
    UPDATE workflow_record_history SET object = CAST(:object AS JSONB)
    WHERE run_id = (SELECT run_id FROM r) AND version < CAST(:version AS INTEGER)"""
_PG_OUTBOX = """
), o AS (
    INSERT INTO workflow_outbox (event_id, workflow_name, data, created_at)
    SELECT CAST(:event_id AS VARCHAR), CAST(:workflow_name AS VARCHAR), CAST(:data AS BYTEA),
           CAST(:created_at AS TIMESTAMPTZ) FROM r
)
SELECT count(*) FROM r
"""
# With SQLRecordStore(streamer=...) the event goes straight into workflow_events. Its id must
# be drawn under the topic's insert lock (see adapters.sqlstreamer), so the statement starts
# with a CTE that takes that lock (and NOTIFYs), and the record write is gated on it: an
# uncorrelated sub-select is evaluated once, before any row is read or locked. Every writer
# thus takes one topic lock first and one run's row after it (no lock-order cycle), and the
# lock is held until the statement commits.
_PG_LOCK = """WITH l AS MATERIALIZED (
    SELECT 1 AS one FROM (
        SELECT pg_advisory_xact_lock(CAST(:namespace AS INTEGER), hashtext(CAST(:topic AS TEXT))),
               pg_notify(CAST(:channel AS TEXT), CAST(:payload AS TEXT))
    ) t
), """
_PG_EVENT = """
), e AS (
    INSERT INTO workflow_events (topic, foreign_id, type, headers, created_at)
    SELECT CAST(:topic AS VARCHAR), run_id, CAST(:status AS INTEGER), CAST(:headers AS JSONB),
           CAST(:created_at AS TIMESTAMPTZ) FROM r
)
SELECT count(*) FROM r
"""
_GATE = {"gate": " AND (SELECT one FROM l) = 1", "gate_from": " FROM l"}
_NO_GATE = {"gate": "", "gate_from": ""}
_PG_UPDATE = Statement(_PG_UPDATE_HEAD.format(**_NO_GATE) + _PG_HISTORY + _PG_OUTBOX)
_PG_INSERT = Statement(_PG_INSERT_HEAD.format(**_NO_GATE) + _PG_HISTORY + _PG_OUTBOX)
_PG_UPDATE_DIRECT = Statement(
    _PG_LOCK + _PG_UPDATE_HEAD.format(**_GATE).removeprefix("WITH ") + _PG_HISTORY + _PG_EVENT
)
# The DATA_DELETED write (an update, never a first version) also scrubs the history.
_PG_DELETE = Statement(_PG_UPDATE_HEAD.format(**_NO_GATE) + _PG_HISTORY + _PG_SCRUB + _PG_OUTBOX)
_PG_DELETE_DIRECT = Statement(
    _PG_LOCK
    + _PG_UPDATE_HEAD.format(**_GATE).removeprefix("WITH ")
    + _PG_HISTORY
    + _PG_SCRUB
    + _PG_EVENT
)
_PG_INSERT_DIRECT = Statement(
    _PG_LOCK + _PG_INSERT_HEAD.format(**_GATE).removeprefix("WITH ") + _PG_HISTORY + _PG_EVENT
)


def _store_sqlite(
    params: dict[str, Any], version: int, tail: Statement, conn: sqlite3.Connection
) -> int:
    """SQLite, in the connection's thread and its write transaction: the run's row (insert,
    or compare-and-set update), its history row and ``tail`` (its outbox row or its event).
    Returns how many run rows were written: 0 when the compare-and-set failed (then nothing
    was written)."""
    if version == 1:
        note(_INSERT_RECORD.sqlite)
        conn.execute(_INSERT_RECORD.sqlite, params)
    else:
        note(_UPDATE_RECORD.sqlite)
        if conn.execute(_UPDATE_RECORD.sqlite, params).rowcount != 1:
            return 0
    note(_INSERT_HISTORY.sqlite)
    conn.execute(_INSERT_HISTORY.sqlite, params)
    if params["run_state"] == RunState.DATA_DELETED:
        note(_SCRUB_HISTORY.sqlite)
        conn.execute(_SCRUB_HISTORY.sqlite, params)
    note(tail.sqlite)
    conn.execute(tail.sqlite, params)
    return 1


def _unstorable(text: str) -> bool:
    """A NUL (PostgreSQL text cannot hold one) or a lone surrogate (no UTF-8 form): no
    stored value has one, and the drivers would fail to send it."""
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _unique_violation(err: Exception) -> bool:
    """A unique index refused the write (sqlite3, asyncpg or SQLAlchemy's wrapper of them)."""
    if isinstance(err, (IntegrityError, sqlite3.IntegrityError)):
        return True
    return getattr(err, "sqlstate", None) == "23505"  # asyncpg's unique_violation


def _url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _stale(record: Record) -> ConcurrentUpdateError:
    version = record.meta.version
    return ConcurrentUpdateError(
        f"run {record.run_id} is not at version {version - 1}: a write of version {version} "
        "is stale (or the run does not exist). Read it again"
    )


def _record(row: Any) -> Record:
    return Record(
        workflow_name=row.workflow_name,
        foreign_id=row.foreign_id,
        run_id=row.run_id,
        run_state=RunState(row.run_state),
        status=row.status,
        object=row.object,
        created_at=row.created_at,
        updated_at=row.updated_at,
        meta=Meta(
            run_state_reason=row.run_state_reason,
            status_description=row.status_description,
            version=row.version,
            trace_origin=row.trace_origin,
        ),
    )


class SQLRecordStore:
    """:class:`~workflow.RecordStore` on a SQLAlchemy :class:`AsyncEngine`.

    Create the tables with ``await create_schema(engine)`` (or the alembic migrations).
    ``clock`` is accepted for symmetry: stored times are the engine's, never the database's.

    ``streamer``: a :class:`~adapters.sqlstreamer.SQLStreamer` on the same database. Each
    stored record's event is then appended to that streamer's events table in the store's
    own transaction, instead of an outbox row that the workflow's outbox relay copies there
    later: the same guarantee (the event exists exactly when the record version does), with
    three statements and one hand-over less per transition. The workflow must be built with
    that streamer (``Builder.build`` checks).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock | None = None,
        streamer: SQLStreamer | None = None,
    ) -> None:
        self.engine = prepare(engine)
        self._clock = clock
        self._schema_checked = False
        self._pg = engine.dialect.name == "postgresql"
        if streamer is not None and _url(streamer.engine) != _url(engine):
            raise ValueError(
                "SQLRecordStore(streamer=...) needs a SQLStreamer on the same database: the "
                f"store uses {_url(engine)!r}, the streamer {_url(streamer.engine)!r}"
            )
        self._streamer = streamer

    @property
    def publishes_to(self) -> SQLStreamer | None:
        """The streamer this store appends events to itself (``None``: the outbox)."""
        return self._streamer

    # -- writes ---------------------------------------------------------------------------

    async def store(self, record: Record) -> None:
        if not self._schema_checked:  # once: refuse a database without the unique index
            await check_schema(self.engine)
            self._schema_checked = True
        meta = record.meta
        version = meta.version
        pg = self._pg
        params: dict[str, Any] = {
            "run_id": record.run_id,
            "run_state": int(record.run_state),
            "status": record.status,
            "object": record.object.decode(),
            "updated_at": db_time(record.updated_at, pg),
            "version": version,
            "prev": version - 1,
            "run_state_reason": meta.run_state_reason,
            "status_description": meta.status_description,
        }
        if version == 1:
            params.update(
                workflow_name=record.workflow_name,
                foreign_id=record.foreign_id,
                foreign_key=foreign_key(record.workflow_name, record.foreign_id),
                run_created_at=db_time(record.created_at, pg),
                trace_origin=meta.trace_origin,
            )
        event = make_outbox_event(record)
        streamer = self._streamer
        tp = ""
        if streamer is None:  # an outbox row, for the relay
            params.update(
                event_id=event.id,
                workflow_name=record.workflow_name,
                data=event.data,
                created_at=db_time(event.created_at, pg),
            )
            insert, update, delete = _PG_INSERT, _PG_UPDATE, _PG_DELETE
            tail = _INSERT_OUTBOX
        else:  # the event itself, in the streamer's table
            _, _, headers = event.parts()
            tp = headers[Header.TOPIC]
            params.update(
                topic=tp,
                headers=json.dumps(headers, separators=(",", ":"), ensure_ascii=False),
                created_at=db_time(streamer.now(), pg),
                namespace=LOCK_NAMESPACE,
                channel=streamer.channel,
                payload=streamer.notify_payload(tp),
            )
            insert, update, delete = _PG_INSERT_DIRECT, _PG_UPDATE_DIRECT, _PG_DELETE_DIRECT
            tail = _INSERT_EVENT
        try:
            if pg:  # one autocommit statement (direct: the topic's lock first)
                stmt = update
                if version == 1:
                    stmt = insert
                elif record.run_state is RunState.DATA_DELETED:
                    stmt = delete
                written = int(await fetchval(self.engine, stmt, params))
            else:
                written = await sqlite_write(
                    self.engine, partial(_store_sqlite, params, version, tail)
                )
        except Exception as err:
            raise self._refused(err, record) if _unique_violation(err) else err from None
        finally:
            if streamer is not None:
                await streamer.published(tp, 1)  # after a failure: one spurious wake-up
        if written != 1:
            raise _stale(record)

    @staticmethod
    def _refused(err: Exception, record: Record) -> Exception:
        text = str(getattr(err, "orig", None) or err)
        if "run_id" in text:
            return ConcurrentUpdateError(
                f"run {record.run_id} already exists: version 1 can only be stored once"
            )
        return WorkflowInProgressError(
            f"foreign id {record.foreign_id!r} of workflow {record.workflow_name!r} has an "
            "unfinished run; wait for it to finish or cancel it"
        )

    # -- reads ----------------------------------------------------------------------------

    async def _one(self, query: sa.Select[Any], missing: str) -> Record:
        async with reading(self.engine) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise RecordNotFoundError(missing)
        return _record(row)

    async def lookup(self, run_id: str) -> Record:
        if _unstorable(run_id):  # no stored run has one (and no driver could send it)
            raise RecordNotFoundError(f"no run with id {run_id!r}")
        rows = await fetch(self.engine, _LOOKUP, {"run_id": run_id})
        if not rows:
            raise RecordNotFoundError(f"no run with id {run_id!r}")
        r = rows[0]
        return Record(
            workflow_name=r[0],
            foreign_id=r[1],
            run_id=r[2],
            run_state=RunState(r[3]),
            status=r[4],
            object=r[5].encode(),
            created_at=from_db_time(r[6]),
            updated_at=from_db_time(r[7]),
            meta=Meta(
                run_state_reason=r[8], status_description=r[9], version=r[10], trace_origin=r[11]
            ),
        )

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        if _unstorable(foreign_id) or _unstorable(workflow_name):
            raise RecordNotFoundError(
                f"workflow {workflow_name!r} has no run for foreign id {foreign_id!r}"
            )
        return await self._one(
            sa.select(*_RECORD_COLUMNS)
            .where(
                records.c.foreign_key == foreign_key(workflow_name, foreign_id),
                records.c.workflow_name == workflow_name,
                records.c.foreign_id == foreign_id,
            )
            .order_by(records.c.id.desc())
            .limit(1),
            f"workflow {workflow_name!r} has no run for foreign id {foreign_id!r}",
        )

    async def list(
        self,
        workflow_name: str = "",
        offset_id: int = 0,
        limit: int = 25,
        order: Order = "asc",
        *filters: Filter,
    ) -> builtins.list[Record]:
        query = sa.select(*_RECORD_COLUMNS)
        if workflow_name:
            query = query.where(records.c.workflow_name == workflow_name)
        for f in filters:
            query = query.where(_condition(f, workflow_name))
        query = query.order_by(records.c.id.asc() if order == "asc" else records.c.id.desc())
        query = query.limit(limit if limit > 0 else 25)
        if offset_id > 0:
            query = query.offset(offset_id)
        async with reading(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def versions(self, run_ids: Sequence[str]) -> dict[str, int]:
        """The current version of each existing run among ``run_ids`` (one statement per
        ``_VERSIONS_CHUNK`` ids)."""
        out: dict[str, int] = {}
        ids = [r for r in run_ids if "\x00" not in r]
        async with reading(self.engine) as conn:
            for i in range(0, len(ids), _VERSIONS_CHUNK):
                query = sa.select(records.c.run_id, records.c.version).where(
                    records.c.run_id.in_(ids[i : i + _VERSIONS_CHUNK])
                )
                out.update((row[0], row[1]) for row in await conn.execute(query))
        return out

    async def history(self, run_id: str) -> builtins.list[Record]:
        """Every stored version of the run, oldest first."""
        if _unstorable(run_id):
            raise RecordNotFoundError(f"no run with id {run_id!r}")
        query = (
            sa.select(
                records.c.workflow_name,
                records.c.foreign_id,
                records.c.created_at,
                records.c.trace_origin,
                history.c.run_id,
                history.c.version,
                history.c.run_state,
                history.c.status,
                history.c.object,
                history.c.updated_at,
                history.c.run_state_reason,
                history.c.status_description,
            )
            .join(records, records.c.run_id == history.c.run_id)
            .where(history.c.run_id == run_id)
            .order_by(history.c.version)
        )
        async with reading(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise RecordNotFoundError(f"no run with id {run_id!r}")
        return [_record(r) for r in rows]

    # -- outbox ---------------------------------------------------------------------------

    async def list_outbox_events(
        self, workflow_name: str, limit: int
    ) -> builtins.list[OutboxEvent]:
        query = (
            sa.select(outbox.c.event_id, outbox.c.data, outbox.c.created_at)
            .where(outbox.c.workflow_name == workflow_name)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        async with reading(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [OutboxEvent(r.event_id, workflow_name, r.data, r.created_at) for r in rows]

    async def delete_outbox_event(self, id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(outbox.delete().where(outbox.c.event_id == id))

    async def delete_outbox_events(self, ids: Sequence[str]) -> None:
        """Delete a batch of published outbox events in one statement."""
        if not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(outbox.delete().where(outbox.c.event_id.in_(builtins.list(ids))))


_VERSIONS_CHUNK = 500
"""Run ids per ``versions`` statement (well under SQLite's bound parameter limit)."""


def _condition(f: Filter, workflow_name: str) -> Any:
    if f.kind == "foreign_id":
        ids = [str(v) for v in f.values if not _unstorable(str(v))]  # the others match nothing
        if workflow_name:
            return records.c.foreign_key.in_([foreign_key(workflow_name, i) for i in ids])
        return records.c.foreign_id.in_(ids)
    if f.kind == "status":
        return records.c.status.in_([int(v) for v in f.values])
    if f.kind == "run_state":
        return records.c.run_state.in_([int(v) for v in f.values])
    if f.kind == "created_after":
        return records.c.created_at > f.time
    if f.kind == "created_before":
        return records.c.created_at < f.time
    raise ValueError(f"unknown filter {f.kind!r}")
