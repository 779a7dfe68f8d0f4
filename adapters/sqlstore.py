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
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import (
    ConcurrentUpdateError,
    IdempotencyKeyUsedError,
    OutboxEvent,
    Record,
    RecordNotFoundError,
    RunState,
    WorkflowInProgressError,
)
from workflow.abc import Clock, Filter, Header, Order, make_outbox_event

from . import _statements
from ._coalesce import Coalescer
from ._postgres import lock_params
from ._schemacheck import check_schema
from ._sqlengine import shared
from ._sqlsetup import prepare
from ._statements import (
    LOOKUP,
    LOOKUP_MANY_PG,
    LOOKUP_MANY_SQLITE,
    event_rows,
    outbox_row,
    record_from,
    record_row,
    select_history,
    select_records,
)
from ._storebatch import write_batch
from ._storemany import Refused, write_many
from .sqlschema import create_schema, foreign_key, history, outbox, reading, records, timeouts
from .sqlstreamer import SQLStreamer

__all__ = ["SQLRecordStore", "create_schema"]


DEFAULT_BATCH_LIMIT = 64
"""Most concurrent lookups (and writes) of one store sent as one statement."""


LOOKUPS_AT_ONCE = 4
"""Batches of lookups of one store under way at a time (each on a connection of its own)."""
WRITES_AT_ONCE = 2
"""PostgreSQL: batches of writes of one store under way at a time."""


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

    ``batch_limit``: lookups (and writes) made at about the same time by this process, e.g.
    by a step consumer for the events it holds, go to the database together, up to this many
    in one statement (see ``adapters._coalesce``); 1 sends each alone.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock | None = None,
        streamer: SQLStreamer | None = None,
        batch_limit: int = DEFAULT_BATCH_LIMIT,
    ) -> None:
        self.engine = prepare(engine)
        self._clock = clock
        self._schema_checked = False
        self._db = shared(engine)
        if streamer is not None and _url(streamer.engine) != _url(engine):
            raise ValueError(
                "SQLRecordStore(streamer=...) needs a SQLStreamer on the same database: the "
                f"store uses {_url(engine)!r}, the streamer {_url(streamer.engine)!r}"
            )
        self._streamer = streamer
        self._lookups: Coalescer[str, Record] = Coalescer(
            self._lookup_batch, batch_limit, parallel=LOOKUPS_AT_ONCE
        )
        self._writes: Coalescer[tuple[Record, OutboxEvent], bool] | None = None
        if batch_limit > 1:
            at_once = WRITES_AT_ONCE if self._db.postgres else 1  # SQLite: one writer anyway
            self._writes = Coalescer(self._store_batch, batch_limit, parallel=at_once)

    @property
    def publishes_to(self) -> SQLStreamer | None:
        """The streamer this store appends events to itself (``None``: the outbox)."""
        return self._streamer

    # -- writes ---------------------------------------------------------------------------

    async def store(self, record: Record) -> None:
        if not self._schema_checked:  # once: refuse a database without the unique index
            await check_schema(self.engine)
            self._schema_checked = True
        # The event is made here, in the caller's context: its headers carry the caller's
        # trace context (the batch is written from another task).
        event = make_outbox_event(record)
        if self._writes is not None and await self._writes.submit((record, event)):
            return
        await self._store_one(record, event)

    async def _store_one(self, record: Record, event: OutboxEvent) -> None:
        """``store`` alone: one statement (PostgreSQL) or one job of a group (SQLite)."""
        db = self._db
        row = record_row(record, db.encode_time)
        streamer = self._streamer
        tp = ""
        try:
            if streamer is None:  # an outbox row, for the relay
                written = await _statements.store(db, row, outbox=outbox_row(event, db.encode_time))
            else:  # the event itself, in the streamer's table (the topic's lock first)
                run_id, status, headers = event.parts()
                tp = headers[Header.TOPIC]
                written = await _statements.store(
                    db,
                    row,
                    events=event_rows(
                        tp, [(run_id, status, headers)], streamer.now(), db.encode_time
                    ),
                    lock=lock_params(tp, streamer.channel, streamer.notify_payload(tp)),
                )
        except Exception as err:
            if not _unique_violation(err):
                raise
            used = await self._key_holder(record)
            raise (used or self._refused(err, record)) from None
        finally:
            if streamer is not None:
                await streamer.published(tp, 1)  # after a failure: one spurious wake-up
        if written != 1:
            raise _stale(record)

    async def _store_batch(
        self, batch: builtins.list[tuple[Record, OutboxEvent]]
    ) -> builtins.list[bool | Exception]:
        """The concurrent ``store`` calls in one transaction (``_storebatch``).
        Per call: True (written), a :class:`ConcurrentUpdateError` (its compare-and-set was
        refused) or False (write it again alone: a unique index refused it, the batch failed
        as a whole, or an earlier write of the same run is in the batch)."""
        if len(batch) == 1 and self._db.postgres:
            return [False]  # its own statement: the same round trip, a smaller statement
        seen: set[str] = set()
        mine: builtins.list[int] = []
        for i, (record, _) in enumerate(batch):
            if record.run_id not in seen:
                seen.add(record.run_id)
                mine.append(i)
        out: builtins.list[bool | Exception] = [False] * len(batch)
        try:
            written = await write_batch(self._db, self._streamer, [batch[i] for i in mine])
        except Exception as err:
            if getattr(err, "sqlstate", None) is None:
                raise  # not the server's refusal (a lost connection): maybe committed
            return out  # refused as a whole: nothing written, each again alone
        for j, i in enumerate(mine):
            record = batch[i][0]
            if j in written:
                out[i] = True
            elif record.meta.version > 1:
                out[i] = _stale(record)
        return out

    async def store_many(
        self, records: Sequence[Record], events: Sequence[OutboxEvent] = ()
    ) -> None:
        """Store every record as :meth:`store` would, and ``events`` (outbox rows of their
        ``workflow_name``, or with ``streamer=`` events on the topic of their headers), in one
        transaction; on the first refusal nothing is written and the error is the one
        :meth:`store` would raise for that record (:class:`~workflow.abc.AtomicWrites`)."""
        if not records and not events:
            return
        if not self._schema_checked:
            await check_schema(self.engine)
            self._schema_checked = True
        try:
            await write_many(self._db, self._streamer, records, events)
        except Refused as refused:
            raise await self._refusal(records, refused) from None

    async def _refusal(self, records: Sequence[Record], refused: Refused) -> Exception:
        """What :meth:`store` would raise for the run ``store_many`` found refused (a run
        created before it in the same call counts as stored)."""
        record, err = records[refused.index], refused.cause
        if err is None:
            return _stale(record)
        if not _unique_violation(err):
            return err
        used = await self._key_holder(record)
        if used is not None:
            return used
        key = record.meta.idempotency_key
        if record.meta.version == 1 and key is not None:  # held by a new run of this call?
            mine = (1, record.workflow_name, key)
            for r in records[: refused.index]:
                if (r.meta.version, r.workflow_name, r.meta.idempotency_key) == mine:
                    return IdempotencyKeyUsedError(
                        f"run {r.run_id} of workflow {record.workflow_name!r} already has "
                        f"idempotency key {key!r}",
                        r.run_id,
                    )
        return self._refused(err, record)

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

    async def _key_holder(self, record: Record) -> IdempotencyKeyUsedError | None:
        """The error for a new run whose idempotency key another run holds, else None."""
        key = record.meta.idempotency_key
        if record.meta.version != 1 or key is None:
            return None
        query = sa.select(records.c.run_id).where(
            records.c.workflow_name == record.workflow_name, records.c.idempotency_key == key
        )
        async with reading(self.engine) as conn:
            holder = (await conn.execute(query)).scalar()
        if holder is None:
            return None
        return IdempotencyKeyUsedError(
            f"run {holder} of workflow {record.workflow_name!r} already has idempotency key "
            f"{key!r}",
            holder,
        )

    # -- retries and counts ---------------------------------------------------------------

    async def due_retries(
        self, workflow_name: str, status: int, now: datetime, limit: int
    ) -> builtins.list[Record]:
        query = (
            select_records()
            .where(
                records.c.workflow_name == workflow_name,
                records.c.status == int(status),
                records.c.retry_at.is_not(None),
                records.c.retry_at <= now,
                records.c.run_state.in_((int(RunState.INITIATED), int(RunState.RUNNING))),
            )
            .order_by(records.c.retry_at, records.c.id)
            .limit(limit)
        )
        async with reading(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [record_from(r) for r in rows]

    async def unfinished_by_status(self, workflow_name: str) -> dict[int, int]:
        """How many initiated, running or paused runs each status has (one statement)."""
        unfinished = (int(RunState.INITIATED), int(RunState.RUNNING), int(RunState.PAUSED))
        query = (
            sa.select(records.c.status, sa.func.count())
            .where(records.c.workflow_name == workflow_name, records.c.run_state.in_(unfinished))
            .group_by(records.c.status)
        )
        async with reading(self.engine) as conn:
            return {int(status): int(n) for status, n in await conn.execute(query)}

    # -- reads ----------------------------------------------------------------------------

    async def _one(self, query: sa.Select[Any], missing: str) -> Record:
        async with reading(self.engine) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise RecordNotFoundError(missing)
        return record_from(row)

    async def lookup(self, run_id: str) -> Record:
        if _unstorable(run_id):  # no stored run has one (and no driver could send it)
            raise RecordNotFoundError(f"no run with id {run_id!r}")
        return await self._lookups.submit(run_id)

    async def _lookup_batch(self, run_ids: builtins.list[str]) -> builtins.list[Record | Exception]:
        """The runs of concurrent lookups, read by one statement (see ``_coalesce``)."""
        db = self._db
        if len(run_ids) == 1:
            rows = await db.fetch(LOOKUP, {"run_id": run_ids[0]})
        elif db.postgres:
            rows = await db.fetch(LOOKUP_MANY_PG, {"run_ids": run_ids})
        else:
            rows = await db.fetch(LOOKUP_MANY_SQLITE, {"run_ids": json.dumps(run_ids)})
        found = {r.run_id: r for r in map(record_from, rows)}
        return [
            found.get(run_id) or RecordNotFoundError(f"no run with id {run_id!r}")
            for run_id in run_ids
        ]

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        if _unstorable(foreign_id) or _unstorable(workflow_name):
            raise RecordNotFoundError(
                f"workflow {workflow_name!r} has no run for foreign id {foreign_id!r}"
            )
        return await self._one(
            select_records()
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
        query = select_records()
        if workflow_name:
            query = query.where(records.c.workflow_name == workflow_name)
        for f in filters:
            query = query.where(_condition(f, workflow_name, self._db.postgres))
        query = query.order_by(records.c.id.asc() if order == "asc" else records.c.id.desc())
        query = query.limit(limit if limit > 0 else 25)
        if offset_id > 0:
            query = query.offset(offset_id)
        async with reading(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [record_from(r) for r in rows]

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
        query = select_history().where(history.c.run_id == run_id).order_by(history.c.version)
        async with reading(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise RecordNotFoundError(f"no run with id {run_id!r}")
        return [record_from(r) for r in rows]

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

    async def purge_finished(self, finished_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` finished runs last written before ``finished_before``,
        oldest first, with their history and timers, in one transaction (the Purge
        capability)."""
        done = [int(RunState.COMPLETED), int(RunState.CANCELLED), int(RunState.DATA_DELETED)]
        pick = (
            sa.select(records.c.run_id)
            .where(records.c.run_state.in_(done), records.c.updated_at < finished_before)
            .order_by(records.c.updated_at)
            .limit(max(limit, 0))
        )
        async with self.engine.begin() as conn:
            ids = [r[0] for r in await conn.execute(pick)]
            if ids:
                await conn.execute(history.delete().where(history.c.run_id.in_(ids)))
                await conn.execute(timeouts.delete().where(timeouts.c.run_id.in_(ids)))
                await conn.execute(records.delete().where(records.c.run_id.in_(ids)))
        return len(ids)

    async def delete_outbox_events(self, ids: Sequence[str]) -> None:
        """Delete a batch of published outbox events in one statement."""
        if not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(outbox.delete().where(outbox.c.event_id.in_(builtins.list(ids))))


_VERSIONS_CHUNK = 500
"""Run ids per ``versions`` statement (well under SQLite's bound parameter limit)."""


def _condition(f: Filter, workflow_name: str, postgres: bool) -> Any:
    if f.kind == "foreign_id":
        ids = [str(v) for v in f.values if not _unstorable(str(v))]  # the others match nothing
        if workflow_name:
            return records.c.foreign_key.in_([foreign_key(workflow_name, i) for i in ids])
        return records.c.foreign_id.in_(ids)
    if f.kind == "status":
        return records.c.status.in_([int(v) for v in f.values])
    if f.kind == "run_state":
        return records.c.run_state.in_([int(v) for v in f.values])
    if f.kind == "parent":
        ids = [str(v) for v in f.values if not _unstorable(str(v))]
        children = records.c.parent_run_id.in_([i for i in ids if i])
        # "" is no parent, stored as NULL
        return sa.or_(children, records.c.parent_run_id.is_(None)) if "" in ids else children
    if f.kind == "created_after":
        return records.c.created_at > f.time
    if f.kind == "created_before":
        return records.c.created_at < f.time
    if f.kind == "updated_after":
        return records.c.updated_at > f.time
    if f.kind == "updated_before":
        return records.c.updated_at < f.time
    if f.kind == "object_field":
        return _object_field(str(f.values[0]), str(f.values[1]), postgres) == str(f.values[1])
    raise ValueError(f"unknown filter {f.kind!r}")


def _object_field(path: str, value: str, postgres: bool) -> Any:
    """``Filter.object_field`` in SQL: the value at ``path`` as JSON text (see
    ``workflow.abc.field_text``), by PostgreSQL's jsonb ``#>>`` or SQLite's JSON functions."""
    keys = path.split(".")
    if postgres:
        pg = records.c.object.op("#>>", return_type=sa.Text())
        return pg(sa.literal(keys, sa.ARRAY(sa.Text())))
    json_path = "$" + "".join(f'."{k}"' for k in keys)
    kind = sa.func.json_type(records.c.object, json_path)
    text = sa.cast(sa.func.json_extract(records.c.object, json_path), sa.Text())
    return sa.case(
        (kind == "true", "true"),
        (kind == "false", "false"),
        (kind.in_(["text", "integer", "real"]), text),
        else_=None,
    )
