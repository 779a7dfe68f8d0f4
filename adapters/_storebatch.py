"""The writes of many runs in one transaction (on PostgreSQL one statement, on SQLite one job of
a group commit): what a record store's concurrent ``store`` calls become (see
``adapters._coalesce``).

Each run keeps its own answer, as if it had been written alone:

- an **update** is a compare-and-set on its version; a refused one (the run moved on) is
  reported to its caller alone, with no trace of it in the database;
- a **first version** whose insert a unique index refuses (its run id, the one unfinished run
  per foreign id, its idempotency key) is left out (PostgreSQL: ``ON CONFLICT DO NOTHING``;
  SQLite undoes the refused statement alone) and written again alone by the caller, which
  then gets the precise error;
- if the statement fails as a whole (any other error, a deadlock), nothing of it was written
  and every run of the batch is written again alone.

**Locks**, in the order every writer takes them (no cycle): with events published directly,
the insert lock of every topic of the batch first, in topic order (and its NOTIFY); then the
rows of the runs it updates, in run id order; then the writes. Events are inserted in the
order of the batch under those locks, so each topic's events commit in id order.

One statement is one round trip and one transaction: a batch of 64 transitions costs about
what one did (``bench/RESULTS.md``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from workflow import Record, RunState
from workflow.abc import Header, make_outbox_event

from . import _postgres
from ._fastsql import Statement, note
from ._postgres import lock_params
from ._sqlengine import EngineShared
from ._statements import (
    EVENT,
    OUTBOX,
    RECORD_WRITE,
    SQLITE_INSERT_EVENTS,
    SQLITE_INSERT_HISTORY,
    SQLITE_INSERT_OUTBOX,
    SQLITE_INSERT_RECORD,
    SQLITE_SCRUB_HISTORY,
    SQLITE_UPDATE_RECORD,
    VERSIONED,
    event_rows,
    outbox_row,
    record_row,
)
from .sqlschema import events, history, outbox, records

if TYPE_CHECKING:
    from .sqlstreamer import SQLStreamer

__all__ = ["PG_STORE_BATCH", "pg_batch_params", "write_batch"]


async def write_batch(
    db: EngineShared, streamer: SQLStreamer | None, batch: Sequence[Record]
) -> set[int]:
    """Write ``batch`` (runs with different run ids) in one transaction (on PostgreSQL one
    statement); the positions in it of the runs written. ``streamer``: the store's (events
    go to its table and its receivers are woken), else outbox rows."""
    encode = db.encode_time
    rows = [record_row(r, encode) for r in batch]
    own = [make_outbox_event(r) for r in batch]
    if streamer is None:
        tails = [outbox_row(e, encode) for e in own]
        return await _write(db, rows, tails, None)
    now = streamer.now()
    tails = []
    for e in own:
        run_id, status, headers = e.parts()
        tails.extend(event_rows(headers[Header.TOPIC], [(run_id, status, headers)], now, encode))
    topics = sorted({t["topic"] for t in tails})
    locks = {tp: lock_params(tp, streamer.channel, streamer.notify_payload(tp)) for tp in topics}
    written: set[int] = set()
    try:
        written = await _write(db, rows, tails, locks)
    finally:  # after a failure: one spurious wake-up per topic
        counts = dict.fromkeys(topics, 0)
        for i in written:
            counts[tails[i]["topic"]] += 1
        for tp, n in counts.items():
            await streamer.published(tp, n)
    return written


async def _write(
    db: EngineShared,
    rows: list[dict[str, Any]],
    tails: list[dict[str, Any]],
    locks: Mapping[str, Mapping[str, Any]] | None,
) -> set[int]:
    if db.postgres:
        found = await db.fetch(
            PG_STORE_BATCH[locks is not None], pg_batch_params(rows, tails, locks)
        )
        return {int(r[0]) for r in found}
    return set(await db.write(partial(_sqlite_batch, rows, tails, locks is not None)))


def _sqlite_batch(
    rows: list[dict[str, Any]], tails: list[dict[str, Any]], direct: bool, conn: sqlite3.Connection
) -> list[int]:
    """SQLite, in the writing thread, as one job of a group commit: each run's row (a
    compare-and-set update, or an insert a unique index may refuse: SQLite undoes that
    statement alone), then the history rows, the scrubbing of deleted runs' history and the
    events (or outbox rows) of the runs written, each kind in one ``executemany``."""
    written: list[int] = []
    for i, row in enumerate(rows):
        if row["version"] == 1:
            note(SQLITE_INSERT_RECORD.text)
            try:
                conn.execute(SQLITE_INSERT_RECORD.text, row)
            except sqlite3.IntegrityError:
                continue  # refused by a unique index: its caller writes it again alone
        else:
            note(SQLITE_UPDATE_RECORD.text)
            if conn.execute(SQLITE_UPDATE_RECORD.text, row).rowcount != 1:
                continue  # the compare-and-set failed
        written.append(i)
    if not written:
        return written
    note(SQLITE_INSERT_HISTORY.text)
    conn.executemany(SQLITE_INSERT_HISTORY.text, [rows[i] for i in written])
    for i in written:
        if rows[i]["run_state"] == RunState.DATA_DELETED:
            note(SQLITE_SCRUB_HISTORY.text)
            conn.execute(SQLITE_SCRUB_HISTORY.text, rows[i])
    tail = SQLITE_INSERT_EVENTS if direct else SQLITE_INSERT_OUTBOX
    note(tail.text)
    conn.executemany(tail.text, [tails[i] for i in written])
    return written


def _typed(table: sa.Table, name: str) -> str:
    """The SQL type of column ``name`` (without a length), for the arrays of ``unnest``."""
    return _postgres.cast("x", table.c[name].type).removeprefix("CAST(:x AS ").removesuffix(")")


_ROW = tuple(n for n in RECORD_WRITE)
"""The record columns passed per run (an update leaves the first-version-only ones NULL)."""


def _batch_statement(direct: bool) -> Statement:
    cols: list[tuple[str, str]] = [("n", "INTEGER"), ("prev", "INTEGER")]
    cols += [(n, _typed(records, n)) for n in _ROW]
    tail_table, tail = (events, EVENT) if direct else (outbox, OUTBOX)
    cols += [(f"t_{n}", _typed(tail_table, n)) for n in tail]
    arrays = ", ".join(f"CAST(:{name} AS {typ}[])" for name, typ in cols)
    names = ", ".join(name for name, _ in cols)
    parts: list[str] = []
    gate = ""
    if direct:
        parts.append(
            "l AS MATERIALIZED (SELECT count(*) AS one FROM (SELECT "
            "pg_advisory_xact_lock(CAST(:namespace AS INTEGER), hashtext(t.topic)), "
            "pg_notify(CAST(:channel AS TEXT), t.payload) "
            "FROM unnest(CAST(:lock_topics AS TEXT[]), CAST(:lock_payloads AS TEXT[])) "
            "WITH ORDINALITY AS t(topic, payload, k) ORDER BY t.k) z)"
        )
        gate = " WHERE (SELECT one FROM l) >= 0"
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


PG_STORE_BATCH = {direct: _batch_statement(direct) for direct in (False, True)}
"""The batch write, with events published directly (``True``) or with outbox rows."""


def pg_batch_params(
    rows: Sequence[Mapping[str, Any]],
    tails: Sequence[Mapping[str, Any]],
    locks: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """The parameters of :data:`PG_STORE_BATCH`: ``rows`` (:func:`record_row`), each run's
    event (:func:`event_rows`) or outbox row (:func:`outbox_row`) in ``tails``, and with
    events the lock parameters of each of their topics (``locks``, sorted by topic)."""
    tail = EVENT if locks is not None else OUTBOX
    params: dict[str, Any] = {
        "n": list(range(len(rows))),
        "prev": [r["prev"] for r in rows],
    }
    for name in _ROW:
        params[name] = [r.get(name) for r in rows]
    for name in tail:
        params[f"t_{name}"] = [t[name] for t in tails]
    if locks is not None:
        first = next(iter(locks.values()))
        params["namespace"] = first["namespace"]
        params["channel"] = first["channel"]
        params["lock_topics"] = list(locks)
        params["lock_payloads"] = [p["payload"] for p in locks.values()]
    return params
