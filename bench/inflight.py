"""Memory under load: the resident set size of one worker with 10,000 runs in flight (triggered
and not finished) beside its idle RSS, on the in-memory adapters and on SQLite.

    python -m bench.inflight [--backend memory|sqlite|both] [--hold inside|queued|both]
                             [--quick] [--runs N] [--no-write] [--check]

Per backend and way of holding the runs, in a process of its own (``sys.executable -m
bench.inflight --child --backend X --hold Y``, so that each one's peak RSS is its own): the
3-step workflow of ``bench.sql`` (STARTED → A → B → DONE) whose first step waits on an
``asyncio.Event`` (the gate). Two ways to hold N runs in flight (``--hold``):

- ``inside``: step concurrency N on the first step, so that all N runs are inside the worker
  at once (each with its loaded record, its step task and its place in the consumer's
  window): the worker's worst case;
- ``queued``: step concurrency ``QUEUED_CONCURRENCY`` (16): that many runs wait inside the
  step, the others wait as events in the streamer (in the process with ``MemStreamer``, in
  the database with ``SQLStreamer``), as behind a slow step.

1. start the workflow, warm up (``WARMUP`` runs through all 3 steps, the gate open), collect
   garbage; **idle RSS** = ``VmRSS`` now;
2. close the gate and trigger N runs (``TRIGGER_BATCH`` concurrent triggers at a time); wait
   until all N runs (``queued``: 16) are inside the first step: N runs in flight. RSS then;
3. open the gate and wait until every run's COMPLETED write is stored; then every run is
   checked in the store (COMPLETED at DONE, version 4, object mutated 3 times — the script
   fails otherwise); collect garbage; RSS after.

A thread samples ``VmRSS`` every ``SAMPLE_EVERY`` seconds from before step 2 to the end of
step 3: **peak RSS under load** is the largest sample (cross-checked with ``ru_maxrss``, the
process's peak since it started, which takes in the warm-up too). Target (issue 14): peak
under load ≤ 2x idle RSS.

Memory adapters: ``MemStreamer``, ``MemRecordStore`` (it keeps every version of every run in
the process: the "database" is in the RSS), ``MemRoleScheduler``. SQLite: ``SQLRecordStore``
(events appended with each record), ``SQLStreamer``, ``SQLRoleScheduler`` on one
``make_engine`` file (WAL, ``synchronous=FULL``) in a temporary directory. Results: the
"Memory under load" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from workflow import Builder, Record, Run, RunState, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer

from . import sql
from ._common import (
    command_line,
    current_rss_mib,
    load_average,
    machine_facts_markdown,
    markdown_table,
    peak_rss_mib,
    print_table,
    utc_now,
    write_section,
)

SECTION = "Memory under load"
TARGET_RATIO = 2.0
FULL_RUNS, QUICK_RUNS = 10_000, 2_000
WARMUP = 200
TRIGGER_BATCH = 50
SAMPLE_EVERY = 0.02
QUEUED_CONCURRENCY = 16
HOLDS = ("inside", "queued")
PROGRESS_EVERY = 15.0  # seconds between progress lines while the runs come in
REPO = Path(__file__).resolve().parent.parent


class TimedMemStore(MemRecordStore):
    """``MemRecordStore`` that tells the tracker once a COMPLETED record is stored."""

    def __init__(self, tracker: sql.Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    async def store(self, record: Record) -> None:
        await super().store(record)
        if record.run_state is RunState.COMPLETED:
            self.tracker.completed(record.foreign_id)


class Gate:
    """Holds the first step of every run until it is opened; counts the runs inside it."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        self.all_in = asyncio.Event()
        self.expect = 0

    def close(self, expect: int) -> None:
        self.open.clear()
        self.inside, self.expect = 0, expect
        self.all_in.clear()

    async def wait(self) -> None:
        self.inside += 1
        if self.inside >= self.expect:
            self.all_in.set()
        await self.open.wait()


@dataclass
class Setup:
    wf: Workflow[sql.Obj, sql.Status]
    tracker: sql.Tracker
    gate: Gate
    close: Any  # async callable: close the adapters
    describe: str
    verify: Any  # async callable (prefix, n)


def build(
    backend: str, concurrency: int, gate: Gate, tracker: sql.Tracker, directory: Path | None
) -> Setup:
    b: Builder[sql.Obj, sql.Status] = Builder("bench inflight", sql.Obj, sql.Status)
    chain = [sql.Status.STARTED, sql.Status.A, sql.Status.B, sql.Status.DONE]
    for cur, nxt in itertools.pairwise(chain):
        first = cur is sql.Status.STARTED

        async def step(
            run: Run[sql.Obj, sql.Status], nxt: sql.Status = nxt, first: bool = first
        ) -> sql.Status:
            if first:
                await gate.wait()
            tracker.step_calls += 1
            run.object.steps += 1
            run.object.last = nxt.name
            return nxt

        b.add_step(cur, step, nxt).with_options(concurrency=concurrency if first else 16)
    if backend == "memory":
        store = TimedMemStore(tracker)
        wf = b.build(MemStreamer(), store, MemRoleScheduler(), metrics_registry=CollectorRegistry())

        async def close_mem() -> None:
            return None

        async def verify_mem(prefix: str, n: int) -> None:
            bad = []
            found = 0
            for r in await store.list(wf.name, limit=n * 2 + 10_000):
                if not r.foreign_id.startswith(prefix):
                    continue
                found += 1
                obj = sql.Obj.model_validate_json(r.object)
                if (
                    r.run_state is not RunState.COMPLETED
                    or r.status != int(sql.Status.DONE)
                    or r.meta.version != 4
                    or obj.steps != 3
                ):
                    bad.append(r.foreign_id)
            if found != n or bad:
                raise SystemExit(f"FAILED: {found} runs stored for {n}; not completed: {bad[:5]}")

        return Setup(
            wf,
            tracker,
            gate,
            close_mem,
            "MemStreamer, MemRecordStore, MemRoleScheduler",
            verify_mem,
        )
    from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
    from workflow.adapters.sqlschema import make_engine
    from workflow.adapters.sqlstreamer import SQLStreamer

    assert directory is not None
    engine = make_engine(f"sqlite+aiosqlite:///{directory / 'inflight.db'}")
    streamer = SQLStreamer(engine, poll_frequency=sql.POLL_FREQUENCY)
    roles = SQLRoleScheduler(engine)
    sql_store = sql.TimedStore(engine, tracker, streamer)
    wf = b.build(streamer, sql_store, roles, metrics_registry=CollectorRegistry())

    async def close_sql() -> None:
        await streamer.close()
        await roles.close()
        await engine.dispose()

    async def verify_sql(prefix: str, n: int) -> None:
        await sql.verify(engine, wf.name, prefix, n)

    return Setup(
        wf,
        tracker,
        gate,
        close_sql,
        "SQLRecordStore (events appended with each record), SQLStreamer, SQLRoleScheduler on "
        "one SQLite file (`make_engine`: WAL, synchronous=FULL)",
        verify_sql,
    )


class RSSSampler:
    """A thread that reads ``VmRSS`` every ``SAMPLE_EVERY`` seconds; ``peak`` is the largest."""

    def __init__(self) -> None:
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = current_rss_mib()
            if rss is not None:
                self.peak = max(self.peak, rss)
                self.samples += 1
            self._stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    backend: str
    hold: str
    step_concurrency: int
    describe: str
    runs: int
    idle_mib: float
    all_in_mib: float
    peak_mib: float
    after_mib: float
    maxrss_mib: float
    samples: int
    trigger_s: float
    all_in_s: float
    drain_s: float
    wall_s: float
    load_before: str

    @property
    def ratio(self) -> float:
        return self.peak_mib / self.idle_mib


def _rss() -> float:
    gc.collect()
    rss = current_rss_mib()
    if rss is None:
        raise SystemExit("no /proc/self/status: VmRSS cannot be read on this system")
    return rss


async def measure(backend: str, hold: str, runs: int) -> Result:
    wall0, load_before = time.perf_counter(), load_average()
    directory = Path(tempfile.mkdtemp(prefix="bench-inflight-")) if backend == "sqlite" else None
    if directory is not None:
        from workflow.adapters.sqlschema import create_schema, make_engine

        engine = make_engine(f"sqlite+aiosqlite:///{directory / 'inflight.db'}")
        await create_schema(engine)
        await engine.dispose()
    try:
        gate, tracker = Gate(), sql.Tracker()
        concurrency = runs if hold == "inside" else min(runs, QUEUED_CONCURRENCY)
        s = build(backend, concurrency, gate, tracker, directory)
        try:
            async with s.wf:
                gate.open.set()
                await sql.sequential_latency(s.wf, 20, "warm-seq")
                tracker.expect("warm-", WARMUP)
                await trigger_all(s.wf, "warm-", WARMUP)
                await asyncio.wait_for(tracker.event.wait(), 120)
                idle = _rss()
                print(
                    f"  {backend}: idle RSS {idle:.1f} MiB; triggering {runs:,} runs ...",
                    flush=True,
                )
                with RSSSampler() as sampler:
                    gate.close(concurrency)
                    tracker.expect("run-", runs)
                    t0 = time.perf_counter()
                    await trigger_all(s.wf, "run-", runs)
                    trigger_s = time.perf_counter() - t0
                    budget = max(1800.0, runs / 5)
                    while not gate.all_in.is_set():
                        if time.perf_counter() - t0 > budget:
                            raise SystemExit(
                                f"FAILED: only {gate.inside} of {concurrency} runs reached the "
                                f"gate in {budget:.0f} s"
                            )
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(gate.all_in.wait(), PROGRESS_EVERY)
                        if not gate.all_in.is_set():
                            print(
                                f"  {backend}: {gate.inside:,} of {concurrency:,} runs in the "
                                f"first step after {time.perf_counter() - t0:.0f} s",
                                flush=True,
                            )
                    all_in_s = time.perf_counter() - t0
                    all_in = _rss()
                    print(
                        f"  {backend}: {runs:,} runs in flight ({gate.inside:,} inside the "
                        f"first step) after {all_in_s:.1f} s: RSS {all_in:.1f} MiB; opening "
                        "the gate ...",
                        flush=True,
                    )
                    t1 = time.perf_counter()
                    gate.open.set()
                    try:
                        await asyncio.wait_for(tracker.event.wait(), budget)
                    except TimeoutError:
                        raise SystemExit(
                            f"FAILED: {len(tracker.done)} of {runs} runs completed"
                        ) from None
                    drain_s = time.perf_counter() - t1
                await s.verify("run-", runs)
                after = _rss()
        finally:
            await s.close()
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    return Result(
        backend=backend,
        hold=hold,
        step_concurrency=concurrency,
        describe=s.describe,
        runs=runs,
        idle_mib=idle,
        all_in_mib=all_in,
        peak_mib=max(sampler.peak, all_in),
        after_mib=after,
        maxrss_mib=peak_rss_mib(),
        samples=sampler.samples,
        trigger_s=trigger_s,
        all_in_s=all_in_s,
        drain_s=drain_s,
        wall_s=time.perf_counter() - wall0,
        load_before=load_before,
    )


async def trigger_all(wf: Workflow[sql.Obj, sql.Status], prefix: str, n: int) -> None:
    for start in range(0, n, TRIGGER_BATCH):
        stop = min(n, start + TRIGGER_BATCH)
        await asyncio.gather(*(wf.trigger(f"{prefix}{i}") for i in range(start, stop)))


# -- report ----------------------------------------------------------------------------


def label(r: Result) -> str:
    how = "all inside" if r.hold == "inside" else f"{r.step_concurrency} inside, rest queued"
    return f"{r.backend}, {how}"


def rows(results: list[Result]) -> list[list[str]]:
    out = []
    for r in results:
        ok = r.ratio <= TARGET_RATIO
        out.append(
            [
                label(r),
                f"{r.idle_mib:.1f} MiB",
                f"{r.all_in_mib:.1f} MiB",
                f"{r.peak_mib:.1f} MiB ({r.samples:,} samples)",
                f"{r.ratio:.2f}x",
                f"{r.after_mib:.1f} MiB",
                f"{r.maxrss_mib:.1f} MiB",
                f"≤ {TARGET_RATIO:g}x idle: {'met' if ok else 'MISSED'}",
            ]
        )
    return out


HEADERS = [
    "worker (adapters, runs held)",
    "idle RSS",
    "N runs in flight",
    "peak under load",
    "peak / idle",
    "after (all done)",
    "ru_maxrss",
    "target",
]


def timing_rows(results: list[Result]) -> list[list[str]]:
    return [
        [
            label(r),
            f"{r.trigger_s:.1f} s",
            f"{r.all_in_s:.1f} s",
            f"{r.drain_s:.1f} s",
            f"{r.wall_s:.0f} s",
        ]
        for r in results
    ]


TIMING_HEADERS = [
    "worker",
    "N triggers",
    "until all in flight (held runs inside the step)",
    "gate open → all completed",
    "whole process",
]


def markdown(results: list[Result], mode: str) -> str:
    describe = dict.fromkeys(f"{r.backend}: {r.describe}" for r in results)
    return "\n".join(
        [
            f"Measured {utc_now()} ({mode} mode) with `{command_line('bench.inflight')}`; load "
            f"average before (1/5/15 min): {results[0].load_before}.",
            "",
            machine_facts_markdown(),
            "",
            f"N = {results[0].runs:,} runs in flight.",
            "",
            markdown_table(HEADERS, rows(results)),
            "",
            markdown_table(TIMING_HEADERS, timing_rows(results)),
            "",
            "One worker process per line (its own interpreter), the 3-step workflow of the SQL "
            "section whose first step waits on an `asyncio.Event` (the gate). *All inside*: "
            "step concurrency N on that step, so that every run is inside the worker at once "
            "(its record loaded, its step task waiting, its place in the consumer's window); "
            f"*{QUEUED_CONCURRENCY} inside, rest queued*: step concurrency {QUEUED_CONCURRENCY}, "
            "the other runs wait as events in the streamer, as behind a slow step. *Idle RSS*: "
            f"`VmRSS` after start and {WARMUP + 20} warm-up runs, garbage collected, before the "
            f"load. Then the gate closes and N runs are triggered ({TRIGGER_BATCH} concurrent "
            "triggers at a time); *N runs in flight*: `VmRSS` once every trigger returned and "
            "the held runs are inside the first step. Then the gate opens and every run "
            "completes (checked in the store afterwards: COMPLETED at DONE, version 4). *Peak "
            f"under load*: the largest `VmRSS` sampled every {SAMPLE_EVERY * 1000:.0f} ms by a "
            "thread from the first trigger to the last completion; `ru_maxrss` is the "
            "process's peak since it started. Target (issue 14): peak ≤ 2x idle. Adapters: "
            + "; ".join(describe)
            + ". The memory adapters keep every run and its history in the process (the "
            "store is in the RSS); on SQLite the runs are in the file.",
        ]
    )


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.inflight",
        description="Peak RSS of a worker with N runs in flight beside its idle RSS.",
    )
    p.add_argument("--backend", choices=("memory", "sqlite", "both"), default="both")
    p.add_argument(
        "--hold",
        choices=(*HOLDS, "both"),
        default="both",
        help="inside: all runs inside the first step at once; queued: 16 inside, the rest "
        "waiting in the streamer (default both)",
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS:,} runs in flight")
    p.add_argument("--runs", type=int, help=f"runs in flight (default {FULL_RUNS:,})")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    p.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else FULL_RUNS
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.child and "both" in (args.backend, args.hold):
        p.error("--child measures one backend and one way of holding the runs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:  # one backend, in this process: print the result as JSON
        r = asyncio.run(measure(args.backend, args.hold, args.runs))
        print("RESULT " + json.dumps(asdict(r)), flush=True)
        return 0
    names = ["memory", "sqlite"] if args.backend == "both" else [args.backend]
    holds = list(HOLDS) if args.hold == "both" else [args.hold]
    print(
        f"bench.inflight ({args.mode}): {args.runs:,} runs in flight on {', '.join(names)}, "
        f"held {' and '.join(holds)}"
    )
    results: list[Result] = []
    for name, hold in itertools.product(names, holds):
        print(f"{name}, held {hold}:", flush=True)
        cmd = [sys.executable, "-m", "bench.inflight", "--child", "--backend", name]
        cmd += ["--hold", hold, "--runs", str(args.runs)]
        line = None
        with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for out in proc.stdout:  # the child's progress, as it comes
                if out.startswith("RESULT "):
                    line = out
                else:
                    sys.stdout.write(out)
                    sys.stdout.flush()
        if proc.returncode != 0 or line is None:
            print(f"FAILED: {name}, held {hold}: exit status {proc.returncode}")
            return 1
        results.append(Result(**json.loads(line[len("RESULT ") :])))
    print()
    print_table(HEADERS, rows(results))
    print()
    print_table(TIMING_HEADERS, timing_rows(results))
    if not args.no_write:
        path = write_section(SECTION, markdown(results, args.mode))
        print(f"wrote the {SECTION!r} section of {path}")
    missed = any(r.ratio > TARGET_RATIO for r in results)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
