"""Cost as work grows: the SQL benchmark's throughput and idle latency on an empty database and
on one that already holds a million finished runs (with their history) and 100,000 consumed
events; table and index sizes per run; and whether the streamer's events table stays bounded.

    python -m bench.growth [--backend sqlite|postgres|both] [--quick] [--preload N]
                           [--events E] [--runs R] [--latency-runs M] [--pg-url URL]
                           [--no-write] [--check]

Per backend, in one process, with the 3-step workflow of ``bench.sql`` (its ``Tracker``,
``TimedStore``, warm-up, idle-latency and throughput phases, and its check of every run in the
database):

1. **empty**: fresh tables; warm-up, idle latency (one run at a time), then R runs triggered
   as ``bench.sql`` triggers them (throughput). Afterwards one of its completed runs (its
   record and its history rows), one of its events and its consumers' cursors are read back:
   they are the templates of the pre-load, so the pre-loaded rows are what the engine itself
   writes;
2. **pre-load**: fresh tables again (created by ``create_schema``: the real tables and
   indexes), then N finished runs of the same workflow (COMPLETED at DONE, version 4, with
   the 4 history rows the engine writes for a 3-step run) and E consumed events, bulk
   inserted with every index in place: PostgreSQL through asyncpg's
   ``copy_records_to_table`` (then ``VACUUM ANALYZE``, what autovacuum would have done, and a
   ``CHECKPOINT``, so that writing the loaded pages out does not fall in the measurement),
   SQLite in one transaction of ``executemany`` through Python's ``sqlite3`` (no
   ``ANALYZE``: the engine never runs it). Half of the events are on the benchmark workflow's
   status topics, behind its consumers' cursors (the streamer deletes them at its first prune
   of each topic, during the measurement); the other half on the same topics of another
   workflow name, behind that workflow's cursors (nothing prunes them here: an idle workflow
   served elsewhere). Sequences are moved past the loaded ids;
3. **loaded**: the same phases as (1) on the pre-loaded tables;
4. sizes: table, index and total bytes per table, divided by the number of runs. PostgreSQL:
   ``pg_relation_size``, ``pg_indexes_size``, ``pg_total_relation_size``; SQLite: the
   ``dbstat`` virtual table (pages of each table and index), or page_count * page_size of the
   whole file where ``dbstat`` is missing.

During (1) and (3) the rows of ``workflow_events`` are counted per topic every
``SAMPLE_EVERY`` seconds on a connection of their own. Topics fall in three groups: the
benchmark workflow's topics that have a cursor (pruned by the streamer every ``prune_every``
sends of the topic), its topics without any cursor (``SQLStreamer`` never prunes those) and the
other workflow's. The events table is "bounded" when, at the end of the throughput phase, the
workflow's topics with a cursor that received events hold at most ``2 * prune_every`` rows each
(a topic is pruned every ``prune_every`` sends, up to its slowest cursor, which under load can
trail the newest event by about as much again), and the topics without a cursor did not grow
with the runs.

Targets (issue 14): the loaded figures within 20% of the empty ones (throughput at least 80%,
idle p50 at most 120%). PostgreSQL runs in a fresh schema ``bench_<random>`` that the script
creates and drops (URL: ``--pg-url`` or ``$WORKFLOW_TEST_POSTGRES_URL``; its ``fsync`` setting
is reported); SQLite on files in a temporary directory (``make_engine``: WAL,
``synchronous=FULL``). Results: the "Cost as work grows" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Builder, Run, RunState
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import create_schema, make_engine, records
from workflow.adapters.sqlstreamer import SQLStreamer

from . import sql
from ._common import (
    Percentiles,
    command_line,
    filesystem_of,
    fmt_int,
    load_average,
    machine_facts_markdown,
    markdown_table,
    peak_rss_mib,
    percentiles,
    print_table,
    read_section,
    utc_now,
    write_section,
)

SECTION = "Cost as work grows"
WORKFLOW = "bench sql"  # bench.sql's workflow name
OTHER = "bench other"  # the idle workflow whose consumed events stay in the table
TARGET_SHARE = 0.20  # "within 20% of the empty-database figures"

FULL_PRELOAD, QUICK_PRELOAD = 1_000_000, 50_000
FULL_EVENTS, QUICK_EVENTS = 100_000, 10_000
FULL_RUNS, QUICK_RUNS = 2_000, 400
FULL_LATENCY_RUNS, QUICK_LATENCY_RUNS = 200, 50
FULL_PRUNE_EVERY, QUICK_PRUNE_EVERY = 1_000, 100  # SQLStreamer's default; quick: prunes happen
CONCURRENCY = 16
SAMPLE_EVERY = 0.5  # seconds between two counts of workflow_events
CHUNK = 100_000  # rows per executemany / COPY call (progress lines, bounded memory)

RECORDS, HISTORY, EVENTS, CURSORS = (
    "workflow_records",
    "workflow_record_history",
    "workflow_events",
    "workflow_cursors",
)


# -- templates: what the engine itself wrote in the empty run ---------------------------


@dataclass
class Templates:
    """Rows read back from the empty run, as the database driver returns them."""

    record: dict[str, Any]
    history: list[dict[str, Any]]  # one per version, in version order
    event: dict[str, Any]
    cursors: list[dict[str, Any]]  # every cursor of the benchmark workflow's topics


def topic_prefix(workflow_name: str) -> str:
    return workflow_name.replace(" ", "_") + "-"


def status_topic(workflow_name: str, status: int) -> str:
    return f"{topic_prefix(workflow_name)}{status}"


def foreign_key(workflow_name: str, foreign_id: str) -> str:
    """As ``sqlschema.foreign_key`` (kept here so that a million calls stay cheap)."""
    return hashlib.sha256(f"{workflow_name}\x00{foreign_id}".encode()).hexdigest()


@dataclass
class Preload:
    """What to pre-load, and the rows it makes from the templates."""

    runs: int
    events: int
    t: Templates
    run_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_ids = [str(uuid.uuid4()) for _ in range(self.runs)]  # as Engine.first_version

    @property
    def record_columns(self) -> list[str]:
        return list(self.t.record)

    @property
    def history_columns(self) -> list[str]:
        return list(self.t.history[0])

    @property
    def event_columns(self) -> list[str]:
        return list(self.t.event)

    def records(self, start: int, stop: int) -> Iterator[tuple[Any, ...]]:
        cols = self.record_columns
        base = dict(self.t.record)
        for i in range(start, stop):
            fid = f"old-{i}"
            base.update(
                id=i + 1,
                run_id=self.run_ids[i],
                foreign_id=fid,
                foreign_key=foreign_key(WORKFLOW, fid),
            )
            yield tuple(base[c] for c in cols)

    def history(self, start: int, stop: int) -> Iterator[tuple[Any, ...]]:
        cols = self.history_columns
        rows = [dict(h) for h in self.t.history]
        for i in range(start, stop):
            run_id = self.run_ids[i]
            for h in rows:
                h["run_id"] = run_id
                yield tuple(h[c] for c in cols)

    def event_rows(self) -> Iterator[tuple[Any, ...]]:
        """Event ids 1..E: the first half on the benchmark workflow's status topics, the
        second on the other workflow's; each names a pre-loaded run (foreign_id = run id)."""
        cols = self.event_columns
        base = dict(self.t.event)
        headers = json.loads(_text(base["headers"]))
        own = self.events // 2
        for j in range(self.events):
            name = WORKFLOW if j < own else OTHER
            status = j % 3 + 1  # STARTED, A, B: the topics of the three steps
            run_id = self.run_ids[(j // 3) % self.runs]
            tp = status_topic(name, status)
            h = dict(headers)
            h.update(
                foreign_id=f"old-{(j // 3) % self.runs}",
                workflow_name=name,
                topic=tp,
                run_id=run_id,
                run_state="1" if status == 1 else "2",
                record_version=str(status),
            )
            text = json.dumps(h, separators=(",", ":"))
            base.update(id=j + 1, topic=tp, foreign_id=run_id, type=status, headers=text)
            yield tuple(base[c] for c in cols)

    def cursor_rows(self) -> list[dict[str, Any]]:
        """The benchmark workflow's cursors and the same for the other workflow, each at the
        newest pre-loaded event of its topic (0 where its topic has none)."""
        newest: dict[str, int] = {}
        own = self.events // 2
        for j in range(self.events):
            name = WORKFLOW if j < own else OTHER
            newest[status_topic(name, j % 3 + 1)] = j + 1
        out: list[dict[str, Any]] = []
        mine, theirs = topic_prefix(WORKFLOW), topic_prefix(OTHER)
        for c in self.t.cursors:
            for topic, name in (
                (c["topic"], c["name"]),
                (c["topic"].replace(mine, theirs, 1), c["name"].replace(mine, theirs, 1)),
            ):
                row = dict(c)
                row.update(topic=topic, name=name, position=newest.get(topic, 0))
                out.append(row)
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _chunks(total: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, CHUNK):
        yield start, min(total, start + CHUNK)


# -- backends ---------------------------------------------------------------------------


@dataclass
class SizeRow:
    table: str
    rows: int
    table_bytes: int
    index_bytes: int
    total_bytes: int


class Backend:
    """One database kind: fresh tables, templates, the pre-load, counts and sizes."""

    name = ""
    size_method = ""

    async def fresh(self) -> AsyncEngine:
        raise NotImplementedError

    async def templates(self, foreign_id: str) -> Templates:
        raise NotImplementedError

    async def preload(self, p: Preload) -> dict[str, float]:
        """Load ``p``; return the seconds each stage took."""
        raise NotImplementedError

    async def count_events(self) -> dict[str, int]:
        raise NotImplementedError

    async def cursor_topics(self) -> set[str]:
        raise NotImplementedError

    async def sizes(self) -> list[SizeRow]:
        raise NotImplementedError

    async def facts(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


class SQLiteBackend(Backend):
    name = "SQLite"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-growth-"))
        self._n = 0
        self.path = self.dir / "none.db"
        self._reader: sqlite3.Connection | None = None
        self.size_method = "?"

    async def fresh(self) -> AsyncEngine:
        self._close_reader()
        self._n += 1
        self.path = self.dir / f"workflow-{self._n}.db"
        engine = make_engine(f"sqlite+aiosqlite:///{self.path}")
        await create_schema(engine)
        return engine

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def templates(self, foreign_id: str) -> Templates:
        return await asyncio.to_thread(self._templates, foreign_id)

    def _templates(self, foreign_id: str) -> Templates:
        conn = self._connect()
        try:
            rec = conn.execute(
                f"SELECT * FROM {RECORDS} WHERE workflow_name = ? AND foreign_id = ?",
                (WORKFLOW, foreign_id),
            ).fetchone()
            hist = conn.execute(
                f"SELECT * FROM {HISTORY} WHERE run_id = ? ORDER BY version", (rec["run_id"],)
            ).fetchall()
            ev = conn.execute(f"SELECT * FROM {EVENTS} ORDER BY id DESC LIMIT 1").fetchone()
            curs = conn.execute(
                f"SELECT * FROM {CURSORS} WHERE topic LIKE ?", (topic_prefix(WORKFLOW) + "%",)
            ).fetchall()
        finally:
            conn.close()
        return Templates(dict(rec), [dict(h) for h in hist], dict(ev), [dict(c) for c in curs])

    async def preload(self, p: Preload) -> dict[str, float]:
        return await asyncio.to_thread(self._preload, p)

    def _preload(self, p: Preload) -> dict[str, float]:
        conn = self._connect()
        took: dict[str, float] = {}
        try:
            # One transaction: the journal mode does not matter for it; a big page cache
            # keeps the random index inserts (uuid run ids, sha256 keys) off the disk.
            conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            _insert_many(conn, RECORDS, p.record_columns, p.runs, p.records, "records")
            took["records"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            _insert_many(conn, HISTORY, p.history_columns, p.runs, p.history, "history")
            took["history"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            _insert_rows(conn, EVENTS, p.event_columns, p.event_rows())
            cursor_rows = p.cursor_rows()
            cols = list(cursor_rows[0])
            _insert_rows(conn, CURSORS, cols, (tuple(r[c] for c in cols) for r in cursor_rows))
            took["events and cursors"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            conn.execute("COMMIT")
            took["commit"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            took["WAL checkpoint"] = time.perf_counter() - t1
        finally:
            conn.close()
        return took

    def _reader_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = self._connect()
        return self._reader

    async def count_events(self) -> dict[str, int]:
        def count() -> dict[str, int]:
            rows = self._reader_conn().execute(
                f"SELECT topic, count(*) FROM {EVENTS} GROUP BY topic"
            )
            return {str(t): int(n) for t, n in rows}

        return await asyncio.to_thread(count)

    async def cursor_topics(self) -> set[str]:
        def topics() -> set[str]:
            return {str(r[0]) for r in self._reader_conn().execute(f"SELECT topic FROM {CURSORS}")}

        return await asyncio.to_thread(topics)

    async def sizes(self) -> list[SizeRow]:
        return await asyncio.to_thread(self._sizes)

    def _sizes(self) -> list[SizeRow]:
        conn = self._reader_conn()
        owner = {
            str(r[0]): str(r[1])
            for r in conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"
            )
        }
        tables = [n for n, t in owner.items() if n == t and n.startswith("workflow_")]
        rows = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}
        table_b = dict.fromkeys(tables, 0)
        index_b = dict.fromkeys(tables, 0)
        try:
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                t = owner.get(str(name))
                if t not in table_b:
                    continue
                if name == t:
                    table_b[t] += int(size)
                else:
                    index_b[t] += int(size)
            self.size_method = "the `dbstat` virtual table (bytes of the pages of each b-tree)"
        except sqlite3.OperationalError:
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            self.size_method = (
                "no `dbstat` in this SQLite: the whole file only (page_count * page_size), "
                "put on the records table"
            )
            table_b[RECORDS] = page * pages
        return [
            SizeRow(t, rows[t], table_b[t], index_b[t], table_b[t] + index_b[t])
            for t in sorted(tables)
        ]

    def file_bytes(self) -> tuple[int, int]:
        wal = Path(f"{self.path}-wal")
        return self.path.stat().st_size, wal.stat().st_size if wal.exists() else 0

    async def facts(self) -> list[str]:
        return [
            f"SQLite {sqlite3.sqlite_version} (driver aiosqlite), files in a temporary "
            f"directory on `{filesystem_of(self.dir)}`; `make_engine`: WAL, "
            "`synchronous=FULL`, `BEGIN IMMEDIATE` per write transaction"
        ]

    async def close(self) -> None:
        self._close_reader()
        shutil.rmtree(self.dir, ignore_errors=True)


def _insert_sql(table: str, cols: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _insert_many(
    conn: sqlite3.Connection,
    table: str,
    cols: Sequence[str],
    runs: int,
    rows: Callable[[int, int], Iterator[tuple[Any, ...]]],
    what: str,
) -> None:
    stmt = _insert_sql(table, cols)
    t0 = time.perf_counter()
    for start, stop in _chunks(runs):
        conn.executemany(stmt, rows(start, stop))
        if stop % (CHUNK * 5) == 0 or stop == runs:
            print(f"    {what}: {stop:,} runs ({time.perf_counter() - t0:.1f} s)", flush=True)


def _insert_rows(
    conn: sqlite3.Connection, table: str, cols: Sequence[str], rows: Iterator[tuple[Any, ...]]
) -> None:
    conn.executemany(_insert_sql(table, cols), rows)


class PostgresBackend(Backend):
    name = "PostgreSQL"
    size_method = (
        "`pg_relation_size` (the table's main fork), `pg_indexes_size`, "
        "`pg_total_relation_size` (TOAST included)"
    )

    def __init__(self, url: str) -> None:
        self.db = sql.PostgresDatabase(url)
        self.dsn = url.replace("+asyncpg", "", 1)
        self._conn: asyncpg.Connection | None = None

    @property
    def schema(self) -> str:
        return self.db.schema

    async def fresh(self) -> AsyncEngine:
        return await self.db.fresh()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.dsn, server_settings={"search_path": self.schema}
            )
        return self._conn

    async def templates(self, foreign_id: str) -> Templates:
        conn = await self._connection()
        rec = await conn.fetchrow(
            f"SELECT * FROM {RECORDS} WHERE workflow_name = $1 AND foreign_id = $2",
            WORKFLOW,
            foreign_id,
        )
        assert rec is not None, f"no record {foreign_id!r} to copy"
        hist = await conn.fetch(
            f"SELECT * FROM {HISTORY} WHERE run_id = $1 ORDER BY version", rec["run_id"]
        )
        ev = await conn.fetchrow(f"SELECT * FROM {EVENTS} ORDER BY id DESC LIMIT 1")
        assert ev is not None, "no event to copy"
        curs = await conn.fetch(
            f"SELECT * FROM {CURSORS} WHERE topic LIKE $1", topic_prefix(WORKFLOW) + "%"
        )
        return Templates(dict(rec), [dict(h) for h in hist], dict(ev), [dict(c) for c in curs])

    async def preload(self, p: Preload) -> dict[str, float]:
        conn = await self._connection()
        took: dict[str, float] = {}
        t0 = time.perf_counter()
        for start, stop in _chunks(p.runs):
            await conn.copy_records_to_table(
                RECORDS, records=p.records(start, stop), columns=p.record_columns
            )
            if stop % (CHUNK * 5) == 0 or stop == p.runs:
                print(f"    records: {stop:,} runs ({time.perf_counter() - t0:.1f} s)", flush=True)
        took["records (COPY)"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        for start, stop in _chunks(p.runs):
            await conn.copy_records_to_table(
                HISTORY, records=p.history(start, stop), columns=p.history_columns
            )
            if stop % (CHUNK * 5) == 0 or stop == p.runs:
                print(f"    history: {stop:,} runs ({time.perf_counter() - t1:.1f} s)", flush=True)
        took["history (COPY)"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        await conn.copy_records_to_table(EVENTS, records=p.event_rows(), columns=p.event_columns)
        cursor_rows = p.cursor_rows()
        cols = list(cursor_rows[0])
        await conn.copy_records_to_table(
            CURSORS, records=[tuple(r[c] for c in cols) for r in cursor_rows], columns=cols
        )
        for table in (RECORDS, EVENTS):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        took["events and cursors (COPY)"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        for table in (RECORDS, HISTORY, EVENTS, CURSORS):
            await conn.execute(f"VACUUM ANALYZE {table}")
        took["VACUUM ANALYZE"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        try:  # write the loaded pages out now, not during the measurement
            await conn.execute("CHECKPOINT")
            took["CHECKPOINT"] = time.perf_counter() - t1
        except asyncpg.PostgresError as err:  # needs superuser or pg_checkpoint
            print(f"  CHECKPOINT refused ({err}); the server writes the pages out meanwhile")
        return took

    async def count_events(self) -> dict[str, int]:
        conn = await self._connection()
        rows = await conn.fetch(f"SELECT topic, count(*) AS n FROM {EVENTS} GROUP BY topic")
        return {str(r["topic"]): int(r["n"]) for r in rows}

    async def cursor_topics(self) -> set[str]:
        conn = await self._connection()
        return {str(r["topic"]) for r in await conn.fetch(f"SELECT topic FROM {CURSORS}")}

    async def sizes(self) -> list[SizeRow]:
        conn = await self._connection()
        tables = await conn.fetch(
            "SELECT c.relname, pg_relation_size(c.oid) AS t, pg_indexes_size(c.oid) AS i, "
            "pg_total_relation_size(c.oid) AS a FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r' "
            "AND c.relname LIKE 'workflow%' ORDER BY c.relname",
            self.schema,
        )
        out: list[SizeRow] = []
        for r in tables:
            rows = int(await conn.fetchval(f'SELECT count(*) FROM "{r["relname"]}"'))
            out.append(SizeRow(str(r["relname"]), rows, int(r["t"]), int(r["i"]), int(r["a"])))
        return out

    async def fsync(self) -> str:
        conn = await self._connection()
        return str(await conn.fetchval("SHOW fsync"))

    async def facts(self) -> list[str]:
        return await self.db.facts()

    async def close(self) -> None:
        try:
            if self._conn is not None:
                await self._conn.close()
        finally:
            await self.db.close()


# -- measuring -------------------------------------------------------------------------


def make_bench(engine: AsyncEngine, concurrency: int, prune_every: int) -> sql.Bench:
    """``bench.sql.build`` with the streamer's ``prune_every`` given (public options only)."""
    tracker = sql.Tracker()
    b: Builder[sql.Obj, sql.Status] = Builder(WORKFLOW, sql.Obj, sql.Status)
    chain = [sql.Status.STARTED, sql.Status.A, sql.Status.B, sql.Status.DONE]
    for cur, nxt in itertools.pairwise(chain):

        async def step(run: Run[sql.Obj, sql.Status], nxt: sql.Status = nxt) -> sql.Status:
            tracker.step_calls += 1
            run.object.steps += 1
            run.object.last = nxt.name
            return nxt

        b.add_step(cur, step, nxt).with_options(concurrency=concurrency)
    streamer = SQLStreamer(engine, poll_frequency=sql.POLL_FREQUENCY, prune_every=prune_every)
    roles = SQLRoleScheduler(engine)
    store = sql.TimedStore(engine, tracker, streamer)
    wf = b.build(streamer, store, roles, metrics_registry=CollectorRegistry())
    return sql.Bench(engine, wf, tracker, streamer, roles, sql.SQLCounter(engine))


@dataclass
class Sample:
    at: float
    phase: str
    counts: dict[str, int]


class Sampler:
    """Counts the rows of ``workflow_events`` per topic every ``SAMPLE_EVERY`` seconds (one
    count at a time: the counting connection is not shared)."""

    def __init__(self, count: Callable[[], Awaitable[dict[str, int]]]) -> None:
        self.count = count
        self.phase = "start"
        self.samples: list[Sample] = []
        self.t0 = time.perf_counter()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def take(self, phase: str | None = None) -> None:
        async with self._lock:
            at, label = time.perf_counter() - self.t0, phase or self.phase
            self.samples.append(Sample(at, label, await self.count()))

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SAMPLE_EVERY)
                return
            await self.take()

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Let a count under way finish, then stop (no cancelled query on the connection)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task


@dataclass
class Measured:
    label: str
    preloaded: int
    idle: Percentiles
    tp: sql.Throughput
    samples: list[Sample]
    cursor_topics: set[str]


async def measure(
    backend: Backend, engine: AsyncEngine, label: str, preloaded: int, args: argparse.Namespace
) -> Measured:
    bench = make_bench(engine, CONCURRENCY, args.prune_every)
    sampler = Sampler(backend.count_events)
    await sampler.take("before start")
    await bench.wf.__aenter__()
    try:
        sampler.start()
        sampler.phase = "warm-up"
        await sql.warm_up(bench, "warm-")
        gc.collect()
        sampler.phase = "idle latency"
        await sampler.take()
        idle = await sql.sequential_latency(bench.wf, args.latency_runs, "lat")
        gc.collect()
        sampler.phase = "throughput"
        await sampler.take()
        tp = await sql.throughput(bench, args.runs, "tp-")
        await sampler.stop()
        await sampler.take("end of throughput")
        await asyncio.sleep(1.0)  # the last acks are written (coalesced every 50 ms)
        await sampler.take("1 s later")
    finally:
        await sampler.stop()
        await sql.stop(bench)
    await sampler.take("after stop")
    topics = await backend.cursor_topics()
    return Measured(label, preloaded, percentiles(idle), tp, sampler.samples, topics)


@dataclass
class EventGroups:
    """Rows of one sample by group of topics."""

    with_cursor: int
    without_cursor: int
    other: int


def groups(counts: dict[str, int], cursor_topics: set[str]) -> EventGroups:
    mine, theirs = topic_prefix(WORKFLOW), topic_prefix(OTHER)
    g = EventGroups(0, 0, 0)
    for topic, n in counts.items():
        if topic.startswith(theirs):
            g.other += n
        elif topic.startswith(mine) and topic in cursor_topics:
            g.with_cursor += n
        else:
            g.without_cursor += n
    return g


@dataclass
class BackendResult:
    name: str
    facts: list[str]
    fsync: str
    empty: Measured
    loaded: Measured
    preload_runs: int
    preload_events: int
    history_per_run: int
    preload_took: dict[str, float]
    sizes: list[SizeRow]
    size_method: str
    file_bytes: tuple[int, int] | None
    load_before: str
    measured_at: str
    wall_s: float
    rss_mib: float
    prune_every: int
    latency_runs: int


async def run_backend(backend: Backend, args: argparse.Namespace) -> BackendResult:
    wall0, load_before, measured_at = time.perf_counter(), load_average(), utc_now()
    print(f"\n{backend.name}: empty database ...", flush=True)
    engine = await backend.fresh()
    try:
        empty = await measure(backend, engine, "empty", 0, args)
        _print_measured(empty)
        templates = await backend.templates("tp-0")
    finally:
        await engine.dispose()
    if not templates.cursors:
        raise SystemExit("FAILED: the empty run left no cursor of its consumers to copy")
    print(
        f"{backend.name}: pre-loading {args.preload:,} finished runs ({len(templates.history)} "
        f"history rows each) and {args.events:,} consumed events ...",
        flush=True,
    )
    engine = await backend.fresh()
    try:
        p = Preload(args.preload, args.events, templates)
        t0 = time.perf_counter()
        took = await backend.preload(p)
        took["all"] = time.perf_counter() - t0
        print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()), flush=True)
        del p
        gc.collect()
        print(f"{backend.name}: pre-loaded database ...", flush=True)
        loaded = await measure(backend, engine, f"{args.preload:,} runs", args.preload, args)
        _print_measured(loaded)
        await verify_preload(engine, args.preload)
        sizes = await backend.sizes()
    finally:
        await engine.dispose()
    fsync = await backend.fsync() if isinstance(backend, PostgresBackend) else "n/a"
    return BackendResult(
        name=backend.name,
        facts=await backend.facts(),
        fsync=fsync,
        empty=empty,
        loaded=loaded,
        preload_runs=args.preload,
        preload_events=args.events,
        history_per_run=len(templates.history),
        preload_took=took,
        sizes=sizes,
        size_method=backend.size_method,
        file_bytes=backend.file_bytes() if isinstance(backend, SQLiteBackend) else None,
        load_before=load_before,
        measured_at=measured_at,
        wall_s=time.perf_counter() - wall0,
        rss_mib=peak_rss_mib(),
        prune_every=args.prune_every,
        latency_runs=args.latency_runs,
    )


async def verify_preload(engine: AsyncEngine, n: int) -> None:
    """The pre-loaded runs are still there, COMPLETED at DONE (the benchmark touched none)."""
    query = sa.select(records.c.run_state, records.c.status, sa.func.count()).where(
        records.c.workflow_name == WORKFLOW, records.c.foreign_id.like("old-%")
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query.group_by(records.c.run_state, records.c.status))).all()
    ok = [(int(RunState.COMPLETED), int(sql.Status.DONE), n)]
    if [(r[0], r[1], r[2]) for r in rows] != ok:
        raise SystemExit(f"FAILED: pre-loaded runs by (run_state, status, count): {rows}")


def _print_measured(m: Measured) -> None:
    print(
        f"  {fmt_int(m.tp.transitions_per_s)} transitions/s "
        f"({m.tp.runs:,} runs in {m.tp.seconds:.2f} s), "
        f"{m.tp.cpu_ms_per_transition:.2f} ms CPU/transition; idle p50 {m.idle.p50:.1f} ms",
        flush=True,
    )


# -- report ----------------------------------------------------------------------------


def _ms(p: Percentiles) -> str:
    return f"p50 {p.p50:.1f} / p90 {p.p90:.1f} / p99 {p.p99:.1f} ms"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def targets(r: BackendResult) -> tuple[bool, bool]:
    tps_ok = r.loaded.tp.transitions_per_s >= (1 - TARGET_SHARE) * r.empty.tp.transitions_per_s
    p50_ok = r.loaded.idle.p50 <= (1 + TARGET_SHARE) * r.empty.idle.p50
    return tps_ok, p50_ok


def comparison_rows(r: BackendResult) -> list[list[str]]:
    e, lo = r.empty, r.loaded
    tps_ok, p50_ok = targets(r)
    return [
        [
            "throughput",
            f"{fmt_int(e.tp.transitions_per_s)} transitions/s ({e.tp.runs:,} runs)",
            f"{fmt_int(lo.tp.transitions_per_s)} transitions/s ({lo.tp.runs:,} runs)",
            f"{lo.tp.transitions_per_s / e.tp.transitions_per_s:.0%}",
            f"≥ {1 - TARGET_SHARE:.0%} of empty: {_verdict(tps_ok)}",
        ],
        [
            f"latency, idle engine ({e.idle.count} runs, one at a time)",
            _ms(e.idle),
            _ms(lo.idle),
            f"p50 {lo.idle.p50 / e.idle.p50:.0%}",
            f"p50 ≤ {1 + TARGET_SHARE:.0%} of empty: {_verdict(p50_ok)}",
        ],
        [
            "latency under load (throughput phase)",
            _ms(e.tp.under_load_ms),
            _ms(lo.tp.under_load_ms),
            f"p50 {lo.tp.under_load_ms.p50 / e.tp.under_load_ms.p50:.0%}",
            "none",
        ],
        [
            "cost per transition",
            _cost(e.tp),
            _cost(lo.tp),
            f"CPU {lo.tp.cpu_ms_per_transition / e.tp.cpu_ms_per_transition:.0%}",
            "none",
        ],
    ]


def kinds_text(r: BackendResult) -> str:
    """Statements per transition by kind where empty and loaded differ by 0.02 or more."""
    e = {k: n / r.empty.tp.transitions for k, n in r.empty.tp.kinds}
    lo = {k: n / r.loaded.tp.transitions for k, n in r.loaded.tp.kinds}
    diff = [
        f"`{k}` {e.get(k, 0.0):.2f} → {lo.get(k, 0.0):.2f}"
        for k in dict.fromkeys([*e, *lo])
        if abs(lo.get(k, 0.0) - e.get(k, 0.0)) >= 0.02
    ]
    return (
        "Statements per transition that differ (empty → pre-loaded): " + ", ".join(diff) + "."
        if diff
        else "Statements per transition by kind: the same on both (within 0.02)."
    )


def _cost(tp: sql.Throughput) -> str:
    return (
        f"{tp.statements / tp.transitions:.2f} statements in "
        f"{tp.transactions / tp.transitions:.2f} transactions, "
        f"{tp.cpu_ms_per_transition:.2f} ms CPU"
    )


def size_rows(r: BackendResult) -> list[list[str]]:
    runs = next((s.rows for s in r.sizes if s.table == RECORDS), 0) or 1
    out: list[list[str]] = []
    tot = SizeRow("all tables", 0, 0, 0, 0)
    for s in r.sizes:
        if s.total_bytes == 0 and s.rows == 0:
            continue
        tot.table_bytes += s.table_bytes
        tot.index_bytes += s.index_bytes
        tot.total_bytes += s.total_bytes
        out.append(_size_row(s.table, f"{s.rows:,}", s, runs))
    out.append(_size_row("**all tables**", "", tot, runs))
    return out


def _size_row(name: str, rows: str, s: SizeRow, runs: int) -> list[str]:
    return [
        name,
        rows,
        _mib(s.table_bytes),
        _mib(s.index_bytes),
        _mib(s.total_bytes),
        f"{s.table_bytes / runs:,.0f} B",
        f"{s.index_bytes / runs:,.0f} B",
        f"{s.total_bytes / runs:,.0f} B",
    ]


SIZE_HEADERS = [
    "table",
    "rows",
    "data",
    "indexes",
    "total",
    "data per run",
    "indexes per run",
    "total per run",
]


@dataclass
class Bounded:
    rows: list[list[str]]
    ok: bool | None  # None: no prune was due (fewer sends per topic than prune_every)
    note: str

    @property
    def verdict(self) -> str:
        return "not shown" if self.ok is None else _verdict(self.ok)


def events_report(r: BackendResult) -> Bounded:
    m = r.loaded
    topics = m.cursor_topics
    phases: dict[str, list[EventGroups]] = {}
    for s in m.samples:
        phases.setdefault(s.phase, []).append(groups(s.counts, topics))
    rows: list[list[str]] = []
    for phase, gs in phases.items():
        if len(gs) == 1:
            g = gs[0]
            rows.append([phase, f"{g.with_cursor:,}", f"{g.without_cursor:,}", f"{g.other:,}"])
        else:
            rows.append(
                [
                    f"{phase} ({len(gs)} samples: first / max / last)",
                    _fml([g.with_cursor for g in gs]),
                    _fml([g.without_cursor for g in gs]),
                    _fml([g.other for g in gs]),
                ]
            )
    own_topics = sorted(t for t in topics if t.startswith(topic_prefix(WORKFLOW)))
    active = sorted({t for s in m.samples for t, n in s.counts.items() if n and t in own_topics})
    bound = 2 * len(active) * r.prune_every
    end = groups(next(s for s in m.samples if s.phase == "end of throughput").counts, topics)
    start_tp = groups(next(s for s in m.samples if s.phase == "throughput").counts, topics)
    grew = end.without_cursor - start_tp.without_cursor
    sends = sql.WARMUP_SEQ + sql.WARMUP_BATCH + r.latency_runs + m.tp.runs  # per status topic
    pruned = sends >= r.prune_every
    ok_cursor = end.with_cursor <= bound + 1
    ok_rest = grew <= len(own_topics)  # a few in flight at most; not one per run
    uncursored = sorted(
        t
        for s in m.samples
        for t in s.counts
        if t.startswith(topic_prefix(WORKFLOW)) and t not in topics
    )
    note = (
        f"End of the throughput phase: {end.with_cursor:,} rows on the workflow's "
        f"{len(own_topics)} topics with a cursor ({', '.join(f'`{t}`' for t in own_topics)}; "
        f"about {sends * len(active):,} events were sent on the {len(active)} that had events "
        f"during the measurement), bound 2 x prune_every {r.prune_every:,} x {len(active)} "
        f"topics = {bound:,}: "
        + (
            f"{_verdict(ok_cursor)}"
            if pruned
            else f"not shown ({sends:,} events per status topic, fewer than prune_every: no "
            "prune was due; run with more runs or a smaller --prune-every)"
        )
        + ". Topics without any cursor "
        f"({', '.join(f'`{t}`' for t in dict.fromkeys(uncursored)) or 'none'}): "
        f"{grew:+,} rows during the throughput phase of {m.tp.runs:,} runs: "
        + (
            "they did not grow."
            if ok_rest
            else "MISSED: `SQLStreamer` never prunes a topic nobody has a cursor on, so "
            "these rows grow by one per run for ever (the benchmark's workflow has no consumer "
            "of its run-state-change topic)."
        )
    )
    return Bounded(rows, (ok_cursor and ok_rest) if pruned else None, note)


def _fml(values: list[int]) -> str:
    return f"{values[0]:,} / {max(values):,} / {values[-1]:,}"


def preload_text(r: BackendResult) -> str:
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in r.preload_took.items() if k != "all")
    return (
        f"{r.preload_runs:,} runs x (1 record + {r.history_per_run} history rows) and "
        f"{r.preload_events:,} events in {r.preload_took['all']:.1f} s ({steps})"
    )


def backend_markdown(r: BackendResult, mode: str, command: str) -> str:
    b = events_report(r)
    fsync = "" if r.fsync == "n/a" else f" PostgreSQL `fsync={r.fsync}`."
    files = ""
    if r.file_bytes is not None:
        files = (
            f" Database file {_mib(r.file_bytes[0])}, WAL file {_mib(r.file_bytes[1])} at the end."
        )
    return "\n".join(
        [
            f"Measured {r.measured_at} ({mode} mode, {r.wall_s:.0f} s for this backend) with "
            f"`{command}`; load average before (1/5/15 min): {r.load_before}.{fsync}",
            "",
            *(f"- {fact}" for fact in r.facts),
            f"- Pre-load: {preload_text(r)}",
            f"- Peak RSS of the script: {r.rss_mib:.0f} MiB",
            "",
            markdown_table(
                ["metric", "empty", f"{r.preload_runs:,} runs pre-loaded", "ratio", "target"],
                comparison_rows(r),
            ),
            "",
            kinds_text(r),
            "",
            f"**Sizes** after the pre-loaded measurement, per run = divided by the rows of "
            f"`{RECORDS}`; measured with {r.size_method}.{files}",
            "",
            markdown_table(SIZE_HEADERS, size_rows(r)),
            "",
            "**Events table** (`workflow_events` rows during the pre-loaded measurement; "
            f"`prune_every={r.prune_every:,}`; half of the pre-loaded consumed events are on "
            "the workflow's topics with a cursor, half on another workflow's):",
            "",
            markdown_table(
                [
                    "when",
                    "workflow's topics with a cursor",
                    "workflow's topics without a cursor",
                    "other workflow's topics",
                ],
                b.rows,
            ),
            "",
            f"Bounded: {b.verdict}. {b.note}",
        ]
    )


def preamble() -> str:
    return "\n".join(
        [
            "Generated by `python -m bench.growth`; each backend's subsection says when and "
            "how it was measured.",
            "",
            machine_facts_markdown(),
            "",
            'The 3-step workflow, phases and checks of the "SQL adapters" section (step '
            f"concurrency {CONCURRENCY}, `SQLRecordStore(engine, streamer=streamer)`, "
            "`SQLStreamer`, `SQLRoleScheduler`, one process, default asyncio loop; warm-up, "
            "idle latency one run at a time, then R runs triggered as `bench.sql` triggers "
            f"them ({sql.TRIGGERS_AT_ONCE} `trigger` calls in flight at a time) and every run "
            "checked in the database), measured twice in one process: on empty tables, then on "
            "tables pre-loaded with finished runs of the same workflow and consumed events. The "
            "pre-loaded rows are copies of what the engine wrote in the empty run (one "
            "completed run's record and its history rows, one event, the consumers' cursors) "
            "under new run ids (uuid4, as the engine makes them), foreign ids and keys, bulk "
            "inserted with every index in place (PostgreSQL: asyncpg `copy_records_to_table`, "
            "then `VACUUM ANALYZE` and `CHECKPOINT`; SQLite: one transaction of `executemany` "
            "through Python's `sqlite3`). Half of the events lie behind the workflow's own "
            "cursors, the other half behind the cursors of another workflow name; afterwards "
            "the script checks that every pre-loaded run is still COMPLETED at DONE. The "
            "target (issue 14): within 20% of the empty database, i.e. throughput ≥ 80% and "
            "idle p50 ≤ 120% of the empty figures. The two measurements run one after the "
            "other on a shared machine: a difference of a few tens of percent can be noise; "
            "rerun before concluding.",
        ]
    )


def merge_section(results: list[BackendResult], mode: str) -> str:
    old = read_section(SECTION) or ""
    subsections: dict[str, str] = {}
    for m in re.finditer(r"^### (.+?)[ \t]*\n(.*?)(?=^### |\Z)", old, re.M | re.S):
        subsections[m.group(1).strip()] = m.group(2).strip("\n")
    command = command_line("bench.growth")
    for r in results:
        subsections[r.name] = backend_markdown(r, mode, command)
    parts = [preamble()]
    for name, flag in (("SQLite", "sqlite"), ("PostgreSQL", "postgres")):
        body = subsections.get(name) or (
            f"Not measured yet (run `python -m bench.growth --backend {flag}`)."
        )
        parts.append(f"### {name}\n\n{body}")
    return "\n\n".join(parts)


def print_backend(r: BackendResult) -> None:
    print(f"\n== {r.name} ({r.wall_s:.0f} s) ==")
    for fact in r.facts:
        print(f"  {fact}")
    if r.fsync != "n/a":
        print(f"  fsync={r.fsync}")
    print(f"  pre-load: {preload_text(r)}")
    print()
    print_table(
        ["metric", "empty", f"{r.preload_runs:,} runs pre-loaded", "ratio", "target"],
        comparison_rows(r),
    )
    print(kinds_text(r))
    print(f"\nsizes ({r.size_method}):")
    print_table(SIZE_HEADERS, size_rows(r))
    b = events_report(r)
    print("\nworkflow_events rows (pre-loaded measurement):")
    print_table(["when", "with a cursor", "without a cursor", "other workflow"], b.rows)
    print(f"bounded: {b.verdict}. {b.note}")


# -- main ------------------------------------------------------------------------------


async def run_all(args: argparse.Namespace, pg_url: str | None) -> list[BackendResult]:
    results: list[BackendResult] = []
    names = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for name in names:
        if name == "postgres" and pg_url is None:
            print("\nPostgreSQL: skipped (no --pg-url and no $WORKFLOW_TEST_POSTGRES_URL)")
            continue
        backend: Backend = SQLiteBackend() if name == "sqlite" else PostgresBackend(pg_url or "")
        try:
            results.append(await run_backend(backend, args))
        finally:
            await backend.close()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.growth",
        description="Throughput and idle latency on an empty database and on one pre-loaded "
        "with finished runs and consumed events; sizes per run; the events table's bound.",
    )
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"small run: {QUICK_PRELOAD:,} pre-loaded runs, {QUICK_EVENTS:,} events, "
        f"{QUICK_RUNS} runs, prune_every {QUICK_PRUNE_EVERY}",
    )
    p.add_argument("--preload", type=int, help=f"finished runs to pre-load ({FULL_PRELOAD:,})")
    p.add_argument("--events", type=int, help=f"consumed events to pre-load ({FULL_EVENTS:,})")
    p.add_argument("--runs", type=int, help=f"throughput runs (default {FULL_RUNS:,})")
    p.add_argument("--latency-runs", type=int, help=f"idle-latency runs ({FULL_LATENCY_RUNS})")
    p.add_argument("--prune-every", type=int, help="SQLStreamer prune_every (default 1000)")
    p.add_argument("--pg-url", help="PostgreSQL URL (default $WORKFLOW_TEST_POSTGRES_URL)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    q = args.quick
    defaults = {
        "preload": QUICK_PRELOAD if q else FULL_PRELOAD,
        "events": QUICK_EVENTS if q else FULL_EVENTS,
        "runs": QUICK_RUNS if q else FULL_RUNS,
        "latency_runs": QUICK_LATENCY_RUNS if q else FULL_LATENCY_RUNS,
        "prune_every": QUICK_PRUNE_EVERY if q else FULL_PRUNE_EVERY,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.events < 6:
        p.error("--events must be at least 6 (every status topic of both workflows)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pg_url = sql.postgres_url(args)
    if args.backend == "postgres" and pg_url is None:
        print("no PostgreSQL URL: pass --pg-url or set $WORKFLOW_TEST_POSTGRES_URL")
        return 2
    t0 = time.perf_counter()
    print(
        f"bench.growth ({args.mode}): backend {args.backend}; pre-load {args.preload:,} runs "
        f"and {args.events:,} events; {args.runs:,} throughput runs, {args.latency_runs} "
        f"latency runs, prune_every {args.prune_every}"
    )
    results = asyncio.run(run_all(args, pg_url))
    for r in results:
        print_backend(r)
    print(f"\nwhole script: {time.perf_counter() - t0:.1f} s")
    if results and not args.no_write:
        path = write_section(SECTION, merge_section(results, args.mode))
        print(f"wrote the {SECTION!r} section of {path}")
    missed = any(
        ok is False for r in results for ok in (*targets(r), events_report(r).ok)
    )  # fmt: skip
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
