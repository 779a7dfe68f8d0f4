"""Run-state-change hooks (luno hook_test.go, inventory §4.14 / §7.6): on_pause, on_cancel,
on_complete and on_data_deleted; event driven, at least once, retried until they return."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from workflow import Builder, Run, RunState, TypedRecord, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock


class Status(enum.IntEnum):
    UNKNOWN = 0
    START = 9
    MIDDLE = 10
    END = 11


class Doc(BaseModel):
    text: str = ""


class Recorder:
    """A hook (async or plain) that records what it receives and signals an asyncio.Event.

    ``fail_first`` calls raise before it starts succeeding."""

    def __init__(self, *, sync: bool = False, fail_first: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self.sync = sync
        self.fail_first = fail_first
        self.calls: list[TypedRecord[Doc, Status]] = []
        self.event = asyncio.Event()

    def _record(self, record: TypedRecord[Doc, Status]) -> None:
        self.calls.append(record)
        if len(self.calls) <= self.fail_first:
            raise RuntimeError(f"hook failure {len(self.calls)}")

    @property
    def hook(self) -> Callable[[TypedRecord[Doc, Status]], Any]:
        if self.sync:

            def sync_hook(record: TypedRecord[Doc, Status]) -> None:
                try:
                    self._record(record)
                finally:
                    self.loop.call_soon_threadsafe(self.event.set)

            return sync_hook

        async def async_hook(record: TypedRecord[Doc, Status]) -> None:
            try:
                self._record(record)
            finally:
                self.event.set()

        return async_hook

    async def wait(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until the hook has been called ``n`` times."""
        async with asyncio.timeout(timeout):
            while len(self.calls) < n:
                self.event.clear()
                await self.event.wait()


def build(
    step: Callable[[Run[Doc, Status]], Any],
    hooks: dict[str, Recorder],
    clock: FakeClock,
    registry: Any,
) -> Workflow[Doc, Status]:
    b = Builder[Doc, Status]("hooks")
    b.add_step(Status.START, step, Status.MIDDLE, Status.END)
    for kind, recorder in hooks.items():
        getattr(b, f"on_{kind}")(recorder.hook)
    return b.build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
    )


async def complete(run: Run[Doc, Status]) -> Status:
    run.object.text = "done"
    return Status.END


async def pause(run: Run[Doc, Status]) -> Any:
    run.object.text = "paused here"
    return await run.pause("why")


async def cancel(run: Run[Doc, Status]) -> Any:
    return await run.cancel("Test cancel")


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_on_pause_hook(clock, registry, sync):
    rec = Recorder(sync=sync)
    wf = build(pause, {"pause": rec}, clock, registry)
    async with wf:
        run_id = await wf.trigger("andrew")
        await rec.wait()
        [record] = rec.calls
        assert isinstance(record, TypedRecord)
        assert record.run_id == run_id
        assert record.foreign_id == "andrew"
        assert record.run_state is RunState.PAUSED
        assert record.status is Status.START
        assert isinstance(record.object, Doc)
        assert record.object.text == "paused here"  # the step's object is stored with it
        assert record.meta.run_state_reason == "why"


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_on_cancel_hook(clock, registry, sync):
    rec = Recorder(sync=sync)
    wf = build(cancel, {"cancel": rec}, clock, registry)
    async with wf:
        run_id = await wf.trigger("andrew")
        await rec.wait()
        [record] = rec.calls
        assert record.run_id == run_id
        assert record.run_state is RunState.CANCELLED
        assert record.meta.run_state_reason == "Test cancel"


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_on_complete_hook(clock, registry, sync):
    rec = Recorder(sync=sync)
    wf = build(complete, {"complete": rec}, clock, registry)
    async with wf:
        run_id = await wf.trigger("andrew")
        await rec.wait()
        [record] = rec.calls
        assert record.run_id == run_id
        assert record.run_state is RunState.COMPLETED
        assert record.status is Status.END
        assert isinstance(record.status, Status)
        assert record.object == Doc(text="done")


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_on_data_deleted_hook(clock, registry, sync):
    rec = Recorder(sync=sync)
    wf = build(complete, {"data_deleted": rec}, clock, registry)
    async with wf:
        run_id = await wf.trigger("andrew")
        await wf.await_("andrew", run_id, Status.END, timeout=5)
        assert rec.calls == []
        await wf.delete_data(run_id, "gdpr")
        await rec.wait()
        [record] = rec.calls
        assert record.run_id == run_id
        assert record.run_state is RunState.DATA_DELETED
        assert record.meta.run_state_reason == "gdpr"
        assert record.status is Status.END


async def test_pause_hook_does_not_fire_for_completion(clock, registry):
    paused, completed = Recorder(), Recorder()

    async def step(run: Run[Doc, Status]) -> Any:
        if run.foreign_id == "pause-me":
            return await run.pause("why")
        return Status.END

    wf = build(step, {"pause": paused, "complete": completed}, clock, registry)
    async with wf:
        done = await wf.trigger("complete-me")
        await completed.wait()
        held = await wf.trigger("pause-me")
        # The pause hook reads the topic in order: once it has seen the later pause, it has
        # already passed (and ignored) the completion.
        await paused.wait()
        assert [r.run_id for r in paused.calls] == [held]
        assert [r.run_id for r in completed.calls] == [done]


async def test_failing_hook_is_retried_after_backoff_and_later_events_follow(clock, registry):
    rec = Recorder(fail_first=1)
    wf = build(complete, {"complete": rec}, clock, registry)
    async with wf:
        first = await wf.trigger("first")
        await rec.wait(1)  # raised
        await clock.until_waiting(1, timeout=5)  # the hook process backs off on the clock
        second = await wf.trigger("second")
        await wf.await_("second", second, Status.END, timeout=5)
        assert len(rec.calls) == 1  # no retry, and no later event, before the backoff ends
        clock.step(timedelta(seconds=1))  # the default err_backoff
        await rec.wait(3)
        assert [r.run_id for r in rec.calls] == [first, first, second]


async def test_hook_keeps_being_retried_until_it_returns(clock, registry):
    rec = Recorder(sync=True, fail_first=3)
    b = Builder[Doc, Status]("hooks")
    b.add_step(Status.START, complete, Status.END)
    b.on_complete(rec.hook)
    wf = b.build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
        default_options={"err_backoff": timedelta(minutes=5)},
    )
    async with wf:
        run_id = await wf.trigger("andrew")
        for n in (1, 2, 3):
            await rec.wait(n)
            await clock.until_waiting(1, timeout=5)
            assert len(rec.calls) == n
            clock.step(timedelta(minutes=5))
        await rec.wait(4)
        assert {r.run_id for r in rec.calls} == {run_id}
        # It returned: the event is acknowledged and not handled again.
        again = await wf.trigger("andrew")
        await rec.wait(5)
        assert [r.run_id for r in rec.calls][3:] == [run_id, again]
