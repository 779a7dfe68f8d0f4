"""The Workflow API: trigger, await_, callback, reads, and run/stop."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from workflow import (
    Builder,
    Filter,
    InvalidTransitionError,
    RecordNotFoundError,
    Run,
    RunFinishedError,
    RunState,
    State,
    WorkflowInProgressError,
)
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, require, trigger_callback_on

from .support import Obj, Status, build


async def to_middle(run: Run[Obj, Status]) -> Status:
    run.object.count += 1
    return Status.MIDDLE


async def to_done(run: Run[Obj, Status]) -> Status:
    run.object.count += 10
    return Status.DONE


def two_steps(name: str = "api") -> Builder[Obj, Status]:
    b = Builder[Obj, Status](name)
    b.add_step(Status.STARTED, to_middle, Status.MIDDLE)
    b.add_step(Status.MIDDLE, to_done, Status.DONE)
    return b


async def test_trigger_stores_version_one_with_its_origin(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    store = MemRecordStore()
    wf = build(two_steps(), clock, registry, store=store)
    rid = await wf.trigger("user-1", initial_value=Obj(note="hi"))
    assert uuid.UUID(rid).version == 4
    rec = await store.lookup(rid)
    assert (rec.run_state, rec.status, rec.meta.version) == (RunState.INITIATED, 1, 1)
    assert rec.meta.status_description == "STARTED"
    assert "test_workflow_api.py" in rec.meta.trace_origin
    assert rec.created_at == rec.updated_at == clock.now()
    assert json.loads(rec.object) == {"count": 0, "note": "hi"}


async def test_producer_only_trigger_is_run_by_another_process(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    streamer, store, roles = MemStreamer(clock), MemRecordStore(), MemRoleScheduler()
    producer = two_steps().build(streamer, store, roles, clock=clock, metrics_registry=registry)
    worker = two_steps().build(streamer, store, roles, clock=clock, metrics_registry=registry)
    rid = await producer.trigger("p1")  # producer never calls run()
    async with worker:
        run = await producer.await_("p1", rid, Status.DONE, timeout=5)
    assert run.object.count == 11


async def test_concurrent_triggers_for_one_foreign_id_make_one_run(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    store = MemRecordStore()
    wf = build(two_steps(), clock, registry, store=store)
    results = await asyncio.gather(*(wf.trigger("same") for _ in range(20)), return_exceptions=True)
    ids = [r for r in results if isinstance(r, str)]
    errors = [r for r in results if not isinstance(r, str)]
    assert len(ids) == 1
    assert len(errors) == 19 and all(isinstance(e, WorkflowInProgressError) for e in errors)
    assert [r.run_id for r in await store.list("api")] == ids


async def test_new_run_after_the_last_finished(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    wf = build(two_steps(), clock, registry)
    async with wf:
        first = await wf.trigger("again")
        with pytest.raises(WorkflowInProgressError):
            await wf.trigger("again")
        await wf.await_("again", first, Status.DONE, timeout=5)
        second = await wf.trigger("again")
        assert second != first
        assert (await wf.latest("again")).run_id == second


@pytest.mark.parametrize("start_at", [Status.DONE, Status.UNKNOWN, Status.OTHER_END, 99, "STARTED"])
async def test_bad_start_is_refused_and_changes_nothing(
    start_at: object, clock: FakeClock, registry: CollectorRegistry
) -> None:
    wf = build(two_steps(), clock, registry)
    with pytest.raises(ValueError):
        await wf.trigger("x", start_at=start_at)  # type: ignore[arg-type]
    with pytest.raises(RecordNotFoundError):
        await wf.latest("x")


async def test_start_at_a_later_status(clock: FakeClock, registry: CollectorRegistry) -> None:
    wf = build(two_steps(), clock, registry)
    async with wf:
        rid = await wf.trigger("late", Status.MIDDLE)
        run = await wf.await_("late", rid, Status.DONE, timeout=5)
    assert run.object.count == 10


async def test_bad_objects_and_foreign_ids(clock: FakeClock, registry: CollectorRegistry) -> None:
    wf = build(two_steps(), clock, registry)
    with pytest.raises(ValidationError):
        await wf.trigger("v", initial_value={"count": "not a number"})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await wf.trigger("")
    with pytest.raises(ValueError):
        await wf.trigger(123)  # type: ignore[arg-type]
    with pytest.raises(RecordNotFoundError):
        await wf.latest("v")

    class Needs(BaseModel):
        required: int

    b = Builder[Needs, Status]("needs")
    b.add_step(Status.STARTED, lambda r: Status.DONE, Status.DONE)
    strict = b.build(MemStreamer(), MemRecordStore(), MemRoleScheduler(), metrics_registry=registry)
    with pytest.raises(ValueError, match="initial_value"):
        await strict.trigger("n")


@pytest.mark.parametrize(
    "foreign_id", ["ünïcødé-✓", "x" * 10_000, "'; DROP TABLE runs; --", "a b\nc\t%_"]
)
async def test_hostile_foreign_ids_round_trip(
    foreign_id: str, clock: FakeClock, registry: CollectorRegistry
) -> None:
    wf = build(two_steps(), clock, registry)
    async with wf:
        rid = await wf.trigger(foreign_id)
        run = await wf.await_(foreign_id, rid, Status.DONE, timeout=5)
    assert run.foreign_id == foreign_id
    assert (await wf.latest(foreign_id)).run_id == rid


async def test_await_returns_at_once_when_already_there(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    wf = build(two_steps(), clock, registry)
    rid = await wf.trigger("now")
    # Not running: nothing will ever move the run, yet it is already at STARTED.
    run = await wf.await_("now", rid, Status.STARTED, timeout=0.5)
    assert run.status is Status.STARTED and run.run_state is RunState.INITIATED


async def test_await_never_misses_a_status_passed_quickly(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    wf = build(two_steps(), clock, registry)
    rid = await wf.trigger("fast")
    waiter = asyncio.create_task(wf.await_("fast", rid, Status.MIDDLE, timeout=5))
    await asyncio.sleep(0)  # let await_ read the run (at STARTED) before anything moves
    async with wf:
        run = await waiter
        await wf.await_("fast", rid, Status.DONE, timeout=5)
    assert run.status is Status.MIDDLE and run.object.count == 1


async def test_await_errors(clock: FakeClock, registry: CollectorRegistry) -> None:
    wf = build(two_steps(), clock, registry)
    rid = await wf.trigger("e")
    with pytest.raises(TimeoutError):
        await wf.await_("e", rid, Status.DONE, timeout=0.05)
    with pytest.raises(RecordNotFoundError):
        await wf.await_("e", "missing-run", Status.DONE, timeout=1)
    with pytest.raises(RecordNotFoundError):
        await wf.await_("someone-else", rid, Status.DONE, timeout=1)
    with pytest.raises(ValueError):
        await wf.await_("e", rid, Status.UNKNOWN, timeout=1)
    async with wf:
        await wf.await_("e", rid, Status.DONE, timeout=5)
        with pytest.raises(RunFinishedError):
            await wf.await_("e", rid, Status.STARTED, timeout=1)


class Confirm(BaseModel):
    confirmed: bool


def callback_builder(calls: list[bytes]) -> Builder[Obj, Status]:
    async def decide(run: Run[Obj, Status], payload: bytes) -> Status | None:
        calls.append(payload)
        body = Confirm.model_validate_json(payload)
        if not body.confirmed:
            return run.skip()
        run.object.note = "confirmed"
        return Status.MIDDLE

    def second(run: Run[Obj, Status], payload: bytes) -> Status:
        calls.append(b"second:" + payload)
        return Status.OTHER_END

    async def bad(run: Run[Obj, Status], payload: bytes) -> Status:
        return Status.STARTED  # not declared

    b = Builder[Obj, Status]("callbacks")
    b.add_callback(Status.STARTED, decide, Status.MIDDLE)
    b.add_callback(Status.STARTED, second, Status.OTHER_END)
    b.add_callback(Status.MIDDLE, bad, Status.DONE)
    return b


async def test_callbacks(clock: FakeClock, registry: CollectorRegistry) -> None:
    calls: list[bytes] = []
    store = MemRecordStore()
    wf = build(callback_builder(calls), clock, registry, store=store)
    with pytest.raises(RecordNotFoundError):
        await wf.callback("nobody", Status.STARTED, b"{}")
    rid = await wf.trigger("c")
    # malformed payload: the callback's own validation error, nothing changed
    with pytest.raises(ValidationError):
        await wf.callback("c", Status.STARTED, b"{not json")
    assert (await store.lookup(rid)).meta.version == 1
    calls.clear()
    assert await wf.callback("c", Status.STARTED, b'{"confirmed": true}') is True
    # the first transitioned; the second saw the new status and was not called
    assert calls == [b'{"confirmed": true}']
    rec = await store.lookup(rid)
    assert (rec.status, rec.meta.version) == (int(Status.MIDDLE), 2)
    assert json.loads(rec.object)["note"] == "confirmed"
    # not at that status any more: False, nothing changes
    assert await wf.callback("c", Status.STARTED, b'{"confirmed": true}') is False
    with pytest.raises(InvalidTransitionError):
        await wf.callback("c", Status.MIDDLE, b"")
    assert (await store.lookup(rid)).meta.version == 2
    with pytest.raises(ValueError, match="no callback"):
        await wf.callback("c", Status.DONE, b"")


async def test_callback_same_payload_for_each_and_skips(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    calls: list[bytes] = []
    store = MemRecordStore()
    wf = build(callback_builder(calls), clock, registry, store=store)
    rid = await wf.trigger("s")
    # first skips (not confirmed), second gets the same bytes and moves the run
    assert await wf.callback("s", Status.STARTED, b'{"confirmed": false}') is True
    assert calls == [b'{"confirmed": false}', b'second:{"confirmed": false}']
    assert (await store.lookup(rid)).run_state is RunState.COMPLETED
    # stopped runs are not called back
    rid2 = await wf.trigger("t")
    await wf.pause(rid2)
    assert await wf.callback("t", Status.STARTED, b'{"confirmed": true}') is False


async def test_trigger_callback_on_encodes_payloads(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    calls: list[bytes] = []
    wf = build(callback_builder(calls), clock, registry)
    async with wf:
        rid = await wf.trigger("h")
        assert await trigger_callback_on(wf, "h", rid, Status.STARTED, Confirm(confirmed=True))
        await require(wf, "h", Status.MIDDLE, Obj(note="confirmed"))
    assert json.loads(calls[0]) == {"confirmed": True}


async def test_reads_and_list(clock: FakeClock, registry: CollectorRegistry) -> None:
    wf = build(two_steps(), clock, registry)
    ids = []
    for i in range(5):
        ids.append(await wf.trigger(f"f{i}"))
        clock.step(1)
    await wf.pause(ids[1])
    assert (await wf.lookup(ids[0])).foreign_id == "f0"
    with pytest.raises(RecordNotFoundError):
        await wf.lookup("nope")
    with pytest.raises(RecordNotFoundError):
        await wf.latest("nope")
    assert [r.run_id for r in await wf.list()] == ids
    assert [r.run_id for r in await wf.list(order="desc", limit=2)] == ids[::-1][:2]
    assert [r.run_id for r in await wf.list(offset=3)] == ids[3:]
    paused = await wf.list(Filter.by_run_state(RunState.PAUSED))
    assert [r.run_id for r in paused] == [ids[1]]
    assert [r.run_id for r in await wf.list(Filter.by_foreign_id("f2", "f4"))] == [ids[2], ids[4]]
    with pytest.raises(ValueError):
        await wf.list(order="sideways")  # type: ignore[arg-type]


async def test_run_and_stop_are_idempotent_and_restartable(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    def engine_tasks() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("workflow:")]

    wf = build(two_steps(), clock, registry)
    await wf.stop()  # never started: no-op
    await wf.run()
    started = engine_tasks()
    assert len(started) == len(wf.states()) > 0
    await wf.run()  # already running: starts nothing more
    assert engine_tasks() == started
    await wf.stop()
    await wf.stop()
    # every process the two run() calls started was stopped: none is left behind
    assert [t for t in engine_tasks() if not t.done()] == []
    assert all(t.done() for t in started)
    assert set(wf.states().values()) == {State.SHUTDOWN}
    async with wf:  # restart after stop
        rid = await wf.trigger("restart")
        await wf.await_("restart", rid, Status.DONE, timeout=5)


async def test_trigger_refuses_statuses_outside_the_graph_or_terminal(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """README: trigger refuses statuses outside the graph or terminal ones (ValueError), and
    stores nothing."""
    b = Builder[Obj, Status]("starts")
    b.add_step(Status.STARTED, to_middle, Status.MIDDLE)
    b.add_step(Status.MIDDLE, to_done, Status.DONE)
    wf = build(b, clock, registry)
    with pytest.raises(ValueError, match="terminal status"):
        await wf.trigger("t", Status.DONE)
    with pytest.raises(ValueError, match="not configured"):
        await wf.trigger("t", Status.OTHER_END)
    with pytest.raises(ValueError):
        await wf.trigger("t", 7)  # type: ignore[arg-type]
    assert await wf.list() == []


def test_a_workflow_shows_users_only_its_documented_api(registry: CollectorRegistry) -> None:
    """The engine's machinery (store, graph, write, apply ...) is private: a user sees the
    calls the README documents and nothing else."""
    b = Builder[Obj, Status]("front door")
    b.add_step(Status.STARTED, to_middle, Status.MIDDLE)
    wf = b.build(MemStreamer(), MemRecordStore(), MemRoleScheduler(), metrics_registry=registry)
    public = {name for name in dir(wf) if not name.startswith("_")}
    assert public == {
        "name",
        "trigger",
        "await_",
        "callback",
        "schedule",
        "pause",
        "resume",
        "cancel",
        "delete_data",
        "move",
        "lookup",
        "latest",
        "list",
        "run",
        "stop",
        "states",
    }
    assert wf.name == "front door"
