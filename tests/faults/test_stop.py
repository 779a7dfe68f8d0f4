"""Graceful stop under load, and a manual pause racing a step's transition across processes.

* ``stop()`` while 500 runs are in flight (some steps hang until cancelled), then a NEW
  Workflow object on the same stores finishes them all: none lost, none moved twice (each
  run's history has consecutive versions and each step applied once, although a step may be
  *called* again after the restart).
* Runs triggered and processed by a worker OS process are paused by the test process at
  random moments: each pause either wins (the step's write is refused by compare-and-set) or
  is refused with a typed error (the run already finished); after the paused runs are resumed,
  every run completes with a consistent history.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import json
import random
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import (
    Builder,
    Record,
    Run,
    RunState,
    UnableToPauseError,
    Workflow,
    WorkflowError,
)
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import create_schema
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer

from ..procs.worker import build as build_load
from ..procs.worker import engine_for
from .conftest import Worker, wait_for_db
from .procs_worker import HOOK_TABLE


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    CHARGED = 2
    SHIPPED = 3
    DONE = 4


class Order(BaseModel):
    steps: list[str] = []


RUNS = 500


class Stores:
    """The adapters of one "process"; ``history`` reads a run's stored versions."""

    def __init__(self, kind: str, engine: AsyncEngine | None, mem: Any) -> None:
        self.kind, self.engine, self.mem = kind, engine, mem
        self.closers: list[Any] = []

    def adapters(self) -> tuple[Any, Any, Any]:
        if self.engine is None:
            streamer, store = self.mem
            return streamer, store, MemRoleScheduler()
        streamer = SQLStreamer(self.engine, poll_frequency=0.1)
        roles = SQLRoleScheduler(self.engine)
        self.closers += [streamer, roles]
        return streamer, SQLRecordStore(self.engine), roles

    async def close(self) -> None:
        for c in self.closers:
            await c.close()
        self.closers.clear()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "memory":
        return Stores("memory", None, (MemStreamer(), MemRecordStore()))
    fixture = "pg_engine" if request.param == "postgres" else "sqlite_engine"
    return Stores(request.param, request.getfixturevalue(fixture), None)


def make(
    stores: Stores,
    calls: collections.Counter[tuple[str, str]],
    hang: set[str] | None,
    entered: set[str] | None = None,
    hanging: asyncio.Event | None = None,
) -> Workflow[Order, Status]:
    """The 3-step workflow; ``calls`` counts step calls per (run, step); runs whose foreign id
    is in ``hang`` block forever in "ship" (until stop() cancels them): each is added to
    ``entered`` and ``hanging`` is set once the first one is blocked."""

    def step(name: str, nxt: Status) -> Any:
        async def fn(run: Run[Order, Status]) -> Status:
            calls[(run.run_id, name)] += 1
            if hang is not None and name == "ship" and run.foreign_id in hang:
                if entered is not None and hanging is not None:
                    entered.add(run.foreign_id)
                    hanging.set()
                await asyncio.Event().wait()
            await asyncio.sleep(0)  # yield: many events are in hand at once
            run.object.steps.append(name)
            return nxt

        fn.__name__ = name
        return fn

    b = Builder[Order, Status]("stopping")
    b.add_step(Status.STARTED, step("charge", Status.CHARGED), Status.CHARGED).with_options(
        parallel_count=2
    )
    b.add_step(Status.CHARGED, step("ship", Status.SHIPPED), Status.SHIPPED).with_options(
        parallel_count=2
    )
    b.add_step(Status.SHIPPED, step("done", Status.DONE), Status.DONE)
    streamer, store, roles = stores.adapters()
    return b.build(
        streamer,
        store,
        roles,
        metrics_registry=CollectorRegistry(),
        default_options={"err_backoff": 0.05, "polling_frequency": 0.1, "concurrency": 16},
    )


def check_history(run_id: str, history: list[Record]) -> None:
    assert [r.meta.version for r in history] == [1, 2, 3, 4], run_id
    assert [r.status for r in history] == [1, 2, 3, 4], run_id
    assert history[-1].run_state == RunState.COMPLETED, run_id
    assert json.loads(history[-1].object)["steps"] == ["charge", "ship", "done"], run_id


async def test_stop_under_load_then_a_new_workflow_finishes_every_run(stores: Stores) -> None:
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    hang = {f"order-{i}" for i in range(0, RUNS, 50)}  # 10 runs stuck in a step at stop()
    hanging, entered = asyncio.Event(), set[str]()
    first = make(stores, calls, hang, entered, hanging)
    ids = {f"order-{i}": await first.trigger(f"order-{i}") for i in range(RUNS)}
    await first.run()
    # wait until the hanging runs are in hand and the load is well under way
    await asyncio.wait_for(hanging.wait(), 60)
    await first.await_("order-1", ids["order-1"], Status.DONE, timeout=60)
    await first.stop(grace=0.2)
    assert {s.name for s in first.states().values()} == {"SHUTDOWN"}, first.states()
    unfinished = [
        fid for fid, rid in ids.items() if (await first.lookup(rid)).status != Status.DONE
    ]
    assert len(unfinished) >= len(hang), "the stop did not interrupt the load"
    await stores.close()

    second = make(stores, calls, None)  # a new process: same stores, nothing hangs
    async with second:
        for fid, rid in ids.items():
            await second.await_(fid, rid, Status.DONE, timeout=60)
    await stores.close()
    store = second._engine.store
    for rid in ids.values():
        check_history(rid, await store.history(rid))  # type: ignore[attr-defined]
    assert entered
    for fid in entered:  # interrupted mid-step, called again after the restart, applied once
        assert calls[(ids[fid], "ship")] == 2, fid


# -- a manual pause racing a step's transition, across processes -------------------------------


async def test_a_pause_racing_a_step_in_another_process(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    n = 100
    url = pg_engine.url.render_as_string(hide_password=False)
    engine = engine_for(url, pg_schema)
    await create_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.text(HOOK_TABLE))
    wf, streamer, roles = build_load(engine, registry=CollectorRegistry())
    worker = await Worker.spawn(url, pg_schema)
    rng = random.Random()
    outcomes: collections.Counter[str] = collections.Counter()
    at: collections.Counter[str] = collections.Counter()
    paused: list[str] = []
    run_ids: list[str] = []
    try:
        await worker.started()

        async def race(i: int) -> None:
            rid = await wf.trigger(f"order-{i}")
            run_ids.append(rid)
            await asyncio.sleep(rng.uniform(0, 2.5))  # a random moment of its processing
            try:
                await wf.pause(rid, "racing")
            except UnableToPauseError:
                outcomes["refused: already finished"] += 1
                assert (await wf.lookup(rid)).run_state == RunState.COMPLETED, rid
            except WorkflowError as e:  # typed: kept changing under the pause
                outcomes[f"refused: {type(e).__name__}"] += 1
            else:
                outcomes["paused"] += 1
                paused.append(rid)

        await asyncio.gather(*(race(i) for i in range(n)))
        for rid in paused:
            await wf.resume(rid)
        await wait_for_db(
            engine,
            n,
            "runs completed",
            "SELECT count(*) FROM workflow_records WHERE run_state = 5",
            60,
        )
        store = SQLRecordStore(engine)
        for rid in run_ids:
            history = await store.history(rid)
            assert [r.meta.version for r in history] == list(range(1, len(history) + 1)), rid
            moves = [history[0].status] + [
                b.status for a, b in itertools.pairwise(history) if b.status != a.status
            ]
            assert moves == [1, 2, 3, 4], (rid, [(r.status, r.run_state) for r in history])
            assert json.loads(history[-1].object)["steps"] == ["charge", "ship", "done"], rid
            states = [r.run_state for r in history]
            assert states.count(RunState.PAUSED) == (1 if rid in paused else 0), (rid, states)
            at.update(f"paused at {r.status}" for r in history if r.run_state == RunState.PAUSED)
        # the pauses hit runs at different points of their processing
        assert len(at) >= 2, (outcomes, at)
    finally:
        await streamer.close()
        await roles.close()
        code = await worker.stop()
        await engine.dispose()
    assert code == 0
