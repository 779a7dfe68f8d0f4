"""SQLRoleScheduler on SQLite and PostgreSQL: the conformance suite, renewal, takeover of a
crashed holder's role within two lease periods (SPEC §9.16), exclusivity across "processes"
(separate engine objects on one database), cancel safety and close().

Leases here are real time and short (LEASE seconds); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from adapters.adaptertest import run_role_scheduler_test
from adapters.memrecordstore import MemRecordStore
from adapters.memstreamer import MemStreamer
from adapters.sqlrolescheduler import SQLRoleScheduler
from adapters.sqlschema import leases, make_engine
from workflow import Builder, Lease, RoleScheduler, Run
from workflow.testing import FakeClock, require

from .support import Obj, Status

LEASE = 0.25
"""Seconds: short leases so takeover and renewal happen within a test."""

SLACK = 0.15
"""Seconds allowed on top of a bound for database round trips and scheduling."""

S = TypeVar("S", bound=SQLRoleScheduler)


@pytest.fixture
async def other_engine(sql_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """A second engine object on the same database: what another process would have."""
    url = sql_engine.url.render_as_string(hide_password=False)
    if sql_engine.dialect.name == "postgresql":
        async with sql_engine.connect() as conn:
            schema = (await conn.exec_driver_sql("SHOW search_path")).scalar_one()
        engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    else:
        engine = make_engine(url)
    yield engine
    await engine.dispose()


class Make:
    """Builds schedulers (``make(engine, lease, **options)``) and closes them all after."""

    def __init__(self) -> None:
        self.made: list[SQLRoleScheduler] = []

    def __call__(
        self, engine: AsyncEngine, lease: float | timedelta = timedelta(seconds=10), **kw: Any
    ) -> SQLRoleScheduler:
        return self.track(SQLRoleScheduler(engine, lease, **kw))

    def track(self, scheduler: S) -> S:
        self.made.append(scheduler)
        return scheduler


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    factory = Make()
    yield factory
    for scheduler in factory.made:
        await scheduler.close()


class Freezable(SQLRoleScheduler):
    """A scheduler whose renewals can be frozen (a hung, crashed or paused process) and
    that reports each successful renewal."""

    frozen = False

    def __init__(self, engine: AsyncEngine, lease: float) -> None:
        super().__init__(engine, lease)
        self.renewed = asyncio.Event()

    async def _extend(self, role: str, token: int) -> bool:
        if self.frozen:
            await asyncio.get_running_loop().create_future()  # never returns
        ours = await super()._extend(role, token)
        if ours:
            self.renewed.set()
        return ours


async def holder_of(engine: AsyncEngine, role: str) -> str | None:
    async with engine.connect() as conn:
        return (
            await conn.execute(sa.select(leases.c.holder).where(leases.c.role == role))
        ).scalar_one_or_none()


async def lease_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(leases))).scalar_one()


# -- conformance ----------------------------------------------------------------------------


async def test_passes_the_conformance_suite(sql_engine: AsyncEngine, make: Make) -> None:
    def factory(instances: int) -> list[RoleScheduler]:
        return [make(sql_engine) for _ in range(instances)]

    await run_role_scheduler_test(factory)
    assert await lease_rows(sql_engine) == 0


async def test_is_a_role_scheduler(sql_engine: AsyncEngine, make: Make) -> None:
    scheduler = make(sql_engine)
    assert isinstance(scheduler, RoleScheduler)
    assert scheduler.lease == timedelta(seconds=10)  # SPEC §9.16 default


def test_bad_arguments_are_rejected(sqlite_engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="lease"):
        SQLRoleScheduler(sqlite_engine, timedelta(0))
    with pytest.raises(ValueError, match="poll_interval"):
        SQLRoleScheduler(sqlite_engine, poll_interval=-1)
    with pytest.raises(ValueError, match="holder"):
        SQLRoleScheduler(sqlite_engine, holder="x" * 129)


async def test_the_row_names_the_holder_and_is_deleted_on_release(
    sql_engine: AsyncEngine, make: Make
) -> None:
    first, second = make(sql_engine), make(sql_engine, holder="worker-2")
    assert first.holder != second.holder
    assert second.holder == "worker-2"
    lease = await first.await_role("r")
    assert await holder_of(sql_engine, "r") == first.holder
    await lease.release()
    assert lease.lost
    assert await holder_of(sql_engine, "r") is None
    lease = await asyncio.wait_for(second.await_role("r"), 1)
    assert await holder_of(sql_engine, "r") == "worker-2"
    await lease.release()


# -- leases across processes ----------------------------------------------------------------


async def test_renewals_keep_the_role_until_the_holder_crashes_then_it_is_taken_over(
    sql_engine: AsyncEngine, other_engine: AsyncEngine, make: Make
) -> None:
    """SPEC §9.16 with two "processes": a renewing holder keeps its role far beyond the lease
    period; once it crashes (renewal hangs) a waiter takes over within two lease periods."""
    crashing = make.track(Freezable(sql_engine, LEASE))
    waiter = make(other_engine, LEASE)
    lost = await crashing.await_role("r")
    waiting = asyncio.ensure_future(waiter.await_role("r"))
    done, _ = await asyncio.wait({waiting}, timeout=3 * LEASE)
    assert not done, "a renewed lease was taken over"
    assert crashing.renewed.is_set()
    assert not lost.lost
    assert await holder_of(sql_engine, "r") == crashing.holder

    crashing.frozen = True  # it hangs and never renews again
    started = time.monotonic()
    taken = await asyncio.wait_for(waiting, 2 * LEASE + SLACK)
    elapsed = time.monotonic() - started
    assert elapsed <= 2 * LEASE + SLACK
    # the stuck holder gave the role up (its work is cancelled) before the takeover
    assert lost.lost
    assert await holder_of(sql_engine, "r") == waiter.holder
    # the stale lease's release (or close) never frees the new holder's role
    await lost.release()
    await crashing.close()
    assert await holder_of(sql_engine, "r") == waiter.holder
    assert not taken.lost
    await taken.release()


async def test_another_process_notices_a_release_within_the_poll_interval(
    sql_engine: AsyncEngine, other_engine: AsyncEngine, make: Make
) -> None:
    holder, waiter = make(sql_engine, LEASE), make(other_engine, LEASE)
    lease = await holder.await_role("r")
    waiting = asyncio.ensure_future(waiter.await_role("r"))
    done, _ = await asyncio.wait({waiting}, timeout=0.05)
    assert not done
    started = time.monotonic()
    await lease.release()
    taken = await asyncio.wait_for(waiting, LEASE / 4 + SLACK)  # min(lease / 4, 1 s)
    assert time.monotonic() - started <= LEASE / 4 + SLACK
    assert await holder_of(sql_engine, "r") == waiter.holder
    await taken.release()


@pytest.mark.parametrize("change", ["taken over", "deleted"])
async def test_a_holder_whose_row_changed_is_revoked_at_its_next_renewal(
    sql_engine: AsyncEngine, make: Make, change: str
) -> None:
    """A holder that missed its lease's expiry (paused, clock trouble) and whose role was
    taken over finds out at its next renewal (token mismatch) and loses the role."""
    scheduler = make(sql_engine, LEASE)
    lease = await scheduler.await_role("r")
    async with sql_engine.begin() as conn:
        mine = leases.c.role == "r"
        if change == "deleted":
            await conn.execute(sa.delete(leases).where(mine))
        else:
            await conn.execute(sa.update(leases).where(mine).values(holder="other", token=7))
    await asyncio.wait_for(lease.wait_lost(), LEASE / 3 + SLACK)
    await lease.release()
    expected = None if change == "deleted" else "other"
    assert await holder_of(sql_engine, "r") == expected


async def test_two_engines_never_both_hold_a_role(
    sql_engine: AsyncEngine, other_engine: AsyncEngine, make: Make
) -> None:
    """10 schedulers on two engine objects race for one role; each checks it is alone in the
    critical section. (The lease is long enough not to run out under SQLite's lock
    contention: this is about grants, not expiry.)"""
    engines = [sql_engine, other_engine]
    schedulers = [make(engines[i % 2], 5, poll_interval=0.05) for i in range(10)]
    inside = 0
    grants = [0] * len(schedulers)
    deadline = time.monotonic() + 0.3

    async def acquirer(i: int, scheduler: SQLRoleScheduler) -> None:
        nonlocal inside
        while grants[i] == 0 or time.monotonic() < deadline:
            lease: Lease = await scheduler.await_role("race")
            inside += 1
            try:
                assert inside == 1, "two holders at once"
                # a database round trip inside the critical section lets the others run
                assert await holder_of(engines[i % 2], "race") == scheduler.holder
                assert inside == 1, "two holders at once"
                assert not lease.lost
            finally:
                inside -= 1
            grants[i] += 1
            await lease.release()

    await asyncio.wait_for(asyncio.gather(*(acquirer(i, s) for i, s in enumerate(schedulers))), 10)
    assert all(grants), grants
    assert await lease_rows(sql_engine) == 0


# -- cancellation and close -------------------------------------------------------------------


async def test_cancelling_at_any_point_leaves_nothing_behind(
    sql_engine: AsyncEngine, make: Make
) -> None:
    """Cancel await_role after 0, 1, 2, ... loop iterations (before, during or after its
    grant statement): the role is free again at once (the default lease is 10 s)."""
    scheduler, other = make(sql_engine), make(sql_engine)
    for ticks in range(0, 30, 3):
        task = asyncio.ensure_future(scheduler.await_role("r"))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            assert await lease_rows(sql_engine) == 0, f"a grant was left after {ticks} ticks"
        else:  # it had been granted before the cancel
            await task.result().release()
        lease = await asyncio.wait_for(other.await_role("r"), 1)
        await lease.release()
    assert await lease_rows(sql_engine) == 0


async def test_close_releases_everything(sql_engine: AsyncEngine, make: Make) -> None:
    scheduler, other = make(sql_engine), make(sql_engine)
    a, b = await scheduler.await_role("a"), await scheduler.await_role("b")
    handed = asyncio.ensure_future(other.await_role("a"))
    own_waiter = asyncio.ensure_future(scheduler.await_role("c-held"))
    held_c = await other.await_role("c-held")
    done, _ = await asyncio.wait({handed, own_waiter}, timeout=0.05)
    assert not done
    await scheduler.close()
    assert a.lost and b.lost
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(own_waiter, 1)
    lease = await asyncio.wait_for(handed, 1)  # woken by the release, no polling
    assert await holder_of(sql_engine, "a") == other.holder
    assert await holder_of(sql_engine, "b") is None
    with pytest.raises(RuntimeError, match="closed"):
        await scheduler.await_role("d")
    await scheduler.close()  # idempotent
    await lease.release()
    await held_c.release()
    assert await lease_rows(sql_engine) == 0


async def test_a_workflow_runs_on_it_and_releases_its_roles_on_stop(
    sql_engine: AsyncEngine, make: Make, clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def step(run: Run[Obj, Status]) -> Status:
        run.object.count += 1
        return Status.DONE

    b = Builder[Obj, Status]("sql roles")
    b.add_step(Status.STARTED, step, Status.DONE)
    scheduler = make(sql_engine)
    wf = b.build(
        MemStreamer(clock), MemRecordStore(), scheduler, clock=clock, metrics_registry=registry
    )
    async with wf:
        await wf.trigger("fid")
        await require(wf, "fid", Status.DONE, Obj(count=1))
        assert await lease_rows(sql_engine) > 0
    assert await lease_rows(sql_engine) == 0
