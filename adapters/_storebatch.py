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

from workflow import OutboxEvent, Record, RunState
from workflow.abc import Header

from ._fastsql import note
from ._postgres import lock_params
from ._sqlengine import EngineShared
from ._statements import (
    EVENT,
    OUTBOX,
    PG_STORE_BATCH,
    RECORD_WRITE,
    SQLITE_INSERT_EVENTS,
    SQLITE_INSERT_HISTORY,
    SQLITE_INSERT_OUTBOX,
    SQLITE_INSERT_RECORD,
    SQLITE_SCRUB_HISTORY,
    SQLITE_UPDATE_RECORD,
    event_rows,
    outbox_row,
    record_row,
)

if TYPE_CHECKING:
    from .sqlstreamer import SQLStreamer

__all__ = ["write_batch"]


async def write_batch(
    db: EngineShared,
    streamer: SQLStreamer | None,
    batch: Sequence[tuple[Record, OutboxEvent]],
) -> set[int]:
    """Write ``batch`` (runs with different run ids, each with its event as
    ``make_outbox_event`` made it in its caller's context: its trace context is the
    caller's) in one transaction (on PostgreSQL one statement); the positions in it of the
    runs written. ``streamer``: the store's (events go to its table and its receivers are
    woken), else outbox rows."""
    encode = db.encode_time
    rows = [record_row(r, encode) for r, _ in batch]
    if streamer is None:
        tails = [outbox_row(e, encode) for _, e in batch]
        return await _write(db, rows, tails, None)
    now = streamer.now()
    tails = []
    for _, e in batch:
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
        params = pg_batch_params(rows, tails, locks)
        found = await db.fetch(PG_STORE_BATCH[locks is not None], params)
        return {int(r[0]) for r in found}
    return set(await db.write(partial(sqlite_batch, rows, tails, locks is not None)))


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
    for name in RECORD_WRITE:
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


def sqlite_batch(
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
