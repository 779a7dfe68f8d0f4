"""A worker "host" of the cluster tests (tests/cluster): the 3-step "cluster" workflow on the
shared PostgreSQL with the SQL role scheduler, the SQL streamer (the store appending each
event itself) or Kafka (the outbox relay), until SIGTERM.

    python -m tests.procs.cluster_worker --url URL --host NAME --journal PATH
        [--lease 2.0] [--kafka HOST:PORT --namespace NS]

Outside the engine, in a SQLite file of its own (``--journal``: local, so it is written also
while the host is cut off from the database), it records

* every step call: ``calls(run_id, status, attempt, host, started, finished, outcome)``, one
  row inserted when the call starts and completed when it ends (``returned``, ``raised`` or
  ``cancelled``): the user side effect whose count the checker compares with at-least-once;
* every lease: ``leases(role, host, granted, lost)``, from the grant to the moment the
  holder's ``wait_lost`` ended (revoked or released).

Times are ``time.time()``: every host runs on this one machine's clock.

It prints "ready" once its processes are launched and, on SIGTERM, one JSON line of
statistics (``cas_refused``: writes the store's compare-and-set refused; ``stop_s``: how long
``wf.stop()`` and the role scheduler's ``close()`` took; ``streamer_close_hung``: the
streamer's ``close()`` did not end within three leases) before exiting 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.procs.lifetime import die_with_parent
from tests.procs.worker import Order, Status  # the multi-process tests' workflow types
from workflow import Builder, Lease, Run, Workflow
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer

NAME = "cluster"
STEPS = ("charge", "ship", "done")
WORK_S = 0.005
"""How long a step "works" (an await between its side effect and its return), so that a
revocation or a partition can land inside a call."""

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, status INTEGER NOT NULL,
    attempt INTEGER NOT NULL, host TEXT NOT NULL, started REAL NOT NULL, finished REAL,
    outcome TEXT);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY, role TEXT NOT NULL, host TEXT NOT NULL, granted REAL NOT NULL,
    lost REAL);
"""


class Journal:
    """The host's local record of step calls and leases (synchronous SQLite: microseconds,
    and no await between a call's start and its row)."""

    def __init__(self, path: str, host: str) -> None:
        self.host = host
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.executescript(JOURNAL_SCHEMA)

    def call_started(self, run_id: str, status: int, attempt: int) -> int:
        cur = self.db.execute(
            "INSERT INTO calls (run_id, status, attempt, host, started) VALUES (?, ?, ?, ?, ?)",
            (run_id, status, attempt, self.host, time.time()),
        )
        return int(cur.lastrowid or 0)

    def call_ended(self, row: int, outcome: str) -> None:
        self.db.execute(
            "UPDATE calls SET finished = ?, outcome = ? WHERE id = ?", (time.time(), outcome, row)
        )

    def granted(self, role: str) -> int:
        cur = self.db.execute(
            "INSERT INTO leases (role, host, granted) VALUES (?, ?, ?)",
            (role, self.host, time.time()),
        )
        return int(cur.lastrowid or 0)

    def lost(self, row: int) -> None:
        self.db.execute("UPDATE leases SET lost = ? WHERE id = ?", (time.time(), row))


class JournalledRoles:
    """The SQL role scheduler, with each lease's grant and end written to the journal."""

    def __init__(self, inner: SQLRoleScheduler, journal: Journal) -> None:
        self._inner = inner
        self._journal = journal
        self._watchers: set[asyncio.Task[None]] = set()

    async def await_role(self, role: str) -> Lease:
        lease = await self._inner.await_role(role)
        row = self._journal.granted(role)
        task = asyncio.create_task(self._watch(lease, row))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return lease

    async def _watch(self, lease: Lease, row: int) -> None:
        await lease.wait_lost()
        self._journal.lost(row)


def build(
    engine: AsyncEngine,
    journal: Journal | None,
    *,
    lease: float,
    kafka: str | None = None,
    namespace: str = "",
    registry: CollectorRegistry,
) -> tuple[Workflow[Order, Status], Any, SQLRoleScheduler]:
    """The workflow on ``engine``; ``journal=None`` for a producer that only triggers."""

    def step(index: int) -> Any:
        name, nxt = STEPS[index], Status(index + 2)

        async def fn(run: Run[Order, Status]) -> Status:
            assert journal is not None
            row = journal.call_started(run.run_id, int(run.status), run.attempt)
            outcome = "cancelled"
            try:
                await asyncio.sleep(WORK_S)  # the step's work
                run.object.steps.append(name)
                outcome = "returned"
                return nxt
            except Exception:
                outcome = "raised"
                raise
            finally:
                journal.call_ended(row, outcome)

        fn.__name__ = name
        return fn

    b = Builder[Order, Status](NAME)
    b.add_step(Status.STARTED, step(0), Status.CHARGED)
    b.add_step(Status.CHARGED, step(1), Status.SHIPPED)
    b.add_step(Status.SHIPPED, step(2), Status.DONE)
    streamer: Any
    if kafka:
        from workflow.adapters.kafkastreamer import KafkaStreamer

        from .kafka_worker import FAST

        streamer = KafkaStreamer(kafka, namespace=namespace, **FAST)
        store = SQLRecordStore(engine)
    else:
        streamer = SQLStreamer(engine, poll_frequency=0.2, close_timeout=lease)
        store = SQLRecordStore(engine, streamer=streamer)
    host = journal.host if journal else "producer"
    roles = SQLRoleScheduler(engine, lease=timedelta(seconds=lease), holder=f"{host}:{os.getpid()}")
    wf = b.build(
        streamer,
        store,
        roles if journal is None else JournalledRoles(roles, journal),
        metrics_registry=registry,
        default_options={"err_backoff": 0.1, "polling_frequency": 0.2, "concurrency": 16},
    )
    return wf, streamer, roles


def _count(registry: CollectorRegistry, metric: str, **labels: str) -> int:
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return int(total)


def _dump_tasks() -> None:
    """SIGUSR1: every task's stack to stderr (the harness asks for it when a stop hangs)."""
    for task in asyncio.all_tasks():
        print(f"-- {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--kafka", default=None)
    parser.add_argument("--namespace", default="")
    args = parser.parse_args()
    engine = make_engine(args.url)
    registry = CollectorRegistry()
    journal = Journal(args.journal, args.host)
    wf, streamer, roles = build(
        engine,
        journal,
        lease=args.lease,
        kafka=args.kafka,
        namespace=args.namespace,
        registry=registry,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    await wf.run()
    print("ready", flush=True)
    await stop.wait()
    started = time.monotonic()
    await wf.stop()
    await roles.close()
    stop_s = round(time.monotonic() - started, 3)
    try:  # bounded: SQLStreamer.close() hangs on an unreachable database (see the docs)
        await asyncio.wait_for(streamer.close(), 3 * args.lease)
        close_hung = False
    except TimeoutError:
        close_hung = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(engine.dispose(), 3 * args.lease)
    stats = {
        "host": args.host,
        "stop_s": stop_s,
        "streamer_close_hung": close_hung,
        "cas_refused": _count(
            registry,
            "workflow_process_skipped_events_count_total",
            reason="record modified concurrently",
        ),
        "step_errors": _count(registry, "workflow_process_error_count_total"),
    }
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
