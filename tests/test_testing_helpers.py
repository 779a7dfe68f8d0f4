"""workflow.testing: the fake clock and the event-driven waits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from workflow import Builder, Run, duration_timer
from workflow.testing import FakeClock, await_timeout_insert, require, wait_for

from .support import Obj, Status, build


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock(datetime(2024, 1, 1, tzinfo=UTC))
    woke: list[str] = []

    async def sleeper(name: str, delta: timedelta) -> None:
        await clock.sleep_until(clock.now() + delta)
        woke.append(name)

    tasks = [
        asyncio.create_task(sleeper("late", timedelta(hours=2))),
        asyncio.create_task(sleeper("early", timedelta(hours=1))),
    ]
    await clock.until_waiting(2)
    clock.step(timedelta(minutes=59))
    await asyncio.sleep(0)
    assert woke == []
    clock.step(timedelta(minutes=1))
    await asyncio.wait_for(tasks[1], 1)
    assert woke == ["early"]
    clock.set(datetime(2024, 1, 1, 2, tzinfo=UTC))
    await asyncio.wait_for(tasks[0], 1)
    assert woke == ["early", "late"]
    await clock.sleep_until(clock.now())  # a deadline already reached returns at once
    with pytest.raises(ValueError):
        FakeClock(datetime(2024, 1, 1))  # naive
    with pytest.raises(ValueError):
        clock.step(-1)
    with pytest.raises(TimeoutError):
        await clock.until_waiting(1, timeout=0.01)


async def step(run: Run[Obj, Status]) -> Status:
    run.object.note = "stepped"
    return Status.DONE


async def test_require_reports_a_wrong_object(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    b = Builder[Obj, Status]("req")
    b.add_step(Status.STARTED, step, Status.DONE)
    wf = build(b, clock, registry)
    async with wf:
        await wf.trigger("r")
        await require(wf, "r", Status.DONE, Obj(note="stepped"))
        await require(wf, "r", Status.STARTED, {"count": 0, "note": ""})  # an earlier version
        with pytest.raises(AssertionError, match="expected object"):
            await require(wf, "r", Status.DONE, Obj(note="something else"))
        with pytest.raises(TimeoutError):
            await require(wf, "nobody", Status.DONE, Obj(), timeout=0.05)
        with pytest.raises(TimeoutError):
            await wait_for(wf, "r", lambda run: run.object.count == 5, timeout=0.05)


async def test_await_timeout_insert(clock: FakeClock, registry: CollectorRegistry) -> None:
    async def expired(run: Run[Obj, Status], now: datetime) -> Status:
        return await step(run)

    b = Builder[Obj, Status]("timers")
    b.add_timeout(Status.STARTED, duration_timer(timedelta(minutes=5)), expired, Status.DONE)
    wf = build(b, clock, registry)
    async with wf:
        rid = await wf.trigger("t")
        await await_timeout_insert(wf, "t", rid, Status.STARTED)
        clock.step(timedelta(minutes=5))
        run = await wf.await_("t", rid, Status.DONE, timeout=5)
    assert run.object.note == "stepped"
    bare = Builder[Obj, Status]("no timers")
    bare.add_step(Status.STARTED, step, Status.DONE)
    plain = bare.build(
        wf._engine.streamer, wf._engine.store, wf._engine.roles, metrics_registry=registry
    )
    with pytest.raises(ValueError, match="timeout store"):
        await await_timeout_insert(plain, "t", rid, Status.STARTED)
