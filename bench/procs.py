"""Worker processes: the engine as it is deployed, beside the single-process benchmarks.

    python -m bench.procs [--quick] [--backends sqlite postgres kafka] [--runs N] [--no-write]

For each backend (SQLite file; PostgreSQL; Kafka streamer + PostgreSQL store), each step count
(3 and 10) and each number of worker processes (1 and 2), on fresh tables:

1. start the worker processes (``python -m bench.worker``: the K-step workflow, every step with
   ``parallel_count`` = the number of workers and ``concurrency=16``, so two workers split every
   step's shards between them through the role scheduler);
2. warm up with 20 runs;
3. trigger N runs from this process (64 trigger tasks; this process only writes), and wait
   until the database shows every one COMPLETED;
4. read from the database: throughput = N x K / (last COMPLETED ``updated_at`` - first
   trigger), latency under load = each run's COMPLETED ``updated_at`` - ``created_at``; check
   every run is COMPLETED at DONE with version K + 1; read the workers' CPU time
   (``/proc/<pid>/stat``) and peak RSS (``VmHWM``).

On the SQL streamer the store appends events itself (``SQLRecordStore(streamer=...)``); on
Kafka the outbox relay sends them. Writes the "Worker processes" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ._common import (
    command_line,
    cpu_ticks,
    fmt_int,
    load_average,
    machine_facts_markdown,
    markdown_table,
    percentiles,
    print_table,
    utc_now,
    write_section,
)
from .sql import PostgresDatabase, SQLiteDatabase
from .worker import NAME, build, engine_for

SECTION = "Worker processes"
REPO = Path(__file__).resolve().parent.parent
RUNS = {3: (2_000, 200), 10: (600, 60)}  # steps -> (full, quick) runs
TRIGGER_TASKS = 64
WARMUP = 20
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    backend: str
    workers: int
    steps: int
    runs: int
    seconds: float
    p50_ms: float
    p99_ms: float
    worker_cpu_ms: float  # per transition, all workers
    producer_cpu_ms: float  # per run, this process (trigger)
    peak_rss_mib: float  # the largest worker's
    machine_busy: float | None  # share of the machine's CPU time busy during the run


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _start(args: list[str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.worker", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"bench worker did not start: {line!r}")
    return proc


async def _done(engine: AsyncEngine, prefix: str) -> int:
    stmt = sa.text(
        "SELECT count(*) FROM workflow_records WHERE workflow_name = :w AND run_state = 5 "
        "AND foreign_id LIKE :p"
    )
    async with engine.connect() as conn:
        return int((await conn.execute(stmt, {"w": NAME, "p": f"{prefix}%"})).scalar_one())


async def _wait_done(engine: AsyncEngine, prefix: str, n: int, timeout: float) -> None:
    # Other processes do the work: the database is the only place to look (a benchmark may
    # poll; 25 ms is far below the figures it measures).
    deadline = time.monotonic() + timeout
    while await _done(engine, prefix) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {await _done(engine, prefix)} of {n} runs completed")
        await asyncio.sleep(0.025)


async def _trigger(wf: Any, prefix: str, n: int) -> None:
    async def task(k: int) -> None:
        for i in range(k, n, TRIGGER_TASKS):
            await wf.trigger(f"{prefix}{i}")

    await asyncio.gather(*(task(k) for k in range(TRIGGER_TASKS)))


async def _times(engine: AsyncEngine, prefix: str, steps: int) -> list[tuple[datetime, datetime]]:
    stmt = sa.text(
        "SELECT created_at, updated_at, version, status FROM workflow_records "
        "WHERE workflow_name = :w AND foreign_id LIKE :p AND run_state = 5"
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt, {"w": NAME, "p": f"{prefix}%"})).all()
    bad = [r for r in rows if r.version != steps + 1 or r.status != steps + 1]
    if bad:
        raise RuntimeError(f"{len(bad)} runs ended wrong, e.g. {bad[0]}")

    def aware(v: Any) -> datetime:
        t: datetime = datetime.fromisoformat(v) if isinstance(v, str) else v
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t

    return [(aware(r.created_at), aware(r.updated_at)) for r in rows]


async def measure(
    backend: str, url: str, schema: str | None, kafka: str | None, workers: int, steps: int, n: int
) -> Result:
    namespace = f"bench-{secrets.token_hex(4)}-" if kafka else ""
    args = ["--url", url, "--steps", str(steps), "--parallel", str(workers)]
    if schema:
        args += ["--schema", schema]
    if kafka:
        args += ["--kafka", kafka, "--namespace", namespace]
    procs = [await _start(args) for _ in range(workers)]
    engine = engine_for(url, schema, pool=8)
    wf, closers = build(engine, steps, kafka=kafka, namespace=namespace)
    try:
        await _trigger(wf, "w-", WARMUP)
        await _wait_done(engine, "w-", WARMUP, 120)
        cpu0 = [_cpu_s(p.pid) for p in procs]
        own0 = time.process_time()
        ticks0 = cpu_ticks()
        t0 = datetime.now(UTC)
        await _trigger(wf, "m-", n)
        own = time.process_time() - own0
        await _wait_done(engine, "m-", n, 600)
        ticks1 = cpu_ticks()
        busy = None
        if ticks0 and ticks1 and ticks1[1] > ticks0[1]:
            busy = (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])
        cpu = sum(_cpu_s(p.pid) for p in procs) - sum(cpu0)
        rss = max(_hwm_mib(p.pid) for p in procs)
        times = await _times(engine, "m-", steps)
        seconds = (max(u for _, u in times) - t0).total_seconds()
        lat = percentiles([(u - c).total_seconds() * 1000 for c, u in times])
        return Result(
            backend,
            workers,
            steps,
            n,
            seconds,
            lat.p50,
            lat.p99,
            cpu * 1000 / (n * steps),
            own * 1000 / n,
            rss,
            busy,
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            await asyncio.wait_for(p.wait(), 60)
        for c in closers:
            await c.close()
        await engine.dispose()


async def run_all(backends: list[str], quick: bool, runs: int | None) -> list[Result]:
    pg_url = os.environ.get("WORKFLOW_TEST_POSTGRES_URL", "")
    kafka = os.environ.get("WORKFLOW_TEST_KAFKA_BOOTSTRAP", "")
    out: list[Result] = []
    for backend in backends:
        if backend != "sqlite" and not pg_url:
            print(f"{backend}: skipped (no $WORKFLOW_TEST_POSTGRES_URL)")
            continue
        if backend == "kafka" and not kafka:
            print("kafka: skipped (no $WORKFLOW_TEST_KAFKA_BOOTSTRAP)")
            continue
        label = {"sqlite": "SQLite", "postgres": "PostgreSQL", "kafka": "Kafka + PostgreSQL"}
        for steps in (3, 10):
            n = runs or RUNS[steps][1 if quick else 0]
            for workers in (1, 2):
                db: SQLiteDatabase | PostgresDatabase
                db = SQLiteDatabase() if backend == "sqlite" else PostgresDatabase(pg_url)
                try:
                    engine = await db.fresh()
                    url = engine.url.render_as_string(hide_password=False)
                    await engine.dispose()
                    schema = db.schema if isinstance(db, PostgresDatabase) else None
                    if isinstance(db, PostgresDatabase):
                        url = db.url
                    print(f"{label[backend]}: {workers} worker(s), {steps} steps, {n} runs ...")
                    r = await measure(
                        label[backend],
                        url,
                        schema,
                        kafka if backend == "kafka" else None,
                        workers,
                        steps,
                        n,
                    )
                    print(f"  {fmt_int(r.runs * r.steps / r.seconds)} transitions/s")
                    out.append(r)
                finally:
                    await db.close()
    return out


def rows(results: list[Result]) -> list[list[str]]:
    return [
        [
            r.backend,
            str(r.workers),
            str(r.steps),
            f"{r.runs:,}",
            f"{fmt_int(r.runs * r.steps / r.seconds)}",
            f"{r.p50_ms:.0f} / {r.p99_ms:.0f} ms",
            f"{r.worker_cpu_ms:.2f} ms",
            f"{r.producer_cpu_ms:.2f} ms",
            f"{r.peak_rss_mib:.0f} MiB",
            "?" if r.machine_busy is None else f"{r.machine_busy:.0%}",
        ]
        for r in results
    ]


HEADERS = [
    "backend",
    "workers",
    "steps",
    "runs",
    "transitions/s",
    "latency under load p50 / p99",
    "worker CPU per transition",
    "trigger CPU per run",
    "peak RSS (largest worker)",
    "machine CPUs busy",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.procs", description=__doc__)
    p.add_argument("--quick", action="store_true", help="200 / 60 runs instead of 2,000 / 600")
    p.add_argument(
        "--backends", nargs="+", choices=("sqlite", "postgres", "kafka"),
        default=["sqlite", "postgres", "kafka"],
    )  # fmt: skip
    p.add_argument("--runs", type=int, help="runs per configuration (overrides the defaults)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = p.parse_args(argv)
    load = load_average()
    t0 = time.perf_counter()
    results = asyncio.run(run_all(args.backends, args.quick, args.runs))
    print_table(HEADERS, rows(results))
    if args.no_write or not results:
        return 0
    md = "\n\n".join(
        [
            f"Measured {utc_now()} ({'quick' if args.quick else 'full'} mode; whole script "
            f"{time.perf_counter() - t0:.0f} s) with `{command_line('bench.procs')}`; load "
            f"average before (1/5/15 min): {load}.",
            machine_facts_markdown(),
            markdown_table(HEADERS, rows(results)),
            "Each configuration: fresh tables, its worker processes (`python -m bench.worker`) "
            "started, 20 warm-up runs, then N runs triggered from the benchmark process (64 "
            "trigger tasks) and timed from the first trigger to the last COMPLETED write "
            "(its `updated_at` in the database); latency under load is each run's COMPLETED "
            "`updated_at` - `created_at` (queueing while the backlog drains). Every run is "
            "checked COMPLETED at DONE with version K + 1. Each step has `parallel_count` = "
            "the number of workers (the role scheduler spreads the shards over the workers) "
            "and `concurrency=16`. SQL streamer: the store appends the events itself "
            "(`SQLRecordStore(streamer=...)`); Kafka: the outbox relay. The machine has 2 "
            "cores shared by the workers, the trigger process, the database server (and the "
            "broker): *machine CPUs busy* (from `/proc/stat`) shows when they are all used, "
            "and then a second worker process can only add contention. Two workers also "
            "double the work of reading: each of a step's `parallel_count` shard consumers "
            "reads every event of the step's topic and skips those of other shards (luno's "
            "design).",
        ]
    )
    write_section(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
