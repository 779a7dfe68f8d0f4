"""Run states: predicates, the move table, and each API move (legal and illegal)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from workflow import (
    Builder,
    RecordNotFoundError,
    Run,
    RunState,
    UnableToCancelError,
    UnableToDeleteError,
    UnableToPauseError,
    UnableToResumeError,
    Workflow,
)
from workflow._runstate import can_move
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.testing import FakeClock

from .support import Obj, Status, build

RS = RunState


def test_predicates() -> None:
    assert [rs for rs in RS if rs.valid] == list(RS)[1:]
    assert {rs for rs in RS if rs.finished} == {
        RS.COMPLETED,
        RS.CANCELLED,
        RS.REQUESTED_DATA_DELETED,
        RS.DATA_DELETED,
    }
    assert {rs for rs in RS if rs.stopped} == {
        RS.PAUSED,
        RS.CANCELLED,
        RS.REQUESTED_DATA_DELETED,
        RS.DATA_DELETED,
    }
    assert [int(rs) for rs in RS] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert str(RS.REQUESTED_DATA_DELETED) == "Requested Data Deleted"


ALLOWED = {
    (RS.INITIATED, RS.RUNNING),
    (RS.INITIATED, RS.PAUSED),
    (RS.INITIATED, RS.CANCELLED),
    (RS.RUNNING, RS.COMPLETED),
    (RS.RUNNING, RS.PAUSED),
    (RS.RUNNING, RS.CANCELLED),
    (RS.PAUSED, RS.RUNNING),
    (RS.PAUSED, RS.CANCELLED),
    (RS.COMPLETED, RS.REQUESTED_DATA_DELETED),
    (RS.CANCELLED, RS.REQUESTED_DATA_DELETED),
    (RS.DATA_DELETED, RS.REQUESTED_DATA_DELETED),
    (RS.REQUESTED_DATA_DELETED, RS.DATA_DELETED),
}


@pytest.mark.parametrize("src", list(RS))
@pytest.mark.parametrize("dst", list(RS))
def test_move_table(src: RunState, dst: RunState) -> None:
    assert can_move(src, dst) == ((src, dst) in ALLOWED)


def held_workflow(
    clock: FakeClock, registry: CollectorRegistry, store: MemRecordStore
) -> tuple[Workflow[Obj, Status], asyncio.Event]:
    """STARTED -> MIDDLE -> DONE where the MIDDLE step waits for `release`."""
    release = asyncio.Event()

    async def first(run: Run[Obj, Status]) -> Status:
        return Status.MIDDLE

    async def second(run: Run[Obj, Status]) -> Status:
        await release.wait()
        return Status.DONE

    b = Builder[Obj, Status]("controls")
    b.add_step(Status.STARTED, first, Status.MIDDLE)
    b.add_step(Status.MIDDLE, second, Status.DONE)
    return build(b, clock, registry, store=store), release


async def test_every_api_move_and_its_typed_refusals(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    store = MemRecordStore()
    wf, release = held_workflow(clock, registry, store)

    async def state(run_id: str) -> tuple[RunState, int]:
        rec = await store.lookup(run_id)
        return rec.run_state, rec.meta.version

    # Initiated (never consumed: the workflow is not running)
    rid = await wf.trigger("a")
    for bad in (wf.resume(rid), wf.delete_data(rid)):
        with pytest.raises((UnableToResumeError, UnableToDeleteError)):
            await bad
    assert await state(rid) == (RS.INITIATED, 1)
    await wf.pause(rid, "hold on")
    assert await state(rid) == (RS.PAUSED, 2)
    assert (await store.lookup(rid)).meta.run_state_reason == "hold on"
    with pytest.raises(UnableToPauseError):
        await wf.pause(rid)
    with pytest.raises(UnableToDeleteError):
        await wf.delete_data(rid)
    assert await state(rid) == (RS.PAUSED, 2)
    await wf.cancel(rid, "changed my mind")  # Paused -> Cancelled
    assert await state(rid) == (RS.CANCELLED, 3)
    for bad_move, err in (
        (wf.pause(rid), UnableToPauseError),
        (wf.resume(rid), UnableToResumeError),
        (wf.cancel(rid), UnableToCancelError),
    ):
        with pytest.raises(err):
            await bad_move
    assert await state(rid) == (RS.CANCELLED, 3)
    await wf.delete_data(rid, "gdpr")
    assert await state(rid) == (RS.REQUESTED_DATA_DELETED, 4)
    with pytest.raises(UnableToDeleteError):
        await wf.delete_data(rid)

    # Initiated -> Cancelled, and Running -> Paused -> Running -> Completed
    rid2 = await wf.trigger("b")
    await wf.cancel(rid2)
    assert await state(rid2) == (RS.CANCELLED, 2)
    rid3 = await wf.trigger("c")
    async with wf:
        await wf.await_("c", rid3, Status.MIDDLE, timeout=5)
        assert (await store.lookup(rid3)).run_state is RS.RUNNING
        await wf.pause(rid3, "inspect")
        await wf.resume(rid3)
        rec = await store.lookup(rid3)
        assert (rec.run_state, rec.meta.run_state_reason) == (RS.RUNNING, "")
        release.set()
        done = await wf.await_("c", rid3, Status.DONE, timeout=5)
        assert done.run_state is RS.COMPLETED
        for bad_move, err in (
            (wf.pause(rid3), UnableToPauseError),
            (wf.resume(rid3), UnableToResumeError),
            (wf.cancel(rid3), UnableToCancelError),
        ):
            with pytest.raises(err):
                await bad_move

    with pytest.raises(RecordNotFoundError):
        await wf.pause("no-such-run")


async def test_initiated_pause_then_resume_runs_the_step(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    store = MemRecordStore()
    wf, release = held_workflow(clock, registry, store)
    release.set()
    rid = await wf.trigger("p")
    await wf.pause(rid)
    async with wf:
        await wf.resume(rid)
        run = await wf.await_("p", rid, Status.DONE, timeout=5)
    assert run.run_state is RS.COMPLETED
    states = [r.run_state for r in await store.history(rid)]
    assert states == [RS.INITIATED, RS.PAUSED, RS.RUNNING, RS.RUNNING, RS.COMPLETED]


@pytest.mark.parametrize(
    ("action", "expected"),
    [("complete", RS.COMPLETED), ("pause", RS.PAUSED), ("cancel", RS.CANCELLED)],
)
async def test_run_states_written_by_a_step(
    action: str, expected: RunState, clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def first(run: Run[Obj, Status]) -> Status:
        return Status.MIDDLE

    async def second(run: Run[Obj, Status]) -> Status | object:
        run.object.note = f"{action}d"
        if action == "pause":
            return await run.pause("testing pause")
        if action == "cancel":
            return await run.cancel("testing cancel")
        return Status.DONE

    b = Builder[Obj, Status]("example")
    b.add_step(Status.STARTED, first, Status.MIDDLE)
    b.add_step(Status.MIDDLE, second, Status.DONE)
    store = MemRecordStore()
    wf = build(b, clock, registry, store=store)
    async with wf:
        rid = await wf.trigger("fid")
        if action == "complete":
            await wf.await_("fid", rid, Status.DONE, timeout=5)
        else:
            from workflow.testing import wait_for

            await wait_for(wf, "fid", lambda r: r.run_state is expected, timeout=5)
    history = await store.history(rid)
    assert [r.run_state for r in history] == [RS.INITIATED, RS.RUNNING, expected]
    assert [r.meta.version for r in history] == [1, 2, 3]
    last = history[-1]
    # The object changed inside the step is stored with the pause/cancel (luno bug 8 fixed).
    assert Obj.model_validate_json(last.object).note == f"{action}d"
    if action != "complete":
        assert last.meta.run_state_reason == f"testing {action}"
        assert last.status == int(Status.MIDDLE)


async def test_pause_racing_a_step_loses_nothing(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """A manual pause that lands while a step runs wins; the step's stale write is refused
    (compare-and-set), and after resume the step runs again and completes."""
    in_step = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow(run: Run[Obj, Status]) -> Status:
        nonlocal calls
        calls += 1
        run.object.count = calls
        in_step.set()
        await release.wait()
        return Status.DONE

    b = Builder[Obj, Status]("race")
    b.add_step(Status.STARTED, slow, Status.DONE)
    store = MemRecordStore()
    wf = build(b, clock, registry, store=store)
    async with wf:
        rid = await wf.trigger("r")
        await asyncio.wait_for(in_step.wait(), 5)
        await wf.pause(rid, "operator")
        release.set()
        # Whenever the held step now tries to store DONE, its version (1) is stale.
        await wf.resume(rid)
        run = await wf.await_("r", rid, Status.DONE, timeout=5)
    history = await store.history(rid)
    assert [(r.run_state, r.status) for r in history] == [
        (RS.INITIATED, 1),
        (RS.PAUSED, 1),
        (RS.RUNNING, 1),
        (RS.COMPLETED, 3),
    ]
    assert [r.meta.version for r in history] == [1, 2, 3, 4]
    assert calls == 2 and run.object.count == 2
