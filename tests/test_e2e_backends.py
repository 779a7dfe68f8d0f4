"""The engine end to end on every back end: memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from workflow import (
    Builder,
    Run,
    RunState,
    TypedRecord,
    WorkflowInProgressError,
    duration_timer,
)
from workflow.testing import await_timeout_insert, require, trigger_callback_on, wait_for

from .backends import Backend
from .support import Obj, Status


async def bump(run: Run[Obj, Status]) -> Status:
    run.object.count += 1
    return Status.MIDDLE


async def finish(run: Run[Obj, Status]) -> Status:
    run.object.count += 10
    return Status.DONE


def chain(name: str = "e2e") -> Builder[Obj, Status]:
    b = Builder[Obj, Status](name)
    b.add_step(Status.STARTED, bump, Status.MIDDLE)
    b.add_step(Status.MIDDLE, finish, Status.DONE)
    return b


async def test_steps_and_history(backend: Backend) -> None:
    wf = backend.build(chain())
    async with wf:
        rid = await wf.trigger("a", initial_value=Obj(note="x"))
        run = await wf.await_("a", rid, Status.DONE, timeout=10)
    assert run.object == Obj(count=11, note="x") and run.run_state is RunState.COMPLETED
    history = await wf._engine.store.history(rid)  # type: ignore[attr-defined]
    assert [(r.meta.version, r.status, r.run_state) for r in history] == [
        (1, 1, RunState.INITIATED),
        (2, 2, RunState.RUNNING),
        (3, 3, RunState.COMPLETED),
    ]


async def test_sharded_steps_apply_each_transition_once(backend: Backend) -> None:
    calls: Counter[str] = Counter()

    async def step(run: Run[Obj, Status]) -> Status:
        calls[run.run_id] += 1
        return Status.DONE

    b = Builder[Obj, Status]("sharded")
    b.add_step(Status.STARTED, step, Status.DONE).with_options(parallel_count=3)
    wf = backend.build(b)
    async with wf:
        ids = {f"e{i}": await wf.trigger(f"e{i}") for i in range(60)}
        for fid, rid in ids.items():
            await wf.await_(fid, rid, Status.DONE, timeout=20)
    assert len(calls) == 60 and set(calls.values()) == {1}


async def test_concurrent_triggers_make_one_run(backend: Backend) -> None:
    wf = backend.build(chain())
    results = await asyncio.gather(*(wf.trigger("same") for _ in range(10)), return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 1
    assert all(isinstance(r, WorkflowInProgressError) for r in results if not isinstance(r, str))


class Answer(BaseModel):
    ok: bool


async def test_callbacks(backend: Backend) -> None:
    async def answered(run: Run[Obj, Status], payload: bytes) -> Status:
        run.object.note = "ok" if Answer.model_validate_json(payload).ok else "no"
        return Status.DONE

    b = Builder[Obj, Status]("callback")
    b.add_callback(Status.STARTED, answered, Status.DONE)
    wf = backend.build(b)
    async with wf:
        rid = await wf.trigger("c")
        try:
            await wf.callback("c", Status.STARTED, b"nonsense")
        except ValueError:
            pass
        else:
            raise AssertionError("a malformed payload must raise")
        assert (await wf.lookup(rid)).meta.version == 1
        assert await trigger_callback_on(wf, "c", rid, Status.STARTED, {"ok": True})
        await require(wf, "c", Status.DONE, Obj(note="ok"))


async def test_timeouts_fire_on_the_clock_and_wait_for_resume(backend: Backend) -> None:
    async def expired(run: Run[Obj, Status], now: datetime) -> Status:
        run.object.note = now.isoformat()
        return Status.DONE

    b = Builder[Obj, Status]("timers")
    b.add_timeout(Status.STARTED, duration_timer(timedelta(hours=1)), expired, Status.DONE)
    wf = backend.build(b, pause_retry=None)
    clock = backend.clock
    async with wf:
        rid = await wf.trigger("t")
        await await_timeout_insert(wf, "t", rid, Status.STARTED)
        await wf.pause(rid)
        clock.step(timedelta(hours=1))
        rid2 = await wf.trigger("u")
        await await_timeout_insert(wf, "u", rid2, Status.STARTED)
        clock.step(timedelta(hours=1))
        done = await wf.await_("u", rid2, Status.DONE, timeout=10)  # the unpaused one fired
        assert datetime.fromisoformat(done.object.note) == clock.now()
        assert (await wf.lookup(rid)).status == Status.STARTED  # the paused one did not
        await wf.resume(rid)
        await wf.await_("t", rid, Status.DONE, timeout=10)


async def test_hooks_pause_resume_cancel_and_delete(backend: Backend) -> None:
    """Each hook gets the version that entered its state: a run paused after two errors,
    resumed, completed and deleted; another paused and then cancelled."""
    seen: dict[str, asyncio.Queue[tuple[str, RunState, int, str]]] = {
        name: asyncio.Queue() for name in ("pause", "cancel", "complete", "deleted")
    }

    def hook(name: str) -> object:
        async def fn(record: TypedRecord[Obj, Status]) -> None:
            seen[name].put_nowait(
                (record.foreign_id, record.run_state, int(record.status), record.object.note)
            )

        return fn

    async def next_call(name: str) -> tuple[str, RunState, int, str]:
        return await asyncio.wait_for(seen[name].get(), 10)

    calls = Counter[str]()

    async def flaky(run: Run[Obj, Status]) -> Status:
        calls[run.foreign_id] += 1
        if run.foreign_id == "doomed" or calls["flaky"] <= 2:
            raise RuntimeError("not yet")
        run.object.note = "done"
        return Status.DONE

    b = Builder[Obj, Status]("hooks")
    b.add_step(Status.STARTED, flaky, Status.DONE).with_options(
        pause_after_err_count=2, err_backoff=0
    )
    b.on_pause(hook("pause"))  # type: ignore[arg-type]
    b.on_cancel(hook("cancel"))  # type: ignore[arg-type]
    b.on_complete(hook("complete"))  # type: ignore[arg-type]
    b.on_data_deleted(hook("deleted"))  # type: ignore[arg-type]
    wf = backend.build(b, custom_delete=lambda obj: Obj(note="redacted"), pause_retry=None)
    async with wf:
        rid = await wf.trigger("flaky")
        assert await next_call("pause") == ("flaky", RunState.PAUSED, Status.STARTED, "")
        await wf.resume(rid)
        await wf.await_("flaky", rid, Status.DONE, timeout=10)
        assert await next_call("complete") == ("flaky", RunState.COMPLETED, Status.DONE, "done")
        await wf.delete_data(rid, "gdpr")
        assert await next_call("deleted") == (
            "flaky",
            RunState.DATA_DELETED,
            Status.DONE,
            "redacted",
        )
        record = await wf._engine.store.lookup(rid)
        assert record.run_state is RunState.DATA_DELETED
        assert Obj.model_validate_json(record.object) == Obj(note="redacted")
        # nothing of the object survives in any stored version either
        history = await wf._engine.store.history(rid)  # type: ignore[attr-defined]
        assert len(history) == record.meta.version
        assert [Obj.model_validate_json(r.object) for r in history] == [Obj(note="redacted")] * len(
            history
        )

        doomed = await wf.trigger("doomed")
        assert await next_call("pause") == ("doomed", RunState.PAUSED, Status.STARTED, "")
        await wf.cancel(doomed, "given up")
        assert await next_call("cancel") == ("doomed", RunState.CANCELLED, Status.STARTED, "")
        assert (await wf.lookup(doomed)).meta.run_state_reason == "given up"
    assert calls == {"flaky": 3, "doomed": 2}
    # each hook ran once per state change, and for nothing else
    assert all(q.empty() for q in seen.values()), {n: q.qsize() for n, q in seen.items()}


async def test_cancel_hook(backend: Backend) -> None:
    cancelled = asyncio.Event()

    async def on_cancel(record: TypedRecord[Obj, Status]) -> None:
        cancelled.set()

    b = chain("cancels")
    b.on_cancel(on_cancel)
    wf = backend.build(b)
    rid = await wf.trigger("x")
    await wf.cancel(rid, "no longer needed")
    async with wf:
        await asyncio.wait_for(cancelled.wait(), 10)


async def test_schedule(backend: Backend) -> None:
    wf = backend.build(chain("scheduled"))
    backend.clock.set(datetime(2024, 1, 1, 8, 30, tzinfo=UTC))
    wf.schedule("nightly", "0 0 * * *")
    async with wf:
        await backend.clock.until_waiting()
        backend.clock.set(datetime(2024, 1, 2, 0, 0, tzinfo=UTC))
        run = await wait_for(wf, "nightly", lambda r: r.status == Status.DONE, timeout=10)
    assert run.created_at == datetime(2024, 1, 2, tzinfo=UTC)


async def test_a_new_process_continues_where_the_last_stopped(backend: Backend) -> None:
    gate = asyncio.Event()

    async def held(run: Run[Obj, Status]) -> Status:
        if not gate.is_set():
            await asyncio.Event().wait()
        return Status.DONE

    def make() -> Builder[Obj, Status]:
        b = Builder[Obj, Status]("restart")
        b.add_step(Status.STARTED, bump, Status.MIDDLE)
        b.add_step(Status.MIDDLE, held, Status.DONE)
        return b

    first = backend.build(make())
    async with first:
        rid = await first.trigger("r")
        await first.await_("r", rid, Status.MIDDLE, timeout=10)
        await first.stop(grace=0.05)
    gate.set()
    second = backend.build(make())  # on SQL: new adapter objects on the same database
    async with second:
        run = await second.await_("r", rid, Status.DONE, timeout=10)
    assert run.object.count == 1 and run.meta.version == 3


async def test_a_hook_sees_the_version_its_event_announced(backend: Backend) -> None:
    """luno bug 20: a hook got the run as it was when the hook ran. Here the run is paused
    and resumed before any hook consumer runs; the pause hook must still see it paused."""
    seen: list[tuple[RunState, int]] = []
    done = asyncio.Event()

    async def on_pause(record: TypedRecord[Obj, Status]) -> None:
        seen.append((record.run_state, record.meta.version))
        done.set()

    b = Builder[Obj, Status]("versions")
    b.add_step(Status.MIDDLE, finish, Status.DONE)
    b.on_pause(on_pause)
    wf = backend.build(b, pause_retry=None)
    rid = await wf.trigger("v", start_at=Status.MIDDLE)
    await wf.pause(rid, "hold on")
    await wf.resume(rid)
    assert (await wf._engine.store.lookup(rid)).meta.version == 3
    async with wf:
        await asyncio.wait_for(done.wait(), 10)
        await wf.await_("v", rid, Status.DONE, timeout=10)
    assert seen == [(RunState.PAUSED, 2)]
