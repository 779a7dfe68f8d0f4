"""Schedules (luno schedule_test.go, inventory §4.13 / §7.5) driven by the FakeClock.

A tick is proven *not* to have triggered a run by a positive control: a later tick does
trigger one, and the store then holds exactly the runs expected (with their creation times).
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from workflow import Builder, RecordNotFoundError, Run, RunState, State, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, wait_for

MAY_1 = datetime(2023, 5, 1, tzinfo=UTC)
JUNE_1 = datetime(2023, 6, 1, tzinfo=UTC)
JULY_1 = datetime(2023, 7, 1, tzinfo=UTC)
T0 = datetime(2023, 4, 9, 8, 30, tzinfo=UTC)  # the clock fixture's start


class Status(enum.IntEnum):
    UNKNOWN = 0
    START = 9
    MIDDLE = 10
    END = 11


class User(BaseModel):
    user_id: int = 0
    email: str = ""


async def start(run: Run[User, Status]) -> Status:
    return Status.MIDDLE


async def middle(run: Run[User, Status]) -> Status:
    return Status.END


def builder(name: str = "sync users") -> Builder[User, Status]:
    b = Builder[User, Status](name)
    b.add_step(Status.START, start, Status.MIDDLE)
    b.add_step(Status.MIDDLE, middle, Status.END)
    return b


class Env:
    """Adapters shared by every Workflow object of one test (a restart, or a replica)."""

    def __init__(self, clock: FakeClock, registry: Any) -> None:
        self.clock = clock
        self.registry = registry
        self.streamer = MemStreamer(clock)
        self.store = MemRecordStore()
        self.roles = MemRoleScheduler()

    def build(self, b: Builder[User, Status] | None = None) -> Workflow[User, Status]:
        return (b or builder()).build(
            self.streamer,
            self.store,
            self.roles,
            clock=self.clock,
            metrics_registry=self.registry,
        )


class Asked:
    """Records the clock's time of each call of a schedule filter (plain or async, so from a
    worker thread too) and wakes whoever waits for a number of calls."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.times: list[datetime] = []
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()

    def add(self) -> None:
        self.times.append(self.clock.now())
        self.loop.call_soon_threadsafe(self.changed.set)

    async def reach(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.times) < n:
                self.changed.clear()
                await self.changed.wait()


async def scheduler_asleep(clock: FakeClock, n: int = 1) -> None:
    """Wait until the schedule process(es) sleep on the clock until their next tick (the
    steps here never wait on the clock, so these are the only waits)."""
    await clock.until_waiting(n, timeout=5)


async def runs(wf: Workflow[User, Status]) -> list[Run[User, Status]]:
    return await wf.list(limit=100)


async def next_run(wf: Workflow[User, Status], fid: str, after: str | None) -> Run[User, Status]:
    """Wait for a run of ``fid`` other than ``after`` to complete."""
    return await wait_for(
        wf, fid, lambda r: r.run_id != after and r.run_state is RunState.COMPLETED, timeout=5
    )


async def test_schedule_triggers_one_run_per_tick(clock, registry):
    wf = Env(clock, registry).build()
    wf.schedule("andrew", "@monthly")
    with pytest.raises(RecordNotFoundError):
        await wf.latest("andrew")
    async with wf:
        await scheduler_asleep(clock)
        with pytest.raises(RecordNotFoundError):
            await wf.latest("andrew")
        clock.set(MAY_1)
        first = await next_run(wf, "andrew", None)
        await wf.await_("andrew", first.run_id, Status.END, timeout=5)
        clock.set(JUNE_1)
        second = await next_run(wf, "andrew", first.run_id)
        assert [r.created_at for r in await runs(wf)] == [MAY_1, JUNE_1]
        assert second.object == User()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_filter_false_skips_the_tick(clock, registry, kind):
    answers = [False, True]
    asked = Asked(clock)

    def sync_filter() -> bool:
        asked.add()
        return answers[len(asked.times) - 1]

    async def async_filter() -> bool:
        return sync_filter()

    wf = Env(clock, registry).build()
    wf.schedule("andrew", "@monthly", filter=sync_filter if kind == "sync" else async_filter)
    async with wf:
        await scheduler_asleep(clock)
        clock.set(MAY_1)  # filter says no
        await asked.reach(1)
        await scheduler_asleep(clock)
        clock.set(JUNE_1)  # filter says yes
        await next_run(wf, "andrew", None)
        assert asked.times == [MAY_1, JUNE_1]
        assert [r.created_at for r in await runs(wf)] == [JUNE_1]


async def test_filter_error_retries_the_same_tick_after_the_backoff(clock, registry):
    # luno (HEAD) keeps the slot when the filter fails: the same tick is retried after the
    # error backoff instead of being dropped.
    asked = Asked(clock)

    def flaky_filter() -> bool:
        asked.add()
        if len(asked.times) == 1:
            raise RuntimeError("filter error")
        return True

    wf = Env(clock, registry).build()
    wf.schedule("error-test", "@monthly", filter=flaky_filter)
    async with wf:
        await scheduler_asleep(clock)
        clock.set(MAY_1)
        await asked.reach(1)
        await scheduler_asleep(clock)  # the error backoff (1 s by default)
        with pytest.raises(RecordNotFoundError):
            await wf.latest("error-test")
        clock.step(timedelta(seconds=1))  # ends the backoff (the clock wakes it at once)
        run = await next_run(wf, "error-test", None)
        await scheduler_asleep(clock)  # back to sleep, after handling the retried tick
        assert asked.times == [MAY_1, MAY_1 + timedelta(seconds=1)]
        assert run.created_at == MAY_1 + timedelta(seconds=1)


async def test_initial_value_is_used(clock, registry):
    seen: list[User] = []

    async def check(run: Run[User, Status]) -> Status:
        seen.append(run.object.model_copy())
        return Status.MIDDLE

    b = Builder[User, Status]("initial value test")
    b.add_step(Status.START, check, Status.MIDDLE)
    b.add_step(Status.MIDDLE, middle, Status.END)
    wf = Env(clock, registry).build(b)
    initial = User(user_id=123, email="test-email@example.com")
    wf.schedule("test", "@monthly", initial_value=initial)
    async with wf:
        await scheduler_asleep(clock)
        clock.set(MAY_1)
        run = await next_run(wf, "test", None)
        assert run.object == initial
        assert seen == [initial]


async def test_existing_completed_run_does_not_stop_the_tick(clock, registry):
    wf = Env(clock, registry).build()
    async with wf:
        first = await wf.trigger("existing-test")
        await wf.await_("existing-test", first, Status.END, timeout=5)
        wf.schedule("existing-test", "@monthly")  # registered while running
        await scheduler_asleep(clock)
        clock.set(MAY_1)
        second = await next_run(wf, "existing-test", first)
        assert second.created_at == MAY_1
        assert len(await runs(wf)) == 2


async def test_run_in_progress_at_the_tick_is_skipped_not_queued(clock, registry):
    async def wait_for_callback(run: Run[User, Status], payload: bytes) -> Status:
        return Status.END

    b = Builder[User, Status]("busy")
    b.add_callback(Status.START, wait_for_callback, Status.END)
    wf = Env(clock, registry).build(b)
    async with wf:
        busy = await wf.trigger("andrew")  # waits at START for a callback
        wf.schedule("andrew", "@monthly")
        await scheduler_asleep(clock)
        clock.set(MAY_1)  # wakes the scheduler for the tick...
        await scheduler_asleep(clock)  # ...which it handled: it sleeps until June
        assert [r.run_id for r in await runs(wf)] == [busy]
        assert await wf.callback("andrew", Status.START)  # the busy run completes
        await wf.await_("andrew", busy, Status.END, timeout=5)
        clock.set(JUNE_1)
        await wait_for(wf, "andrew", lambda r: r.run_id != busy, timeout=5)
        # Not queued: nothing was triggered when the busy run finished, only at June's tick.
        assert [r.created_at for r in await runs(wf)] == [T0, JUNE_1]


async def test_every_90s(clock, registry):
    t0 = clock.now()
    wf = Env(clock, registry).build()
    wf.schedule("andrew", "@every 90s")
    async with wf:
        await scheduler_asleep(clock)
        clock.step(timedelta(seconds=89))
        clock.step(timedelta(seconds=1))
        first = await next_run(wf, "andrew", None)
        await scheduler_asleep(clock)
        clock.step(timedelta(seconds=90))
        await next_run(wf, "andrew", first.run_id)
        assert [r.created_at for r in await runs(wf)] == [
            t0 + timedelta(seconds=90),
            t0 + timedelta(seconds=180),
        ]


@pytest.mark.parametrize("spec", ["", "@fortnightly", "* * *", "60 * * * *", "@every", "nope"])
async def test_bad_spec_raises_and_registers_nothing(clock, registry, spec):
    wf = Env(clock, registry).build()
    with pytest.raises(ValueError):
        wf.schedule("andrew", spec)
    wf.schedule("andrew", "@monthly")  # the same foreign id can still be scheduled
    async with wf:
        assert [n for n in wf.states() if "-scheduler-" in n] == ["andrew-scheduler-@monthly"]


async def test_stop_shuts_the_schedule_process_down(clock, registry):
    wf = Env(clock, registry).build()
    wf.schedule("andrew", "@monthly")
    assert wf.states() == {}
    await wf.run()
    await scheduler_asleep(clock)
    assert wf.states()["andrew-scheduler-@monthly"] in (State.RUNNING, State.IDLE)
    await wf.stop()
    states = wf.states()
    assert states["andrew-scheduler-@monthly"] is State.SHUTDOWN
    assert set(states.values()) == {State.SHUTDOWN}


async def test_small_clock_steps_across_a_tick_trigger_once(clock, registry):
    wf = Env(clock, registry).build()
    wf.schedule("andrew", "@monthly")
    async with wf:
        await scheduler_asleep(clock)
        clock.set(MAY_1 - timedelta(seconds=2))
        for _ in range(5):
            clock.step(timedelta(seconds=1))
            await asyncio.sleep(0)  # let the scheduler run between the steps
        first = await next_run(wf, "andrew", None)
        for _ in range(5):
            await scheduler_asleep(clock)
            clock.step(timedelta(seconds=1))
        await scheduler_asleep(clock)
        clock.set(JUNE_1)
        await next_run(wf, "andrew", first.run_id)
        runs_ = await runs(wf)
        assert len(runs_) == 2
        assert MAY_1 <= runs_[0].created_at <= MAY_1 + timedelta(seconds=3)
        assert runs_[1].created_at == JUNE_1


async def test_restart_does_not_trigger_an_already_triggered_tick(clock, registry):
    env = Env(clock, registry)
    wf = env.build()
    wf.schedule("andrew", "@monthly")
    async with wf:
        await scheduler_asleep(clock)
        clock.set(MAY_1)
        first = await next_run(wf, "andrew", None)
    clock.set(MAY_1 + timedelta(hours=6))
    again = env.build()  # a new Workflow object on the same store: a restart
    again.schedule("andrew", "@monthly")
    async with again:
        await scheduler_asleep(clock)
        clock.set(JUNE_1)
        await next_run(again, "andrew", first.run_id)
        assert [r.created_at for r in await runs(again)] == [MAY_1, JUNE_1]


async def test_two_replicas_trigger_once_per_tick(clock, registry):
    """Only the replica holding the schedule's role handles a tick: the filter is asked once
    per tick (a second scheduler would be refused by the atomic trigger only while the run is
    in progress, and asks the filter in any case)."""
    env = Env(clock, registry)
    asked = Asked(clock)

    async def count() -> bool:
        asked.add()
        return True

    one, two = env.build(), env.build()
    one.schedule("andrew", "@monthly", filter=count)
    two.schedule("andrew", "@monthly", filter=count)
    async with one, two:
        await scheduler_asleep(clock)  # only the role holder sleeps on the clock
        clock.set(MAY_1)
        first = await next_run(one, "andrew", None)
        await scheduler_asleep(clock)
        clock.set(JUNE_1)
        second = await next_run(one, "andrew", first.run_id)
        await scheduler_asleep(clock)
        clock.set(JULY_1)
        await next_run(one, "andrew", second.run_id)
        assert [r.created_at for r in await runs(one)] == [MAY_1, JUNE_1, JULY_1]
        assert clock.waiting == 1  # one scheduler asleep until August, the other has no role
    assert asked.times == [MAY_1, JUNE_1, JULY_1]
