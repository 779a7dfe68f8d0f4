"""``await_`` under load: what many pending waiters cost the workflow they wait on.

    python -m bench.awaiters [--backend sqlite|postgres|both] [--quick] [--no-write]

Per backend, one process, the real clock, the 3-step workflow of ``bench.sql``:

1. fresh-run latency (trigger, then ``await_`` DONE, one run at a time) with 0, 1,000 and
   10,000 other ``await_`` calls pending: each waits for a run parked at a status that no
   step consumes (so it never returns while measured). Target: at 10,000 waiters, within 2x
   of the figure with none;
2. the gather: 2,000 runs triggered at once, then one ``asyncio.gather`` of their 2,000
   ``await_`` calls, against the same 2,000 runs completing with nobody waiting (the clock
   stops at the last COMPLETED write, seen by the store wrapper of ``bench.sql``).

Results go to the "await_ under load" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import sys
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Builder, Run, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlstreamer import SQLStreamer

from ._common import (
    command_line,
    load_average,
    machine_facts_markdown,
    markdown_table,
    percentiles,
    print_table,
    utc_now,
    write_section,
)
from .sql import (
    POLL_FREQUENCY,
    Database,
    Obj,
    PostgresDatabase,
    SQLiteDatabase,
    Status,
    TimedStore,
    Tracker,
    sequential_latency,
)

SECTION = "await_ under load"
WAITERS = {"full": (0, 1_000, 10_000), "quick": (0, 200, 1_000)}
LATENCY_RUNS = {"full": 60, "quick": 20}
GATHER_RUNS = {"full": 2_000, "quick": 300}
PARK_BATCH = 500


async def parked(run: Run[Obj, Status], payload: bytes) -> Status:
    return Status.DONE


@dataclass
class Setup:
    wf: Workflow[Obj, Status]
    tracker: Tracker
    streamer: SQLStreamer
    roles: SQLRoleScheduler


def build(db_engine: AsyncEngine) -> Setup:
    """The 3-step workflow, plus a PARKED status (B's callback) that no step consumes."""
    tracker = Tracker()
    b: Builder[Obj, Status] = Builder("bench awaiters", Obj, Status)
    chain = [Status.STARTED, Status.A, Status.DONE]
    for cur, nxt in itertools.pairwise(chain):

        async def step(run: Run[Obj, Status], nxt: Status = nxt) -> Status:
            run.object.steps += 1
            return nxt

        b.add_step(cur, step, nxt).with_options(concurrency=16)
    b.add_callback(Status.B, parked, Status.DONE)  # B: parked, nothing consumes it
    streamer = SQLStreamer(db_engine, poll_frequency=POLL_FREQUENCY)
    roles = SQLRoleScheduler(db_engine)
    store = TimedStore(db_engine, tracker, streamer)
    wf = b.build(streamer, store, roles, metrics_registry=CollectorRegistry())
    return Setup(wf, tracker, streamer, roles)


async def park(wf: Workflow[Obj, Status], n: int, prefix: str) -> list[asyncio.Task[object]]:
    """``n`` runs parked at B, each with an ``await_`` for DONE pending."""
    ids: list[tuple[str, str]] = []
    for start in range(0, n, PARK_BATCH):
        fids = [f"{prefix}-{i}" for i in range(start, min(n, start + PARK_BATCH))]
        rids = await asyncio.gather(*(wf.trigger(f, Status.B) for f in fids))
        ids.extend(zip(fids, rids, strict=True))
    waiters: list[asyncio.Task[object]] = [
        asyncio.create_task(wf.await_(f, r, Status.DONE)) for f, r in ids
    ]
    # Wait until every waiter has made its first read (its watch then knows a version), so
    # that what is measured is waiters waiting, not 10,000 first reads in flight.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        watches = [w for ws in wf._engine.signals._watches.values() for w in ws]
        if len(watches) >= n and all(w.version > 0 for w in watches):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # and one batched poll of the watcher has happened
    return waiters


async def gather_runs(setup: Setup, n: int, prefix: str, wait: bool) -> float:
    """Seconds from the first trigger until the last of ``n`` runs completed."""
    wf = setup.wf
    setup.tracker.expect(prefix, n)
    t0 = time.perf_counter()
    fids = [f"{prefix}-{i}" for i in range(n)]
    rids = await asyncio.gather(*(wf.trigger(f) for f in fids))
    if wait:
        await asyncio.wait_for(
            asyncio.gather(
                *(wf.await_(f, r, Status.DONE) for f, r in zip(fids, rids, strict=True))
            ),
            600,
        )
    await asyncio.wait_for(setup.tracker.event.wait(), 600)
    return max(setup.tracker.done.values()) - t0


async def run_backend(db: Database, mode: str) -> list[list[str]]:
    rows: list[list[str]] = []
    base_p50 = 0.0
    for n in WAITERS[mode]:
        engine = await db.fresh()
        setup = build(engine)
        try:
            async with setup.wf:
                await sequential_latency(setup.wf, 5, "warm")
                waiters = await park(setup.wf, n, "park")
                gc.collect()
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                lat = percentiles(await sequential_latency(setup.wf, LATENCY_RUNS[mode], "lat"))
                cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
                for w in waiters:
                    w.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        finally:
            await setup.streamer.close()
            await setup.roles.close()
            await engine.dispose()
        if n == 0:
            base_p50 = lat.p50
        ratio = lat.p50 / base_p50 if base_p50 else 1.0
        rows.append(
            [
                db.name,
                f"fresh run, {n:,} waiters pending",
                f"{lat.p50:.1f} / {lat.p99:.1f} ms",
                f"{ratio:.2f}x",
                f"{cpu * 100:.0f}%",
            ]
        )
        print_table(["backend", "what", "p50 / p99", "vs 0 waiters", "CPU"], rows[-1:])
    n = GATHER_RUNS[mode]
    for wait in (False, True):
        engine = await db.fresh()
        setup = build(engine)
        try:
            async with setup.wf:
                await sequential_latency(setup.wf, 5, "warm")
                seconds = await gather_runs(setup, n, "g", wait)
        finally:
            await setup.streamer.close()
            await setup.roles.close()
            await engine.dispose()
        what = f"{n:,} runs triggered at once, " + (
            f"one gather of their {n:,} await_ calls" if wait else "nobody waiting"
        )
        rows.append([db.name, what, f"{seconds:.1f} s", "", ""])
        print_table(["backend", "what", "time", "", ""], rows[-1:])
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="fewer waiters and runs (smoke run)")
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    dbs: list[Database] = []
    if args.backend in ("sqlite", "both"):
        dbs.append(SQLiteDatabase())
    url = os.environ.get("WORKFLOW_TEST_POSTGRES_URL", "")
    if args.backend in ("postgres", "both"):
        if url:
            dbs.append(PostgresDatabase(url))
        else:
            print("PostgreSQL skipped: set WORKFLOW_TEST_POSTGRES_URL", file=sys.stderr)
    load_before = load_average()
    rows: list[list[str]] = []
    facts: list[str] = []
    try:
        for db in dbs:
            rows.extend(await run_backend(db, mode))
            facts.extend(await db.facts())
    finally:
        for db in dbs:
            await db.close()
    if args.no_write:
        return 0
    md = "\n".join(
        [
            f"Run {utc_now()} ({mode}), `{command_line('bench.awaiters')}`; load average "
            f"{load_before} before, {load_average()} after.",
            "",
            "Fresh-run latency: trigger, then `await_` DONE, one run at a time, while other "
            "`await_` calls wait on runs parked at a status no step consumes (target: within "
            "2x of no waiters at 10,000). Waiters cost nothing while nothing happens: writes "
            "of this process wake them, and one watcher per record store reads the versions of "
            "every watched run in one batched statement per poll (0.5 s). CPU is this "
            "process's CPU time over wall time during the latency runs.",
            "",
            markdown_table(["backend", "what", "p50 / p99 (or time)", "vs 0 waiters", "CPU"], rows),
            "",
            *[f"- {f}" for f in facts],
            "",
            machine_facts_markdown(),
        ]
    )
    write_section(SECTION, md)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
