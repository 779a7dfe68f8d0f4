"""The runnable examples (``examples/``), each tested on memory and on SQLite (a file in the
test's ``tmp_path``, all four adapters SQL: tests/backends.py's ``sqlite``): the workflow its
``build``/``builder`` declares, on the tests' FakeClock, and its ``main()`` as ``python -m
examples.<name>`` runs it (on the example's own clock), on those adapters instead of memory.
``gettingstarted.main()`` runs on a SQLite file of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from examples import (
    approval,
    callback,
    connector,
    deadletter,
    dispatch,
    gettingstarted,
    payout,
    polling,
    schedule,
    timeout,
)
from examples.adapters import Adapters, MakeAdapters
from workflow import Clock, ConnectorEvent, RunState, TypedRecord, Workflow
from workflow.adapters.memstreamer import MemConnector
from workflow.testing import (
    FakeClock,
    await_timeout_insert,
    require,
    trigger_callback_on,
    wait_for,
)

from .backends import Backend


@pytest.fixture(params=["memory", "sqlite"])
def backend_engine(request: pytest.FixtureRequest) -> tuple[str, AsyncEngine | None]:
    """Overrides tests/backends.py's for this module: every example test runs on memory and on
    SQLite (``sqlite_engine``: a file in ``tmp_path``, made by ``create_schema``)."""
    if request.param == "memory":
        return "memory", None
    return "sqlite", request.getfixturevalue("sqlite_engine")


@pytest.fixture
async def adapters(backend: Backend) -> AsyncIterator[MakeAdapters]:
    """What an example's ``main(adapters=...)`` takes: ``backend``'s adapters, made on the
    clock that ``main()`` drives (the SQL ones are closed after the test)."""
    made: list[Backend] = []

    def make(clock: Clock) -> Adapters:
        # Backend types its clock as the tests' FakeClock; it only hands it to the adapters,
        # which take any Clock (callback and connector run on the wall clock).
        on = Backend(backend.name, cast(FakeClock, clock), backend.registry, backend.engine)
        made.append(on)
        return on.adapters()

    yield make
    for on in made:
        await on.close()


# -- getting started ---------------------------------------------------------------------


async def test_gettingstarted_moves_through_every_step(
    backend: Backend, clock: FakeClock, registry: CollectorRegistry
) -> None:
    S, Obj = gettingstarted.Status, gettingstarted.GettingStarted
    Record = TypedRecord[gettingstarted.GettingStarted, gettingstarted.Status]
    completed: list[Record] = []
    hook_ran = asyncio.Event()

    async def on_complete(record: Record) -> None:
        completed.append(record)
        hook_ran.set()

    streamer, store, roles, _ = backend.adapters()
    wf = gettingstarted.build(
        streamer,
        store,
        roles,
        on_complete=on_complete,
        clock=clock,
        metrics_registry=registry,
    )
    async with wf:
        run_id = await wf.trigger("andrew")
        await require(wf, "andrew", S.STARTED, Obj())
        await require(wf, "andrew", S.READ_THE_DOCS, Obj(read_the_docs=True))
        await require(
            wf, "andrew", S.FOLLOWED_A_TUTORIAL, Obj(read_the_docs=True, followed_a_tutorial=True)
        )
        await require(
            wf,
            "andrew",
            S.CREATED_A_WORKFLOW,
            Obj(read_the_docs=True, followed_a_tutorial=True, created_a_workflow=True),
        )
        everything = Obj(
            read_the_docs=True, followed_a_tutorial=True, created_a_workflow=True, shared_it=True
        )
        await require(wf, "andrew", S.SHARED_IT, everything)
        run = await wf.await_("andrew", run_id, S.SHARED_IT, timeout=5)
        await asyncio.wait_for(hook_ran.wait(), timeout=5)

    assert run.run_state is RunState.COMPLETED
    assert run.object == everything
    assert [r.status for r in await store.history(run_id)] == list(S)[1:]
    assert completed[0].run_id == run_id
    assert completed[0].status is S.SHARED_IT
    assert completed[0].run_state is RunState.COMPLETED
    assert completed[0].object == everything


async def test_gettingstarted_main(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, tmp_path: Path
) -> None:
    await gettingstarted.main(metrics_registry=registry, db_path=str(tmp_path / "gs.db"))
    out = capsys.readouterr().out
    assert "andrew: STARTED -> READ_THE_DOCS" in out
    assert "andrew: CREATED_A_WORKFLOW -> SHARED_IT" in out
    assert "on_complete: andrew finished at SHARED_IT" in out
    assert "final status: SHARED_IT (COMPLETED)" in out
    assert "shared_it=True" in out
    assert (tmp_path / "gs.db").exists()  # the embedded default: a SQLite file


# -- callback ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status"),
    [(True, callback.Status.CONFIRMED), (False, callback.Status.REJECTED)],
)
async def test_callback_moves_the_run_by_the_answer(
    backend: Backend,
    clock: FakeClock,
    registry: CollectorRegistry,
    answer: bool,
    status: callback.Status,
) -> None:
    streamer, store, roles, _ = backend.adapters()
    wf = callback.build(streamer, store, roles, clock=clock, metrics_registry=registry)
    signup = callback.Signup(email="a@b.c")
    async with wf:
        run_id = await wf.trigger("andrew", initial_value=signup)
        applied = await trigger_callback_on(
            wf, "andrew", run_id, callback.Status.STARTED, {"confirmed": answer}
        )
        assert applied is True
        run = await require(wf, "andrew", status, callback.Signup(email="a@b.c", confirmed=answer))
        assert run.run_state is RunState.COMPLETED
        # The run has moved on: a second answer finds nothing waiting and changes nothing.
        again = await wf.callback("andrew", callback.Status.STARTED, b'{"confirmed": true}')
        assert again is False
        assert (await wf.latest("andrew")).status is status


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"{}", b'{"confirmed": "maybe"}', b'{"confirmed": "yes"}', b""],
)
async def test_callback_malformed_payload_raises_and_changes_nothing(
    backend: Backend, clock: FakeClock, registry: CollectorRegistry, payload: bytes
) -> None:
    streamer, store, roles, _ = backend.adapters()
    wf = callback.build(streamer, store, roles, clock=clock, metrics_registry=registry)
    async with wf:
        run_id = await wf.trigger("andrew")
        with pytest.raises(ValidationError):
            await wf.callback("andrew", callback.Status.STARTED, payload)
        history = await store.history(run_id)
        assert len(history) == 1
        run = await wf.lookup(run_id)
        assert run.status is callback.Status.STARTED
        assert run.meta.version == 1
        assert run.object.confirmed is None
        # The run still takes a good answer afterwards.
        assert await wf.callback("andrew", callback.Status.STARTED, b'{"confirmed": true}')
        await wf.await_("andrew", run_id, callback.Status.CONFIRMED, timeout=5)


async def test_callback_main(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    await callback.main(metrics_registry=registry, adapters=adapters)
    out = capsys.readouterr().out
    assert "malformed payload refused" in out
    assert "andrew: STARTED -> CONFIRMED" in out
    assert "final status: CONFIRMED (COMPLETED)" in out
    assert "confirmed=True" in out


# -- timeout -----------------------------------------------------------------------------


async def test_timeout_fires_only_once_the_clock_passes_the_deadline(
    backend: Backend, clock: FakeClock, registry: CollectorRegistry
) -> None:
    S = timeout.Status
    streamer, store, roles, timeouts = backend.adapters()
    wf = timeout.build(streamer, store, roles, timeouts, clock=clock, metrics_registry=registry)
    started = clock.now()
    async with wf:
        run_id = await wf.trigger("andrew")
        await await_timeout_insert(wf, "andrew", run_id, S.STARTED)
        [timer] = await timeouts.list(wf.name)
        assert timer.expire_at == started + timeout.TIMEOUT

        with pytest.raises(TimeoutError):
            await wf.await_("andrew", run_id, S.DONE, timeout=0.1)
        clock.step(timeout.TIMEOUT - timedelta(minutes=1))
        with pytest.raises(TimeoutError):
            await wf.await_("andrew", run_id, S.DONE, timeout=0.1)
        assert (await wf.lookup(run_id)).status is S.STARTED

        clock.step(timedelta(minutes=1))
        run = await wf.await_("andrew", run_id, S.DONE, timeout=5)

    assert run.run_state is RunState.COMPLETED
    assert run.object.now == started + timeout.TIMEOUT
    assert await timeouts.list(wf.name) == []


async def test_timeout_main(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    await timeout.main(metrics_registry=registry, adapters=adapters)
    out = capsys.readouterr().out
    assert "09:00 andrew: timer armed, expires at 10:00" in out
    assert "10:00 andrew: timer expired, STARTED -> DONE" in out
    assert "final status: DONE (COMPLETED)" in out
    assert '"now":"2024-01-01T10:00:00Z"' in out


# -- connector ---------------------------------------------------------------------------


def _signup(event_id: str, user: str) -> ConnectorEvent:
    return ConnectorEvent(id=event_id, foreign_id=user, type="user.signed_up")


async def test_connector_triggers_one_run_per_event_and_ignores_redelivery(
    backend: Backend, clock: FakeClock, registry: CollectorRegistry
) -> None:
    S, Obj = connector.Status, connector.Onboarding
    source = MemConnector([_signup("e1", "andrew"), _signup("e1", "andrew"), _signup("e2", "bo")])
    streamer, store, roles, _ = backend.adapters()
    wf = connector.build(streamer, store, roles, source, clock=clock, metrics_registry=registry)
    done = S.DONE
    async with wf:
        # Events are handled in order, so once "bo" is done the duplicate was handled too.
        for user, event_id in (("bo", "e2"), ("andrew", "e1")):
            expected = Obj(source_event_id=event_id, read_the_docs=True, followed_the_example=True)
            run = await require(wf, user, done, expected)
            assert run.run_state is RunState.COMPLETED
        assert len(await wf.list()) == 2

        # Redelivered after its run has finished: still no second run.
        source.append(_signup("e1", "andrew"))
        source.append(_signup("e3", "carol"))
        await wait_for(wf, "carol", lambda r: r.status == done, timeout=5)
        assert sorted(r.foreign_id for r in await wf.list()) == ["andrew", "bo", "carol"]


async def test_connector_skips_a_user_whose_run_is_in_progress(
    backend: Backend, clock: FakeClock, registry: CollectorRegistry
) -> None:
    S = connector.Status
    source = MemConnector()
    streamer, store, roles, _ = backend.adapters()
    wf = connector.build(streamer, store, roles, source, clock=clock, metrics_registry=registry)
    # Andrew already has an unfinished (paused) run when his sign-up event arrives.
    busy = await wf.trigger("andrew")
    await wf.pause(busy, "on hold")
    source.append(_signup("e1", "andrew"))
    source.append(_signup("e2", "carol"))
    async with wf:
        # The connector moved past andrew's event instead of retrying it forever.
        await wait_for(wf, "carol", lambda r: r.status == S.DONE, timeout=5)
        latest = await wf.latest("andrew")
    assert latest.run_id == busy
    assert latest.run_state is RunState.PAUSED
    assert len(await wf.list()) == 2


async def test_connector_main(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    await connector.main(metrics_registry=registry, adapters=adapters)
    out = capsys.readouterr().out
    assert "event-1 seen before (redelivered): ignored" in out
    assert "final: andrew is DONE (COMPLETED)" in out
    assert "final: bongani is DONE (COMPLETED)" in out
    assert "2 runs for 3 events" in out


# -- schedule ----------------------------------------------------------------------------


def _schedule_wf(backend: Backend) -> Workflow[schedule.Report, schedule.Status]:
    streamer, store, roles, _ = backend.adapters()
    return schedule.build(
        streamer, store, roles, clock=backend.clock, metrics_registry=backend.registry
    )


async def test_schedule_triggers_one_run_per_hour(backend: Backend, clock: FakeClock) -> None:
    S, fid = schedule.Status, schedule.FOREIGN_ID
    start = clock.now()  # 08:30
    wf = _schedule_wf(backend)
    async with wf:
        await clock.until_waiting()
        assert await wf.list() == []  # nothing before the first tick

        clock.step(timedelta(hours=1))
        first = await wait_for(wf, fid, lambda r: r.status == S.DONE, timeout=5)
        await clock.until_waiting()
        assert [r.run_id for r in await wf.list()] == [first.run_id]

        clock.step(timedelta(hours=1))
        second = await wait_for(
            wf, fid, lambda r: r.status == S.DONE and r.run_id != first.run_id, timeout=5
        )
        await clock.until_waiting()
        runs = await wf.list()

    assert first.run_id != second.run_id
    assert [r.run_id for r in runs] == [first.run_id, second.run_id]
    assert all(r.run_state is RunState.COMPLETED for r in runs)
    assert first.created_at == start + timedelta(hours=1)
    assert first.object.hour == start.replace(hour=9, minute=0)
    assert second.object.hour == start.replace(hour=10, minute=0)


async def test_schedule_catches_up_with_one_run_not_one_per_missed_hour(
    backend: Backend, clock: FakeClock
) -> None:
    S, fid = schedule.Status, schedule.FOREIGN_ID
    wf = _schedule_wf(backend)
    async with wf:
        await clock.until_waiting()
        clock.step(timedelta(hours=3))
        await wait_for(wf, fid, lambda r: r.status == S.DONE, timeout=5)
        await clock.until_waiting()  # asleep until the next hour: no backlog
        assert len(await wf.list()) == 1


async def test_schedule_main(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    await schedule.main(metrics_registry=registry, adapters=adapters)
    out = capsys.readouterr().out
    assert "09:00 the clock strikes the hour" in out
    assert "(triggered 10:00): STARTED -> DONE" in out
    assert "2 different runs, one per hour" in out


# -- failure handling --------------------------------------------------------------------


async def test_payout_retries_then_fails_only_the_broken_payouts(
    registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    S = payout.Status
    outcome = await payout.main(metrics_registry=registry, adapters=adapters)
    assert outcome == {"ok": S.PAID, "flaky": S.PAID, "down": S.FAILED, "declined": S.FAILED}


async def test_a_dead_letter_stays_paused_until_the_operator_resumes_it(
    registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    assert await deadletter.main(metrics_registry=registry, adapters=adapters) == ["paid"]


# -- composition scenarios (issue 12's examples that need no new feature) -------------------


async def test_approval_escalates_then_expires(
    registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    outcome = await approval.main(metrics_registry=registry, adapters=adapters)
    assert outcome == {"quick": "APPROVED", "late": "APPROVED", "ignored": "EXPIRED"}


async def test_polling_backs_off_until_done_or_the_deadline(
    registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    # On SQLite this once failed a few runs in 100: a removed timer's id was handed to another
    # run's new timer, which the poller then completed unfired (migration 0004).
    outcome = await polling.main(metrics_registry=registry, adapters=adapters)
    # fast: done at its third check; slow: 10 s, 20 s, ... 5 min apart until the 1 h deadline
    assert outcome == {"fast": ("DONE", 3), "slow": ("TIMED_OUT", 16)}


async def test_dispatch_routes_delays_and_dead_letters_only_the_failing_event(
    registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    outcome = await dispatch.main(metrics_registry=registry, adapters=adapters)
    assert outcome == {
        "ev-1": "sent",
        "ev-2": "sent",
        "ev-3": "sent",
        "ev-4": "sent",
        "ev-5": "dead letter",
    }
