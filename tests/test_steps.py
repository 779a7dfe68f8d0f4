"""Steps: results, errors, pause-after-errors, sharding, lag and graceful stop."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from prometheus_client import CollectorRegistry
from pydantic import Field

from workflow import Builder, NonRetryableError, Run, RunState, State
from workflow._process import shard_of
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, require, wait_for

from .support import Obj, Status, build


async def test_three_steps_each_version_once(clock: FakeClock, registry: CollectorRegistry) -> None:
    def plain_step(run: Run[Obj, Status]) -> Status:  # a plain def runs in a thread
        run.object.note += "b"
        return Status.DONE

    async def a(run: Run[Obj, Status]) -> Status:
        run.object = Obj(count=run.object.count + 1, note="a")  # assignment is stored too
        return Status.MIDDLE

    b = Builder[Obj, Status]("steps")
    b.add_step(Status.STARTED, a, Status.MIDDLE)
    b.add_step(Status.MIDDLE, plain_step, Status.DONE)
    store = MemRecordStore()
    wf = build(b, clock, registry, store=store)
    async with wf:
        rid = await wf.trigger("s")
        await require(wf, "s", Status.MIDDLE, Obj(count=1, note="a"))
        await require(wf, "s", Status.DONE, Obj(count=1, note="ab"))
    history = await store.history(rid)
    assert [(r.meta.version, r.status, r.run_state) for r in history] == [
        (1, 1, RunState.INITIATED),
        (2, 2, RunState.RUNNING),
        (3, 3, RunState.COMPLETED),
    ]
    assert history[-1].meta.status_description == "DONE"


async def test_skip_stores_nothing(clock: FakeClock, registry: CollectorRegistry) -> None:
    seen, seen2 = asyncio.Event(), asyncio.Event()

    async def skipper(run: Run[Obj, Status]) -> None:
        seen.set()
        return None

    async def skipper2(run: Run[Obj, Status]) -> object:
        seen2.set()
        return run.skip()

    b = Builder[Obj, Status]("skip")
    b.add_step(Status.STARTED, skipper, Status.MIDDLE)
    b.add_step(Status.MIDDLE, skipper2, Status.DONE)
    store = MemRecordStore()
    wf = build(b, clock, registry, store=store)
    async with wf:
        rid = await wf.trigger("k")
        rid2 = await wf.trigger("k2", Status.MIDDLE)
        await asyncio.wait_for(seen.wait(), 5)
        await asyncio.wait_for(seen2.wait(), 5)
    assert [r.meta.version for r in await store.history(rid)] == [1]
    assert [r.meta.version for r in await store.history(rid2)] == [1]


async def test_save_and_repeat(clock: FakeClock, registry: CollectorRegistry) -> None:
    class Custom(Obj):
        collection: list[str] = Field(default_factory=list)

    async def repeat(run: Run[Custom, Status]) -> object:
        run.object.count += 1
        run.object.collection.append(f"item-{run.object.count}")
        return run.save_and_repeat() if run.object.count < 100 else Status.DONE

    b = Builder[Custom, Status]("repeat")
    b.add_step(Status.STARTED, repeat, Status.DONE)
    wf = b.build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
    )
    async with wf:
        await wf.trigger("custom-save-and-repeat")
        await require(
            wf,
            "custom-save-and-repeat",
            Status.DONE,
            Custom(count=100, collection=[f"item-{i}" for i in range(1, 101)]),
        )


async def test_undeclared_transition_is_an_error_and_changes_nothing(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    calls = 0

    async def wrong(run: Run[Obj, Status]) -> Status:
        nonlocal calls
        calls += 1
        run.object.count = 99
        return Status.OTHER_END  # only MIDDLE is declared

    b = Builder[Obj, Status]("undeclared")
    b.add_step(Status.STARTED, wrong, Status.MIDDLE).with_options(
        pause_after_err_count=2, err_backoff=0
    )
    store = MemRecordStore()
    wf = build(b, clock, registry, store=store)
    async with wf:
        rid = await wf.trigger("u")
        await wait_for(wf, "u", lambda r: r.run_state is RunState.PAUSED)
    assert calls == 2
    history = await store.history(rid)
    # version 2 schedules the retry (attempt 2); the second failure pauses the run
    assert [(r.status, r.run_state, r.meta.attempt) for r in history] == [
        (1, RunState.INITIATED, 1),
        (1, RunState.INITIATED, 2),
        (1, RunState.PAUSED, 2),
    ]
    assert history[-1].object == history[0].object  # the step's change was not stored
    assert "automatically paused" in history[-1].meta.run_state_reason
    assert "InvalidTransitionError" in history[-1].meta.run_state_reason


async def test_pause_after_errors_then_resume_completes(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    calls = 0

    async def flaky(run: Run[Obj, Status]) -> Status:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"boom {calls}")  # a different message each time still counts
        return Status.DONE

    b = Builder[Obj, Status]("flaky")
    b.add_step(Status.STARTED, flaky, Status.DONE).with_options(
        pause_after_err_count=3, err_backoff=0
    )
    wf = build(b, clock, registry, pause_retry=None)
    async with wf:
        rid = await wf.trigger("f")
        paused = await wait_for(wf, "f", lambda r: r.run_state is RunState.PAUSED)
        assert calls == 3
        assert "3 errors" in paused.meta.run_state_reason
        await wf.resume(rid)
        run = await wf.await_("f", rid, Status.DONE, timeout=5)
    assert calls == 4 and run.run_state is RunState.COMPLETED


async def test_error_count_is_consecutive(clock: FakeClock, registry: CollectorRegistry) -> None:
    """Errors, a success (save_and_repeat), errors again: never 3 in a row, never paused."""
    script = ["err", "err", "repeat", "err", "err", "repeat", "err", "err", "done"]
    calls = 0

    async def step(run: Run[Obj, Status]) -> object:
        nonlocal calls
        action = script[calls]
        calls += 1
        if action == "err":
            raise RuntimeError("boom")
        return run.save_and_repeat() if action == "repeat" else Status.DONE

    b = Builder[Obj, Status]("consecutive")
    b.add_step(Status.STARTED, step, Status.DONE).with_options(
        pause_after_err_count=3, err_backoff=0
    )
    store = MemRecordStore()
    wf = build(b, clock, registry, store=store)
    async with wf:
        rid = await wf.trigger("c")
        await wf.await_("c", rid, Status.DONE, timeout=5)
    assert calls == len(script)
    assert RunState.PAUSED not in [r.run_state for r in await store.history(rid)]
    assert len(wf._engine.error_counter) == 0  # type: ignore[arg-type]  # nothing kept per run


async def test_non_retryable_error_pauses_at_once(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def refuse(run: Run[Obj, Status]) -> Status:
        raise NonRetryableError("card declined: do not retry")

    b = Builder[Obj, Status]("nonretry")
    b.add_step(Status.STARTED, refuse, Status.DONE)
    wf = build(b, clock, registry)
    async with wf:
        await wf.trigger("n")
        run = await wait_for(wf, "n", lambda r: r.run_state is RunState.PAUSED)
    assert run.meta.run_state_reason == "card declined: do not retry"


async def test_error_backoff_waits_on_the_clock(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    calls = 0

    async def once_broken(run: Run[Obj, Status]) -> Status:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("transient")
        return Status.DONE

    b = Builder[Obj, Status]("backoff")
    b.add_step(Status.STARTED, once_broken, Status.DONE).with_options(err_backoff=30)
    wf = build(b, clock, registry)
    async with wf:
        rid = await wf.trigger("b")
        await clock.until_waiting()  # the consumer sleeps through its 30 s backoff
        assert calls == 1
        clock.step(29)
        # The backoff's wait on the clock is still pending (stepping resolves due waits at
        # once): nothing can retry the event before the 30 s are up.
        assert clock.waiting == 1
        scheduled = (await wf.lookup(rid)).meta
        assert scheduled.attempt == 2
        assert scheduled.retry_at == clock.now() + timedelta(seconds=1)
        clock.step(1)
        assert clock.waiting == 0
        await wf.await_("b", rid, Status.DONE, timeout=5)
    assert calls == 2
    errors = registry.get_sample_value(
        "workflow_process_error_count_total",
        {"workflow_name": "backoff", "process_name": "started-consumer-1-of-1"},
    )
    assert errors == 1


async def test_parallel_count_five_steps_each_of_1000_runs_once(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    calls: Counter[str] = Counter()

    async def step(run: Run[Obj, Status]) -> Status:
        calls[run.run_id] += 1
        return Status.DONE

    b = Builder[Obj, Status]("sharded")
    b.add_step(Status.STARTED, step, Status.DONE).with_options(parallel_count=5)
    wf = build(b, clock, registry)
    async with wf:
        ids = [await wf.trigger(f"entity-{i}") for i in range(1000)]
        for i, rid in enumerate(ids):
            await wf.await_(f"entity-{i}", rid, Status.DONE, timeout=10)
    assert len(calls) == 1000 and set(calls.values()) == {1}
    handled = {
        i: registry.get_sample_value(
            "workflow_process_latency_seconds_count",
            {"workflow_name": "sharded", "process_name": f"started-consumer-{i}-of-5"},
        )
        for i in range(1, 6)
    }
    expected = Counter(shard_of(f"entity-{i}", 5) + 1 for i in range(1000))
    assert handled == {i: float(expected[i]) for i in range(1, 6)}
    assert all(n > 100 for n in handled.values())  # every shard did its share


async def test_lag_holds_events_until_old_enough(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    class Watch(Obj):
        consumed_at: str = ""

    async def stamp(run: Run[Watch, Status]) -> Status:
        run.object.consumed_at = clock.now().isoformat()
        return Status.DONE

    b = Builder[Watch, Status]("lagged")
    b.add_step(Status.STARTED, stamp, Status.DONE).with_options(lag=timedelta(hours=1))
    wf = b.build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
    )
    t0 = clock.now()
    async with wf:
        rid = await wf.trigger("l")
        await clock.until_waiting()  # the consumer holds the event until it is an hour old
        clock.step(timedelta(minutes=59))
        assert clock.waiting == 1  # still held: nothing else can consume it
        assert (await wf.lookup(rid)).meta.version == 1
        clock.step(timedelta(minutes=1))
        run = await wf.await_("l", rid, Status.DONE, timeout=5)
    assert run.object.consumed_at == (t0 + timedelta(hours=1)).isoformat()


async def test_stop_while_a_step_runs_loses_nothing(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    streamer, store, roles = MemStreamer(clock), MemRecordStore(), MemRoleScheduler()
    entered = asyncio.Event()
    calls = 0

    async def slow(run: Run[Obj, Status]) -> Status:
        nonlocal calls
        calls += 1
        entered.set()
        if calls == 1:
            await asyncio.Event().wait()  # never finishes by itself
        return Status.DONE

    def make() -> Builder[Obj, Status]:
        b = Builder[Obj, Status]("stoppable")
        b.add_step(Status.STARTED, slow, Status.DONE)
        return b

    first = make().build(streamer, store, roles, clock=clock, metrics_registry=registry)
    await first.run()
    rid = await first.trigger("s")
    await asyncio.wait_for(entered.wait(), 5)
    await first.stop(grace=0.05)  # the step is cancelled after the grace period
    assert (await store.lookup(rid)).meta.version == 1  # nothing half-written
    second = make().build(streamer, store, roles, clock=clock, metrics_registry=registry)
    async with second:
        run = await second.await_("s", rid, Status.DONE, timeout=5)
    assert calls == 2 and run.meta.version == 2


async def test_graceful_stop_lets_the_step_in_hand_finish(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """stop(grace) waits for the event in hand: the step, still busy when the stop is asked
    for, is neither cancelled nor cut short, and its result is stored."""
    entered = asyncio.Event()
    cancelled = False

    async def slow(run: Run[Obj, Status]) -> Status:
        nonlocal cancelled
        entered.set()
        try:
            # Busy until the test moves the clock, which it does only once the stop has
            # been asked for: a stop that does not wait cancels the step here.
            await clock.sleep_until(clock.now() + timedelta(minutes=1))
        except asyncio.CancelledError:
            cancelled = True
            raise
        return Status.DONE

    b = Builder[Obj, Status]("graceful")
    b.add_step(Status.STARTED, slow, Status.DONE)
    store = MemRecordStore()
    wf = build(b, clock, registry, store=store)
    await wf.run()
    rid = await wf.trigger("g")
    await asyncio.wait_for(entered.wait(), 5)
    await clock.until_waiting()
    stopping = asyncio.create_task(wf.stop(grace=10))
    # Let every ready task run (the stop cancels the idle processes meanwhile): a stop that
    # does not wait has cancelled the step and returned long before this loop ends.
    for _ in range(100):
        await asyncio.sleep(0)
    assert not stopping.done(), "stop() returned while the step was still in hand"
    assert not cancelled
    clock.step(timedelta(minutes=1))
    await asyncio.wait_for(stopping, 5)
    assert not cancelled
    assert (await store.lookup(rid)).run_state is RunState.COMPLETED
    assert set(wf.states().values()) == {State.SHUTDOWN}
