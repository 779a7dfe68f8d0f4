"""A record store on SQL (SQLite or PostgreSQL) through SQLAlchemy 2 async.

Every ``store`` is one transaction: the run's row (compare-and-set on its version), a row of
its history, and its outbox row. The database itself keeps at most one unfinished run per
(workflow, foreign id): a partial unique index, so concurrent triggers from any number of
processes give one run and a :class:`~workflow.WorkflowInProgressError` for the others.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
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
from workflow._adapters import Filter, Order
from workflow._clock import Clock
from workflow._record import make_outbox_event

from .sqlschema import UTCDateTime, create_schema, foreign_key, history, outbox, reading, records

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


_PG_TAIL = """
), h AS (
    INSERT INTO workflow_record_history
        (run_id, version, run_state, status, object, updated_at, run_state_reason,
         status_description)
    SELECT run_id, :version, :run_state, :status, CAST(:object AS JSONB), :updated_at,
           :run_state_reason, :status_description FROM r
), o AS (
    INSERT INTO workflow_outbox (event_id, workflow_name, data, created_at)
    SELECT :event_id, :workflow_name, :data, :created_at FROM r
)
SELECT count(*) FROM r
"""
_PG_TYPES = (
    sa.bindparam("updated_at", type_=UTCDateTime()),
    sa.bindparam("created_at", type_=UTCDateTime()),
    sa.bindparam("data", type_=sa.LargeBinary()),
)
_PG_UPDATE = sa.text(
    """WITH r AS (
    UPDATE workflow_records SET run_state = :run_state, status = :status,
        object = CAST(:object AS JSONB), updated_at = :updated_at, version = :version,
        run_state_reason = :run_state_reason, status_description = :status_description
    WHERE run_id = :run_id AND version = :prev
    RETURNING run_id"""
    + _PG_TAIL
).bindparams(*_PG_TYPES)
_PG_INSERT = sa.text(
    """WITH r AS (
    INSERT INTO workflow_records
        (run_id, workflow_name, foreign_id, foreign_key, run_state, status, object,
         created_at, updated_at, version, run_state_reason, status_description, trace_origin)
    VALUES (:run_id, :workflow_name, :foreign_id, :foreign_key, :run_state, :status,
            CAST(:object AS JSONB), :run_created_at, :updated_at, :version, :run_state_reason,
            :status_description, :trace_origin)
    RETURNING run_id"""
    + _PG_TAIL
).bindparams(*_PG_TYPES, sa.bindparam("run_created_at", type_=UTCDateTime()))


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
    """

    def __init__(self, engine: AsyncEngine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self._clock = clock
        self._pg = engine.dialect.name == "postgresql"

    # -- writes ---------------------------------------------------------------------------

    async def store(self, record: Record) -> None:
        version = record.meta.version
        meta = record.meta
        changes: dict[str, Any] = {
            "run_state": int(record.run_state),
            "status": record.status,
            "object": record.object,
            "updated_at": record.updated_at,
            "version": version,
            "run_state_reason": meta.run_state_reason,
            "status_description": meta.status_description,
        }
        event = make_outbox_event(record)
        if self._pg:
            await self._store_pg(record, changes, event)
            return
        async with self.engine.begin() as conn:
            if version == 1:
                try:
                    await conn.execute(
                        records.insert().values(
                            run_id=record.run_id,
                            workflow_name=record.workflow_name,
                            foreign_id=record.foreign_id,
                            foreign_key=foreign_key(record.workflow_name, record.foreign_id),
                            created_at=record.created_at,
                            trace_origin=meta.trace_origin,
                            **changes,
                        )
                    )
                except IntegrityError as err:
                    raise self._refused(err, record) from None
            else:
                result = await conn.execute(
                    records.update()
                    .where(records.c.run_id == record.run_id, records.c.version == version - 1)
                    .values(**changes)
                )
                if result.rowcount != 1:
                    raise ConcurrentUpdateError(
                        f"run {record.run_id} is not at version {version - 1}: a write of "
                        f"version {version} is stale (or the run does not exist). Read it again"
                    )
            await conn.execute(
                history.insert().values(
                    run_id=record.run_id,
                    version=version,
                    run_state=changes["run_state"],
                    status=record.status,
                    object=record.object,
                    updated_at=record.updated_at,
                    run_state_reason=meta.run_state_reason,
                    status_description=meta.status_description,
                )
            )
            await conn.execute(
                outbox.insert().values(
                    event_id=event.id,
                    workflow_name=record.workflow_name,
                    data=event.data,
                    created_at=event.created_at,
                )
            )

    async def _store_pg(self, record: Record, changes: dict[str, Any], event: OutboxEvent) -> None:
        """PostgreSQL: the record, its history row and its outbox row in ONE statement
        (data-modifying CTEs), run in autocommit: one round trip, still all or nothing."""
        params = {
            **changes,
            "object": record.object.decode(),
            "run_id": record.run_id,
            "prev": record.meta.version - 1,
            "event_id": event.id,
            "workflow_name": record.workflow_name,
            "data": event.data,
            "created_at": event.created_at,
        }
        if record.meta.version == 1:
            stmt = _PG_INSERT
            params.update(
                foreign_id=record.foreign_id,
                foreign_key=foreign_key(record.workflow_name, record.foreign_id),
                run_created_at=record.created_at,
                trace_origin=record.meta.trace_origin,
            )
        else:
            stmt = _PG_UPDATE
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                written = (await conn.execute(stmt, params)).scalar_one()
            except IntegrityError as err:
                raise self._refused(err, record) from None
        if written != 1:
            raise ConcurrentUpdateError(
                f"run {record.run_id} is not at version {record.meta.version - 1}: a write of "
                f"version {record.meta.version} is stale (or the run does not exist). Read it again"
            )

    @staticmethod
    def _refused(err: IntegrityError, record: Record) -> Exception:
        text = str(err.orig)
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
        if "\x00" in run_id:  # no stored run has one (and PostgreSQL text cannot hold it)
            raise RecordNotFoundError(f"no run with id {run_id!r}")
        return await self._one(
            sa.select(*_RECORD_COLUMNS).where(records.c.run_id == run_id),
            f"no run with id {run_id!r}",
        )

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        if "\x00" in foreign_id or "\x00" in workflow_name:
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

    async def history(self, run_id: str) -> builtins.list[Record]:
        """Every stored version of the run, oldest first."""
        if "\x00" in run_id:
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


def _condition(f: Filter, workflow_name: str) -> Any:
    if f.kind == "foreign_id":
        if workflow_name:
            keys = [foreign_key(workflow_name, str(v)) for v in f.values]
            return records.c.foreign_key.in_(keys)
        return records.c.foreign_id.in_([str(v) for v in f.values])
    if f.kind == "status":
        return records.c.status.in_([int(v) for v in f.values])
    if f.kind == "run_state":
        return records.c.run_state.in_([int(v) for v in f.values])
    if f.kind == "created_after":
        return records.c.created_at > f.time
    if f.kind == "created_before":
        return records.c.created_at < f.time
    raise ValueError(f"unknown filter {f.kind!r}")
