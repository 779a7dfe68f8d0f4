"""What user code can throw at the engine: BaseExceptions, stop() from inside, steps that
never return. Each test here failed on the engine before its fix."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from workflow import (
    Builder,
    Run,
    RunState,
    State,
    StepInterruptedError,
    StepTimeoutError,
    TypedRecord,
)
from workflow.adapters.memory import MemRecordStore, MemRoleScheduler, MemStreamer
from workflow.testing import FakeClock, wait_for

from .backends import Backend
from .support import Obj, Status, build


class UserBase(BaseException):
    """A user's own BaseException subclass."""


def _raise(kind: str) -> None:
    if kind == "cancelled":
        raise asyncio.CancelledError("from user code")
    if kind == "generator-exit":
        raise GeneratorExit("from user code")
    raise UserBase("from user code")


def _step(kind: str, plain: bool, calls: list[int]) -> Callable[..., Any]:
    if plain:

        def plain_step(run: Run[Obj, Status]) -> Status:
            calls.append(1)
            _raise(kind)
            return Status.DONE

        return plain_step

    async def async_step(run: Run[Obj, Status]) -> Status:
        calls.append(1)
        await asyncio.sleep(0)
        _raise(kind)
        return Status.DONE

    return async_step


@pytest.mark.parametrize("plain", [False, True], ids=["async", "def"])
@pytest.mark.parametrize("kind", ["cancelled", "generator-exit", "user-base-exception"])
async def test_a_base_exception_from_a_step_is_a_step_error(
    kind: str,
    plain: bool,
    clock: FakeClock,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Counted, logged, backed off (the step is not called again until the clock moves past
    the backoff) and paused by pause_after_err_count. Before: a CancelledError restarted the
    consumer at once, for ever, silently; the others were never paused."""
    calls: list[int] = []
    b = Builder[Obj, Status]("base exceptions")
    b.add_step(Status.STARTED, _step(kind, plain, calls), Status.DONE).with_options(
        pause_after_err_count=3, err_backoff=timedelta(seconds=10)
    )
    wf = build(b, clock, registry, pause_retry=None)
    async with wf:
        await wf.trigger("x")
        for attempt in (1, 2):
            await clock.until_waiting(1, timeout=5)  # backing off after the error
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(calls) == attempt  # not called again while backing off
            clock.step(timedelta(seconds=10))
        paused = await wait_for(wf, "x", lambda r: r.run_state is RunState.PAUSED, timeout=5)
    assert len(calls) == 3
    assert "StepInterruptedError" in paused.meta.run_state_reason
    errors = [
        registry.get_sample_value(
            "workflow_process_error_count_total",
            {"workflow_name": "base exceptions", "process_name": name},
        )
        for name in ("started-consumer-1-of-1", "started-retry-consumer")
    ]
    assert errors == [1, 2]  # the first attempt, then two retries (the last one paused)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged and all("StepInterruptedError" in r.getMessage() for r in logged)


async def test_a_cancelled_error_from_a_step_is_a_step_error_on_every_backend(
    backend: Backend,
) -> None:
    calls: list[int] = []
    b = Builder[Obj, Status]("cancelled step " + backend.name)
    b.add_step(Status.STARTED, _step("cancelled", False, calls), Status.DONE).with_options(
        pause_after_err_count=2, err_backoff=0
    )
    wf = backend.build(b, pause_retry=None)
    async with wf:
        await wf.trigger("x")
        paused = await wait_for(wf, "x", lambda r: r.run_state is RunState.PAUSED, timeout=10)
    # paused after the second error; a redelivery may still be in flight when the pause lands
    assert len(calls) >= 2
    assert "CancelledError" in paused.meta.run_state_reason


async def test_a_process_that_cancels_its_own_task_is_restarted_after_the_backoff(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """A connector function that cancels the task it runs in (the cancellation reaches the
    process body itself, not just the call): an error, backed off, not a tight loop."""
    calls: list[int] = []

    async def step(run: Run[Obj, Status]) -> Status:
        calls.append(1)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # looks like the engine's own cancellation from inside
        await asyncio.sleep(0)
        return Status.DONE

    b = Builder[Obj, Status]("self cancel")
    b.add_step(Status.STARTED, step, Status.DONE).with_options(err_backoff=timedelta(seconds=5))
    wf = build(b, clock, registry, pause_retry=None)
    async with wf:
        await wf.trigger("x")
        await clock.until_waiting(1, timeout=5)
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(calls) == 1
        clock.step(timedelta(seconds=5))
        await clock.until_waiting(1, timeout=5)
        assert len(calls) == 2


async def test_stop_from_a_step_completes_after_the_step_returns(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """Before: the stop waited for the step that called it (deadlock), the workflow could not
    be stopped from outside either, and the process died at exit with RecursionError."""
    wf_ref: list[Any] = []

    async def stopper(run: Run[Obj, Status]) -> Status:
        await wf_ref[0].stop(grace=5)
        return Status.DONE  # stored: the stop lets the step in hand finish

    b = Builder[Obj, Status]("stop inside")
    b.add_step(Status.STARTED, stopper, Status.DONE)
    wf = build(b, clock, registry)
    wf_ref.append(wf)
    await wf.run()
    rid = await wf.trigger("x")
    run = await wf.await_("x", rid, Status.DONE, timeout=5)
    assert run.run_state is RunState.COMPLETED
    await asyncio.wait_for(wf.stop(), 5)  # waits for the stop in progress, then returns
    assert set(wf.states().values()) == {State.SHUTDOWN}
    await wf.run()  # and it can be started again
    assert State.SHUTDOWN not in set(wf.states().values())
    await asyncio.wait_for(wf.stop(), 5)


async def test_stop_from_a_hook_does_not_deadlock(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    wf_ref: list[Any] = []
    hooked = asyncio.Event()

    async def on_complete(record: TypedRecord[Obj, Status]) -> None:
        await wf_ref[0].stop(grace=5)
        hooked.set()

    async def done(run: Run[Obj, Status]) -> Status:
        return Status.DONE

    b = Builder[Obj, Status]("stop in hook")
    b.add_step(Status.STARTED, done, Status.DONE)
    b.on_complete(on_complete)
    wf = build(b, clock, registry)
    wf_ref.append(wf)
    await wf.run()
    await wf.trigger("x")
    await asyncio.wait_for(hooked.wait(), 5)
    await asyncio.wait_for(wf.stop(), 5)
    assert set(wf.states().values()) == {State.SHUTDOWN}


async def test_step_timeout_abandons_a_plain_step_and_counts_an_error(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    release = threading.Event()
    calls: list[int] = []

    def stuck(run: Run[Obj, Status]) -> Status:
        calls.append(1)
        release.wait(30)
        return Status.DONE

    b = Builder[Obj, Status]("step timeout")
    b.add_step(Status.STARTED, stuck, Status.DONE).with_options(
        step_timeout=timedelta(milliseconds=50), pause_after_err_count=2, err_backoff=0
    )
    wf = build(b, clock, registry, pause_retry=None)
    try:
        async with wf:
            await wf.trigger("x")
            paused = await wait_for(wf, "x", lambda r: r.run_state is RunState.PAUSED, timeout=10)
    finally:
        release.set()
    assert len(calls) == 2
    assert "StepTimeoutError" in paused.meta.run_state_reason
    assert "step_timeout" in paused.meta.run_state_reason


async def test_step_timeout_cancels_an_async_step(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    cancelled = asyncio.Event()

    async def stuck(run: Run[Obj, Status]) -> Status:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Status.DONE

    b = Builder[Obj, Status]("async step timeout")
    b.add_step(Status.STARTED, stuck, Status.DONE).with_options(
        step_timeout=0.05, pause_after_err_count=1
    )
    wf = build(b, clock, registry, pause_retry=None)
    async with wf:
        await wf.trigger("x")
        paused = await wait_for(wf, "x", lambda r: r.run_state is RunState.PAUSED, timeout=10)
    assert cancelled.is_set()
    assert "StepTimeoutError" in paused.meta.run_state_reason


async def test_a_user_timeout_error_is_not_taken_for_the_step_timeout(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def own_timeout(run: Run[Obj, Status]) -> Status:
        raise TimeoutError("the payment provider timed out")

    b = Builder[Obj, Status]("own timeout")
    b.add_step(Status.STARTED, own_timeout, Status.DONE).with_options(
        step_timeout=30, pause_after_err_count=1
    )
    wf = build(b, clock, registry, pause_retry=None)
    async with wf:
        await wf.trigger("x")
        paused = await wait_for(wf, "x", lambda r: r.run_state is RunState.PAUSED, timeout=10)
    assert "payment provider timed out" in paused.meta.run_state_reason
    assert StepTimeoutError.__name__ not in paused.meta.run_state_reason
    assert StepInterruptedError.__name__ not in paused.meta.run_state_reason


_NEVER_RETURNS = textwrap.dedent(
    """
    import asyncio, threading, sys
    from workflow.adapters.memrecordstore import MemRecordStore
    from workflow.adapters.memrolescheduler import MemRoleScheduler
    from workflow.adapters.memstreamer import MemStreamer
    from tests.support import Obj, Status
    from workflow import Builder

    started = threading.Event()

    def forever(run):
        started.set()
        threading.Event().wait()  # never returns

    async def main():
        b = Builder[Obj, Status]("forever")
        b.add_step(Status.STARTED, forever, Status.DONE)
        wf = b.build(MemStreamer(), MemRecordStore(), MemRoleScheduler())
        await wf.run()
        await wf.trigger("x")
        while not started.is_set():
            await asyncio.sleep(0.01)
        await wf.stop(grace=0.1)
        print("stopped", flush=True)

    asyncio.run(main())
    """
)


def test_a_plain_step_that_never_returns_does_not_keep_the_process_alive() -> None:
    """Before: asyncio.run() (and interpreter exit) waited for the step's thread for ever."""
    done = subprocess.run(
        [sys.executable, "-c", _NEVER_RETURNS], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


async def test_a_process_error_that_repeats_is_logged_once_not_per_attempt(
    clock: FakeClock, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A connector whose stream keeps failing (an outage) with no backoff: one error line
    for the first attempt, not one per attempt; a different error is logged at once."""
    calls: list[int] = []
    enough = asyncio.Event()

    class Broken:
        async def recv(self) -> Any:
            calls.append(1)
            if len(calls) >= 60:
                enough.set()
            raise ConnectionError("down" if len(calls) < 50 else "down differently")

        async def close(self) -> None:
            return None

    class Maker:
        async def make(self, name: str) -> Broken:
            return Broken()

    async def fn(wf: Any, event: Any) -> None:
        return None

    b = Builder[Obj, Status]("outage")
    b.add_step(Status.STARTED, _step("cancelled", False, []), Status.DONE)
    b.add_connector("feed", Maker(), fn).with_options(err_backoff=0)
    wf = build(b, clock, registry, pause_retry=None)
    async with wf:
        await asyncio.wait_for(enough.wait(), 10)
    lines = [r.getMessage() for r in caplog.records if "feed" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "'down'" in lines[0] and "down differently" in lines[1]
    assert "repeated 48 more times" in lines[1]


async def test_an_adapter_error_is_retried_in_real_time_while_the_fake_clock_stands_still(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """A broker or database hiccup (here: opening a receiver fails once) is retried after
    ``err_backoff`` of real time, not of the workflow's clock: a test on a FakeClock that
    never steps it still sees its run finish (CI once hung 20 s on this with Kafka)."""

    class Hiccup(MemStreamer):
        failed = False

        async def new_receiver(self, topic: str, name: str, **kw: Any) -> Any:
            if not Hiccup.failed:
                Hiccup.failed = True
                raise ConnectionError("broker briefly unreachable")
            return await super().new_receiver(topic, name, **kw)

    async def step(run: Run[Obj, Status]) -> Status:
        return Status.DONE

    b = Builder[Obj, Status]("hiccup")
    b.add_step(Status.STARTED, step, Status.DONE)
    wf = b.build(
        Hiccup(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
        default_options={"err_backoff": timedelta(milliseconds=50)},
    )
    async with wf:
        rid = await wf.trigger("x")
        await wf.await_("x", rid, Status.DONE, timeout=5)
    assert Hiccup.failed
