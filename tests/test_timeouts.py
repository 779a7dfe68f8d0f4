"""Timeouts: timers armed when a run reaches a status, fired on the FakeClock (luno
TestTimeout, inventory §4.10) with luno's bugs 4-7 (§8.1) fixed."""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from workflow import Builder, Run, RunState, Workflow, duration_timer
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.adapters.memtimeoutstore import MemTimeoutStore
from workflow.testing import FakeClock, await_timeout_insert, wait_for

EXPECTED_USER_ID = 984892374983743
HOUR = timedelta(hours=1)


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    WAITING = 2
    MOVED_ON = 3
    TIMED_OUT = 4
    TIMED_OUT_LATE = 5


class User(BaseModel):
    user_id: int = 0
    handled_by: str = ""


async def to_waiting(run: Run[User, Status]) -> Status:
    return Status.WAITING


class WatchedTimeoutStore(MemTimeoutStore):
    """The memory timeout store, waking the test on every change and every poll (a
    ``list_valid`` call: the poller looking for expired timers)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.polls = 0
        self._changed = asyncio.Event()

    async def create(self, *args: Any, **kwargs: Any) -> int:
        tid = await super().create(*args, **kwargs)
        self._changed.set()
        return tid

    async def complete(self, id: int) -> None:
        await super().complete(id)
        self._changed.set()

    async def cancel(self, id: int) -> None:
        await super().cancel(id)
        self._changed.set()

    async def list_valid(self, workflow_name: str, status: int, now: datetime) -> list[Any]:
        self.polls += 1
        self._changed.set()
        return await super().list_valid(workflow_name, status, now)

    async def until(self, cond: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                if await cond():
                    return
                await self._changed.wait()

    async def polled(self, n: int = 3) -> None:
        """Wait until the poller has looked for expired timers ``n`` more times."""
        target = self.polls + n

        async def enough() -> bool:
            return self.polls >= target

        await self.until(enough)


async def armed(wf: Workflow[Any, Any], run_id: str) -> list[Any]:
    """The run's live (not completed, not cancelled) timers."""
    assert wf._engine.timeout_store is not None
    return [t for t in await wf._engine.timeout_store.list(wf.name) if t.run_id == run_id]


async def until_timers(wf: Workflow[Any, Any], run_id: str, n: int) -> None:
    async def count() -> bool:
        return len(await armed(wf, run_id)) == n

    await watched(wf).until(count)


def watched(wf: Workflow[Any, Any]) -> WatchedTimeoutStore:
    store = wf._engine.timeout_store
    assert isinstance(store, WatchedTimeoutStore)
    return store


def builder(
    timers: list[tuple[Any, Any, Status]],
    *,
    callback: bool = False,
    **options: Any,
) -> Builder[User, Status]:
    b = Builder[User, Status]("user sign up")
    b.add_step(Status.STARTED, to_waiting, Status.WAITING)
    for timer_fn, timeout_fn, dest in timers:
        h = b.add_timeout(Status.WAITING, timer_fn, timeout_fn, dest)
    if options:
        h.with_options(**options)
    if callback:

        async def move_on(run: Run[User, Status], payload: bytes) -> Status:
            return Status.MOVED_ON

        b.add_callback(Status.WAITING, move_on, Status.MOVED_ON)
    return b


def build(
    b: Builder[User, Status], clock: FakeClock, registry: Any, **kw: Any
) -> Workflow[User, Status]:
    return b.build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        timeout_store=WatchedTimeoutStore(clock),
        clock=clock,
        metrics_registry=registry,
        **kw,
    )


class Calls:
    """A timeout handler that records each call (run id) and returns ``result``."""

    def __init__(self, result: Any = Status.TIMED_OUT, name: str = "") -> None:
        self.result = result
        self.name = name
        self.run_ids: list[str] = []

    async def __call__(self, run: Run[User, Status], now: datetime) -> Any:
        self.run_ids.append(run.run_id)
        run.object.handled_by = self.name
        if callable(self.result):
            return self.result(run)
        return self.result


async def test_timeout_moves_the_run_only_once_the_clock_passes_expiry(clock, registry):
    async def set_user(run: Run[User, Status], now: datetime) -> Status:
        assert now == clock.now()
        run.object.user_id = EXPECTED_USER_ID
        return Status.TIMED_OUT

    wf = build(builder([(duration_timer(HOUR), set_user, Status.TIMED_OUT)]), clock, registry)
    async with wf:
        run_id = await wf.trigger("example")
        await await_timeout_insert(wf, "example", run_id, Status.WAITING, timeout=5)
        [timer] = await armed(wf, run_id)
        assert timer.expire_at == clock.now() + HOUR
        await clock.until_waiting()  # the poller sleeps on the clock until the expiry
        clock.step(HOUR - timedelta(seconds=1))
        assert clock.waiting == 1  # a second early: its wait is still pending
        assert (await wf.lookup(run_id)).status is Status.WAITING
        clock.step(timedelta(seconds=1))
        run = await wf.await_("example", run_id, Status.TIMED_OUT, timeout=5)
        assert run.object.user_id == EXPECTED_USER_ID
        assert run.run_state is RunState.COMPLETED


async def test_timeout_fires_exactly_when_expire_at_is_reached(clock, registry):
    handler = Calls()
    b = builder([(duration_timer(HOUR), handler, Status.TIMED_OUT)], polling_frequency=0.01)
    wf = build(b, clock, registry)
    async with wf:
        run_id = await wf.trigger("exact")
        await await_timeout_insert(wf, "exact", run_id, Status.WAITING, timeout=5)
        clock.step(timedelta(minutes=59, seconds=59))
        await watched(wf).polled()  # three chances to fire too early
        assert handler.run_ids == []
        assert (await wf.lookup(run_id)).status is Status.WAITING
        clock.step(timedelta(seconds=1))
        await wf.await_("exact", run_id, Status.TIMED_OUT, timeout=5)
        assert handler.run_ids == [run_id]


async def test_timer_returning_none_arms_nothing(clock, registry):
    def no_timer(run: Run[User, Status], now: datetime) -> None:
        return None

    never, late = Calls(name="never"), Calls(Status.TIMED_OUT_LATE, name="late")
    b = builder(
        [
            (no_timer, never, Status.TIMED_OUT),
            (duration_timer(2 * HOUR), late, Status.TIMED_OUT_LATE),
        ]
    )
    wf = build(b, clock, registry)
    async with wf:
        run_id = await wf.trigger("none")
        await await_timeout_insert(wf, "none", run_id, Status.WAITING, timeout=5)
        # Both timers were evaluated together: only the second one armed a timer.
        [timer] = await armed(wf, run_id)
        assert timer.expire_at == clock.now() + 2 * HOUR
        clock.step(2 * HOUR)
        run = await wf.await_("none", run_id, Status.TIMED_OUT_LATE, timeout=5)
        assert run.object.handled_by == "late"
        assert never.run_ids == []


async def test_two_timeouts_on_one_status_are_paired_with_their_handlers(clock, registry):
    # luno bug 4: every handler of the status ran against any expired timer.
    a, b_ = Calls(Status.TIMED_OUT, name="A"), Calls(Status.TIMED_OUT_LATE, name="B")
    b = builder(
        [
            (duration_timer(HOUR), a, Status.TIMED_OUT),
            (duration_timer(2 * HOUR), b_, Status.TIMED_OUT_LATE),
        ]
    )
    wf = build(b, clock, registry)
    async with wf:
        run_id = await wf.trigger("paired")
        await await_timeout_insert(wf, "paired", run_id, Status.WAITING, timeout=5)
        await until_timers(wf, run_id, 2)
        clock.step(HOUR)
        run = await wf.await_("paired", run_id, Status.TIMED_OUT, timeout=5)
        assert run.object.handled_by == "A"
        assert a.run_ids == [run_id]
        assert b_.run_ids == []
        # B's timer belongs to a run that has finished: it is dropped when it expires.
        clock.step(HOUR)
        await until_timers(wf, run_id, 0)
        assert b_.run_ids == []
        assert (await wf.lookup(run_id)).status is Status.TIMED_OUT


async def test_skip_completes_the_timer_and_the_other_timer_still_fires(clock, registry):
    # luno bug 5: a handler returning skip left its timer live and ran again every poll.
    skipper = Calls(lambda run: run.skip(), name="A")
    late = Calls(Status.TIMED_OUT_LATE, name="B")
    b = builder(
        [
            (duration_timer(HOUR), skipper, Status.TIMED_OUT),
            (duration_timer(2 * HOUR), late, Status.TIMED_OUT_LATE),
        ],
        polling_frequency=0.01,
    )
    wf = build(b, clock, registry)
    async with wf:
        run_id = await wf.trigger("skip")
        await await_timeout_insert(wf, "skip", run_id, Status.WAITING, timeout=5)
        await until_timers(wf, run_id, 2)
        clock.step(HOUR)
        await until_timers(wf, run_id, 1)  # A's timer is done; B's remains
        assert skipper.run_ids == [run_id]
        assert late.run_ids == []
        assert (await wf.lookup(run_id)).status is Status.WAITING  # skip stored nothing
        await watched(wf).polled()
        assert skipper.run_ids == [run_id]  # not re-run by the polls since
        clock.step(HOUR)
        run = await wf.await_("skip", run_id, Status.TIMED_OUT_LATE, timeout=5)
        assert run.object.handled_by == "B"
        assert skipper.run_ids == [run_id]
        assert late.run_ids == [run_id]


async def test_failing_handler_is_retried_after_backoff_then_pauses_the_run(clock, registry):
    # luno bug 6: handler errors were swallowed and re-run at the next poll, no backoff.
    calls: list[datetime] = []
    called = asyncio.Event()

    async def failing(run: Run[User, Status], now: datetime) -> Status:
        calls.append(now)
        called.set()
        raise RuntimeError("downstream unavailable")

    b = builder(
        [(duration_timer(HOUR), failing, Status.TIMED_OUT)],
        err_backoff=timedelta(minutes=1),
        pause_after_err_count=2,
        polling_frequency=0.01,
    )
    wf = build(b, clock, registry)
    async with wf:
        run_id = await wf.trigger("failing")
        await await_timeout_insert(wf, "failing", run_id, Status.WAITING, timeout=5)
        clock.step(HOUR)
        await asyncio.wait_for(called.wait(), 5)

        def paused(r: Run[User, Status]) -> bool:
            return r.run_state is RunState.PAUSED

        clock.step(timedelta(seconds=59))
        await watched(wf).polled()  # the timer is due, but its backoff has not elapsed
        assert len(calls) == 1  # not retried while the backoff has not elapsed
        assert (await wf.lookup(run_id)).run_state is RunState.RUNNING
        clock.step(timedelta(seconds=1))
        run = await wait_for(wf, "failing", paused, timeout=5)
        assert len(calls) == 2
        assert calls[1] - calls[0] == timedelta(minutes=1)
        assert run.status is Status.WAITING
        assert "threshold" in run.meta.run_state_reason
        assert "downstream unavailable" in run.meta.run_state_reason


async def test_timer_of_a_finished_run_does_not_fire_on_a_newer_run(clock, registry):
    # luno bug 7: the poller looked the run up by foreign id, so the old run's timer fired
    # on the newer run of the same foreign id at the same status.
    handler = Calls()
    wf = build(builder([(duration_timer(HOUR), handler, Status.TIMED_OUT)]), clock, registry)
    async with wf:
        first = await wf.trigger("reused")
        await await_timeout_insert(wf, "reused", first, Status.WAITING, timeout=5)
        await wf.cancel(first, "superseded")
        clock.step(timedelta(minutes=30))
        second = await wf.trigger("reused")
        await await_timeout_insert(wf, "reused", second, Status.WAITING, timeout=5)
        clock.step(timedelta(minutes=30))  # the first run's timer expires
        await until_timers(wf, first, 0)
        assert handler.run_ids == []
        assert (await wf.lookup(second)).status is Status.WAITING
        clock.step(timedelta(minutes=30))  # the second run's own timer expires
        await wf.await_("reused", second, Status.TIMED_OUT, timeout=5)
        assert handler.run_ids == [second]
        assert (await wf.lookup(first)).run_state is RunState.CANCELLED


async def test_paused_run_timer_waits_for_resume(clock, registry):
    handler = Calls()
    b = builder([(duration_timer(HOUR), handler, Status.TIMED_OUT)], polling_frequency=0.01)
    wf = build(b, clock, registry, pause_retry=None)  # no automatic resume: only ours
    async with wf:
        run_id = await wf.trigger("paused")
        await await_timeout_insert(wf, "paused", run_id, Status.WAITING, timeout=5)
        await wf.pause(run_id, "hold on")
        clock.step(HOUR)
        await watched(wf).polled()  # the expired timer of the paused run is left alone
        assert handler.run_ids == []
        assert (await wf.lookup(run_id)).run_state is RunState.PAUSED
        await wf.resume(run_id)
        await wf.await_("paused", run_id, Status.TIMED_OUT, timeout=5)
        assert handler.run_ids == [run_id]


async def test_run_that_moved_on_before_expiry_never_runs_the_handler(clock, registry):
    handler = Calls()
    b = builder([(duration_timer(HOUR), handler, Status.TIMED_OUT)], callback=True)
    wf = build(b, clock, registry)
    async with wf:
        run_id = await wf.trigger("moved")
        await await_timeout_insert(wf, "moved", run_id, Status.WAITING, timeout=5)
        assert await wf.callback("moved", Status.WAITING)
        await wf.await_("moved", run_id, Status.MOVED_ON, timeout=5)
        clock.step(HOUR)
        await until_timers(wf, run_id, 0)  # expired, found stale, cancelled
        assert handler.run_ids == []
        assert (await wf.lookup(run_id)).status is Status.MOVED_ON


async def test_timer_returning_a_naive_datetime_is_an_error(clock, registry):
    def naive(run: Run[User, Status], now: datetime) -> datetime:
        return (now + HOUR).replace(tzinfo=None)

    handler = Calls()
    b = builder([(naive, handler, Status.TIMED_OUT)], pause_after_err_count=1)
    wf = build(b, clock, registry)
    async with wf:
        run_id = await wf.trigger("naive")

        def paused(r: Run[User, Status]) -> bool:
            return r.run_state is RunState.PAUSED

        run = await wait_for(wf, "naive", paused, timeout=5)
        assert run.run_id == run_id
        assert run.status is Status.WAITING
        assert "timezone" in run.meta.run_state_reason
        assert await armed(wf, run_id) == []
        assert handler.run_ids == []


@pytest.mark.parametrize("option", [{"parallel_count": 2}, {"lag": timedelta(minutes=1)}])
def test_timeouts_refuse_parallel_count_and_lag(option):
    b = Builder[User, Status]("refuse")
    handle = b.add_timeout(Status.WAITING, duration_timer(HOUR), Calls(), Status.TIMED_OUT)
    with pytest.raises(ValueError):
        handle.with_options(**option)
    handle.with_options(err_backoff=timedelta(seconds=5), pause_after_err_count=2)  # allowed


def test_build_with_timeouts_but_no_timeout_store_is_a_value_error(registry):
    b = builder([(duration_timer(HOUR), Calls(), Status.TIMED_OUT)])
    with pytest.raises(ValueError, match="timeout store"):
        b.build(MemStreamer(), MemRecordStore(), MemRoleScheduler(), metrics_registry=registry)


async def test_armed_timer_survives_a_restart(clock, registry):
    b = builder([(duration_timer(HOUR), Calls(), Status.TIMED_OUT)])
    adapters = (MemStreamer(clock), MemRecordStore(), MemRoleScheduler())
    timeouts = MemTimeoutStore(clock)

    def make() -> Workflow[User, Status]:
        return b.build(*adapters, timeout_store=timeouts, clock=clock, metrics_registry=registry)

    async with make() as wf:
        run_id = await wf.trigger("durable")
        await await_timeout_insert(wf, "durable", run_id, Status.WAITING, timeout=5)
    clock.step(HOUR)  # expires while nothing runs
    async with make() as again:
        await again.await_("durable", run_id, Status.TIMED_OUT, timeout=5)


async def test_a_failing_timer_does_not_hold_up_another(clock, registry):
    async def handler(run: Run[User, Status], now: datetime) -> Status:
        if run.foreign_id == "bad":
            raise RuntimeError("always fails")
        return Status.TIMED_OUT

    wf = build(builder([(duration_timer(HOUR), handler, Status.TIMED_OUT)]), clock, registry)
    async with wf:
        bad, good = await wf.trigger("bad"), await wf.trigger("good")
        for fid, run_id in (("bad", bad), ("good", good)):
            await await_timeout_insert(wf, fid, run_id, Status.WAITING, timeout=5)
        clock.step(HOUR)
        await wf.await_("good", good, Status.TIMED_OUT, timeout=5)
        assert (await wf.lookup(bad)).status is Status.WAITING
        assert len(await armed(wf, bad)) == 1  # kept for its retry


class ReusingTimeoutStore(WatchedTimeoutStore):
    """SQLite's plain INTEGER PRIMARY KEY (before migration 0004): a new timer's id is the
    largest stored id + 1. Its ``cancel_run`` lets another run arm a timer right after the
    removal, as that run's inserter may between the fired run's move and the poller's
    ``complete``: the new timer gets the removed id."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.other: int | None = None
        self.calls: list[tuple[str, int]] = []

    async def create(self, *args: Any, **kwargs: Any) -> int:
        self._ids = itertools.count(max(self._timeouts, default=0) + 1)
        return await super().create(*args, **kwargs)

    async def complete(self, id: int) -> None:
        self.calls.append(("complete", id))
        await super().complete(id)

    async def cancel(self, id: int) -> None:
        self.calls.append(("cancel", id))
        await super().cancel(id)

    async def cancel_run(self, workflow_name: str, run_id: str, status: int) -> None:
        await super().cancel_run(workflow_name, run_id, status)
        if self.other is None:
            expire = self._clock.now() + 10 * HOUR
            self.other = await self.create(workflow_name, "other", "other-run", status, expire)


def reusing(store: ReusingTimeoutStore, result: Any, registry: Any) -> Workflow[User, Status]:
    b = builder([(duration_timer(HOUR), Calls(result), Status.TIMED_OUT)], polling_frequency=0.01)
    return b.build(
        MemStreamer(store._clock),
        MemRecordStore(),
        MemRoleScheduler(),
        timeout_store=store,
        clock=store._clock,
        metrics_registry=registry,
    )


@pytest.mark.parametrize(
    "result", [Status.TIMED_OUT, lambda run: run.cancel("by the timeout")], ids=["move", "cancel"]
)
async def test_the_poller_leaves_alone_a_timer_that_the_runs_move_removed(
    result: Any, clock: FakeClock, registry: Any
) -> None:
    """Defence in depth: a timeout that moves (or cancels) its run has its timer removed by
    that write (``cancel_run``); the poller then neither completes nor cancels that id, so a
    store that hands the id to another run's new timer does not lose that timer."""
    store = ReusingTimeoutStore(clock)
    wf = reusing(store, result, registry)
    async with wf:
        run_id = await wf.trigger("fast")
        await await_timeout_insert(wf, "fast", run_id, Status.WAITING, timeout=5)
        [fired] = await armed(wf, run_id)
        clock.step(HOUR)
        await wait_for(wf, "fast", lambda r: r.run_state.finished, timeout=5)
        await store.polled()  # the poller is done with the timer it fired
    assert store.other == fired.id  # the store did reuse the id
    assert [t.run_id for t in await store.list(wf.name)] == ["other-run"]  # not completed
    assert ("complete", fired.id) not in store.calls
    assert ("cancel", fired.id) not in store.calls


@pytest.mark.parametrize(
    "result",
    [lambda run: run.skip(), lambda run: run.pause("by the timeout")],
    ids=["skip", "pause"],
)
async def test_a_timeout_that_keeps_its_run_at_the_status_completes_its_timer(
    result: Any, clock: FakeClock, registry: Any
) -> None:
    store = ReusingTimeoutStore(clock)
    wf = reusing(store, result, registry)
    async with wf:
        run_id = await wf.trigger("stays")
        await await_timeout_insert(wf, "stays", run_id, Status.WAITING, timeout=5)
        [fired] = await armed(wf, run_id)
        clock.step(HOUR)

        async def completed() -> bool:
            return ("complete", fired.id) in store.calls

        await store.until(completed)
        assert (await wf.lookup(run_id)).status is Status.WAITING
    assert await store.list(wf.name) == []
    assert store.other is None  # nothing removed the run's timers
