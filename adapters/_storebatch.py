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

from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from workflow import OutboxEvent, Record
from workflow.abc import Header

from ._postgres import lock_params
from ._sqlengine import EngineShared
from ._statements import (
    PG_STORE_BATCH,
    event_rows,
    outbox_row,
    pg_batch_params,
    record_row,
    sqlite_batch,
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
