"""``await_``: never misses a version, follows runs written by another process, and costs
nothing per waiter while nothing happens."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from workflow import Builder, Record, Run
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.testing import FakeClock

from .backends import Backend
from .support import Obj, Status, build


async def to_middle(run: Run[Obj, Status]) -> Status:
    run.object.count += 1
    return Status.MIDDLE


async def to_done(run: Run[Obj, Status]) -> Status:
    run.object.note = "done"
    return Status.DONE


def two_steps(name: str) -> Builder[Obj, Status]:
    b = Builder[Obj, Status](name)
    b.add_step(Status.STARTED, to_middle, Status.MIDDLE)
    b.add_step(Status.MIDDLE, to_done, Status.DONE)
    return b


class Spy:
    """A record store wrapper that counts reads, can hold the first lookup back, and tells
    when the batched version read happens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lookups = 0
        self.version_reads = 0
        self.hold_first_lookup: asyncio.Event | None = None
        self.first_lookup_started = asyncio.Event()
        self.looked_up = asyncio.Event()
        self.versions_read = asyncio.Event()
        self.hold_versions: asyncio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def lookup(self, run_id: str) -> Record:
        self.lookups += 1
        if self.lookups == 1:
            self.first_lookup_started.set()
            if self.hold_first_lookup is not None:
                await self.hold_first_lookup.wait()
        record: Record = await self.inner.lookup(run_id)
        self.looked_up.set()
        return record

    async def versions(self, run_ids: Sequence[str]) -> dict[str, int]:
        self.version_reads += 1
        if self.hold_versions is not None:
            await self.hold_versions.wait()
        out: dict[str, int] = await self.inner.versions(run_ids)
        self.versions_read.set()
        return out


async def test_a_version_passed_while_the_first_read_is_in_flight_is_returned(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The run reaches MIDDLE and finishes at DONE while await_'s first lookup is in flight:
    the lookup returns DONE (finished), but MIDDLE was written after the watch was set, so
    await_ returns it. Before: RunFinishedError."""
    store = Spy(MemRecordStore())
    store.hold_first_lookup = asyncio.Event()
    wf = build(two_steps("race"), clock, registry, store=store)  # type: ignore[arg-type]
    rid = await wf.trigger("r")
    waiter = asyncio.create_task(wf.await_("r", rid, Status.MIDDLE, timeout=5))
    await store.first_lookup_started.wait()
    async with wf:  # the run goes to MIDDLE and DONE while the lookup is held
        done = await wf.await_("r", rid, Status.DONE, timeout=5)
        assert done.meta.version == 3
        store.hold_first_lookup.set()
        run = await waiter
    assert run.status is Status.MIDDLE and run.meta.version == 2 and run.object.count == 1


def _sql_only(backend: Backend) -> None:
    if backend.engine is None:
        pytest.skip("one memory store is one process: nothing is written elsewhere")


async def test_await_follows_a_run_written_by_another_process(backend: Backend) -> None:
    """Two engines on one database (each its own adapters, as two processes): one waits, the
    other moves the run. The waiter learns of it through the batched version read, and when
    several versions were written between two reads, from the history (it finds MIDDLE
    although the run is already at DONE)."""
    _sql_only(backend)
    name = "two processes " + backend.name
    options = {"polling_frequency": 0.05}
    worker = backend.build(two_steps(name), default_options=options)
    spy: list[Spy] = []

    def waiter_store() -> Any:
        streamer, store, roles, timeouts = backend.adapters()
        spy.append(Spy(store))
        return streamer, spy[0], roles, timeouts

    streamer, store, roles, timeouts = waiter_store()
    waiter_wf = two_steps(name).build(
        streamer,
        store,
        roles,
        timeout_store=timeouts,
        clock=backend.clock,
        default_options=options,
        metrics_registry=backend.registry,
    )
    rid = await worker.trigger("p")
    middle = asyncio.create_task(waiter_wf.await_("p", rid, Status.MIDDLE, timeout=20))
    done = asyncio.create_task(waiter_wf.await_("p", rid, Status.DONE, timeout=20))
    await spy[0].versions_read.wait()  # both waiters are watching version 1
    spy[0].hold_versions = asyncio.Event()  # the waiter's next read waits ...
    async with worker:  # ... until the other engine has moved the run STARTED -> MIDDLE -> DONE
        await worker.await_("p", rid, Status.DONE, timeout=20)
        spy[0].hold_versions.set()
        got_done = await done
        got_middle = await middle  # version 2 was never seen: read from the history
    assert got_done.status is Status.DONE and got_done.object.note == "done"
    assert got_middle.status is Status.MIDDLE and got_middle.meta.version == 2
    assert got_middle.object.count == 1 and got_middle.object.note == ""


async def test_idle_waiters_cost_one_batched_read_per_poll_not_a_lookup_each(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """200 waiters on runs that do not move: after their first read, the store sees one
    batched version read per poll and no lookup. Before: every waiter looked its run up
    every poll (200 lookups per poll), which starved the workflow's own reads."""
    store = Spy(MemRecordStore())
    wf = build(
        two_steps("idle waiters"),
        clock,
        registry,
        store=store,  # type: ignore[arg-type]
        default_options={"polling_frequency": 0.02},
    )
    ids = [await wf.trigger(f"w{i}") for i in range(200)]
    waiters = [asyncio.create_task(wf.await_(f"w{i}", r, Status.DONE)) for i, r in enumerate(ids)]
    for _ in range(3):
        store.versions_read.clear()
        await store.versions_read.wait()
    lookups, reads = store.lookups, store.version_reads
    for _ in range(5):
        store.versions_read.clear()
        await store.versions_read.wait()
    assert lookups == 200  # each waiter's first read only
    assert store.lookups == lookups  # nothing more while nothing moved
    assert store.version_reads == reads + 5  # one read per poll for all 200
    async with wf:
        runs = await asyncio.gather(*waiters)
    assert {r.status for r in runs} == {Status.DONE}


async def test_a_waiter_that_gives_up_stops_the_watcher(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    store = Spy(MemRecordStore())
    wf = build(two_steps("give up"), clock, registry, store=store)  # type: ignore[arg-type]
    rid = await wf.trigger("g")
    with pytest.raises(TimeoutError):
        await wf.await_("g", rid, Status.DONE, timeout=0.01)
    await asyncio.sleep(0)
    assert wf._engine.signals._watcher is None or wf._engine.signals._watcher.done()
