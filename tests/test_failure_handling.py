"""Failure handling on every back end (memory, SQLite, PostgreSQL; Kafka in
test_kafka_e2e.py): a failing run delays no other run, retry policies (attempts, backoff,
what happens when they run out), pause reasons and what pause_retry resumes, retries that
survive a restart, timers from arrival, stranded runs and ``move``, idempotent triggers."""

from __future__ import annotations

import asyncio
import enum
import logging
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from workflow import (
    Builder,
    InvalidStatusError,
    NonRetryableError,
    PausedBy,
    RetryPolicy,
    Run,
    RunState,
    RunStateError,
    TypedRecord,
    duration_timer,
)
from workflow.abc import RecordHistory
from workflow.testing import await_timeout_insert, wait_for

from .backends import Backend


class Pay(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    CHARGED = 2
    FAILED = 3
    WAITING = 4
    DONE = 5
    TIMED_OUT = 6


class Payment(BaseModel):
    note: str = ""
    attempts: list[int] = []


HOUR = timedelta(hours=1)


class Charger:
    """A step whose behaviour per foreign id the test sets: "ok", "fail", "non-retryable",
    "missing" (a KeyError), "pause" (the step pauses its own run)."""

    def __init__(self, default: str = "ok") -> None:
        self.default = default
        self.mode: dict[str, str] = {}
        self.seen: dict[str, list[int]] = {}

    async def __call__(self, run: Run[Payment, Pay]) -> Any:
        self.seen.setdefault(run.foreign_id, []).append(run.attempt)
        mode = self.mode.get(run.foreign_id, self.default)
        if mode == "fail":
            raise ConnectionError(f"gateway down for {run.foreign_id}")
        if mode == "non-retryable":
            raise NonRetryableError("card declined")
        if mode == "missing":
            raise KeyError("no such card")
        if mode == "pause":
            return run.pause("waiting for the bank")
        run.object.attempts.append(run.attempt)
        return Pay.CHARGED


def payments(charger: Charger, name: str = "payments", **options: Any) -> Builder[Payment, Pay]:
    b = Builder[Payment, Pay](name)
    b.add_step(Pay.STARTED, charger, Pay.CHARGED, Pay.FAILED).with_options(**options)
    return b


def is_retrying(attempt: int) -> Any:
    return lambda r: r.meta.attempt == attempt and r.meta.retry_at is not None


# -- isolation ---------------------------------------------------------------------------


async def test_a_failing_run_delays_no_other_run(backend: Backend) -> None:
    charger = Charger()
    charger.mode["poison"] = "fail"
    wf = backend.build(payments(charger), pause_retry=None)  # concurrency=1, 1 s retries
    async with wf:
        poison = await wf.trigger("poison")
        await wait_for(wf, "poison", is_retrying(2), timeout=10)
        ids = {f"ok-{i}": await wf.trigger(f"ok-{i}") for i in range(20)}
        # the clock never moves: before, the consumer sat in the poison run's backoff
        for fid, rid in ids.items():
            await wf.await_(fid, rid, Pay.CHARGED, timeout=10)
        assert charger.seen["poison"] == [1]
        scheduled = await wf.lookup(poison)
        assert scheduled.meta.retry_at == backend.clock.now() + timedelta(seconds=1)
        charger.mode["poison"] = "ok"
        backend.clock.step(timedelta(seconds=1))
        done = await wf.await_("poison", poison, Pay.CHARGED, timeout=10)
    assert done.object.attempts == [2] and done.meta.attempt == 1
    assert done.meta.retry_at is None


# -- retry policies ----------------------------------------------------------------------


async def test_a_policy_backs_off_then_moves_to_its_failure_status(backend: Backend) -> None:
    charger = Charger("fail")
    policy = RetryPolicy(
        max_attempts=3,
        initial_backoff=timedelta(seconds=10),
        backoff_coefficient=2.0,
        on_exhausted=Pay.FAILED,
    )
    wf = backend.build(payments(charger, retry=policy), pause_retry=None)
    t0 = backend.clock.now()
    async with wf:
        rid = await wf.trigger("p")
        first = await wait_for(wf, "p", is_retrying(2), timeout=10)
        assert first.meta.retry_at == t0 + timedelta(seconds=10)
        backend.clock.step(timedelta(seconds=10))
        second = await wait_for(wf, "p", is_retrying(3), timeout=10)
        assert second.meta.retry_at == t0 + timedelta(seconds=30)  # 10 s, then 20 s
        backend.clock.step(timedelta(seconds=19))
        await asyncio.sleep(0.05)
        assert charger.seen["p"] == [1, 2]  # not before its due time
        backend.clock.step(timedelta(seconds=1))
        failed = await wf.await_("p", rid, Pay.FAILED, timeout=10)
    assert charger.seen["p"] == [1, 2, 3]
    assert failed.run_state is RunState.COMPLETED  # FAILED is terminal here
    assert failed.meta.attempt == 1 and failed.meta.retry_at is None
    assert "3 errors" in failed.meta.run_state_reason
    assert "gateway down" in failed.meta.run_state_reason
    exhausted = backend.registry.get_sample_value(
        "workflow_retries_exhausted_total",
        {"workflow_name": "payments", "process_name": "started-retry-consumer", "action": "FAILED"},
    )
    assert exhausted == 1


async def test_a_non_retryable_type_gives_up_at_once(backend: Backend) -> None:
    charger = Charger("missing")
    policy = RetryPolicy(max_attempts=5, non_retryable=(KeyError,), on_exhausted="cancel")
    wf = backend.build(payments(charger, retry=policy), pause_retry=None)
    async with wf:
        await wf.trigger("k")
        cancelled = await wait_for(wf, "k", lambda r: r.run_state is RunState.CANCELLED)
    assert charger.seen["k"] == [1]
    assert "no such card" in cancelled.meta.run_state_reason


async def test_a_retry_survives_a_restart(backend: Backend) -> None:
    charger = Charger("fail")
    b = payments(charger, retry=RetryPolicy(initial_backoff=timedelta(minutes=1)))
    first = backend.build(b, pause_retry=None)
    async with first:
        rid = await first.trigger("r")
        await wait_for(first, "r", is_retrying(2), timeout=10)
    charger.mode["r"] = "ok"
    backend.clock.step(timedelta(minutes=1))
    second = backend.build(b, pause_retry=None)  # another process: nothing in memory
    async with second:
        done = await second.await_("r", rid, Pay.CHARGED, timeout=10)
    assert charger.seen["r"] == [1, 2] and done.object.attempts == [2]


# -- pauses ------------------------------------------------------------------------------


async def test_pauses_say_why_and_pause_retry_resumes_only_some(backend: Backend) -> None:
    charger = Charger()
    charger.mode.update(
        {"exhausted": "fail", "declined": "non-retryable", "self": "pause", "held": "ok"}
    )
    hooked: dict[str, str] = {}

    async def on_pause(record: TypedRecord[Payment, Pay]) -> None:
        hooked[record.foreign_id] = record.meta.paused_by

    b = payments(charger, retry=RetryPolicy(max_attempts=2, initial_backoff=0))
    b.add_callback(Pay.WAITING, lambda run, payload: Pay.DONE, Pay.DONE)
    b.on_pause(on_pause)
    wf = backend.build(b)  # pause_retry: one hour
    async with wf:
        ids = {fid: await wf.trigger(fid) for fid in ("exhausted", "declined", "self")}
        ids["held"] = await wf.trigger("held", Pay.WAITING)
        await wf.pause(ids["held"], "looking into it")
        paused = {
            fid: await wait_for(wf, fid, lambda r: r.run_state is RunState.PAUSED) for fid in ids
        }
        assert {fid: r.meta.paused_by for fid, r in paused.items()} == {
            "exhausted": PausedBy.RETRIES_EXHAUSTED,
            "declined": PausedBy.NON_RETRYABLE,
            "self": PausedBy.STEP,
            "held": PausedBy.OPERATOR,
        }
        assert paused["exhausted"].meta.attempt == 2  # the attempts it took
        for fid in ids:
            await wait_for(wf, fid, lambda r, fid=fid: fid in hooked, timeout=10)
        assert hooked == {fid: r.meta.paused_by for fid, r in paused.items()}
        charger.mode.update({"exhausted": "ok", "self": "ok", "declined": "ok"})
        backend.clock.step(HOUR)
        for fid in ("exhausted", "self"):
            await wf.await_(fid, ids[fid], Pay.CHARGED, timeout=10)
        await asyncio.sleep(0.2)
        for fid in ("declined", "held"):
            still = await wf.lookup(ids[fid])
            assert still.run_state is RunState.PAUSED, fid
    assert charger.seen["exhausted"] == [1, 2, 1]  # resumed with a fresh set of attempts
    assert charger.seen["declined"] == [1]


# -- timers ------------------------------------------------------------------------------


async def test_timers_count_from_arrival_and_go_when_the_run_leaves(backend: Backend) -> None:
    b = Builder[Payment, Pay]("timers")
    b.add_timeout(Pay.WAITING, duration_timer(HOUR), lambda run, now: Pay.TIMED_OUT, Pay.TIMED_OUT)
    b.add_callback(Pay.WAITING, lambda run, payload: Pay.DONE, Pay.DONE)
    wf = backend.build(b, pause_retry=None)
    store = wf._engine.timeout_store
    assert store is not None
    arrived = backend.clock.now()
    late = await wf.trigger("late", Pay.WAITING)  # nobody consumes it yet
    backend.clock.step(timedelta(minutes=30))  # a consumer lagging by 30 minutes
    async with wf:
        await await_timeout_insert(wf, "late", late, Pay.WAITING, timeout=10)
        timers = [t for t in await store.list("timers") if t.run_id == late]
        assert [t.expire_at for t in timers] == [arrived + HOUR]  # not now + 1 h
        leaver = await wf.trigger("leaver", Pay.WAITING)
        await await_timeout_insert(wf, "leaver", leaver, Pay.WAITING, timeout=10)
        assert await wf.callback("leaver", Pay.WAITING)
        assert [t for t in await store.list("timers") if t.run_id == leaver] == []
        backend.clock.step(timedelta(minutes=30))
        await wf.await_("late", late, Pay.TIMED_OUT, timeout=10)


# -- changed workflows -------------------------------------------------------------------


class Old(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    CHARGED = 2
    LEGACY_REVIEW = 7


async def test_stranded_runs_are_reported_and_moved(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    old = Builder[Payment, Old]("evolving")
    old.add_step(Old.LEGACY_REVIEW, lambda run: Old.CHARGED, Old.CHARGED)
    old.add_step(Old.STARTED, lambda run: Old.CHARGED, Old.CHARGED)
    v1 = backend.build(old, pause_retry=None)
    parked = [await v1.trigger(f"parked-{i}", Old.LEGACY_REVIEW) for i in range(2)]
    await v1.pause(parked[1], "hold")
    new = payments(Charger(), "evolving")
    v2 = backend.build(new, pause_retry=None)
    with caplog.at_level(logging.WARNING, logger="workflow"):
        async with v2:
            gauge = backend.registry.get_sample_value(
                "workflow_stranded_runs", {"workflow_name": "evolving", "status": "7"}
            )
            assert gauge == 2
            assert any("2 unfinished run(s) at status 7" in r.getMessage() for r in caplog.records)
            listed = await v2.list()
            assert [r.status for r in listed] == [7, 7]
            with pytest.raises(InvalidStatusError):
                await v2.move(parked[0], Old.CHARGED, "wrong enum")  # type: ignore[arg-type]
            moved = await v2.move(parked[0], Pay.STARTED, "re-routed by ops (TICKET-1)")
            assert moved.status is Pay.STARTED
            done = await v2.await_("parked-0", parked[0], Pay.CHARGED, timeout=10)
            with pytest.raises(RunStateError):
                await v2.move(parked[0], Pay.STARTED, "again")
            held = await v2.move(parked[1], Pay.STARTED, "re-routed, still held")
            assert held.run_state is RunState.PAUSED and held.meta.paused_by == PausedBy.OPERATOR
    assert done.object.attempts == [1]
    store = v2._engine.store
    if isinstance(store, RecordHistory):
        history = await store.history(parked[0])
        assert history[1].status == 1
        assert history[1].meta.run_state_reason == "moved from 7: re-routed by ops (TICKET-1)"


# -- idempotent triggers -----------------------------------------------------------------


async def test_a_trigger_with_a_used_key_returns_the_first_run(backend: Backend) -> None:
    wf = backend.build(payments(Charger()), pause_retry=None)
    first = await wf.trigger("order-1", idempotency_key="charge-1")
    assert await wf.trigger("order-1", idempotency_key="charge-1") == first  # in progress
    assert await wf.trigger("order-2", idempotency_key="charge-1") == first
    raced = await asyncio.gather(
        *(wf.trigger(f"racer-{i}", idempotency_key="charge-2") for i in range(20))
    )
    assert len(set(raced)) == 1
    async with wf:
        await wf.await_("order-1", first, Pay.CHARGED, timeout=10)
        assert await wf.trigger("order-1", idempotency_key="charge-1") == first  # finished
        again = await wf.trigger("order-1", idempotency_key="charge-3")  # a new key: new run
        assert again != first
    runs = await wf.list(limit=100)
    assert len(runs) == 3
    with pytest.raises(ValueError):
        await wf.trigger("order-9", idempotency_key="")


async def test_a_status_with_a_failing_step_and_a_timer_arms_the_timer_once(
    backend: Backend,
) -> None:
    """The step's failed attempts write versions at the same status: the timer is armed
    once, from the arrival, whichever of the two consumers runs first."""
    charger = Charger("fail")
    b = Builder[Payment, Pay]("step and timer")
    b.add_step(Pay.STARTED, charger, Pay.CHARGED).with_options(
        retry=RetryPolicy(initial_backoff=timedelta(seconds=10))
    )
    b.add_timeout(Pay.STARTED, duration_timer(HOUR), lambda run, now: Pay.FAILED, Pay.FAILED)
    wf = backend.build(b, pause_retry=None)
    store = wf._engine.timeout_store
    assert store is not None
    arrived = backend.clock.now()
    async with wf:
        rid = await wf.trigger("both")
        await await_timeout_insert(wf, "both", rid, Pay.STARTED, timeout=10)
        for attempt in (2, 3):
            await wait_for(wf, "both", is_retrying(attempt), timeout=10)
            backend.clock.step(timedelta(seconds=10))
        await wait_for(wf, "both", is_retrying(4), timeout=10)
        await asyncio.sleep(0.2)  # any late arming would have happened by now
        timers = [t for t in await store.list("step and timer") if t.run_id == rid]
        assert [t.expire_at for t in timers] == [arrived + HOUR]
        backend.clock.set(arrived + HOUR)
        failed = await wf.await_("both", rid, Pay.FAILED, timeout=10)
    assert failed.meta.retry_at is None and failed.meta.attempt == 1
    assert [t for t in await store.list("step and timer") if t.run_id == rid] == []
