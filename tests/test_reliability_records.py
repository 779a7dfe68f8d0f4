"""Records the current code must survive or refuse, on every back end:

- runs left at a status that a later version of the workflow removed from its enum (a deploy):
  they never stop the delete or pause-retry consumers, and they can be listed, looked up,
  hooked, paused, resumed, cancelled, deleted and awaited;
- NaN / ±inf floats, which JSON cannot carry (pydantic would store ``null``): refused at
  ``trigger`` and at a step's or callback's write, where nothing is written;
- a member of another ``IntEnum`` / ``IntFlag`` as a status: refused at ``trigger`` and as a
  step's result alike, never taken by its number.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from workflow import (
    Builder,
    InvalidStatusError,
    PausedBy,
    RecordNotFoundError,
    Run,
    RunFinishedError,
    RunState,
    TypedRecord,
    UnstorableObjectError,
    Workflow,
)
from workflow.testing import wait_for

from .backends import Backend

TEN_MINUTES = timedelta(minutes=10)


class Doc(BaseModel):
    note: str = ""
    score: float = 0.0
    maybe: float | None = None
    scores: list[float] = []


# -- a status removed by a deploy ----------------------------------------------------------


class S1(enum.IntEnum):
    """Version 1 of the statuses."""

    UNKNOWN = 0
    START = 1
    GONE = 3  # removed by version 2
    DONE = 4


class S2(enum.IntEnum):
    """Version 2 of the same workflow's statuses: GONE (3) is no more."""

    UNKNOWN = 0
    START = 1
    DONE = 4


def version_1() -> Builder[Doc, S1]:
    async def done(run: Run[Doc, S1], payload: bytes) -> S1:
        return S1.DONE

    b = Builder[Doc, S1]("deploy")
    b.add_step(S1.START, lambda run: S1.DONE, S1.DONE)
    b.add_callback(S1.GONE, done, S1.DONE)  # runs wait at GONE: no step consumes it
    return b


class Hooks:
    """Records what the pause and cancel hooks receive; ``seen`` is set once every foreign id
    in ``expect`` has arrived."""

    def __init__(self, *expect: str) -> None:
        self.expect = set(expect)
        self.records: list[TypedRecord[Doc, S2]] = []
        self.seen = asyncio.Event()

    async def __call__(self, record: TypedRecord[Doc, S2]) -> None:
        self.records.append(record)
        if {r.foreign_id for r in self.records} >= self.expect:
            self.seen.set()


def version_2(hooks: Hooks | None = None) -> Builder[Doc, S2]:
    async def finish(run: Run[Doc, S2]) -> S2:
        run.object.note += " finished"
        return S2.DONE

    b = Builder[Doc, S2]("deploy")
    b.add_step(S2.START, finish, S2.DONE)
    if hooks is not None:
        b.on_pause(hooks)
        b.on_cancel(hooks)
    return b


async def left_at_gone(backend: Backend) -> dict[str, str]:
    """Runs that version 1 left at GONE (3): one paused, one parked (initiated), one with a
    data-deletion request. Version 1 never ran, so their events wait for version 2."""
    wf1 = backend.build(version_1(), pause_retry=None)
    ids = {}
    for fid in ("paused", "parked", "deleted"):
        ids[fid] = await wf1.trigger(fid, S1.GONE, initial_value=Doc(note=fid))
    await wf1.pause(ids["paused"], "paused by version 1")
    await wf1.cancel(ids["deleted"])
    await wf1.delete_data(ids["deleted"])
    return ids


def at_gone(run: TypedRecord[Any, Any]) -> bool:
    """The run's status is the stored number 3, a plain int (S2 has no member 3)."""
    return run.status == 3 and type(run.status) is int


async def test_delete_and_pause_retry_consumers_go_past_runs_at_a_removed_status(
    backend: Backend,
) -> None:
    gone = await left_at_gone(backend)
    # operator pauses, resumed here as luno resumed every pause
    wf = backend.build(version_2(), pause_retry=TEN_MINUTES, pause_retry_for=(PausedBy.OPERATOR,))
    # The new version's own work, queued behind the old runs' events on the same topics.
    done = await wf.trigger("v2 done", initial_value=Doc(note="v2"))
    paused = await wf.trigger("v2 paused", initial_value=Doc(note="v2"))
    await wf.pause(paused, "paused by version 2")
    async with wf:
        await wf.await_("v2 done", done, S2.DONE, timeout=10)
        await wf.delete_data(done)
        await wait_for(wf, "v2 done", lambda r: r.run_state is RunState.DATA_DELETED)
        old = await wait_for(wf, "deleted", lambda r: r.run_state is RunState.DATA_DELETED)
        assert at_gone(old) and old.meta.status_description == "3"
        assert json.loads(old.record.object) == {"result": "deleted"}

        backend.clock.step(TEN_MINUTES)  # both pauses are due: both runs are resumed
        resumed = await wf.await_("v2 paused", paused, S2.DONE, timeout=10)
        assert resumed.object.note == "v2 finished" and resumed.run_state is RunState.COMPLETED
        old = await wait_for(wf, "paused", lambda r: r.run_state is RunState.RUNNING)
        assert at_gone(old) and old.meta.status_description == "3"
        assert old.run_id == gone["paused"]


async def test_reads_and_hooks_accept_runs_at_a_removed_status(backend: Backend) -> None:
    gone = await left_at_gone(backend)
    hooks = Hooks("paused", "parked")
    wf = backend.build(version_2(hooks), pause_retry=None)
    runs = await wf.list(limit=10)
    assert sorted(r.foreign_id for r in runs) == ["deleted", "parked", "paused"]
    assert all(at_gone(r) for r in runs)
    assert {r.foreign_id: r.object.note for r in runs if r.foreign_id != "deleted"} == {
        "paused": "paused",
        "parked": "parked",
    }
    run = await wf.lookup(gone["parked"])
    assert at_gone(run) and run.run_state is RunState.INITIATED and run.object == Doc(note="parked")
    assert "status=3" in repr(run)
    latest = await wf.latest("paused")
    assert at_gone(latest) and latest.run_state is RunState.PAUSED
    assert latest.meta.status_description == "GONE"  # written by version 1

    async with wf:
        await wf.cancel(gone["parked"], "cancelled by version 2")
        # The pause (version 1) and the cancel (version 2) reach the hooks, status 3 as an int.
        await asyncio.wait_for(hooks.seen.wait(), timeout=10)
    hooked = {h.foreign_id: h for h in hooks.records}
    # (The cancel hook of "deleted" may find its data erased by then, and skip it.)
    assert set(hooked) - {"deleted"} == {"paused", "parked"}, hooks.records
    assert all(at_gone(h) for h in hooks.records)
    assert hooked["paused"].run_state is RunState.PAUSED
    assert hooked["parked"].run_state is RunState.CANCELLED
    assert hooked["parked"].meta.status_description == "3"


async def test_run_state_control_and_await_of_runs_at_a_removed_status(backend: Backend) -> None:
    gone = await left_at_gone(backend)
    wf = backend.build(version_2(), pause_retry=None)
    parked, paused = gone["parked"], gone["paused"]

    await wf.pause(parked, "paused by version 2")
    run = await wf.lookup(parked)
    assert at_gone(run) and run.run_state is RunState.PAUSED
    assert run.meta.status_description == "3" and run.meta.version == 2
    await wf.resume(parked)
    assert (await wf.lookup(parked)).run_state is RunState.RUNNING
    await wf.resume(paused)
    with pytest.raises(TimeoutError, match="it is at 3"):  # waits by the target's number
        await wf.await_("paused", paused, S2.DONE, timeout=0.2)
    await wf.cancel(paused, "cancelled by version 2")
    with pytest.raises(RunFinishedError, match="finished at 3"):
        await wf.await_("paused", paused, S2.DONE, timeout=10)
    await wf.delete_data(paused)
    run = await wf.lookup(paused)
    assert at_gone(run) and run.run_state is RunState.REQUESTED_DATA_DELETED
    assert [r.meta.status_description for r in await wf._engine.store.history(paused)] == [  # type: ignore[attr-defined]
        "GONE",
        "GONE",
        "3",
        "3",
        "3",
    ]


async def test_trigger_refuses_a_status_the_enum_lacks(backend: Backend) -> None:
    await left_at_gone(backend)
    wf = backend.build(version_2(), pause_retry=None)
    for bad in (3, S1.GONE):
        with pytest.raises(InvalidStatusError):
            await wf.trigger("new", bad)
    with pytest.raises(RecordNotFoundError):
        await wf.latest("new")


# -- NaN and infinity -------------------------------------------------------------------------


class Status(enum.IntEnum):
    UNKNOWN = 0
    START = 1
    MIDDLE = 2
    DONE = 3


NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize(
    ("obj", "field"),
    [(Doc(score=v), "score") for v in NON_FINITE]
    + [(Doc(maybe=math.nan), "maybe"), (Doc(scores=[1.0, 2.0, -math.inf]), "scores[2]")],
)
async def test_trigger_refuses_nan_and_infinity(backend: Backend, obj: Doc, field: str) -> None:
    b = Builder[Doc, Status]("nan")
    b.add_step(Status.START, lambda run: Status.DONE, Status.DONE)
    wf = backend.build(b, pause_retry=None)
    with pytest.raises(UnstorableObjectError, match=rf"field '{re_escape(field)}'") as info:
        await wf.trigger("a", initial_value=obj)
    assert isinstance(info.value, ValueError)
    with pytest.raises(RecordNotFoundError):
        await wf.latest("a")
    # A None (written as null, like NaN would be) is stored, and a run still starts.
    rid = await wf.trigger("a", initial_value=Doc(maybe=None, note="null NaN Infinity"))
    assert (await wf.lookup(rid)).object == Doc(note="null NaN Infinity")


def re_escape(text: str) -> str:
    return text.replace("[", r"\[").replace("]", r"\]")


class AsStrings(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    score: float = 0.0


class AsConstants(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")
    score: float = 0.0


async def test_nan_written_as_a_string_is_stored_and_as_a_constant_refused(
    backend: Backend,
) -> None:
    b = Builder[AsConstants, Status]("constants")
    b.add_step(Status.START, lambda run: Status.DONE, Status.DONE)
    wf = backend.build(b, pause_retry=None)
    with pytest.raises(UnstorableObjectError, match="not JSON"):
        await wf.trigger("a", initial_value=AsConstants(score=math.inf))

    s = Builder[AsStrings, Status]("strings")
    s.add_step(Status.START, lambda run: Status.DONE, Status.DONE)
    ws = backend.build(s, pause_retry=None)
    rid = await ws.trigger("a", initial_value=AsStrings(score=math.inf))
    assert (await ws.lookup(rid)).object.score == math.inf


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
async def test_a_step_writing_nan_is_a_step_error_and_writes_nothing(
    backend: Backend, value: float
) -> None:
    calls = 0

    async def step(run: Run[Doc, Status]) -> Status:
        nonlocal calls
        calls += 1
        run.object.scores.append(value)
        return Status.MIDDLE

    b = Builder[Doc, Status]("nan step")
    b.add_step(Status.START, step, Status.MIDDLE).with_options(
        pause_after_err_count=2, err_backoff=timedelta(0)
    )
    b.add_step(Status.MIDDLE, lambda run: Status.DONE, Status.DONE)
    wf = backend.build(b, pause_retry=None)
    async with wf:
        rid = await wf.trigger("a", initial_value=Doc(note="a"))
        paused = await wait_for(wf, "a", lambda r: r.run_state is RunState.PAUSED)
    assert calls == 2  # counted and retried, then paused by the error count
    assert "2 errors" in paused.meta.run_state_reason
    assert "UnstorableObjectError" in paused.meta.run_state_reason
    assert "scores[0]" in paused.meta.run_state_reason
    history = await wf._engine.store.history(rid)  # type: ignore[attr-defined]
    assert [(r.status, r.run_state, r.meta.attempt) for r in history] == [
        (Status.START, RunState.INITIATED, 1),
        (Status.START, RunState.INITIATED, 2),  # the retry, scheduled
        (Status.START, RunState.PAUSED, 2),
    ]
    assert all(r.object == history[0].object for r in history)
    assert (await wf.lookup(rid)).object == Doc(note="a")  # still decodes


async def test_a_callback_writing_infinity_raises_and_writes_nothing(backend: Backend) -> None:
    async def cb(run: Run[Doc, Status], payload: bytes) -> Status:
        run.object.score = math.inf
        return Status.DONE

    b = Builder[Doc, Status]("inf callback")
    b.add_callback(Status.MIDDLE, cb, Status.DONE)
    wf = backend.build(b, pause_retry=None)
    rid = await wf.trigger("a", Status.MIDDLE)
    with pytest.raises(UnstorableObjectError, match="field 'score' is inf"):
        await wf.callback("a", Status.MIDDLE)
    assert len(await wf._engine.store.history(rid)) == 1  # type: ignore[attr-defined]
    assert (await wf.lookup(rid)).object == Doc()


# -- another enum's member as a status ----------------------------------------------------------


class OtherEnum(enum.IntEnum):
    MIDDLE = 2  # the number of Status.MIDDLE


class OtherFlag(enum.IntFlag):
    MIDDLE = 2


@pytest.mark.parametrize("other", [OtherEnum.MIDDLE, OtherFlag.MIDDLE], ids=["IntEnum", "IntFlag"])
async def test_another_enums_member_is_refused_by_trigger_and_as_a_steps_result(
    backend: Backend, other: Any
) -> None:
    b = Builder[Doc, Status]("other enum")
    b.add_step(Status.START, lambda run: other, Status.MIDDLE).with_options(pause_after_err_count=1)
    b.add_callback(Status.MIDDLE, lambda run, payload: Status.DONE, Status.DONE)
    wf: Workflow[Doc, Status] = backend.build(b, pause_retry=None)
    with pytest.raises(InvalidStatusError) as info:
        await wf.trigger("a", other)
    message = f"must be a Status, got {other!r}, a member of another enum"
    assert message in str(info.value)
    with pytest.raises(RecordNotFoundError):
        await wf.latest("a")

    async with wf:
        rid = await wf.trigger("a")
        paused = await wait_for(wf, "a", lambda r: r.run_state is RunState.PAUSED)
    reason = paused.meta.run_state_reason
    assert "InvalidTransitionError" in reason and message in reason, reason
    assert paused.status is Status.START
    assert [r.status for r in await wf._engine.store.history(rid)] == [1, 1]  # type: ignore[attr-defined]
