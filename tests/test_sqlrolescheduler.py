"""SQLRoleScheduler on SQLite and PostgreSQL: the conformance suite, renewal, takeover of a
crashed holder's role (SPEC §9.16), exclusivity across "processes"
(separate engine objects on one database), cancel safety and close().

Leases run on the database's clock, so they are real time here (LEASE seconds, short).
The tests assert what happens and in which order (renewals, grant attempts, revocation before
takeover), never how fast: the timing figures (takeover after a crash, noticing a release)
are measured in bench/. Real-time bounds below only keep a broken build from hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflow import Builder, Lease, RoleScheduler, Run
from workflow.adapters.adaptertest import run_role_scheduler_test
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memstreamer import MemStreamer
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import leases, make_engine
from workflow.testing import FakeClock, require

from .support import Obj, Status

LEASE = 0.25
"""Seconds: short leases so takeover and renewal happen within a test."""

HANG = 10.0
"""Seconds after which a wait that should end is a failure (a guard, not a claimed bound)."""

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


class Watched(SQLRoleScheduler):
    """A scheduler that counts its grant attempts (per role) and renewals, wakes the test at
    each, and whose renewals can be frozen (a hung, crashed or paused process)."""

    frozen = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tries: Counter[str] = Counter()
        self.renewals = 0  # successful renewals
        self.refused = 0  # renewals that found the row no longer ours
        self._changed = asyncio.Event()

    async def _acquire(self, role: str, token: int) -> bool:
        got = await super()._acquire(role, token)
        self.tries[role] += 1
        self._changed.set()
        return got

    async def _extend(self, role: str, token: int) -> bool:
        if self.frozen:
            await asyncio.get_running_loop().create_future()  # never returns
        ours = await super()._extend(role, token)
        if ours:
            self.renewals += 1
        else:
            self.refused += 1
        self._changed.set()
        return ours

    async def until(self, cond: Callable[[], bool]) -> None:
        async with asyncio.timeout(HANG):
            while True:
                self._changed.clear()
                if cond():
                    return
                await self._changed.wait()


class Make:
    """Builds schedulers (``make(engine, lease, **options)``) and closes them all after."""

    def __init__(self) -> None:
        self.made: list[SQLRoleScheduler] = []

    def __call__(
        self, engine: AsyncEngine, lease: float | timedelta = timedelta(seconds=10), **kw: Any
    ) -> Watched:
        return self.track(Watched(engine, lease, **kw))

    def track(self, scheduler: S) -> S:
        self.made.append(scheduler)
        return scheduler


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    factory = Make()
    yield factory
    for scheduler in factory.made:
        await scheduler.close()


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
    """SPEC §9.16 with two "processes": a renewing holder keeps its role beyond the lease
    period while a waiter keeps asking; once it crashes (renewal hangs) it revokes its own
    lease, and only then does the waiter take the role over."""
    crashing = make(sql_engine, LEASE)
    waiter = make(other_engine, LEASE)
    lost = await crashing.await_role("r")
    waiting = asyncio.ensure_future(waiter.await_role("r"))
    # Renewed every lease / 3: four renewals outlast the lease the role was granted with.
    await crashing.until(lambda: crashing.renewals >= 4)
    tries = waiter.tries["r"]
    await waiter.until(lambda: waiter.tries["r"] >= tries + 2)  # asked again, in vain
    assert not waiting.done(), "a renewed lease was taken over"
    assert not lost.lost
    assert await holder_of(sql_engine, "r") == crashing.holder

    order: list[str] = []
    revoked = asyncio.ensure_future(lost.wait_lost())
    revoked.add_done_callback(lambda _: order.append("revoked"))
    waiting.add_done_callback(lambda _: order.append("taken over"))
    crashing.frozen = True  # it hangs and never renews again
    taken = await asyncio.wait_for(waiting, HANG)
    await asyncio.wait_for(revoked, HANG)
    # the stuck holder gave the role up (its work is cancelled) before the takeover
    assert order == ["revoked", "taken over"]
    assert await holder_of(sql_engine, "r") == waiter.holder
    # the stale lease's release (or close) never frees the new holder's role
    await lost.release()
    await crashing.close()
    assert await holder_of(sql_engine, "r") == waiter.holder
    assert not taken.lost
    await taken.release()


async def test_another_process_notices_a_release_at_its_next_poll(
    sql_engine: AsyncEngine, other_engine: AsyncEngine, make: Make
) -> None:
    """No wake-up crosses engines: the waiter polls, and gets the role at the first attempt
    after the release (the lease is far too long to have run out instead)."""
    holder = make(sql_engine, 3600)
    waiter = make(other_engine, 3600, poll_interval=0.05)
    lease = await holder.await_role("r")
    waiting = asyncio.ensure_future(waiter.await_role("r"))
    await waiter.until(lambda: waiter.tries["r"] >= 2)
    assert not waiting.done()
    before = waiter.tries["r"]
    await lease.release()
    taken = await asyncio.wait_for(waiting, HANG)
    # the attempt in flight during the release, at most, and the next one
    assert waiter.tries["r"] - before <= 2
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
    await asyncio.wait_for(lease.wait_lost(), HANG)
    assert scheduler.refused == 1  # revoked by the renewal that found the row changed
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

    async def acquirer(i: int, scheduler: SQLRoleScheduler) -> None:
        nonlocal inside
        while grants[i] < 3:
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

    await asyncio.wait_for(
        asyncio.gather(*(acquirer(i, s) for i, s in enumerate(schedulers))), 3 * HANG
    )
    assert grants == [3] * len(schedulers), grants
    assert await lease_rows(sql_engine) == 0


# -- cancellation and close -------------------------------------------------------------------


async def test_cancelling_at_any_point_leaves_nothing_behind(
    sql_engine: AsyncEngine, make: Make
) -> None:
    """Cancel await_role after 0, 1, 2, ... loop iterations (before, during or after its
    grant statement): the role is free again at once (the default lease is 10 s, and the
    other scheduler polls once an hour: it gets the role at its first attempt)."""
    scheduler, other = make(sql_engine), make(sql_engine, poll_interval=3600)
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
        tries = other.tries["r"]
        lease = await asyncio.wait_for(other.await_role("r"), HANG)
        assert other.tries["r"] == tries + 1
        await lease.release()
    assert await lease_rows(sql_engine) == 0


async def test_close_releases_everything(sql_engine: AsyncEngine, make: Make) -> None:
    # ``other`` polls once an hour: what it gets after its first attempt, a wake-up gave it
    scheduler, other = make(sql_engine), make(sql_engine, poll_interval=3600)
    a, b = await scheduler.await_role("a"), await scheduler.await_role("b")
    held_c = await other.await_role("c-held")
    handed = asyncio.ensure_future(other.await_role("a"))
    own_waiter = asyncio.ensure_future(scheduler.await_role("c-held"))
    await other.until(lambda: other.tries["a"] >= 1)
    await scheduler.until(lambda: scheduler.tries["c-held"] >= 1)
    assert not handed.done() and not own_waiter.done()
    await scheduler.close()
    assert a.lost and b.lost
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(own_waiter, HANG)
    lease = await asyncio.wait_for(handed, HANG)  # woken by the release, no polling
    assert other.tries["a"] == 2
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


# -- lease safety under network faults (docs/network-faults.md) --------------------------------


async def expires_at(engine: AsyncEngine, role: str) -> float:
    """The row's expiry on the database's clock, as a POSIX time (this machine's clock)."""
    async with engine.connect() as conn:
        when = (
            await conn.execute(sa.select(leases.c.expires_at).where(leases.c.role == role))
        ).scalar_one()
    return float(when.timestamp())


async def test_a_holder_that_cannot_renew_revokes_itself_a_margin_before_the_row_expires(
    sql_engine: AsyncEngine, make: Make
) -> None:
    """A holder cut off from the database (its renewals hang) ends its ``wait_lost``
    ``safety_margin`` before anyone else can be granted the role (the row's expiry on the
    database's clock), not at the same instant: the margin is what the engine has to cancel
    the holder's work, and what a late event loop or a drifting clock may eat."""
    lease_s = 1.0
    scheduler = make(sql_engine, lease_s)
    assert scheduler.safety_margin == timedelta(seconds=lease_s / 5)  # the default
    lease = await scheduler.await_role("r")
    await scheduler.until(lambda: scheduler.renewals >= 1)
    scheduler.frozen = True  # every later renewal hangs: a partition
    await asyncio.wait_for(lease.wait_lost(), HANG)
    revoked = time.time()  # one machine: the database's clock is this clock
    ahead = await expires_at(sql_engine, "r") - revoked
    # the margin, less what this (possibly busy) machine's loop ran late
    assert ahead >= lease_s / 5 / 2, f"revoked only {ahead:.3f}s before the row expired"
    await lease.release()


def test_the_safety_margin_must_leave_time_to_renew(sqlite_engine: AsyncEngine) -> None:
    for bad in (-0.1, 2.0, 3.0):
        with pytest.raises(ValueError, match="safety_margin"):
            SQLRoleScheduler(sqlite_engine, 3.0, safety_margin=bad)
    assert SQLRoleScheduler(sqlite_engine, 3.0, safety_margin=0).safety_margin == timedelta(0)


class Unreachable(Watched):
    """Every statement of the chosen kinds hangs: a database that stopped answering."""

    hang: frozenset[str] = frozenset()

    async def _acquire(self, role: str, token: int) -> bool:
        if "grant" in self.hang:
            await asyncio.get_running_loop().create_future()
        return await super()._acquire(role, token)

    async def _delete(self, role: str, token: int) -> None:
        if "delete" in self.hang:
            await asyncio.get_running_loop().create_future()
        await super()._delete(role, token)


async def test_release_and_close_give_up_on_a_database_that_does_not_answer(
    sql_engine: AsyncEngine, make: Make
) -> None:
    """A host stopping while cut off from the database (a partition during ``stop()``):
    releasing its lease gives up after a lease (the row has run out by then and its
    countdown ended before), so ``close()`` returns instead of waiting for the network."""
    scheduler = make.track(Unreachable(sql_engine, LEASE))
    lease = await scheduler.await_role("r")
    scheduler.hang = frozenset({"delete"})
    async with asyncio.timeout(HANG):
        await lease.release()
        await scheduler.close()
    assert lease.lost


async def test_a_grant_attempt_that_gets_no_answer_fails_after_a_lease(
    sql_engine: AsyncEngine, make: Make
) -> None:
    """``await_role`` on a database that does not answer raises (the engine retries it after
    its back-off) instead of hanging, so a stopping process is not held up by it."""
    scheduler = make.track(Unreachable(sql_engine, LEASE))
    scheduler.hang = frozenset({"grant"})
    async with asyncio.timeout(HANG):
        with pytest.raises(TimeoutError):
            await scheduler.await_role("r")
        await scheduler.close()
