"""Automatic pause after errors and automatic resume of paused runs (luno pause_test.go,
inventory §3.5 / §4.6 / §7.4), with luno bug 12 fixed."""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Any

import pytest

from workflow import Builder, PausedBy, Run, RunState, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, wait_for

TEN_MINUTES = timedelta(minutes=10)


class Status(enum.IntEnum):
    UNKNOWN = 0
    START = 9
    WAITING = 10
    END = 11


class FlakyStep:
    """Fails its first ``failures`` calls, then moves the run to END."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.errors = 0

    async def __call__(self, run: Run[str, Status]) -> Status:
        self.calls += 1
        if self.errors < self.failures:
            self.errors += 1
            raise RuntimeError("test error")
        return Status.END


def build(step: Any, clock: FakeClock, registry: Any, **build_kw: Any) -> Workflow[str, Status]:
    b = Builder[str, Status]("example")
    b.add_step(Status.START, step, Status.END).with_options(pause_after_err_count=3, err_backoff=0)

    async def finish(run: Run[str, Status], payload: bytes) -> Status:
        return Status.END

    b.add_callback(Status.WAITING, finish, Status.END)
    return b.build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
        **build_kw,
    )


def is_paused(r: Run[str, Status]) -> bool:
    return r.run_state is RunState.PAUSED


async def test_errors_pause_the_run_after_the_threshold(clock, registry):
    step = FlakyStep(failures=1000)
    wf = build(step, clock, registry, pause_retry=None)
    async with wf:
        run_id = await wf.trigger("12345")
        run = await wait_for(wf, "12345", is_paused, timeout=5)
        assert run.run_id == run_id
        assert run.status is Status.START
        assert step.calls == 3
        reason = run.meta.run_state_reason
        assert "threshold" in reason
        assert "3" in reason
        assert "test error" in reason


async def test_paused_run_is_resumed_after_pause_retry_and_completes(clock, registry):
    # luno TestRetryOfPausedRecords: the step fails until it has failed 5 times in all.
    # Errors 1-3 pause the run (threshold 3); the count is consecutive per run and is
    # reset by the pause, so after the automatic resume errors 4-5 count as 1 and 2 (below
    # the threshold) and the 6th call succeeds: 5 errors, as luno asserts (errorCounter == 5).
    step = FlakyStep(failures=5)
    wf = build(step, clock, registry, pause_retry=TEN_MINUTES)
    async with wf:
        run_id = await wf.trigger("12345")
        paused = await wait_for(wf, "12345", is_paused, timeout=5)
        assert step.errors == 3
        paused_at = paused.updated_at
        assert paused_at == clock.now()

        def resumed(r: Run[str, Status]) -> bool:
            return r.run_state is RunState.RUNNING and r.meta.version > paused.meta.version

        clock.step(TEN_MINUTES - timedelta(seconds=1))
        with pytest.raises(TimeoutError):
            await wait_for(wf, "12345", resumed, timeout=0.2)
        assert (await wf.lookup(run_id)).run_state is RunState.PAUSED
        assert step.calls == 3
        clock.step(timedelta(seconds=1))
        run = await wf.await_("12345", run_id, Status.END, timeout=5)
        assert run.run_state is RunState.COMPLETED
        assert step.errors == 5
        assert step.calls == 6
        resumes = [
            r for r in await wf._engine.store.history(run_id) if r.run_state is RunState.RUNNING
        ]
        assert [r.updated_at for r in resumes][-1] >= paused_at + TEN_MINUTES


async def test_pause_retry_none_has_no_retry_process(clock, registry):
    wf = build(FlakyStep(failures=1000), clock, registry, pause_retry=None)
    async with wf:
        assert "paused-records-retry-consumer" not in wf.states()
        assert "start-consumer-1-of-1" in wf.states()


async def test_pause_retry_process_runs_by_default(clock, registry):
    wf = build(FlakyStep(failures=1000), clock, registry)
    async with wf:
        assert "paused-records-retry-consumer" in wf.states()


async def test_default_pause_retry_is_one_hour(clock, registry):
    wf = build(FlakyStep(failures=3), clock, registry)
    async with wf:
        run_id = await wf.trigger("12345")
        paused = await wait_for(wf, "12345", is_paused, timeout=5)

        def resumed(r: Run[str, Status]) -> bool:
            return r.run_state is RunState.RUNNING and r.meta.version > paused.meta.version

        clock.step(timedelta(minutes=59))
        with pytest.raises(TimeoutError):
            await wait_for(wf, "12345", resumed, timeout=0.2)
        clock.step(timedelta(minutes=1))
        await wf.await_("12345", run_id, Status.END, timeout=5)


async def test_resume_time_counts_from_the_latest_pause(clock, registry):
    # luno bug 12: a run re-paused recently had its earlier pause event consumed without a
    # resume. Here the run waits at a callback status, so only pausing/resuming moves it
    # (operator pauses, which pause_retry resumes only when told to).
    wf = build(
        FlakyStep(failures=0),
        clock,
        registry,
        pause_retry=TEN_MINUTES,
        pause_retry_for=(PausedBy.OPERATOR,),
    )
    async with wf:
        run_id = await wf.trigger("andrew", Status.WAITING)
        await wf.pause(run_id, "first")
        clock.step(timedelta(minutes=5))
        await wf.resume(run_id)
        await wf.pause(run_id, "second")
        repaused = await wf.lookup(run_id)
        assert repaused.updated_at == clock.now()

        def auto_resumed(r: Run[str, Status]) -> bool:
            return r.run_state is RunState.RUNNING and r.meta.version > repaused.meta.version

        clock.step(timedelta(minutes=5))  # 10 min after the first pause, 5 after the latest
        with pytest.raises(TimeoutError):
            await wait_for(wf, "andrew", auto_resumed, timeout=0.2)
        assert (await wf.lookup(run_id)).run_state is RunState.PAUSED
        clock.step(timedelta(minutes=5))  # 10 min after the latest pause
        run = await wait_for(wf, "andrew", auto_resumed, timeout=5)
        assert run.meta.run_state_reason == ""
        assert run.meta.version == repaused.meta.version + 1  # resumed exactly once
        assert await wf.callback("andrew", Status.WAITING)
        await wf.await_("andrew", run_id, Status.END, timeout=5)
        history = await wf._engine.store.history(run_id)
        assert [r.run_state for r in history] == [
            RunState.INITIATED,
            RunState.PAUSED,
            RunState.RUNNING,
            RunState.PAUSED,
            RunState.RUNNING,
            RunState.COMPLETED,
        ]


async def test_manual_resume_before_pause_retry_is_not_resumed_twice(clock, registry):
    wf = build(
        FlakyStep(failures=0),
        clock,
        registry,
        pause_retry=TEN_MINUTES,
        pause_retry_for=(PausedBy.OPERATOR,),
    )
    async with wf:
        run_id = await wf.trigger("andrew", Status.WAITING)
        await wf.pause(run_id, "hold")
        await wf.resume(run_id)
        clock.step(TEN_MINUTES)
        # The retry process handles the stale pause event as a no-op; a later pause of the
        # same run (positive control) is still resumed after its own ten minutes.
        await wf.pause(run_id, "again")
        again = await wf.lookup(run_id)
        clock.step(TEN_MINUTES)
        run = await wait_for(
            wf,
            "andrew",
            lambda r: r.run_state is RunState.RUNNING and r.meta.version > again.meta.version,
            timeout=5,
        )
        assert run.meta.version == again.meta.version + 1
        states = [r.run_state for r in await wf._engine.store.history(run_id)]
        assert states == [
            RunState.INITIATED,
            RunState.PAUSED,
            RunState.RUNNING,
            RunState.PAUSED,
            RunState.RUNNING,
        ]
