"""Metrics (luno's names and labels, on an injected registry) and logs with run context."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from workflow import Builder, Run, RunState, State
from workflow.testing import FakeClock, wait_for

from .support import Obj, Status, build


async def middle(run: Run[Obj, Status]) -> Status:
    return Status.MIDDLE


async def done(run: Run[Obj, Status]) -> Status:
    return Status.DONE


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_run_state_changes_and_process_metrics(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    b = Builder[Obj, Status]("metered")
    b.add_step(Status.STARTED, middle, Status.MIDDLE)
    b.add_step(Status.MIDDLE, done, Status.DONE)
    wf = build(b, clock, registry)
    async with wf:
        rid = await wf.trigger("m")
        await wf.await_("m", rid, Status.DONE, timeout=5)
        assert sample(
            registry,
            "workflow_process_states",
            workflow_name="metered",
            process_name="outbox-consumer",
        ) == float(State.RUNNING)
    changes = {
        (s.labels["previous_run_state"], s.labels["current_run_state"]): s.value
        for metric in registry.collect()
        if metric.name == "workflow_run_state_changes"
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert changes == {
        ("Unknown", "Initiated"): 1,
        ("Initiated", "Running"): 1,
        ("Running", "Completed"): 1,
    }
    for process in ("started-consumer-1-of-1", "middle-consumer-1-of-1", "outbox-consumer"):
        labels = {"workflow_name": "metered", "process_name": process}
        assert sample(registry, "workflow_process_states", **labels) == float(State.SHUTDOWN)
        assert (sample(registry, "workflow_process_latency_seconds_count", **labels) or 0) >= 1
        assert sample(registry, "workflow_process_lag_seconds", **labels) is not None


async def test_skips_and_errors_are_counted(clock: FakeClock, registry: CollectorRegistry) -> None:
    skipped = 0
    both = asyncio.Event()

    async def skip(run: Run[Obj, Status]) -> None:
        nonlocal skipped
        skipped += 1
        if skipped == 2:
            both.set()
        return None

    async def fail(run: Run[Obj, Status]) -> Status:
        raise RuntimeError("mock error")

    b = Builder[Obj, Status]("counted")
    b.add_step(Status.STARTED, skip, Status.DONE)
    b.add_step(Status.MIDDLE, fail, Status.DONE).with_options(
        pause_after_err_count=1, err_backoff=0
    )
    wf = build(b, clock, registry)
    await wf.run()
    await wf.trigger("s1")
    await wf.trigger("s2")
    await wf.trigger("e", Status.MIDDLE)
    await wait_for(wf, "e", lambda r: r.run_state is RunState.PAUSED)
    await asyncio.wait_for(both.wait(), 5)
    await wf.stop()  # lets the handler in hand finish its bookkeeping
    assert (
        sample(
            registry,
            "workflow_process_skipped_events_count_total",
            workflow_name="counted",
            process_name="started-consumer-1-of-1",
            reason="next value specified skip",
        )
        == 2
    )
    assert (
        sample(
            registry,
            "workflow_run_state_changes_total",
            workflow_name="counted",
            previous_run_state="Initiated",
            current_run_state="Paused",
        )
        == 1
    )


def test_registries_are_independent() -> None:
    from workflow._metrics import metrics_for

    a, b = CollectorRegistry(), CollectorRegistry()
    assert metrics_for(a) is metrics_for(a)
    assert metrics_for(a) is not metrics_for(b)


async def test_logs_carry_run_context(
    clock: FakeClock, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(run: Run[Obj, Status]) -> Status:
        raise RuntimeError("kaboom")

    b = Builder[Obj, Status]("logged")
    b.add_step(Status.STARTED, fail, Status.DONE).with_options(
        pause_after_err_count=2, err_backoff=0
    )
    wf = build(b, clock, registry, logger=logging.getLogger("test.workflow"))
    with caplog.at_level(logging.DEBUG, logger="test.workflow"):
        async with wf:
            rid = await wf.trigger("fid-7")
            await wait_for(wf, "fid-7", lambda r: r.run_state is RunState.PAUSED)
    records = [r for r in caplog.records if r.name == "test.workflow"]
    assert records, "expected log lines"
    warning = next(r for r in records if "kaboom" in r.getMessage())
    ctx = warning.workflow_context  # type: ignore[attr-defined]
    assert ctx["workflow"] == "logged"
    assert ctx["foreign_id"] == "fid-7" and ctx["run_id"] == rid
    assert ctx["status"] == "STARTED"
    assert f"run_id={rid}" in warning.getMessage()
    assert any("paused run" in r.getMessage() for r in records)


async def test_a_failing_role_scheduler_is_logged_once_then_recovery(
    clock: FakeClock, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A database outage fails every role request of every process: one traceback per
    process, not one per attempt, and a line when it works again."""
    from workflow.adapters.memrecordstore import MemRecordStore
    from workflow.adapters.memrolescheduler import MemRoleScheduler
    from workflow.adapters.memstreamer import MemStreamer

    many_failed = asyncio.Event()

    class Outage(MemRoleScheduler):
        failing = True
        attempts = 0

        async def await_role(self, role: str):  # type: ignore[no-untyped-def]
            if self.failing:
                self.attempts += 1
                if self.attempts >= 50:
                    many_failed.set()
                raise ConnectionError("database is down")
            return await super().await_role(role)

    roles = Outage()
    b = Builder[Obj, Status]("outage")
    b.add_step(Status.STARTED, done, Status.DONE).with_options(err_backoff=0)
    wf = b.build(
        MemStreamer(clock),
        MemRecordStore(),
        roles,
        clock=clock,
        metrics_registry=registry,
        pause_retry=None,
        logger=logging.getLogger("test.outage"),
        default_options={"err_backoff": timedelta(milliseconds=20)},
    )
    with caplog.at_level(logging.INFO, logger="test.outage"):
        async with wf:
            await asyncio.wait_for(many_failed.wait(), 5)  # err_backoff=0: no clock to step
            roles.failing = False  # the processes back off in real time: no clock to step
            rid = await wf.trigger("after")
            await wf.await_("after", rid, Status.DONE, timeout=5)
    lines = [r for r in caplog.records if r.name == "test.outage"]
    everyone = set(wf.states())
    assert everyone >= {"started-consumer-1-of-1", "outbox-consumer", "delete-consumer"}
    errors = [r for r in lines if "role scheduler" in r.getMessage() and r.levelno >= logging.ERROR]
    processes = [r.workflow_context["process"] for r in errors]  # type: ignore[attr-defined]
    assert roles.attempts >= 50
    # one line per process (every process met the outage), not one per attempt ...
    assert sorted(processes) == sorted(everyone), processes
    for r in errors:  # ... with the traceback of the failure
        assert isinstance(r.exc_info, tuple), r.exc_info
        assert isinstance(r.exc_info[1], ConnectionError)
        assert "database is down" in caplog.text
        assert r.workflow_context["role"].startswith("outage-")  # type: ignore[attr-defined]
    recovered = [r for r in lines if "role scheduler recovered after" in r.getMessage()]
    assert sorted(r.workflow_context["process"] for r in recovered) == sorted(everyone)  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in recovered)
    # every failed attempt is counted in exactly one process's recovery line
    spun = [int(r.getMessage().split("after ")[1].split(" failed")[0]) for r in recovered]
    assert sum(spun) == roles.attempts, spun


async def test_an_outage_that_lasts_is_logged_again_without_a_traceback(
    clock: FakeClock,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the first line, a lasting outage gets one line per ROLE_ERROR_LOG_EVERY seconds
    (set to 0 here, so every later attempt logs one) that counts the attempts."""
    from workflow.adapters.memrecordstore import MemRecordStore
    from workflow.adapters.memrolescheduler import MemRoleScheduler
    from workflow.adapters.memstreamer import MemStreamer

    monkeypatch.setattr("workflow._process.ROLE_ERROR_LOG_EVERY", 0.0)
    three = asyncio.Event()

    class Outage(MemRoleScheduler):
        attempts = 0

        async def await_role(self, role: str):  # type: ignore[no-untyped-def]
            if role.endswith("-1-consumer-1-of-1"):
                if self.attempts == 3:
                    await asyncio.Event().wait()  # no fourth line before the stop
                self.attempts += 1
                if self.attempts == 3:
                    three.set()
                raise ConnectionError("database is down")
            return await super().await_role(role)

    roles = Outage()
    b = Builder[Obj, Status]("lasting")
    b.add_step(Status.STARTED, done, Status.DONE).with_options(
        err_backoff=timedelta(milliseconds=20)
    )
    wf = b.build(
        MemStreamer(clock),
        MemRecordStore(),
        roles,
        clock=clock,
        metrics_registry=registry,
        pause_retry=None,
        logger=logging.getLogger("test.lasting"),
    )
    with caplog.at_level(logging.INFO, logger="test.lasting"):
        async with wf:
            # the step consumer backs off 20 ms of real time after each failure
            await asyncio.wait_for(three.wait(), 5)
    lines = [
        (r.getMessage().split(" [")[0], r.exc_info)
        for r in caplog.records
        if r.name == "test.lasting" and "role scheduler" in r.getMessage()
    ]
    assert [text for text, _ in lines] == [
        "role scheduler error",
        "role scheduler still failing (2 attempts): ConnectionError('database is down')",
        "role scheduler still failing (3 attempts): ConnectionError('database is down')",
    ]
    assert isinstance(lines[0][1], tuple)
    assert not lines[1][1] and not lines[2][1]  # the traceback only once


@pytest.mark.parametrize("debug", [False, True])
async def test_debug_lines_only_with_debug(
    clock: FakeClock,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    debug: bool,
) -> None:
    """The paused-run retry logs a debug line when it resumes a run: written with
    ``debug=True`` only, even with the logger at DEBUG."""
    calls = 0

    async def pause_once(run: Run[Obj, Status]) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            return await run.pause("not yet")
        return Status.DONE

    b = Builder[Obj, Status]("debugged")
    b.add_step(Status.STARTED, pause_once, Status.DONE)
    wf = build(
        b,
        clock,
        registry,
        pause_retry=timedelta(minutes=5),
        logger=logging.getLogger("test.debugged"),
        debug=debug,
    )
    with caplog.at_level(logging.DEBUG, logger="test.debugged"):
        async with wf:
            rid = await wf.trigger("d")
            await wait_for(wf, "d", lambda r: r.run_state is RunState.PAUSED)
            await clock.until_waiting()  # the retry process waits for the pause to be old
            clock.step(timedelta(minutes=5))
            await wf.await_("d", rid, Status.DONE, timeout=5)
    debug_lines = [
        r for r in caplog.records if r.name == "test.debugged" and r.levelno == logging.DEBUG
    ]
    if debug:
        assert [r.getMessage().split(" [")[0] for r in debug_lines] == ["resumed paused run"]
        assert debug_lines[0].workflow_context["run_id"] == rid  # type: ignore[attr-defined]
    else:
        assert debug_lines == []
