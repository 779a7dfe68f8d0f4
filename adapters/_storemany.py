"""Several runs written in one transaction: the SQL record store's ``store_many``
(:class:`~workflow.abc.AtomicWrites`).

Each run is written by the statements of a single ``store`` (:mod:`adapters._statements`: the
compare-and-set, the new-run indexes, the history row, its outbox row or event), then the
extra outbox rows or events; the first write refused (its compare-and-set failed, or a unique
index refused it) rolls everything back and is reported as :class:`Refused`, naming the run.

**SQLite**: one job of the engine's group writer (:meth:`EngineShared.write`): the job runs in
its own savepoint, so raising undoes it alone. **PostgreSQL**: one transaction on one driver
connection. With events published directly (a store with ``streamer=``) it takes the insert
lock of every topic it writes first, in topic order, and the rows of the runs it updates
next, in run id order: writers of several runs and topics take their locks in one order, so
they cannot deadlock one another (a single ``store`` takes one topic lock, then one row).
A caller cancelled meanwhile leaves the transaction to finish (commit or roll back) in the
background, as a SQLite job does once handed over.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from workflow import OutboxEvent, Record
from workflow.abc import Header, make_outbox_event

from . import _statements
from ._fastsql import Statement, driver, note, track
from ._postgres import lock_params
from ._sqlengine import EngineShared
from ._statements import event_rows, outbox_row, record_row
from .sqlstreamer import SQLStreamer

__all__ = ["Refused", "write_many"]


class Refused(Exception):
    """The write of ``records[index]`` was refused, so nothing at all was written: ``cause`` is
    the error its statements raised (a unique index refused it, or any other failure), or
    ``None`` when its compare-and-set failed (a stale version, or no such run)."""

    def __init__(self, index: int, cause: Exception | None) -> None:
        super().__init__(index, cause)
        self.index = index
        self.cause = cause


async def write_many(
    db: EngineShared,
    streamer: SQLStreamer | None,
    records: Sequence[Record],
    events: Sequence[OutboxEvent],
) -> None:
    """Write ``records`` (each as ``store`` does) and the extra ``events`` in one transaction,
    or nothing (then :class:`Refused`, or the database's error). ``streamer``: the store's
    (events go to its table, and its receivers are woken), else outbox rows."""
    encode = db.encode_time
    rows = [record_row(r, encode) for r in records]
    own = [make_outbox_event(r) for r in records]
    if streamer is None:
        outbox = [outbox_row(e, encode) for e in (*own, *events)]
        await _write(db, rows, outbox, [], None)
        return
    now = streamer.now()
    appended = [_event_row(e, now, encode) for e in (*own, *events)]
    topics: dict[str, int] = {}
    for row in appended:
        topics[row["topic"]] = topics.get(row["topic"], 0) + 1
    locks = {
        tp: lock_params(tp, streamer.channel, streamer.notify_payload(tp)) for tp in sorted(topics)
    }
    written = False
    try:
        await _write(db, rows, [], appended, locks)
        written = True
    finally:  # after a failure: one spurious wake-up per topic
        for tp, n in topics.items():
            await streamer.published(tp, n if written else 0)


def _event_row(event: OutboxEvent, now: Any, encode: Any) -> dict[str, Any]:
    run_id, status, headers = event.parts()
    (row,) = event_rows(headers[Header.TOPIC], [(run_id, status, headers)], now, encode)
    return row


async def _write(
    db: EngineShared,
    rows: list[dict[str, Any]],
    outbox: list[dict[str, Any]],
    events: list[dict[str, Any]],
    locks: Mapping[str, dict[str, Any]] | None,
) -> None:
    """``rows[i]`` with ``outbox[i]`` (or ``events[i]`` when ``locks`` is given: the lock
    parameters of every topic of ``events``), then the rest of ``outbox`` / ``events``."""
    if not db.postgres:
        await db.write(partial(_sqlite_many, rows, outbox, events, locks is not None))
        return
    # Shielded: a cancelled caller leaves the transaction to end by itself (an interrupted
    # asyncpg transaction would leave its connection busy).
    task = asyncio.ensure_future(_pg_many(db, rows, outbox, events, locks))
    track(task)
    task.add_done_callback(_retrieve)
    await asyncio.shield(task)


def _retrieve(task: asyncio.Future[None]) -> None:
    """The error of a transaction whose caller was cancelled is nobody's to report."""
    if not task.cancelled():
        task.exception()


def _sqlite_many(
    rows: list[dict[str, Any]],
    outbox: list[dict[str, Any]],
    events: list[dict[str, Any]],
    direct: bool,
    conn: sqlite3.Connection,
) -> None:
    """In the writer's thread, inside the job's savepoint (raising undoes it all)."""
    for i, row in enumerate(rows):
        write = _statements.sqlite_store(
            row, None if direct else outbox[i], events[i] if direct else None
        )
        try:
            written = write(conn)
        except Exception as err:
            raise Refused(i, err) from err
        if written != 1:
            raise Refused(i, None)
    n = len(rows)
    _statements.sqlite_append(outbox[n:], events[n:], conn)


async def _pg_many(
    db: EngineShared,
    rows: list[dict[str, Any]],
    outbox: list[dict[str, Any]],
    events: list[dict[str, Any]],
    locks: Mapping[str, dict[str, Any]] | None,
) -> None:
    note("BEGIN", True)
    async with driver(db.engine) as conn, conn.transaction():

        async def run(stmt: Statement, params: Mapping[str, Any]) -> Any:
            note(stmt.text)
            return await conn.fetchval(stmt.pg, *stmt.args(params))

        for params in (locks or {}).values():  # sorted by topic
            await run(_statements.PG_LOCK_TOPIC, params)
        updated = sorted(r["run_id"] for r in rows if r["version"] != 1)
        if len(updated) > 1:
            await run(_statements.PG_LOCK_RUNS, {"run_ids": updated})
        for i, row in enumerate(rows):
            if locks is None:
                stmt, params = _statements.pg_store(row, outbox[i], None, None)
            else:
                event = events[i]
                stmt, params = _statements.pg_store(row, None, event, locks[event["topic"]])
            try:
                written = await run(stmt, params)
            except Exception as err:
                raise Refused(i, err) from err
            if written != 1:
                raise Refused(i, None)
        n = len(rows)
        for extra in outbox[n:]:
            await run(_statements.PG_INSERT_OUTBOX, extra)
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for event in events[n:]:
            by_topic.setdefault(event["topic"], []).append(event)
        for tp, batch in by_topic.items():
            assert locks is not None
            await run(_statements.PG_APPEND_EVENTS, _statements.pg_events(batch, locks[tp]))
