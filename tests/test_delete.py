"""Data deletion (luno §3.4): Completed / Cancelled / DataDeleted -> RequestedDataDeleted ->
DataDeleted, with the object replaced by ``{"result":"deleted"}`` or ``custom_delete(obj)``."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from workflow import Builder, Run, RunState, UnableToDeleteError, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, wait_for

DELETED = b'{"result":"deleted"}'


class Status(enum.IntEnum):
    UNKNOWN = 0
    START = 1
    WAITING = 2
    DONE = 3


class Customer(BaseModel):
    name: str = ""
    email: str = ""


async def start(run: Run[Customer, Status]) -> Status:
    run.object.email = "andrew@example.com"
    return Status.WAITING


async def finish(run: Run[Customer, Status], payload: bytes) -> Status:
    return Status.DONE


def build(
    clock: FakeClock, registry: Any, custom_delete: Callable[..., Any] | None = None
) -> tuple[Workflow[Customer, Status], MemRecordStore]:
    b = Builder[Customer, Status]("delete test")
    b.add_step(Status.START, start, Status.WAITING)
    b.add_callback(Status.WAITING, finish, Status.DONE)
    store = MemRecordStore()
    wf = b.build(
        MemStreamer(clock),
        store,
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
        custom_delete=custom_delete,
    )
    return wf, store


async def completed_run(wf: Workflow[Customer, Status], fid: str) -> str:
    run_id = await wf.trigger(fid, initial_value=Customer(name="Andrew"))
    await wf.await_(fid, run_id, Status.WAITING, timeout=5)
    assert await wf.callback(fid, Status.WAITING)
    await wf.await_(fid, run_id, Status.DONE, timeout=5)
    return run_id


async def deleted(wf: Workflow[Customer, Status], fid: str, min_version: int = 0) -> Any:
    return await wait_for(
        wf,
        fid,
        lambda r: r.run_state is RunState.DATA_DELETED and r.meta.version > min_version,
        timeout=5,
    )


async def test_delete_completed_run(clock, registry):
    wf, store = build(clock, registry)
    async with wf:
        run_id = await completed_run(wf, "andrew")
        await wf.delete_data(run_id, "right to be forgotten")
        await deleted(wf, "andrew")
        record = await store.lookup(run_id)
        assert record.object == DELETED
        assert record.run_state is RunState.DATA_DELETED
        assert record.status == Status.DONE
        assert record.meta.run_state_reason == "right to be forgotten"
        states = [r.run_state for r in await store.history(run_id)]
        assert states[-3:] == [
            RunState.COMPLETED,
            RunState.REQUESTED_DATA_DELETED,
            RunState.DATA_DELETED,
        ]
        # The personal data is gone from the latest version.
        assert b"andrew@example.com" not in record.object


async def test_delete_cancelled_run(clock, registry):
    wf, store = build(clock, registry)
    async with wf:
        run_id = await wf.trigger("andrew")
        await wf.await_("andrew", run_id, Status.WAITING, timeout=5)
        await wf.cancel(run_id, "changed my mind")
        await wf.delete_data(run_id, "cleanup")
        await deleted(wf, "andrew")
        record = await store.lookup(run_id)
        assert record.object == DELETED
        assert record.meta.run_state_reason == "cleanup"


def blank_email(obj: Customer) -> Customer:
    return Customer(name=obj.name, email="")


async def async_blank_email(obj: Customer) -> Customer:
    return blank_email(obj)


@pytest.mark.parametrize("fn", [blank_email, async_blank_email], ids=["sync", "async"])
async def test_custom_delete_replaces_the_object(clock, registry, fn):
    wf, store = build(clock, registry, custom_delete=fn)
    async with wf:
        run_id = await completed_run(wf, "andrew")
        await wf.delete_data(run_id)
        await deleted(wf, "andrew")
        record = await store.lookup(run_id)
        assert Customer.model_validate_json(record.object) == Customer(name="Andrew")
        assert (await wf.lookup(run_id)).object == Customer(name="Andrew")


async def test_delete_refused_for_unfinished_runs(clock, registry):
    wf, store = build(clock, registry)
    async with wf:
        running = await wf.trigger("running")
        await wf.await_("running", running, Status.WAITING, timeout=5)  # step ran: RUNNING
        paused = await wf.trigger("paused")
        await wf.await_("paused", paused, Status.WAITING, timeout=5)
        await wf.pause(paused, "hold")
        initiated = await wf.trigger("initiated", Status.WAITING)  # no step consumes it
        expected = {
            running: RunState.RUNNING,
            paused: RunState.PAUSED,
            initiated: RunState.INITIATED,
        }
        for run_id, state in expected.items():
            before = await store.history(run_id)
            assert before[-1].run_state is state
            with pytest.raises(UnableToDeleteError):
                await wf.delete_data(run_id, "too early")
            assert await store.history(run_id) == before  # nothing written
        # Nothing was queued for deletion either: finishing a run leaves its data in place.
        assert await wf.callback("running", Status.WAITING)
        await wf.await_("running", running, Status.DONE, timeout=5)
        await wf.delete_data(running, "now")
        await deleted(wf, "running")
        assert (await store.lookup(initiated)).run_state is RunState.INITIATED
        assert (await store.lookup(paused)).run_state is RunState.PAUSED


async def test_data_deleted_run_can_be_deleted_again(clock, registry):
    calls: list[Customer] = []

    def scrub(obj: Customer) -> Customer:
        calls.append(obj)
        return Customer(name="", email=obj.email)

    wf, store = build(clock, registry, custom_delete=scrub)
    async with wf:
        run_id = await completed_run(wf, "andrew")
        await wf.delete_data(run_id, "first")
        first = await deleted(wf, "andrew")
        await wf.delete_data(run_id, "second")
        second = await deleted(wf, "andrew", min_version=first.meta.version)
        assert second.meta.version == first.meta.version + 2
        assert second.meta.run_state_reason == "second"
        assert calls == [
            Customer(name="Andrew", email="andrew@example.com"),
            Customer(name="", email="andrew@example.com"),
        ]
        record = await store.lookup(run_id)
        assert record.run_state is RunState.DATA_DELETED
        assert [r.run_state for r in await store.history(run_id)][-4:] == [
            RunState.REQUESTED_DATA_DELETED,
            RunState.DATA_DELETED,
            RunState.REQUESTED_DATA_DELETED,
            RunState.DATA_DELETED,
        ]
