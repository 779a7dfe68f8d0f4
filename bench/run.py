"""Every benchmark, one command: ``python -m bench.run [--quick]``.

    python -m bench.run [--quick] [--only PART ...] [--skip PART ...] [--no-write]

Parts, in order (each writes its own ``##`` section of bench/RESULTS.md):

- ``memory``: ``bench.memory`` (in-memory adapters: throughput, latency, peak RSS; on the
  default event loop, then on uvloop when the ``uvloop`` extra is installed);
- ``memory10``: the same with a 10-step workflow (its own section);
- ``sql``: ``bench.sql`` (SQLite, and PostgreSQL when ``$WORKFLOW_TEST_POSTGRES_URL`` is set);
- ``kafka``: when ``$WORKFLOW_TEST_KAFKA_BOOTSTRAP`` and a PostgreSQL URL are set, a small
  throughput / latency measurement of the same 3-step workflow on ``KafkaStreamer``
  (``fetch_max_wait_ms=10``) with ``SQLRecordStore`` and ``SQLRoleScheduler`` on PostgreSQL
  (section "Kafka + PostgreSQL");
- ``rss``: ``bench.rss`` (memory growth of one long-lived worker);
- ``inflight``: ``bench.inflight`` (peak RSS of a worker with 10,000 runs in flight beside its
  idle RSS, on the memory adapters and on SQLite);
- ``growth``: ``bench.growth`` (throughput and idle latency on an empty database and on one
  pre-loaded with 1,000,000 finished runs and 100,000 consumed events, sizes per run, the
  events table's bound; SQLite, and PostgreSQL when ``$WORKFLOW_TEST_POSTGRES_URL`` is set);
- ``peers``: ``bench.peers`` (DBOS beside this engine);
- ``procs``: ``bench.procs`` (1 and 2 worker processes, 3 and 10 steps, on SQLite, PostgreSQL
  and Kafka + PostgreSQL);
- ``isolation``: ``bench.isolation`` (healthy-run latency with and without one always-failing
  run at the same status, on memory, SQLite and PostgreSQL);
- ``awaiters``: ``bench.awaiters`` (fresh-run latency with 0, 1,000 and 10,000 pending
  ``await_`` calls, and a gather of 2,000 of them, on SQLite and PostgreSQL).

Then the "Machine and full run" section: the machine (cores, memory, the cost of a disk flush
measured as the median of 200 ``fsync`` calls on a small file in the repository's directory),
the load average before and after, and what each part took. ``--quick`` shrinks every part
for a CI smoke run (under 2 minutes on an idle 2-core machine). A part whose service is
missing is skipped with a printed note; a part that fails is reported and the others still run
(the exit status is then 1). Each part runs in its own interpreter (``sys.executable -m
bench.<part>``), so the RSS each one reports is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._common import (
    RESULTS_PATH,
    command_line,
    filesystem_of,
    fmt_int,
    fsync_cost_us,
    load_average,
    machine_facts,
    markdown_table,
    percentiles,
    print_table,
    read_section,
    utc_now,
    write_section,
)

__all__ = ["PARTS", "kafka_main", "main"]

SECTION = "Machine and full run"
KAFKA_SECTION = "Kafka + PostgreSQL"
REPO = Path(__file__).resolve().parent.parent
FSYNCS = 200

# Arguments of each part, full and quick (quick: small enough for a CI smoke run).
ARGS: dict[str, tuple[list[str], list[str]]] = {
    "memory": (["--loop", "both"], ["--quick", "--loop", "both"]),
    "memory10": (["--steps", "10", "--runs", "6000"], ["--steps", "10", "--quick"]),
    "sql": ([], ["--quick", "--no-profile", "--runs", "100", "--latency-runs", "20"]),
    "kafka": ([], ["--quick"]),
    "rss": ([], ["--quick"]),
    "inflight": ([], ["--quick"]),
    "growth": ([], ["--quick"]),
    "peers": ([], ["--quick"]),
    "procs": ([], ["--quick", "--backends", "postgres"]),
    "awaiters": ([], ["--quick"]),
    "isolation": ([], ["--quick"]),
}
NEEDS = {"kafka": ("WORKFLOW_TEST_KAFKA_BOOTSTRAP", "WORKFLOW_TEST_POSTGRES_URL")}


# -- Kafka + PostgreSQL --------------------------------------------------------------------

KAFKA_FULL_RUNS, KAFKA_QUICK_RUNS = 1_000, 100
KAFKA_FULL_LATENCY, KAFKA_QUICK_LATENCY = 100, 20
KAFKA_CONCURRENCY = 16


@dataclass
class KafkaResult:
    runs: int
    seconds: float
    idle_ms: list[float]
    under_load_ms: list[float]
    wall_s: float
    load_before: str


async def kafka_measure(bootstrap: str, pg_url: str, runs: int, latency_runs: int) -> KafkaResult:
    from prometheus_client import CollectorRegistry

    from workflow import Builder, Run
    from workflow.adapters.kafkastreamer import KafkaStreamer
    from workflow.adapters.sqlrolescheduler import SQLRoleScheduler

    from . import sql

    wall0, load_before = time.perf_counter(), load_average()
    db = sql.PostgresDatabase(pg_url)
    try:
        engine = await db.fresh()
        tracker = sql.Tracker()
        b: Builder[sql.Obj, sql.Status] = Builder("bench kafka", sql.Obj, sql.Status)
        chain = [sql.Status.STARTED, sql.Status.A, sql.Status.B, sql.Status.DONE]
        for cur, nxt in itertools.pairwise(chain):

            async def step(run: Run[sql.Obj, sql.Status], nxt: sql.Status = nxt) -> sql.Status:
                run.object.steps += 1
                run.object.last = nxt.name
                return nxt

            b.add_step(cur, step, nxt).with_options(concurrency=KAFKA_CONCURRENCY)
        streamer = KafkaStreamer(
            bootstrap, namespace=f"bench-{secrets.token_hex(4)}-", fetch_max_wait_ms=10
        )
        roles = SQLRoleScheduler(engine)
        store = sql.TimedStore(engine, tracker)
        wf = b.build(streamer, store, roles, metrics_registry=CollectorRegistry())
        try:
            async with wf:
                await sql.sequential_latency(wf, 10, "warm")  # topics, groups, connections
                idle = await sql.sequential_latency(wf, latency_runs, "lat")
                tracker.expect("tp-", runs)
                started: dict[str, float] = {}
                t0 = time.perf_counter()

                async def trigger(fid: str) -> None:
                    started[fid] = time.perf_counter()
                    await wf.trigger(fid)

                for i in range(0, runs, sql.TRIGGERS_AT_ONCE):
                    chunk = range(i, min(runs, i + sql.TRIGGERS_AT_ONCE))
                    await asyncio.gather(*(trigger(f"tp-{j}") for j in chunk))
                try:
                    await asyncio.wait_for(tracker.event.wait(), max(120.0, runs / 5))
                except TimeoutError:
                    raise SystemExit(
                        f"FAILED: Kafka: {len(tracker.done)} of {runs} runs completed"
                    ) from None
                seconds = max(tracker.done.values()) - t0
                await sql.verify(engine, wf.name, "tp-", runs)
        finally:
            await streamer.close()
            await roles.close()
            await engine.dispose()
    finally:
        await db.close()
    under_load = [(tracker.done[f] - t) * 1000 for f, t in started.items()]
    return KafkaResult(runs, seconds, idle, under_load, time.perf_counter() - wall0, load_before)


def _ms(samples: list[float]) -> str:
    p = percentiles(samples)
    return f"p50 {p.p50:.1f} / p90 {p.p90:.1f} / p99 {p.p99:.1f} / max {p.max:.1f} ms"


def kafka_markdown(r: KafkaResult, mode: str, bootstrap: str, flavor: str) -> str:
    rows = [
        [
            "throughput",
            f"{fmt_int(r.runs * 3 / r.seconds)} transitions/s = {r.runs / r.seconds:,.1f} "
            f"runs/s ({r.runs:,} runs in {r.seconds:.2f} s)",
        ],
        [f"latency, idle engine ({len(r.idle_ms)} runs, one at a time)", _ms(r.idle_ms)],
        [f"latency under load ({r.runs:,} runs)", _ms(r.under_load_ms)],
    ]
    return "\n".join(
        [
            f"Measured {utc_now()} ({mode} mode, {r.wall_s:.0f} s) with "
            f"`python -m bench.run{' --quick' if mode == 'quick' else ''}` (the kafka part); "
            "load average before (1/5/15 min): "
            f"{r.load_before}.",
            "",
            f"- Broker: `{bootstrap}` ({flavor}); PostgreSQL: `$WORKFLOW_TEST_POSTGRES_URL`, "
            "a fresh schema dropped afterwards",
            "",
            markdown_table(["metric", "measured"], rows),
            "",
            "Workflow: the SQL section's 3 steps (STARTED → A → B → DONE, step concurrency "
            f"{KAFKA_CONCURRENCY}) on `KafkaStreamer(bootstrap, fetch_max_wait_ms=10)` (4 "
            "partitions per topic, `acks=all`, topics under a fresh namespace), "
            "`SQLRecordStore` (outbox relay on) and `SQLRoleScheduler` on PostgreSQL; one "
            "process, the real clock. 10 warm-up runs, then the idle latency (trigger, then "
            "`await_` DONE, one run at a time), then N runs triggered (64 calls in flight), timed "
            "until the last COMPLETED write committed; every run is then checked in the "
            "database (COMPLETED at DONE, version 4).",
        ]
    )


def kafka_main(argv: list[str]) -> int:
    quick = "--quick" in argv
    no_write = "--no-write" in argv
    bootstrap = os.environ.get("WORKFLOW_TEST_KAFKA_BOOTSTRAP", "")
    pg_url = os.environ.get("WORKFLOW_TEST_POSTGRES_URL", "")
    if not bootstrap or not pg_url:
        print("Kafka + PostgreSQL: skipped ($WORKFLOW_TEST_KAFKA_BOOTSTRAP or "
              "$WORKFLOW_TEST_POSTGRES_URL is not set)")  # fmt: skip
        return 0
    runs = KAFKA_QUICK_RUNS if quick else KAFKA_FULL_RUNS
    lat = KAFKA_QUICK_LATENCY if quick else KAFKA_FULL_LATENCY
    print(f"Kafka + PostgreSQL: {lat} latency runs, {runs:,} throughput runs on {bootstrap}")
    r = asyncio.run(kafka_measure(bootstrap, pg_url, runs, lat))
    print(f"  {r.runs * 3 / r.seconds:,.0f} transitions/s ({r.runs / r.seconds:,.1f} runs/s)")
    print(f"  idle latency: {_ms(r.idle_ms)}")
    print(f"  under load:   {_ms(r.under_load_ms)}")
    if not no_write:
        flavor = os.environ.get("WORKFLOW_TEST_KAFKA_FLAVOR") or "Kafka protocol"
        mode = "quick" if quick else "full"
        write_section(KAFKA_SECTION, kafka_markdown(r, mode, bootstrap, flavor))
    return 0


# -- the driver ----------------------------------------------------------------------------


def _subprocess(module: str, *extra: str) -> Callable[[list[str]], int]:
    """Run a part in its own interpreter: its RSS figures are its own, and a crash stays
    there. Output goes straight to this terminal."""

    def run(argv: list[str]) -> int:
        cmd = [sys.executable, "-m", module, *extra, *argv]
        return subprocess.run(cmd, cwd=REPO, check=False).returncode

    return run


PARTS: dict[str, Callable[[list[str]], int]] = {
    "memory": _subprocess("bench.memory"),
    "memory10": _subprocess("bench.memory"),
    "sql": _subprocess("bench.sql"),
    "kafka": _subprocess("bench.run", "--kafka-part"),
    "rss": _subprocess("bench.rss"),
    "inflight": _subprocess("bench.inflight"),
    "growth": _subprocess("bench.growth"),
    "peers": _subprocess("bench.peers"),
    "procs": _subprocess("bench.procs"),
    "awaiters": _subprocess("bench.awaiters"),
    "isolation": _subprocess("bench.isolation"),
}


def _mem_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(next(ln for ln in f if ln.startswith("MemTotal:")).split()[1])
        return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def overview(
    mode: str, parts: list[tuple[str, str, float]], total: float, fsync_us: float, loads: str
) -> str:
    f = machine_facts()
    previous = read_section(SECTION) or ""
    last_full = re.search(r"^- Last full run: .*$", previous, re.M)
    full_line = (
        f"- Last full run: {utc_now()}, {total:.0f} s in all"
        if mode == "full"
        else (last_full.group(0) if last_full else "- Last full run: none recorded yet")
    )
    rows = [[name, status, f"{secs:.1f} s"] for name, status, secs in parts]
    return "\n".join(
        [
            f"Measured {utc_now()} with `{command_line('bench.run')}` ({mode} mode): "
            f"{total:.0f} s in all.",
            "",
            full_line,
            "",
            f"- Machine: {f['cpus']} CPUs (`os.cpu_count()`), {f['cpu']}, {_mem_total()} RAM",
            f"- Platform: {f['platform']}; {f['python']}",
            f"- Disk flush: median `fsync` of a small file in the repository's directory "
            f"(`{filesystem_of(REPO)}`) = {fsync_us:.0f} µs over {FSYNCS} calls — a VM's host "
            'cache can make this far cheaper than a real disk flush, so "durable" numbers '
            "here are upper bounds",
            f"- Load average (1/5/15 min): {loads} — the machine may be shared with other "
            "work, which lowers every number",
            "",
            markdown_table(["part", "status", "took"], rows),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small runs for a CI smoke run")
    p.add_argument("--only", nargs="+", choices=list(PARTS), help="run only these parts")
    p.add_argument("--skip", nargs="+", choices=list(PARTS), default=[], help="skip these")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    p.add_argument("--kafka-part", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kafka_part:  # the "kafka" part, in its own process
        return kafka_main(["--quick"] * args.quick + ["--no-write"] * args.no_write)
    mode = "quick" if args.quick else "full"
    t0 = time.perf_counter()
    load_before = load_average()
    fsync_us = fsync_cost_us(REPO, FSYNCS)
    f = machine_facts()
    print(
        f"bench.run ({mode}): {f['cpus']} CPUs, {f['cpu']}; fsync {fsync_us:.0f} µs; load "
        f"average {load_before}"
    )
    names = [n for n in (args.only or PARTS) if n not in args.skip]
    if not os.environ.get("WORKFLOW_TEST_POSTGRES_URL"):
        print("note: $WORKFLOW_TEST_POSTGRES_URL is not set: PostgreSQL parts are skipped")
    done: list[tuple[str, str, float]] = []
    failed = False
    for name in names:
        argv_part = list(ARGS[name][1] if args.quick else ARGS[name][0])
        if args.no_write:
            argv_part.append("--no-write")
        print(f"\n===== {name} {' '.join(argv_part)}", flush=True)
        t = time.perf_counter()
        missing = [v for v in NEEDS.get(name, ()) if not os.environ.get(v)]
        if missing:
            print(f"{name}: skipped (${' and $'.join(missing)} not set)")
            done.append((name, f"skipped (${' and $'.join(missing)} not set)", 0.0))
            continue
        try:
            rc = PARTS[name](argv_part)
            status = "ok" if rc == 0 else f"exit status {rc}"
        except OSError as e:
            rc, status = 1, f"FAILED: {e}"
        failed |= rc != 0
        done.append((name, status, time.perf_counter() - t))
        print(f"----- {name}: {status} ({done[-1][2]:.1f} s)", flush=True)
    total = time.perf_counter() - t0
    loads = f"{load_before} before, {load_average()} after"
    print()
    print_table(["part", "status", "took"], [[n, s, f"{d:.1f} s"] for n, s, d in done])
    print(f"\nbench.run ({mode}): {total:.1f} s in all; load average {loads}")
    if not args.no_write and not args.only:
        write_section(SECTION, overview(mode, done, total, fsync_us, loads))
        print(f"wrote the {SECTION!r} section of {RESULTS_PATH}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
