"""Failure isolation: does one always-failing run slow the healthy runs at its status?

    python -m bench.isolation [--quick] [--no-write]

Per backend (memory; SQLite; PostgreSQL when ``$WORKFLOW_TEST_POSTGRES_URL`` is set), one
process, the real clock: a one-step workflow (STARTED -> DONE, ``concurrency=1``, the
default retry policy with a 50 ms backoff). 1,000 healthy runs are triggered at 100 per
second (below what one consumer handles, so that latency is a run's, not a queue's); each
run's latency is from its trigger to the end of its step. Measured twice per
round, without and with one "poison" run at the same status whose step always raises (it is
retried every 50 ms all along), in alternating rounds so that drift of the machine cancels.
The two must match within noise. Before retries were scheduled per run, the poison held the
consumer in its backoff and every run behind it waited (for ever with luno's defaults).

Results go to the "Failure isolation" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Builder, RetryPolicy, Run, Workflow
from workflow.adapters.memory import (
    MemRecordStore,
    MemRoleScheduler,
    MemStreamer,
)
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlstore import SQLRecordStore
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
from .sql import POLL_FREQUENCY, Database, Obj, PostgresDatabase, SQLiteDatabase, Status

SECTION = "Failure isolation"
RUNS = {"full": 1_000, "quick": 200}
ROUNDS = {"full": 2, "quick": 1}
BACKOFF = timedelta(milliseconds=50)
INTERVAL = 0.01  # one trigger every 10 ms: 100 runs/s


class Probe:
    """The step: records when each healthy run's step ran; the poison always raises."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.poison_attempts = 0
        self.all_done = asyncio.Event()
        self.poison_retried = asyncio.Event()
        self.expected = 0

    async def __call__(self, run: Run[Obj, Status]) -> Status:
        if run.foreign_id == "poison":
            self.poison_attempts += 1
            if self.poison_attempts >= 2:
                self.poison_retried.set()
            raise ConnectionError("the poison run's gateway is always down")
        self.done[run.foreign_id] = time.perf_counter()
        if len(self.done) >= self.expected:
            self.all_done.set()
        return Status.DONE


def build(probe: Probe, adapters: tuple[Any, Any, Any]) -> Workflow[Obj, Status]:
    b: Builder[Obj, Status] = Builder("bench isolation", Obj, Status)
    b.add_step(Status.STARTED, probe, Status.DONE).with_options(
        concurrency=1, retry=RetryPolicy(initial_backoff=BACKOFF)
    )
    streamer, store, roles = adapters
    return b.build(streamer, store, roles, pause_retry=None, metrics_registry=CollectorRegistry())


async def measure(adapters: tuple[Any, Any, Any], runs: int, poison: bool) -> tuple[Any, int]:
    probe = Probe()
    probe.expected = runs
    wf = build(probe, adapters)
    started: dict[str, float] = {}
    async with wf:
        if poison:
            await wf.trigger("poison")
            # failing, and retried, before the load starts
            await asyncio.wait_for(probe.poison_retried.wait(), 60)
        t0 = time.perf_counter()
        for i in range(runs):
            # paced below the consumer's capacity: the latency of a run, not of a queue
            await asyncio.sleep(max(0.0, t0 + i * INTERVAL - time.perf_counter()))
            fid = f"run-{i}"
            started[fid] = time.perf_counter()
            await wf.trigger(fid)
        await asyncio.wait_for(probe.all_done.wait(), 600)
    lat = [(probe.done[f] - t0) * 1000 for f, t0 in started.items()]
    return percentiles(lat), probe.poison_attempts


class MemoryDatabase(Database):
    name = "memory"


async def adapters_for(db: Database) -> tuple[tuple[Any, Any, Any], list[Any], AsyncEngine | None]:
    if isinstance(db, MemoryDatabase):
        return (MemStreamer(), MemRecordStore(), MemRoleScheduler()), [], None
    engine = await db.fresh()
    streamer = SQLStreamer(engine, poll_frequency=POLL_FREQUENCY)
    roles = SQLRoleScheduler(engine)
    store = SQLRecordStore(engine, streamer=streamer)
    return (streamer, store, roles), [streamer, roles], engine


async def run_backend(db: Database, mode: str) -> list[list[str]]:
    n = RUNS[mode]
    results: dict[bool, list[Any]] = {False: [], True: []}
    attempts = 0
    for _ in range(ROUNDS[mode]):
        for poison in (False, True):
            adapters, closers, engine = await adapters_for(db)
            try:
                lat, tries = await measure(adapters, n, poison)
            finally:
                for c in closers:
                    await c.close()
                if engine is not None:
                    await engine.dispose()
            results[poison].append(lat)
            attempts += tries
            print_table(
                ["backend", "poison", "p50 / p99 ms"],
                [[db.name, "yes" if poison else "no", f"{lat.p50:.1f} / {lat.p99:.1f}"]],
            )
    rows = []
    for poison in (False, True):
        p50 = sorted(p.p50 for p in results[poison])[len(results[poison]) // 2]
        p99 = sorted(p.p99 for p in results[poison])[len(results[poison]) // 2]
        what = (
            f"{n:,} healthy runs + 1 always-failing run ({attempts:,} failed attempts in all)"
            if poison
            else f"{n:,} healthy runs"
        )
        rows.append([db.name, what, f"{p50:.1f} ms", f"{p99:.1f} ms"])
    base, hit = rows[0], rows[1]
    ratio = float(hit[2].split()[0]) / max(float(base[2].split()[0]), 1e-9)
    hit.append(f"{ratio:.2f}x p50")
    base.append("")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer runs, one round (smoke run)")
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    dbs: list[Database] = [MemoryDatabase(), SQLiteDatabase()]
    url = os.environ.get("WORKFLOW_TEST_POSTGRES_URL", "")
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
    headers = ["backend", "what", "p50", "p99", "with / without"]
    print_table(headers, rows)
    if args.no_write:
        return 0
    md = "\n".join(
        [
            f"Run {utc_now()} ({mode}), `{command_line('bench.isolation')}`; load average "
            f"{load_before} before, {load_average()} after.",
            "",
            "Latency of healthy runs (trigger to the end of their step; 100 triggers per "
            "second) at a status with `concurrency=1`, without and with one run at the same "
            "status whose step always fails and is retried every 50 ms throughout. Medians of "
            f"{ROUNDS[mode]} alternating rounds. The issue's target: the two match within "
            "noise.",
            "",
            markdown_table(headers, rows),
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
