"""SQL benchmark: throughput, latency, peak RSS and cost per transition of a 3-step workflow
on the SQL adapters (SQLRecordStore, SQLStreamer, SQLRoleScheduler), on SQLite and PostgreSQL,
beside what the same machine and database can do at best.

    python -m bench.sql [--backend sqlite|postgres|both] [--runs N] [--quick]
                        [--concurrency C] [--latency-runs M] [--pg-url URL]
                        [--no-profile] [--loop asyncio|uvloop] [--no-write] [--check]

Per backend, one process, the real clock:

1. the ceiling: single-row INSERT commits/s. PostgreSQL: ``pgbench`` (own transaction per
   INSERT) at 1 client and at the pool's client count, and the same loop through SQLAlchemy +
   asyncpg; SQLite: Python's ``sqlite3`` in WAL mode with ``synchronous=FULL``, and the same
   through SQLAlchemy + aiosqlite (``make_engine``: WAL, FULL, ``BEGIN IMMEDIATE``);
2. for each step concurrency (``--concurrency``, default 16; then 1, with N/8 runs and a
   quarter of the latency runs), on fresh tables, warmed up: idle latency (trigger, then
   ``await_`` DONE, one run at a time) and throughput (N runs triggered, 64 calls in flight; the
   clock stops when the last run's COMPLETED write has committed, seen by a thin wrapper
   around ``SQLRecordStore.store``; then every run is checked in the database: COMPLETED at
   DONE, version 4, object mutated 3 times — the script fails otherwise). transitions/s =
   3N / time. During throughput the SQL statements and transactions are counted (SQLAlchemy
   events and ``workflow.adapters._fastsql.observe``) and CPU time is taken (``process_time``);
3. a cProfile of one quick throughput run (own time summed per package), unless
   ``--no-profile``.

PostgreSQL runs in a fresh schema ``bench_<random>`` (never ``public``) that the script
creates and drops; its URL is ``--pg-url`` or ``$WORKFLOW_TEST_POSTGRES_URL``. SQLite runs on
fresh files in a temporary directory. The results go to the "SQL adapters" section of
bench/RESULTS.md (a backend that was not run keeps its previous subsection).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import enum
import gc
import itertools
import os
import pstats
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflow import Builder, Record, Run, RunState, Workflow
from workflow.adapters._fastsql import observe
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import create_schema, drop_schema, make_engine, records
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer

from ._common import (
    Percentiles,
    command_line,
    cpu_ticks,
    filesystem_of,
    fmt_int,
    load_average,
    loop_available,
    loop_text,
    machine_facts_markdown,
    markdown_table,
    peak_rss_mib,
    percentiles,
    print_table,
    profile_by_package,
    read_section,
    run_on,
    utc_now,
    write_section,
)

SECTION = "SQL adapters"
STEPS = 3
# issue 14's targets (one process, a 3-step run)
TARGET_SQLITE_TPS = 3_000.0
TARGET_SQLITE_P50_MS = 10.0
TARGET_PG_TPS = 5_000.0
TARGET_PG_P50_MS = 10.0

FULL_RUNS, QUICK_RUNS = 2_000, 300
FULL_LATENCY_RUNS, QUICK_LATENCY_RUNS = 200, 50
SECONDARY_RUNS_DIVISOR = 8  # the concurrency=1 configuration: N/8 runs, L/4 latency runs
PROFILE_RUNS = 150
WARMUP_SEQ, WARMUP_BATCH = 20, 100
PGBENCH_SECONDS = {"full": 10, "quick": 3}
LOOP_SECONDS = {"full": 2.0, "quick": 1.0}
POOL_SIZE, MAX_OVERFLOW = 20, 20
SQLITE_SCRATCH_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_ins (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"
)
PG_SCRATCH_TABLE = "CREATE TABLE IF NOT EXISTS bench_ins (id bigserial PRIMARY KEY, v int NOT NULL)"
TRIGGERS_AT_ONCE = 64  # the throughput phase's triggers: this many calls in flight at a time
POLL_FREQUENCY = 0.2  # SQLStreamer fallback polling; in-process sends wake receivers at once


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    A = 2
    B = 3
    DONE = 4


class Obj(BaseModel):
    """The small object every step mutates."""

    steps: int = 0
    last: str = ""


# -- the workflow ------------------------------------------------------------------------


@dataclass
class Tracker:
    """Notes when the COMPLETED write of each run of one batch has committed."""

    prefix: str = "\0"
    target: int = 0
    done: dict[str, float] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    step_calls: int = 0

    def expect(self, prefix: str, target: int) -> None:
        self.prefix, self.target = prefix, target
        self.done = {}
        self.event = asyncio.Event()

    def completed(self, foreign_id: str) -> None:
        if foreign_id.startswith(self.prefix):
            self.done[foreign_id] = time.perf_counter()
            if len(self.done) >= self.target:
                self.event.set()


class TimedStore(SQLRecordStore):
    """``SQLRecordStore`` that tells the tracker once a COMPLETED record is committed."""

    def __init__(
        self, engine: AsyncEngine, tracker: Tracker, streamer: SQLStreamer | None = None
    ) -> None:
        super().__init__(engine, streamer=streamer)
        self.tracker = tracker

    async def store(self, record: Record) -> None:
        await super().store(record)
        if record.run_state is RunState.COMPLETED:
            self.tracker.completed(record.foreign_id)


@dataclass
class Bench:
    """A started workflow on one database, with its adapters and counters."""

    engine: AsyncEngine
    wf: Workflow[Obj, Status]
    tracker: Tracker
    streamer: SQLStreamer
    roles: SQLRoleScheduler
    counter: SQLCounter


def build(engine: AsyncEngine, concurrency: int, direct: bool = True) -> Bench:
    tracker = Tracker()
    b: Builder[Obj, Status] = Builder("bench sql", Obj, Status)
    chain = [Status.STARTED, Status.A, Status.B, Status.DONE]
    for cur, nxt in itertools.pairwise(chain):

        async def step(run: Run[Obj, Status], nxt: Status = nxt) -> Status:
            tracker.step_calls += 1
            run.object.steps += 1
            run.object.last = nxt.name
            return nxt

        b.add_step(cur, step, nxt).with_options(concurrency=concurrency)
    streamer = SQLStreamer(engine, poll_frequency=POLL_FREQUENCY)
    roles = SQLRoleScheduler(engine)
    store = TimedStore(engine, tracker, streamer if direct else None)
    wf = b.build(streamer, store, roles, metrics_registry=CollectorRegistry())
    return Bench(engine, wf, tracker, streamer, roles, SQLCounter(engine))


class SQLCounter:
    """Counts the statements and transactions (reads included; on PostgreSQL a store is one
    autocommit statement) run on an engine, and the peak number of pooled connections
    checked out at once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements = self.begins = 0
        self.texts: Counter[str] = Counter()  # by SQL text (cached strings: cheap to count)
        self.out = self.peak_out = 0
        sync = engine.sync_engine
        sa_event.listen(sync, "before_cursor_execute", self._statement)
        sa_event.listen(sync, "begin", self._begin)
        sa_event.listen(sync.pool, "checkout", self._checkout)
        sa_event.listen(sync.pool, "checkin", self._checkin)
        # the hot statements run on the driver, past SQLAlchemy's events
        self.unobserve = observe(self._raw)

    def _raw(self, statement: str, starts_transaction: bool) -> None:
        if starts_transaction:
            self.begins += 1
        if statement != "BEGIN":
            self.statements += 1
            self.texts[statement] += 1

    def _statement(self, _conn: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's explicit BEGIN is not a statement
            self.statements += 1
            self.texts[statement] += 1

    def _begin(self, _conn: Any) -> None:
        self.begins += 1

    def _checkout(self, *_args: Any) -> None:
        self.out += 1
        self.peak_out = max(self.peak_out, self.out)

    def _checkin(self, *_args: Any) -> None:
        self.out -= 1

    def snapshot(self) -> tuple[int, int]:
        return self.statements, self.begins


def statement_kind(sql: str) -> str:
    """``SELECT workflow_records``, ``UPDATE workflow_cursors``, ``SELECT pg_advisory…``."""
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    m = re.search(r"\b(workflow_\w+)", sql) or re.search(r"\b(pg_\w+)", sql)
    return f"{verb} {m.group(1)}" if m else verb


def statement_kinds(texts: Counter[str]) -> list[tuple[str, int]]:
    kinds: Counter[str] = Counter()
    for text, n in texts.items():
        kinds[statement_kind(text)] += n
    return kinds.most_common()


# -- phases ------------------------------------------------------------------------------


async def sequential_latency(wf: Workflow[Obj, Status], n: int, prefix: str) -> list[float]:
    """Trigger→complete of ``n`` runs, one at a time, each awaited before the next (ms)."""
    out: list[float] = []
    for i in range(n):
        fid = f"{prefix}-{i}"
        t0 = time.perf_counter()
        run_id = await wf.trigger(fid)
        await wf.await_(fid, run_id, Status.DONE, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


@dataclass
class Throughput:
    runs: int
    seconds: float
    under_load_ms: Percentiles
    statements: int
    transactions: int
    kinds: list[tuple[str, int]]  # statements by kind, most frequent first
    cpu_s: float
    machine_busy: float | None  # share of all CPUs of the machine busy during the phase
    peak_connections: int

    @property
    def transitions(self) -> int:
        return self.runs * STEPS

    @property
    def transitions_per_s(self) -> float:
        return self.transitions / self.seconds

    @property
    def cpu_ms_per_transition(self) -> float:
        return self.cpu_s * 1000 / self.transitions


async def throughput(bench: Bench, n: int, prefix: str) -> Throughput:
    wf, tracker, counter = bench.wf, bench.tracker, bench.counter
    tracker.expect(prefix, n)
    calls_before = tracker.step_calls
    counter.peak_out = counter.out
    stmts0, begins0 = counter.snapshot()
    texts0 = counter.texts.copy()
    ticks0 = cpu_ticks()
    cpu0 = time.process_time()
    started: dict[str, float] = {}
    t_first = time.perf_counter()

    async def trigger(fid: str) -> None:
        started[fid] = time.perf_counter()
        await wf.trigger(fid)

    for i in range(0, n, TRIGGERS_AT_ONCE):  # as concurrent callers (a web server) would
        chunk = range(i, min(n, i + TRIGGERS_AT_ONCE))
        await asyncio.gather(*(trigger(f"{prefix}{j}") for j in chunk))
    budget = max(120.0, n / 5)
    try:
        await asyncio.wait_for(tracker.event.wait(), budget)
    except TimeoutError:
        raise SystemExit(
            f"FAILED: only {len(tracker.done)} of {n} runs completed within {budget:.0f}s"
        ) from None
    t_last = max(tracker.done.values())
    cpu = time.process_time() - cpu0
    ticks1 = cpu_ticks()
    stmts1, begins1 = counter.snapshot()
    busy = None
    if ticks0 is not None and ticks1 is not None and ticks1[1] > ticks0[1]:
        busy = (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])
    await verify(bench.engine, wf.name, prefix, n)
    calls = tracker.step_calls - calls_before
    if calls != n * STEPS:
        print(f"  note: {calls} step calls for {n * STEPS} transitions (at-least-once re-runs)")
    under_load = [(tracker.done[fid] - t0) * 1000 for fid, t0 in started.items()]
    return Throughput(
        runs=n,
        seconds=t_last - t_first,
        under_load_ms=percentiles(under_load),
        statements=stmts1 - stmts0,
        transactions=begins1 - begins0,
        kinds=statement_kinds(counter.texts - texts0),
        cpu_s=cpu,
        machine_busy=busy,
        peak_connections=counter.peak_out,
    )


async def verify(engine: AsyncEngine, workflow_name: str, prefix: str, n: int) -> None:
    """Every run of the batch COMPLETED at DONE, version 4, object mutated 3 times; else exit."""
    query = sa.select(
        records.c.foreign_id,
        records.c.run_state,
        records.c.status,
        records.c.version,
        records.c.object,
    ).where(records.c.workflow_name == workflow_name, records.c.foreign_id.like(f"{prefix}%"))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    bad: list[str] = []
    for r in rows:
        obj = Obj.model_validate_json(r.object)
        if (
            r.run_state != int(RunState.COMPLETED)
            or r.status != int(Status.DONE)
            or r.version != STEPS + 1
            or obj.steps != STEPS
        ):
            bad.append(
                f"{r.foreign_id}: run_state={RunState(r.run_state)!r} status={r.status} "
                f"version={r.version} steps={obj.steps}"
            )
    if len(rows) != n or bad:
        raise SystemExit(
            f"FAILED: {len(rows)} runs stored for {n} triggered; {len(bad)} not completed as "
            "expected" + (", e.g. " + "; ".join(bad[:5]) if bad else "")
        )


async def warm_up(bench: Bench, prefix: str) -> None:
    """Both paths (await_ one at a time, and back-to-back triggers), not counted."""
    await sequential_latency(bench.wf, WARMUP_SEQ, f"{prefix}seq")
    bench.tracker.expect(f"{prefix}tp-", WARMUP_BATCH)
    for i in range(WARMUP_BATCH):
        await bench.wf.trigger(f"{prefix}tp-{i}")
    try:
        await asyncio.wait_for(bench.tracker.event.wait(), 120)
    except TimeoutError:
        raise SystemExit(
            f"FAILED: warm-up: only {len(bench.tracker.done)} of {WARMUP_BATCH} runs completed"
        ) from None


# -- databases ---------------------------------------------------------------------------


class Database:
    """Where one backend's benchmark runs; :meth:`fresh` gives an engine on empty tables."""

    name = ""

    async def fresh(self) -> AsyncEngine:
        raise NotImplementedError

    async def facts(self) -> list[str]:
        return []

    async def ceilings(self, mode: str) -> list[Ceiling]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Ceiling:
    label: str
    per_s: float
    clients: int
    native: bool  # the database's own client (pgbench, sqlite3); else through SQLAlchemy
    short: str


class SQLiteDatabase(Database):
    name = "SQLite"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-sql-"))
        self._n = 0
        self.pool = "?"

    def _path(self, stem: str) -> Path:
        self._n += 1
        return self.dir / f"{stem}-{self._n}.db"

    async def fresh(self) -> AsyncEngine:
        engine = make_engine(f"sqlite+aiosqlite:///{self._path('workflow')}")
        self.pool = pool_text(engine)
        await create_schema(engine)
        return engine

    async def facts(self) -> list[str]:
        return [
            f"SQLite {sqlite3.sqlite_version} (Python `sqlite3`, driver aiosqlite), files in a "
            f"temporary directory on `{filesystem_of(self.dir)}`; `make_engine`: WAL, "
            "`synchronous=FULL`, `BEGIN IMMEDIATE` per write transaction, its default pool "
            f"({self.pool})"
        ]

    async def ceilings(self, mode: str) -> list[Ceiling]:
        seconds = LOOP_SECONDS[mode]
        raw = await asyncio.to_thread(self._sqlite3_loop, self._path("ceiling"), seconds)
        engine = make_engine(f"sqlite+aiosqlite:///{self._path('ceiling-sa')}")
        try:
            via_sa = await insert_loop(engine, seconds, 1)
        finally:
            await engine.dispose()
        return [
            Ceiling("Python `sqlite3` loop (WAL, synchronous=FULL)", raw, 1, True, "`sqlite3`"),
            Ceiling(
                "same loop through SQLAlchemy + aiosqlite (`make_engine`)",
                via_sa,
                1,
                False,
                "SQLAlchemy + aiosqlite",
            ),
        ]

    @staticmethod
    def _sqlite3_loop(path: Path, seconds: float) -> float:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(SQLITE_SCRATCH_TABLE)
            n = 0
            t0 = time.perf_counter()
            deadline = t0 + seconds
            while time.perf_counter() < deadline:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO bench_ins(v) VALUES (1)")
                conn.execute("COMMIT")
                n += 1
            return n / (time.perf_counter() - t0)
        finally:
            conn.close()

    async def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresDatabase(Database):
    name = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = f"bench_{secrets.token_hex(6)}"
        self.admin = create_async_engine(url)
        self._created = False
        self._engine: AsyncEngine | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "pool_size": POOL_SIZE,
            "max_overflow": MAX_OVERFLOW,
            "connect_args": {"server_settings": {"search_path": self.schema}},
        }

    async def _ensure_schema(self) -> None:
        if not self._created:
            async with self.admin.begin() as conn:
                await conn.exec_driver_sql(f"CREATE SCHEMA {self.schema}")
            self._created = True

    async def fresh(self) -> AsyncEngine:
        await self._ensure_schema()
        engine = make_engine(self.url, **self.engine_kwargs())
        await drop_schema(engine)
        await create_schema(engine)
        return engine

    async def facts(self) -> list[str]:
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
        )
        values: list[str] = []
        async with self.admin.connect() as conn:
            for n in names:
                values.append(f"{n}={(await conn.exec_driver_sql(f'SHOW {n}')).scalar()}")
        url = sa.make_url(self.url)
        where = f"{url.host}:{url.port}" if url.host else "a local socket"
        return [
            f"PostgreSQL server at {where}, driver asyncpg; schema `{self.schema}` (created "
            f"and dropped by the script); pool of {POOL_SIZE} + {MAX_OVERFLOW} overflow",
            "Server settings (`SHOW`): " + ", ".join(f"`{v}`" for v in values),
        ]

    def pgbench_dsn(self) -> str:
        dsn = self.url.replace("+asyncpg", "", 1)
        option = urllib.parse.quote(f"-csearch_path={self.schema}", safe="")
        return f"{dsn}{'&' if '?' in dsn else '?'}options={option}"

    async def ceilings(self, mode: str) -> list[Ceiling]:
        await self._ensure_schema()
        engine = make_engine(self.url, **self.engine_kwargs())
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(PG_SCRATCH_TABLE)
            out: list[Ceiling] = []
            seconds = PGBENCH_SECONDS[mode]
            for clients in (1, POOL_SIZE):
                tps = await asyncio.to_thread(self._pgbench, clients, seconds)
                label = f"`pgbench`, {clients} client{'s' if clients > 1 else ''}"
                out.append(Ceiling(label, tps, clients, True, f"`pgbench` at {clients}"))
            for clients in (1, POOL_SIZE):
                tps = await insert_loop(engine, LOOP_SECONDS[mode], clients)
                label = (
                    f"same through SQLAlchemy + asyncpg, {clients} task{'s' if clients > 1 else ''}"
                )
                out.append(
                    Ceiling(label, tps, clients, False, f"SQLAlchemy + asyncpg at {clients}")
                )
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP TABLE bench_ins")
            return out
        finally:
            await engine.dispose()

    def _pgbench(self, clients: int, seconds: int) -> float:
        exe = find_pgbench()
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write("INSERT INTO bench_ins(v) VALUES (1);\n")
            script = f.name
        try:
            cmd = [exe, "-n", "-f", script, "-c", str(clients), "-j", str(min(2, clients))]
            cmd += ["-T", str(seconds), self.pgbench_dsn()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        finally:
            os.unlink(script)
        m = re.search(r"^tps = ([\d.]+)", proc.stdout, re.M)
        if proc.returncode != 0 or m is None:
            raise SystemExit(f"FAILED: pgbench: {proc.stderr.strip() or proc.stdout.strip()}")
        return float(m.group(1))

    async def close(self) -> None:
        if self._created:
            async with self.admin.begin() as conn:
                await conn.exec_driver_sql(f"DROP SCHEMA {self.schema} CASCADE")
        await self.admin.dispose()


def pool_text(engine: AsyncEngine) -> str:
    pool = engine.sync_engine.pool
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", None)
    if callable(size) and isinstance(overflow, int):
        return f"{type(pool).__name__}, {size()} + {overflow} overflow"
    return type(pool).__name__


def find_pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    raise SystemExit("FAILED: pgbench not found (install postgresql-client or contrib)")


async def insert_loop(engine: AsyncEngine, seconds: float, tasks: int) -> float:
    """Single-row INSERT transactions/s through SQLAlchemy from ``tasks`` concurrent tasks."""
    table = sa.table("bench_ins", sa.column("v"))
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            SQLITE_SCRATCH_TABLE if engine.dialect.name == "sqlite" else PG_SCRATCH_TABLE
        )
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            async with engine.begin() as conn:
                await conn.execute(table.insert().values(v=1))
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return count / (time.perf_counter() - t0)


# -- one backend -------------------------------------------------------------------------


@dataclass
class ConfigResult:
    concurrency: int
    idle_ms: Percentiles
    tp: Throughput


@dataclass
class Profile:
    runs: int
    wall_s: float
    by_package: list[tuple[str, float]]  # own time, seconds
    driver_awaits: int  # SQLAlchemy's await_ into the driver (one per driver round trip)

    @property
    def busy_s(self) -> float:
        return sum(t for label, t in self.by_package if not label.startswith("waiting"))


@dataclass
class BackendResult:
    name: str
    mode: str
    command: str
    measured_at: str
    load_before: str
    facts: list[str]
    ceilings: list[Ceiling]
    configs: list[ConfigResult]
    profile: Profile | None
    rss_mib: float
    wall_s: float


async def start(db: Database, concurrency: int) -> Bench:
    bench = build(await db.fresh(), concurrency)
    await bench.wf.__aenter__()
    return bench


async def stop(bench: Bench) -> None:
    try:
        await bench.wf.__aexit__(None, None, None)
        await bench.streamer.close()
        await bench.roles.close()
    finally:
        bench.counter.unobserve()
        await bench.engine.dispose()


async def run_config(db: Database, concurrency: int, runs: int, latency_runs: int) -> ConfigResult:
    bench = await start(db, concurrency)
    try:
        await warm_up(bench, "warm-")
        gc.collect()
        idle = await sequential_latency(bench.wf, latency_runs, "lat")
        gc.collect()
        tp = await throughput(bench, runs, "tp-")
    finally:
        await stop(bench)
    return ConfigResult(concurrency, percentiles(idle), tp)


def _driver_awaits(stats: pstats.Stats) -> int:
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    return sum(
        v[1]
        for (filename, _line, name), v in raw.items()
        if name == "await_"
        and filename.replace("\\", "/").endswith("sqlalchemy/util/concurrency.py")
    )


async def run_profile(db: Database, concurrency: int, runs: int) -> Profile:
    bench = await start(db, concurrency)
    try:
        await warm_up(bench, "warm-")
        gc.collect()
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        try:
            await throughput(bench, runs, "prof-")
        finally:
            profile.disable()
        wall = time.perf_counter() - t0
    finally:
        await stop(bench)
    return Profile(runs, wall, profile_by_package(profile), _driver_awaits(pstats.Stats(profile)))


async def run_backend(db: Database, args: argparse.Namespace) -> BackendResult:
    wall0 = time.perf_counter()
    load_before = load_average()
    measured_at = utc_now()
    print(f"\n{db.name}: ceilings (single-row INSERT transactions) ...", flush=True)
    ceilings = await db.ceilings(args.mode)
    for c in ceilings:
        print(f"  {c.label}: {fmt_int(c.per_s)}/s")
    configs: list[ConfigResult] = []
    for conc in dict.fromkeys((args.concurrency, 1)):
        main_config = conc == args.concurrency
        runs = args.runs if main_config else max(1, args.runs // SECONDARY_RUNS_DIVISOR)
        latency_runs = args.latency_runs if main_config else max(1, args.latency_runs // 4)
        print(
            f"{db.name}: concurrency={conc}: {latency_runs} latency runs, "
            f"{runs:,} throughput runs ...",
            flush=True,
        )
        res = await run_config(db, conc, runs, latency_runs)
        print(
            f"  {fmt_int(res.tp.transitions_per_s)} transitions/s, "
            f"{res.tp.cpu_ms_per_transition:.2f} ms CPU/transition; idle p50 "
            f"{res.idle_ms.p50:.1f} ms",
            flush=True,
        )
        configs.append(res)
    prof: Profile | None = None
    if args.profile:
        runs = min(PROFILE_RUNS, args.runs)
        print(f"{db.name}: cProfile of {runs} runs at concurrency={args.concurrency} ...")
        prof = await run_profile(db, args.concurrency, runs)
    return BackendResult(
        name=db.name,
        mode=args.mode,
        command=command_line("bench.sql"),
        measured_at=measured_at,
        load_before=load_before,
        facts=await db.facts(),
        ceilings=ceilings,
        configs=configs,
        profile=prof,
        rss_mib=peak_rss_mib(),
        wall_s=time.perf_counter() - wall0,
    )


# -- report ------------------------------------------------------------------------------


def _ms(p: Percentiles) -> str:
    return f"p50 {p.p50:.1f} / p90 {p.p90:.1f} / p99 {p.p99:.1f} / max {p.max:.1f} ms"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _share(x: float, y: float) -> str:
    return f"{x / y:.1%}" if y > 0 else "n/a"


def primary_ceiling(r: BackendResult) -> Ceiling:
    """The database's own client at the most clients: what the target is judged against."""
    return max((c for c in r.ceilings if c.native), key=lambda c: (c.clients, c.per_s))


def targets(r: BackendResult) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """((throughput target text, met), (p50 target text, met)) for the main concurrency."""
    main = r.configs[0]
    if r.name == "SQLite":
        tps_text = f"≥ {fmt_int(TARGET_SQLITE_TPS)} transitions/s"
        tps_ok = main.tp.transitions_per_s >= TARGET_SQLITE_TPS
        p50 = TARGET_SQLITE_P50_MS
    else:
        tps_text = f"≥ {fmt_int(TARGET_PG_TPS)} transitions/s"
        tps_ok = main.tp.transitions_per_s >= TARGET_PG_TPS
        p50 = TARGET_PG_P50_MS
    p50_ok = main.idle_ms.p50 <= p50
    return (tps_text, tps_ok), (f"p50 ≤ {p50:g} ms", p50_ok)


def ceiling_rows(r: BackendResult) -> list[list[str]]:
    rows = []
    for c in r.ceilings:
        row = [c.label, f"{fmt_int(c.per_s)}/s", f"{1000 / c.per_s:.3f} ms"]
        row += [_share(cfg.tp.transitions_per_s, c.per_s) for cfg in r.configs]
        rows.append(row)
    return rows


def ceiling_headers(r: BackendResult) -> list[str]:
    return [
        "ceiling: single-row INSERT transactions",
        "per second",
        "each",
        *(f"our transitions/s at concurrency={c.concurrency}, as a share" for c in r.configs),
    ]


def report_rows(r: BackendResult) -> list[list[str]]:
    (tps_text, tps_ok), (p50_text, p50_ok) = targets(r)
    ceiling = primary_ceiling(r)
    rows: list[list[str]] = []
    for i, cfg in enumerate(r.configs):
        tp = cfg.tp
        rows.append(
            [
                f"throughput, concurrency={cfg.concurrency}",
                f"{fmt_int(tp.transitions_per_s)} transitions/s = "
                f"{fmt_int(tp.runs / tp.seconds)} runs/s ({tp.runs:,} runs in {tp.seconds:.2f} s)",
                f"{_share(tp.transitions_per_s, ceiling.per_s)} of {ceiling.short} "
                f"({fmt_int(ceiling.per_s)}/s)",
                f"{tps_text}: {_verdict(tps_ok)}" if i == 0 else "(for comparison)",
            ]
        )
    for i, cfg in enumerate(r.configs):
        rows.append(
            [
                f"latency, idle engine, concurrency={cfg.concurrency} "
                f"({cfg.idle_ms.count:,} runs, one at a time)",
                _ms(cfg.idle_ms),
                "",
                f"{p50_text}: {_verdict(p50_ok)}" if i == 0 else "(for comparison)",
            ]
        )
    main = r.configs[0]
    rows.append(
        [
            f"latency under load, concurrency={main.concurrency} "
            f"({main.tp.under_load_ms.count:,} runs)",
            _ms(main.tp.under_load_ms),
            "",
            "none (queueing: trigger → COMPLETED while the backlog drains)",
        ]
    )
    for cfg in r.configs:
        tp = cfg.tp
        rows.append(
            [
                f"cost per transition, concurrency={cfg.concurrency}",
                f"{tp.statements / tp.transitions:.2f} statements in "
                f"{tp.transactions / tp.transitions:.2f} transactions, "
                f"{tp.cpu_ms_per_transition:.2f} ms CPU; process CPU = "
                f"{tp.cpu_s / tp.seconds:.0%} of wall time{_machine(tp, r.name)}; peak "
                f"{tp.peak_connections} pooled connections",
                "",
                "none",
            ]
        )
    rows.append(
        [
            "peak RSS (ru_maxrss)",
            f"{r.rss_mib:.1f} MiB (whole script so far)",
            "",
            "none",
        ]
    )
    return rows


def _machine(tp: Throughput, backend: str) -> str:
    if tp.machine_busy is None:
        return ""
    what = "database server included" if backend == "PostgreSQL" else "everything running"
    return f", machine CPUs {tp.machine_busy:.0%} busy ({what})"


def profile_shares(p: Profile) -> list[tuple[str, float]]:
    """Own time per package as a share of the profiled busy time (I/O waits excluded)."""
    busy = p.busy_s or 1.0
    return [(label, t / busy) for label, t in p.by_package if not label.startswith("waiting")]


def where_the_time_goes(r: BackendResult) -> str:
    main = r.configs[0]
    tp = main.tp
    per_tx = tp.transactions / tp.transitions
    via_sa = [c for c in r.ceilings if not c.native and c.clients == 1]
    native = [c for c in r.ceilings if c.native and c.clients == 1]
    sqlite = r.name == "SQLite"
    share = tp.cpu_s / tp.seconds
    bound = ""
    if share >= 0.75:
        bound = ": the process is CPU-bound on about one core " + (
            "(the event loop and the connection threads share the GIL)"
            if sqlite
            else "(one event-loop thread)"
        )
    machine = (
        "" if tp.machine_busy is None else f"; the machine's CPUs were {tp.machine_busy:.0%} busy"
    )
    out = [
        f"**Where the time goes.** At concurrency={main.concurrency} a transition (the "
        f"trigger's write counted in) took {tp.statements / tp.transitions:.1f} SQL statements "
        f"in {per_tx:.1f} transactions (reads included) and "
        f"{tp.cpu_ms_per_transition:.2f} ms of CPU in this process. Its CPU time"
        + (" (aiosqlite's connection threads included)" if sqlite else "")
        + f" was {share:.0%} of the wall time{bound}{machine}."
    ]
    kinds = [
        f"{kind} {n / tp.transitions:.2f}" for kind, n in tp.kinds if n / tp.transitions >= 0.005
    ]
    out.append("Statements per transition: " + ", ".join(f"`{k}`" for k in kinds) + ".")
    if via_sa and native:
        sa_ms, raw_ms = 1000 / via_sa[0].per_s, 1000 / native[0].per_s
        out.append(
            f"For scale, one single-row INSERT transaction costs {sa_ms:.2f} ms through "
            f"SQLAlchemy's execution layer and the driver, {raw_ms:.3f} ms through "
            f"{native[0].short}: that is why the statements on every transition's path run on "
            "the driver itself (`adapters/_fastsql.py`; connections still from SQLAlchemy's "
            "pool)."
        )
    if tp.cpu_ms_per_transition > 0:
        out.append(
            f"At {tp.cpu_ms_per_transition:.2f} ms of CPU per transition one process tops out "
            f"near {fmt_int(1000 / tp.cpu_ms_per_transition)} transitions/s on one core: the "
            "engine's own CPU, not the database, is the limit."
        )
    p = r.profile
    if p is not None:
        shares = profile_shares(p)
        top = [f"{label} {share:.0%}" for label, share in shares if share >= 0.03]
        rest = sum(share for _label, share in shares if share < 0.03)
        if rest > 0:
            top.append(f"the rest {rest:.0%}")
        waits = dict(p.by_package).get("waiting for I/O (epoll)", 0.0)
        transitions = p.runs * STEPS
        out.append(
            f"A cProfile of {p.runs} runs at concurrency={main.concurrency} (own time in the "
            f"event-loop thread, {p.busy_s:.1f} s busy and {waits:.1f} s waiting in epoll "
            f"over {p.wall_s:.1f} s; profiling slows everything down) splits the busy time: "
            + ", ".join(top)
            + f". SQLAlchemy's execution layer awaited the driver "
            f"{p.driver_awaits / transitions:.2f} times per transition (the statements off the "
            "hot path: leases, timeouts, the relay's polling)."
        )
    return " ".join(out)


def backend_markdown(r: BackendResult) -> str:
    return "\n".join(
        [
            f"Measured {r.measured_at} ({r.mode} mode, {r.wall_s:.0f} s for this backend) with "
            f"`{r.command}`; load average before (1/5/15 min): {r.load_before}.",
            "",
            *(f"- {fact}" for fact in r.facts),
            "",
            markdown_table(ceiling_headers(r), ceiling_rows(r)),
            "",
            markdown_table(["metric", "measured", "beside the ceiling", "target"], report_rows(r)),
            "",
            where_the_time_goes(r),
        ]
    )


def preamble(args: argparse.Namespace) -> str:
    return "\n".join(
        [
            "Generated by `python -m bench.sql`; each backend's subsection says when and how "
            "it was measured.",
            "",
            machine_facts_markdown(),
            "",
            "Workflow: 3 steps (STARTED → A → B → DONE), each an `async def` that mutates a "
            "small pydantic object, on `SQLRecordStore(engine, streamer=streamer)` (each "
            "event appended with its record: the outbox relay runs but finds nothing), "
            f"`SQLStreamer` (`poll_frequency={POLL_FREQUENCY}`) and `SQLRoleScheduler` (10 s "
            "lease) sharing one engine from `make_engine`, the real clock, and every "
            "step with the `concurrency` option (events handled at once per consumer, acked "
            f"in order); one process, {loop_text(args.loop)}. Each configuration runs on fresh "
            "tables (SQLite: a new file; PostgreSQL: the bench schema's tables re-created) "
            f"and is warmed up with {WARMUP_SEQ + WARMUP_BATCH} uncounted runs.",
            "",
            "- *Ceiling*: single-row `INSERT` transactions in a loop on a scratch table. "
            "PostgreSQL: `pgbench -n -f insert.sql -c C -j 2 -T …` at 1 client and at the "
            "pool's size, in the bench schema; SQLite: Python's `sqlite3` in WAL mode with "
            "`synchronous=FULL`. Then the same loop through SQLAlchemy and the asyncio driver, "
            "to show the driver overhead. On a server with `fsync=off` the ceiling is the "
            "server's CPU, not the disk.",
            f"- *Throughput*: N runs triggered by one task, {TRIGGERS_AT_ONCE} `trigger` calls "
            "in flight at a time (as concurrent callers of a web server would: triggers made "
            "together are committed together); "
            "the clock stops when the last run's COMPLETED write has committed (seen by a thin "
            "wrapper around `SQLRecordStore.store`). Then every run is checked in the "
            "database: COMPLETED at DONE, version 4, object mutated 3 times (the script fails "
            "otherwise). transitions/s = 3N / that time. The concurrency=1 configuration uses "
            f"N/{SECONDARY_RUNS_DIVISOR} runs and a quarter of the latency runs.",
            "- *Idle latency*: one run at a time, from before `trigger` to the return of "
            "`await_(…, DONE)`.",
            "- *Cost per transition*: statements counted by a `before_cursor_execute` listener "
            "and, for the statements run on the driver, by `workflow.adapters._fastsql.observe` "
            "(SQLite's explicit `BEGIN` left out); transactions by the `begin` event and "
            "`observe` (reads included; a PostgreSQL store is one autocommit statement; on "
            "SQLite the writes of one group commit count as one), CPU by "
            "`time.process_time()` (every thread of the process), all divided by 3N; how busy "
            "the machine's CPUs were comes from `/proc/stat`.",
        ]
    )


def merge_section(results: list[BackendResult], args: argparse.Namespace) -> str:
    """The new section: this run's backends, the other backend's previous subsection kept."""
    old = read_section(SECTION) or ""
    subsections: dict[str, str] = {}
    for m in re.finditer(r"^### (.+?)[ \t]*\n(.*?)(?=^### |\Z)", old, re.M | re.S):
        subsections[m.group(1).strip()] = m.group(2).strip("\n")
    for r in results:
        subsections[r.name] = backend_markdown(r)
    parts = [preamble(args)]
    for name in ("SQLite", "PostgreSQL"):
        body = subsections.get(name)
        if body is None:
            body = "Not measured yet (run `python -m bench.sql --backend " + (
                "sqlite`)." if name == "SQLite" else "postgres --pg-url URL`)."
            )
        parts.append(f"### {name}\n\n{body}")
    return "\n\n".join(parts)


def print_backend(r: BackendResult) -> None:
    print(f"\n== {r.name} ({r.wall_s:.0f} s) ==")
    for fact in r.facts:
        print(f"  {fact}")
    print()
    print_table(ceiling_headers(r), ceiling_rows(r))
    print()
    print_table(["metric", "measured", "beside the ceiling", "target"], report_rows(r))
    if r.profile is not None:
        print(f"\ncProfile, {r.profile.runs} runs (own time, event-loop thread):")
        for label, t in r.profile.by_package:
            print(f"  {t:7.2f} s  {label}")
    print()
    print(where_the_time_goes(r))


# -- main --------------------------------------------------------------------------------


def postgres_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.pg_url or os.environ.get("WORKFLOW_TEST_POSTGRES_URL")
    if not url:
        return None
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    return url


async def run_all(args: argparse.Namespace, pg_url: str | None) -> list[BackendResult]:
    results: list[BackendResult] = []
    names = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for name in names:
        if name == "postgres" and pg_url is None:
            print("\nPostgreSQL: skipped (no --pg-url and no $WORKFLOW_TEST_POSTGRES_URL)")
            continue
        db: Database = SQLiteDatabase() if name == "sqlite" else PostgresDatabase(pg_url or "")
        try:
            results.append(await run_backend(db, args))
        finally:
            await db.close()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sql",
        description="Throughput, latency and cost per transition of the engine on the SQL "
        "adapters (SQLite, PostgreSQL), beside the database's single-row INSERT ceiling.",
    )
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"small run: {QUICK_RUNS} runs, {QUICK_LATENCY_RUNS} latency runs, short ceilings",
    )
    p.add_argument("--runs", type=int, help=f"throughput runs (default {FULL_RUNS:,})")
    p.add_argument(
        "--latency-runs", type=int, help=f"idle-latency runs (default {FULL_LATENCY_RUNS})"
    )
    p.add_argument(
        "--concurrency", type=int, default=16, help="step concurrency (default 16; 1 also runs)"
    )
    p.add_argument("--pg-url", help="PostgreSQL URL (default $WORKFLOW_TEST_POSTGRES_URL)")
    p.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the cProfile pass"
    )
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop: the default asyncio one or uvloop (the uvloop extra)",
    )
    p.add_argument(
        "--no-write", action="store_true", help="print only; do not touch bench/RESULTS.md"
    )
    p.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target is missed"
    )
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else FULL_RUNS
    if args.latency_runs is None:
        args.latency_runs = QUICK_LATENCY_RUNS if args.quick else FULL_LATENCY_RUNS
    for name in ("runs", "latency_runs", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pg_url = postgres_url(args)
    if args.backend == "postgres" and pg_url is None:
        print("no PostgreSQL URL: pass --pg-url or set $WORKFLOW_TEST_POSTGRES_URL")
        return 2
    t0 = time.perf_counter()
    print(
        f"bench.sql ({args.mode}): backend {args.backend}, {args.runs:,} runs at concurrency="
        f"{args.concurrency} (and {max(1, args.runs // SECONDARY_RUNS_DIVISOR):,} at 1), "
        f"{args.latency_runs} latency "
        "runs"
    )
    if not loop_available(args.loop):
        print("uvloop is not installed: pip install aioworkflow[uvloop]")
        return 2
    results = run_on(args.loop, run_all(args, pg_url))
    for r in results:
        print_backend(r)
    print(f"\nwhole script: {time.perf_counter() - t0:.1f} s")
    if results and not args.no_write:
        path = write_section(SECTION, merge_section(results, args))
        print(f"wrote the {SECTION!r} section of {path}")
    missed = any(not ok for r in results for _text, ok in targets(r))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
