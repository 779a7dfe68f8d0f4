"""The operations API (``workflow.admin.Admin``) on every back end: what the CLI and the HTTP
API build on. Run-state changes through a registered workflow and, for a shell without the
workflows' code, on the store alone."""

from __future__ import annotations

from datetime import timedelta

import pytest

from workflow import (
    Builder,
    PausedBy,
    RetryPolicy,
    Run,
    RunState,
    UnableToResumeError,
)
from workflow.admin import Admin
from workflow.testing import wait_for

from .backends import Backend
from .support import Obj, Status


def failing(name: str = "ops") -> Builder[Obj, Status]:
    async def step(run: Run[Obj, Status]) -> Status:
        if run.foreign_id.startswith("bad"):
            raise ConnectionError("mail server down")
        run.object.count += 1
        run.object.note = f"hello {run.foreign_id}"
        return Status.DONE

    b = Builder[Obj, Status](name)
    b.add_step(Status.STARTED, step, Status.DONE).with_options(retry=RetryPolicy(max_attempts=1))
    return b


@pytest.mark.parametrize("registered", [True, False])
async def test_list_show_and_control_runs(backend: Backend, registered: bool) -> None:
    wf = backend.build(failing(), pause_retry=None)
    store = wf._engine.store
    admin = Admin(store, [wf] if registered else [], clock=backend.clock)
    async with wf:
        ok = await wf.trigger("good-1", initial_value=Obj(note="x"))
        await wf.await_("good-1", ok, Status.DONE, timeout=15)
        bad = [await wf.trigger(f"bad-{i}") for i in range(3)]
        for i in range(3):
            await wait_for(wf, f"bad-{i}", lambda r: r.run_state is RunState.PAUSED)
    # listing, newest first, with filters
    everything = await admin.runs(workflow="ops")
    assert [r.foreign_id for r in everything] == ["bad-2", "bad-1", "bad-0", "good-1"]
    paused = await admin.runs(workflow="ops", paused_by=PausedBy.RETRIES_EXHAUSTED)
    assert {r.run_id for r in paused} == set(bad)
    assert [r.run_id for r in await admin.runs(run_state=RunState.COMPLETED)] == [ok]
    assert [r.run_id for r in await admin.runs(object_field=("note", "hello good-1"))] == [ok]
    assert await admin.runs(foreign_id="good-1", status=int(Status.DONE)) != []
    with pytest.raises(ValueError):
        await admin.runs(limit=0)
    # one run with what each version changed
    detail = await admin.run(ok)
    assert [v.record.meta.version for v in detail.history] == [1, 2]
    assert {(c.path, c.before, c.after) for c in detail.history[1].changes} == {
        ("count", 0, 1),
        ("note", "x", "hello good-1"),
    }
    # control: a dead letter replayed in bulk, then pause, cancel, delete
    resumed = await admin.resume_paused(workflow="ops", paused_by="retries exhausted", limit=2)
    assert len(resumed) == 2
    for rid in resumed:
        r = await store.lookup(rid)
        assert r.run_state is RunState.RUNNING and r.meta.attempt == 1
    with pytest.raises(UnableToResumeError):
        await admin.resume(resumed[0])
    left = (set(bad) - set(resumed)).pop()
    cancelled = await admin.cancel(left, "not worth it")
    assert cancelled.run_state is RunState.CANCELLED
    assert cancelled.meta.run_state_reason == "not worth it"
    paused_again = await admin.pause(resumed[0], "look first")
    assert paused_again.meta.paused_by == PausedBy.OPERATOR
    asked = await admin.delete_data(ok, "GDPR")
    assert asked.run_state is RunState.REQUESTED_DATA_DELETED


async def test_purge_deletes_old_finished_runs_in_batches(backend: Backend) -> None:
    wf = backend.build(failing("purged"), pause_retry=None)
    admin = Admin(wf._engine.store, clock=backend.clock)
    async with wf:
        ids = [await wf.trigger(f"good-{i}") for i in range(5)]
        for i, rid in enumerate(ids):
            await wf.await_(f"good-{i}", rid, Status.DONE, timeout=15)
        stuck = await wf.trigger("bad-x")
    cut = backend.clock.now() + timedelta(seconds=1)
    assert await admin.purge(cut, batch=2) == 5
    left = await admin.runs(workflow="purged")
    assert [r.run_id for r in left] == [stuck]
    with pytest.raises(ValueError):
        await admin.purge(cut.replace(tzinfo=None))


def test_graph_needs_a_registered_workflow(backend: Backend) -> None:
    wf = backend.build(failing("drawn"))
    admin = Admin(wf._engine.store, [wf])
    assert "stateDiagram-v2" in admin.graph("drawn")
    with pytest.raises(ValueError, match="registered"):
        admin.graph("other")
