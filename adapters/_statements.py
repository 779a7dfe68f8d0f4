"""The statements on the path of every transition, for both dialects, written out once from the
tables of :mod:`adapters.sqlschema`; and the one encoding of a record, an outbox row and an
event as their values (times as :mod:`adapters._sqlite` / :mod:`adapters._postgres` store
them). They run on the driver (:mod:`adapters._fastsql`); everything else the adapters say in
SQLAlchemy Core.

**Columns come from the tables.** A run is written with every column of ``workflow_records``
but ``id`` (:data:`RECORD_WRITE`) and read back with those but ``foreign_key``
(:data:`RECORD_READ`, also what :func:`select_records` selects through SQLAlchemy); a new
version changes what the history keeps of it (the columns of ``workflow_record_history`` but
``run_id``: :data:`VERSIONED`); an outbox row and an event are every column of their table but
``id``. A new column is added to its table (and a migration) and to :func:`record_row` /
:func:`record_from`: the statements follow.

**One writer of events.** Every row of ``workflow_events`` is made by :func:`event_rows` and
written by the statement of one builder per dialect, under the topic's insert lock on
PostgreSQL (:data:`adapters._postgres.TOPIC_LOCK`): on SQLite :data:`SQLITE_INSERT_EVENTS`
(``executemany``), on PostgreSQL :func:`pg_insert_events` (a batch as column arrays, or a
record store's one event from its CTE) — in a record store's own transaction
(:func:`store`) and in a caller's SQLAlchemy transaction (:func:`insert_events`, which
``SQLStreamer``'s sends use).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from workflow import Event, Meta, OutboxEvent, Record, RunState

from . import _postgres, _sqlite
from ._fastsql import Statement, note
from ._sqlengine import EngineShared
from .sqlschema import JSONBytes, cursors, events, foreign_key, history, outbox, records

__all__ = [
    "EVENT",
    "FETCH_EVENTS",
    "LOOKUP",
    "LOOKUP_MANY_PG",
    "LOOKUP_MANY_SQLITE",
    "PG_STORE_BATCH",
    "MOVE_CURSOR",
    "PRUNE_TOPIC",
    "RECORD_READ",
    "RECORD_WRITE",
    "VERSIONED",
    "decode_time",
    "event_from",
    "event_rows",
    "insert_events",
    "outbox_row",
    "record_from",
    "record_row",
    "select_history",
    "select_records",
    "store",
]

EventTuple = tuple[str, int, dict[str, str]]
"""``(foreign_id, status_type, headers)``: one event of a batch."""

TimeCodec = Callable[[datetime], Any]


def _columns(table: sa.Table, *without: str) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if c.name not in without)


RECORD_WRITE = _columns(records, "id")
RECORD_READ = _columns(records, "id", "foreign_key")
VERSIONED = _columns(history, "run_id")
OUTBOX = _columns(outbox, "id")
EVENT = _columns(events, "id")
EVENT_READ = ("id", *_columns(events, "id", "topic"))

# -- values ----------------------------------------------------------------------------------


def record_row(record: Record, time: TimeCodec) -> dict[str, Any]:
    """The values of :data:`RECORD_WRITE` for ``record`` (after its first version only the
    :data:`VERSIONED` ones and ``run_id``: the others never change), and ``prev``, the
    version a compare-and-set update expects."""
    meta = record.meta
    row = {
        "run_id": record.run_id,
        "version": meta.version,
        "run_state": int(record.run_state),
        "status": record.status,
        "object": record.object.decode(),
        "updated_at": time(record.updated_at),
        "run_state_reason": meta.run_state_reason,
        "status_description": meta.status_description,
        "attempt": meta.attempt,
        "retry_at": None if meta.retry_at is None else time(meta.retry_at),
        "paused_by": meta.paused_by,
        "compensations": _stack(meta.compensations) if meta.compensations else None,
        "compensating": meta.compensating,
        "prev": meta.version - 1,
    }
    if meta.version == 1:
        row.update(
            workflow_name=record.workflow_name,
            foreign_id=record.foreign_id,
            foreign_key=foreign_key(record.workflow_name, record.foreign_id),
            created_at=time(record.created_at),
            trace_origin=meta.trace_origin,
            idempotency_key=meta.idempotency_key,
            parent_workflow_name=meta.parent_workflow or None,
            parent_run_id=meta.parent_run_id or None,
        )
    return row


def _stack(compensations: tuple[int, ...]) -> str:
    """``meta.compensations`` as stored: ``"3,5"``, oldest first (NULL when empty)."""
    return ",".join(str(int(s)) for s in compensations)


def _unstack(stored: str | None) -> tuple[int, ...]:
    return tuple(int(s) for s in stored.split(",")) if stored else ()


def decode_time(value: Any) -> datetime:
    """A stored time as either dialect's driver returns it (or SQLAlchemy already did)."""
    if isinstance(value, str):
        return _sqlite.decode_time(value)
    return _postgres.decode_time(value)


def _json(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


_RECORD_FIELDS = itemgetter(
    *(
        RECORD_READ.index(n)
        for n in (
            *("workflow_name", "foreign_id", "run_id", "run_state", "status", "object"),
            *("created_at", "updated_at", "run_state_reason", "status_description"),
            *("version", "trace_origin", "attempt", "retry_at", "paused_by"),
            *("idempotency_key", "parent_workflow_name", "parent_run_id", "compensations"),
            "compensating",
        )
    )
)


def record_from(row: Sequence[Any]) -> Record:
    """The record of a row of :data:`RECORD_READ` (from the driver or from SQLAlchemy)."""
    (
        workflow_name,
        foreign_id,
        run_id,
        run_state,
        status,
        obj,
        created_at,
        updated_at,
        run_state_reason,
        status_description,
        version,
        trace_origin,
        attempt,
        retry_at,
        paused_by,
        idempotency_key,
        parent_workflow_name,
        parent_run_id,
        compensations,
        compensating,
    ) = _RECORD_FIELDS(row)
    return Record(
        workflow_name=workflow_name,
        foreign_id=foreign_id,
        run_id=run_id,
        run_state=RunState(run_state),
        status=status,
        object=_json(obj),
        created_at=decode_time(created_at),
        updated_at=decode_time(updated_at),
        meta=Meta(
            run_state_reason=run_state_reason,
            status_description=status_description,
            version=version,
            trace_origin=trace_origin,
            attempt=attempt,
            retry_at=None if retry_at is None else decode_time(retry_at),
            paused_by=paused_by,
            idempotency_key=idempotency_key,
            parent_workflow=parent_workflow_name or "",
            parent_run_id=parent_run_id or "",
            compensations=_unstack(compensations),
            compensating=bool(compensating),
        ),
    )


def outbox_row(event: OutboxEvent, time: TimeCodec) -> dict[str, Any]:
    """The values of an outbox row."""
    return {
        "event_id": event.id,
        "workflow_name": event.workflow_name,
        "data": event.data,
        "created_at": time(event.created_at),
    }


def event_rows(
    topic: str, batch: Sequence[EventTuple], created_at: datetime, time: TimeCodec
) -> list[dict[str, Any]]:
    """The values of the events rows of ``batch``: the one encoding of an event."""
    at = time(created_at)
    return [
        {
            "topic": topic,
            "foreign_id": foreign_id,
            "type": int(status_type),
            "headers": json.dumps(headers, separators=(",", ":"), ensure_ascii=False),
            "created_at": at,
        }
        for foreign_id, status_type, headers in batch
    ]


_EVENT_FIELDS = itemgetter(
    *(EVENT_READ.index(n) for n in ("id", "foreign_id", "type", "headers", "created_at"))
)


def event_from(row: Sequence[Any]) -> Event:
    """The event of a row of ``EVENT_READ`` (:data:`FETCH_EVENTS`)."""
    id_, foreign_id, type_, headers, created_at = _EVENT_FIELDS(row)
    return Event(int(id_), foreign_id, type_, json.loads(headers), decode_time(created_at))


# -- reads -----------------------------------------------------------------------------------


def _read(table: sa.Table, names: Sequence[str]) -> str:
    # JSON goes out as text: no driver decodes it on the way.
    return ", ".join(
        f"CAST({n} AS TEXT)" if isinstance(table.c[n].type, JSONBytes) else n for n in names
    )


LOOKUP = Statement(
    f"SELECT {_read(records, RECORD_READ)} FROM {records.name} WHERE run_id = :run_id"
)
LOOKUP_MANY_PG = Statement(
    f"SELECT {_read(records, RECORD_READ)} FROM {records.name} "
    "WHERE run_id = ANY(CAST(:run_ids AS TEXT[]))"
)
"""The runs of a batch of lookups (PostgreSQL: ``run_ids`` a list)."""
LOOKUP_MANY_SQLITE = Statement(
    f"SELECT {_read(records, RECORD_READ)} FROM {records.name} "
    "WHERE run_id IN (SELECT value FROM json_each(:run_ids))"
)
"""The runs of a batch of lookups (SQLite: ``run_ids`` a JSON array: one statement text
whatever the batch's size)."""
FETCH_EVENTS = Statement(
    f"SELECT {_read(events, EVENT_READ)} FROM {events.name} "
    "WHERE topic = :topic AND id > :after ORDER BY id LIMIT :limit"
)
MOVE_CURSOR = Statement(
    f"UPDATE {cursors.name} SET position = :position, updated_at = :updated_at "
    "WHERE topic = :topic AND name = :name AND position < :position"
)
PRUNE_TOPIC = Statement(
    f"DELETE FROM {events.name} WHERE id IN (SELECT id FROM {events.name} "
    f"WHERE topic = :topic AND id <= (SELECT min(position) FROM {cursors.name} "
    "WHERE topic = :topic) "
    f"AND id < (SELECT max(id) FROM {events.name}) ORDER BY id LIMIT :limit)"
)
"""The oldest ``:limit`` events of ``:topic`` that every cursor of it has passed (never the
newest row of the table: SQLite would hand its id out again)."""


def select_records() -> sa.Select[Any]:
    """:data:`RECORD_READ` through SQLAlchemy (rows for :func:`record_from`)."""
    return sa.select(*(records.c[n] for n in RECORD_READ))


def select_history() -> sa.Select[Any]:
    """Every version of runs (rows for :func:`record_from`): what the history keeps, the rest
    from the run's row."""
    return sa.select(*(history.c[n] if n in history.c else records.c[n] for n in RECORD_READ)).join(
        records, records.c.run_id == history.c.run_id
    )


# -- SQLite ----------------------------------------------------------------------------------


def _sqlite_insert(table: sa.Table, names: Sequence[str]) -> Statement:
    values = ", ".join(f":{n}" for n in names)
    return Statement(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({values})")


SQLITE_INSERT_RECORD = _sqlite_insert(records, RECORD_WRITE)
SQLITE_UPDATE_RECORD = Statement(
    f"UPDATE {records.name} SET {', '.join(f'{n} = :{n}' for n in VERSIONED)} "
    "WHERE run_id = :run_id AND version = :prev"
)
SQLITE_INSERT_HISTORY = _sqlite_insert(history, _columns(history))
SQLITE_SCRUB_HISTORY = Statement(
    f"UPDATE {history.name} SET object = :object WHERE run_id = :run_id AND version < :version"
)
"""On the DATA_DELETED write: every earlier version's object is replaced by the deleted one
(a run's personal data must not survive its deletion in the history)."""
SQLITE_INSERT_OUTBOX = _sqlite_insert(outbox, OUTBOX)
SQLITE_INSERT_EVENTS = _sqlite_insert(events, EVENT)
_SQLITE_APPEND_EVENTS = sa.text(SQLITE_INSERT_EVENTS.text)


def _sqlite_run(conn: sqlite3.Connection, stmt: Statement, params: Mapping[str, Any]) -> int:
    note(stmt.text)
    return int(conn.execute(stmt.text, params).rowcount)


def _sqlite_events(rows: list[dict[str, Any]], conn: sqlite3.Connection) -> None:
    note(SQLITE_INSERT_EVENTS.text)
    conn.executemany(SQLITE_INSERT_EVENTS.text, rows)


def _sqlite_outbox(row: dict[str, Any], conn: sqlite3.Connection) -> None:
    _sqlite_run(conn, SQLITE_INSERT_OUTBOX, row)


def _sqlite_store(
    row: dict[str, Any], tail: Callable[[sqlite3.Connection], None], conn: sqlite3.Connection
) -> int:
    """In the connection's thread and its write transaction: the run's row (insert, or
    compare-and-set update), its history row and ``tail`` (its outbox row or its event).
    Returns how many run rows were written: 0 when the compare-and-set failed (then nothing
    was written)."""
    if row["version"] == 1:
        _sqlite_run(conn, SQLITE_INSERT_RECORD, row)
    elif _sqlite_run(conn, SQLITE_UPDATE_RECORD, row) != 1:
        return 0
    _sqlite_run(conn, SQLITE_INSERT_HISTORY, row)
    if row["run_state"] == RunState.DATA_DELETED:
        _sqlite_run(conn, SQLITE_SCRUB_HISTORY, row)
    tail(conn)
    return 1


# -- PostgreSQL ------------------------------------------------------------------------------
# A run's write is ONE autocommit statement (data-modifying CTEs): the record, its history row
# and its outbox row or event; one round trip, still all or nothing. Its count says whether
# the compare-and-set matched. With an event, the statement first takes the topic's insert
# lock (adapters._postgres.TOPIC_LOCK) and the record write is gated on it: every writer thus
# takes one topic lock first and one run's row after it (no lock-order cycle), and the event id
# is drawn under the lock, held until the statement commits.


def _pg_values(table: sa.Table, names: Sequence[str], prefix: str = "") -> str:
    return ", ".join(_postgres.cast(prefix + n, table.c[n].type) for n in names)


def pg_insert_events(source: str | None = None) -> str:
    """The events insert of PostgreSQL (the values: :func:`_pg_event_params`). Without
    ``source``, a batch: one array per column (``:event_<column>``), in order, once the
    topic's lock is taken (:data:`adapters._postgres.LOCKED`). With ``source`` (a record
    store's ``r``), one event per row of it, its values as plain parameters."""
    names = ", ".join(EVENT)
    if source is not None:
        return (
            f"INSERT INTO {events.name} ({names}) "
            f"SELECT {_pg_values(events, EVENT, 'event_')} FROM {source}"
        )
    arrays = ", ".join(_postgres.cast(f"event_{n}", events.c[n].type, array=True) for n in EVENT)
    return (
        f"INSERT INTO {events.name} ({names}) SELECT {', '.join('e.' + n for n in EVENT)} "
        f"FROM unnest({arrays}) WITH ORDINALITY AS e({names}, n) "
        f"WHERE {_postgres.LOCKED} ORDER BY e.n"
    )


_EVENT_PARAMS = tuple((f"event_{n}", n) for n in EVENT)


def _pg_event_params(rows: Sequence[Mapping[str, Any]], batch: bool) -> dict[str, Any]:
    if not batch:
        (row,) = rows
        return {p: row[n] for p, n in _EVENT_PARAMS}
    return {p: [r[n] for r in rows] for p, n in _EVENT_PARAMS}


PG_APPEND_EVENTS = Statement(f"WITH {_postgres.TOPIC_LOCK} {pg_insert_events()}")
"""A batch of events of one topic, under its lock (on the driver: a record store's
``store_many``)."""
_PG_APPEND_EVENTS = sa.text(PG_APPEND_EVENTS.text)
"""The same through SQLAlchemy (:func:`insert_events`)."""


def _pg_store(first: bool, deleted: bool, direct: bool) -> Statement:
    gate = f" AND {_postgres.LOCKED}" if direct else ""
    if first:
        source = " FROM l" if direct else ""
        head = (
            f"r AS (INSERT INTO {records.name} ({', '.join(RECORD_WRITE)}) "
            f"SELECT {_pg_values(records, RECORD_WRITE)}{source} RETURNING run_id)"
        )
    else:
        sets = ", ".join(f"{n} = {_postgres.cast(n, records.c[n].type)}" for n in VERSIONED)
        head = (
            f"r AS (UPDATE {records.name} SET {sets} "
            f"WHERE run_id = :run_id AND version = :prev{gate} RETURNING run_id)"
        )
    parts = [_postgres.TOPIC_LOCK, head] if direct else [head]
    names = _columns(history)
    parts.append(
        f"h AS (INSERT INTO {history.name} ({', '.join(names)}) "
        f"SELECT {_pg_values(history, names)} FROM r)"
    )
    if deleted:
        scrub = _postgres.cast("object", history.c.object.type)
        version = _postgres.cast("version", history.c.version.type)
        parts.append(
            f"s AS (UPDATE {history.name} SET object = {scrub} "
            f"WHERE run_id = (SELECT run_id FROM r) AND version < {version})"
        )
    if direct:
        parts.append(f"ev AS ({pg_insert_events('r')})")
    else:
        parts.append(
            f"o AS (INSERT INTO {outbox.name} ({', '.join(OUTBOX)}) "
            f"SELECT {_pg_values(outbox, OUTBOX, 'outbox_')} FROM r)"
        )
    return Statement("WITH " + ",\n".join(parts) + "\nSELECT count(*) FROM r")


_OUTBOX_PARAMS = tuple((f"outbox_{n}", n) for n in OUTBOX)

_PG_STORE = {
    (first, deleted, direct): _pg_store(first, deleted, direct)
    for first in (True, False)
    for deleted in (False, True)
    for direct in (False, True)
    if not (first and deleted)  # DATA_DELETED is an update, never a first version
}


# Several runs in one transaction (a record store's store_many): the topics' insert locks
# first, in topic order; then the rows of the runs it updates, in run id order (writers of
# several runs lock them in one order: no cycle); then each run's _PG_STORE statement, and the
# extra outbox rows or events.

PG_LOCK_TOPIC = Statement(f"WITH {_postgres.TOPIC_LOCK} SELECT count(*) FROM l")
PG_LOCK_RUNS = Statement(
    f"SELECT run_id FROM {records.name} WHERE run_id = ANY(CAST(:run_ids AS TEXT[])) "
    "ORDER BY run_id FOR UPDATE"
)
PG_INSERT_OUTBOX = Statement(
    f"INSERT INTO {outbox.name} ({', '.join(OUTBOX)}) VALUES ({_pg_values(outbox, OUTBOX)})"
)


def pg_store(
    row: dict[str, Any],
    outbox: dict[str, Any] | None,
    event: dict[str, Any] | None,
    lock: dict[str, Any] | None,
) -> tuple[Statement, dict[str, Any]]:
    """The statement of :func:`store` on PostgreSQL and its parameters (``row`` is updated)."""
    first = row["version"] == 1
    deleted = not first and row["run_state"] == RunState.DATA_DELETED
    if outbox is not None:
        row.update({p: outbox[n] for p, n in _OUTBOX_PARAMS})
    else:
        assert event is not None and lock is not None
        row.update(_pg_event_params([event], False))
        row.update(lock)
    return _PG_STORE[(first, deleted, outbox is None)], row


def pg_events(rows: list[dict[str, Any]], lock: dict[str, Any]) -> dict[str, Any]:
    """The parameters of :data:`PG_APPEND_EVENTS`."""
    return {**_pg_event_params(rows, True), **lock}


def sqlite_store(
    row: dict[str, Any], outbox: dict[str, Any] | None, event: dict[str, Any] | None
) -> Callable[[sqlite3.Connection], int]:
    """The write of :func:`store` on SQLite, for a job of a larger transaction."""
    if outbox is not None:
        return partial(_sqlite_store, row, partial(_sqlite_outbox, outbox))
    assert event is not None
    return partial(_sqlite_store, row, partial(_sqlite_events, [event]))


def sqlite_append(
    outbox_rows: Sequence[dict[str, Any]], appended: list[dict[str, Any]], conn: sqlite3.Connection
) -> None:
    """Outbox rows and events (:func:`outbox_row`, :func:`event_rows`) in the caller's SQLite
    write transaction."""
    for row in outbox_rows:
        _sqlite_outbox(row, conn)
    if appended:
        _sqlite_events(appended, conn)


# -- the writes ------------------------------------------------------------------------------


async def store(
    db: EngineShared,
    row: dict[str, Any],
    *,
    outbox: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    lock: dict[str, Any] | None = None,
) -> int:
    """Write a run's version (:func:`record_row`) with its history row and either its outbox
    row (:func:`outbox_row`) or its events (:func:`event_rows`, ``lock``:
    :func:`adapters._postgres.lock_params`), all or nothing. 1 if written, 0 if the
    compare-and-set failed."""
    if db.postgres:
        first = row["version"] == 1
        deleted = not first and row["run_state"] == RunState.DATA_DELETED
        stmt = _PG_STORE[(first, deleted, outbox is None)]
        params = row  # one statement: one namespace of parameters
        if outbox is not None:
            params.update({p: outbox[n] for p, n in _OUTBOX_PARAMS})
        else:
            assert events is not None and lock is not None
            params.update(_pg_event_params(events, False))
            params.update(lock)
        return int(await db.fetchval(stmt, params))
    if outbox is not None:
        tail = partial(_sqlite_outbox, outbox)
    else:
        assert events is not None
        tail = partial(_sqlite_events, events)
    return await db.write(partial(_sqlite_store, row, tail))


async def insert_events(
    conn: AsyncConnection, rows: list[dict[str, Any]], lock: dict[str, Any]
) -> None:
    """Append events of one topic (:func:`event_rows`) inside the caller's SQLAlchemy
    transaction (``lock``: :func:`adapters._postgres.lock_params`): the statement a record
    store's own transaction writes its event with, through SQLAlchemy."""
    if conn.dialect.name == "postgresql":
        await conn.execute(_PG_APPEND_EVENTS, {**_pg_event_params(rows, True), **lock})
    else:
        await conn.execute(_SQLITE_APPEND_EVENTS, rows)


# -- the writes of many runs at once (adapters._storebatch) ----------------------------------
# Each run's answer is its own: an update is a compare-and-set, a first version a refused
# insert leaves out (the caller writes it again alone for the precise error), the rest is
# written for the runs written only. PostgreSQL: one statement, the rows as column arrays;
# the topics' insert locks first (in topic order), then the updated runs' rows (in run id
# order). SQLite: one job of a group commit.


def _typed(table: sa.Table, name: str) -> str:
    """The SQL type of column ``name`` (without a length), for the arrays of ``unnest``."""
    return _postgres.cast("x", table.c[name].type).removeprefix("CAST(:x AS ").removesuffix(")")


def _pg_store_batch(direct: bool) -> Statement:
    cols: list[tuple[str, str]] = [("n", "INTEGER"), ("prev", "INTEGER")]
    cols += [(n, _typed(records, n)) for n in RECORD_WRITE]
    tail_table, tail = (events, EVENT) if direct else (outbox, OUTBOX)
    cols += [(f"t_{n}", _typed(tail_table, n)) for n in tail]
    arrays = ", ".join(f"CAST(:{name} AS {typ}[])" for name, typ in cols)
    names = ", ".join(name for name, _ in cols)
    parts: list[str] = []
    gate = ""
    if direct:
        parts.append(_postgres.TOPICS_LOCK)
        gate = f" WHERE {_postgres.LOCKED}"
    parts.append(f"i AS MATERIALIZED (SELECT * FROM unnest({arrays}) AS i({names}){gate})")
    parts.append(
        f"k AS MATERIALIZED (SELECT r.run_id FROM {records.name} r "
        "WHERE r.run_id IN (SELECT run_id FROM i WHERE version > 1) "
        "ORDER BY r.run_id FOR UPDATE)"
    )
    sets = ", ".join(f"{n} = i.{n}" for n in VERSIONED)
    parts.append(
        f"u AS (UPDATE {records.name} r SET {sets} FROM i "
        "WHERE r.run_id = i.run_id AND i.version > 1 AND r.version = i.prev "
        "AND (SELECT count(*) FROM k) >= 0 RETURNING i.n)"
    )
    written = ", ".join(RECORD_WRITE)
    parts.append(
        f"c AS (INSERT INTO {records.name} ({written}) "
        f"SELECT {', '.join('i.' + n for n in RECORD_WRITE)} FROM i WHERE i.version = 1 "
        "ORDER BY i.n ON CONFLICT DO NOTHING RETURNING run_id)"
    )
    parts.append(
        "w AS MATERIALIZED (SELECT n FROM u UNION ALL "
        "SELECT i.n FROM i JOIN c ON c.run_id = i.run_id WHERE i.version = 1)"
    )
    kept = [c.name for c in history.columns]
    parts.append(
        f"h AS (INSERT INTO {history.name} ({', '.join(kept)}) "
        f"SELECT {', '.join('i.' + n for n in kept)} FROM i JOIN w ON w.n = i.n)"
    )
    parts.append(
        f"s AS (UPDATE {history.name} x SET object = i.object FROM i JOIN w ON w.n = i.n "
        f"WHERE i.run_state = {int(RunState.DATA_DELETED)} AND x.run_id = i.run_id "
        "AND x.version < i.version)"
    )
    parts.append(
        f"e AS (INSERT INTO {tail_table.name} ({', '.join(tail)}) "
        f"SELECT {', '.join('i.t_' + n for n in tail)} FROM i JOIN w ON w.n = i.n ORDER BY i.n)"
    )
    return Statement("WITH " + ",\n".join(parts) + "\nSELECT n FROM w")


PG_STORE_BATCH = {direct: _pg_store_batch(direct) for direct in (False, True)}
"""The batch write, with events published directly (``True``) or with outbox rows."""
