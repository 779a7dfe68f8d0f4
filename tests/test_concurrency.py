"""concurrency > 1: several events of one consumer in flight, acknowledged in order."""

from __future__ import annotations

import asyncio
from collections import Counter

from prometheus_client import CollectorRegistry

from workflow import Builder, Run, RunState
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, in_memory, wait_for

from .support import Obj, Status


def make(step: object, concurrency: int, **options: object) -> Builder[Obj, Status]:
    b = Builder[Obj, Status]("concurrent")
    b.add_step(Status.STARTED, step, Status.DONE).with_options(  # type: ignore[arg-type]
        concurrency=concurrency, **options
    )
    return b


async def test_events_are_handled_at_once_and_each_once(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    in_flight, peak = 0, 0
    calls: Counter[str] = Counter()
    release = asyncio.Event()

    async def step(run: Run[Obj, Status]) -> Status:
        nonlocal in_flight, peak
        calls[run.run_id] += 1
        in_flight += 1
        peak = max(peak, in_flight)
        if peak >= 8:
            release.set()
        await release.wait()
        in_flight -= 1
        return Status.DONE

    wf = in_memory(make(step, 8), clock=clock, metrics_registry=registry).wf
    async with wf:
        ids = {f"c{i}": await wf.trigger(f"c{i}") for i in range(40)}
        for fid, rid in ids.items():
            await wf.await_(fid, rid, Status.DONE, timeout=5)
    assert peak == 8
    assert len(calls) == 40 and set(calls.values()) == {1}


async def test_acks_never_pass_an_unfinished_event(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The first event hangs while later ones finish; a stop leaves it unacknowledged, and
    the next process handles it (the later ones come again and are skipped as applied)."""
    streamer, store, roles = MemStreamer(clock), MemRecordStore(), MemRoleScheduler()
    calls: Counter[str] = Counter()
    hang = True
    others_done = asyncio.Event()

    async def step(run: Run[Obj, Status]) -> Status:
        calls[run.foreign_id] += 1
        if run.foreign_id == "first" and hang:
            await asyncio.Event().wait()
        if sum(calls.values()) >= 4:
            others_done.set()
        return Status.DONE

    first = make(step, 4).build(streamer, store, roles, clock=clock, metrics_registry=registry)
    await first.run()
    rid = await first.trigger("first")
    others = {f"o{i}": await first.trigger(f"o{i}") for i in range(3)}
    await asyncio.wait_for(others_done.wait(), 5)
    for fid, orid in others.items():
        await first.await_(fid, orid, Status.DONE, timeout=5)
    await first.stop(grace=0.05)
    hang = False
    second = make(step, 4).build(streamer, store, roles, clock=clock, metrics_registry=registry)
    async with second:
        await second.await_("first", rid, Status.DONE, timeout=5)
    assert calls == {"first": 2, "o0": 1, "o1": 1, "o2": 1}


async def test_one_run_is_handled_one_event_at_a_time(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """Two events of one run in the window at once: the second waits for the first.

    The step blocks on the run's first event; meanwhile a pause and a resume put a second
    event of the run on the step's topic (the resume, version 3). It is read while the first
    is in hand, but handled only after it: the stale first result is refused
    (compare-and-set) and the step runs again on version 3, never twice at the same time."""
    active: Counter[str] = Counter()
    overlaps = 0
    calls: list[int] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def step(run: Run[Obj, Status]) -> Status:
        nonlocal overlaps
        if active[run.run_id]:
            overlaps += 1
        active[run.run_id] += 1
        try:
            if run.foreign_id == "held":
                calls.append(run.meta.version)
                if len(calls) == 1:
                    entered.set()
                    await release.wait()
            return Status.DONE
        finally:
            active[run.run_id] -= 1

    wf = in_memory(make(step, 8), clock=clock, metrics_registry=registry).wf
    async with wf:
        rid = await wf.trigger("held")
        await asyncio.wait_for(entered.wait(), 5)
        await wf.pause(rid)
        await wf.resume(rid)  # version 3: a second event of the run on the step's topic
        # A later event of another run is read after the resume's event and completes while
        # the first is still in hand: by then the resume's event has been dispatched.
        try:
            later = await wf.trigger("later")
            await wf.await_("later", later, Status.DONE, timeout=5)
            assert calls == [1], "the run's second event was handled while its first was in hand"
        finally:
            release.set()
        run = await wf.await_("held", rid, Status.DONE, timeout=5)
    assert calls == [1, 3]
    assert run.meta.version == 4
    assert overlaps == 0


async def test_many_save_and_repeat_runs_at_once_each_in_order(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def repeat(run: Run[Obj, Status]) -> object:
        await asyncio.sleep(0)  # let the other runs' events interleave
        run.object.count += 1
        return run.save_and_repeat() if run.object.count < 20 else Status.DONE

    wf = in_memory(make(repeat, 8), clock=clock, metrics_registry=registry).wf
    async with wf:
        ids = {f"r{i}": await wf.trigger(f"r{i}") for i in range(5)}
        for fid, rid in ids.items():
            run = await wf.await_(fid, rid, Status.DONE, timeout=5)
            assert run.object.count == 20


async def test_a_failing_run_does_not_stop_the_others(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def step(run: Run[Obj, Status]) -> Status:
        if run.foreign_id == "bad":
            raise RuntimeError("broken input")
        return Status.DONE

    wf = make(step, 4, pause_after_err_count=2, err_backoff=0).build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
    )
    async with wf:
        await wf.trigger("bad")
        ids = {f"g{i}": await wf.trigger(f"g{i}") for i in range(10)}
        for fid, rid in ids.items():
            await wf.await_(fid, rid, Status.DONE, timeout=5)
        paused = await wait_for(wf, "bad", lambda r: r.run_state is RunState.PAUSED)
    assert paused.status is Status.STARTED
