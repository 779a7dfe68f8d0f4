"""Conformance suite for :class:`workflow.RoleScheduler` adapters (and the small helpers that
every suite of :mod:`workflow.adapters.adaptertest` shares).

Run it against your own scheduler from any test runner::

    from workflow.adapters.adaptertest import run_role_scheduler_test

    async def test_my_role_scheduler() -> None:
        await run_role_scheduler_test(lambda n: [MyRoleScheduler(db) for _ in range(n)])

``factory(instances)`` (plain or ``async``) returns ``instances`` scheduler handles that share
one fresh back end, as separate processes would (for an in-memory scheduler: the same object
``instances`` times). The suite calls it once per behaviour and raises ``AssertionError``
naming the failed behaviour, e.g. ``role scheduler: two holders held one role at once``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar, cast

from workflow import Lease, RoleScheduler

__all__ = ["RoleSchedulerFactory", "run_role_scheduler_test"]

T = TypeVar("T")

GUARD = 5.0
"""Seconds a suite waits for something that must happen before calling it a failure."""

BLOCKED = 0.05
"""Seconds a suite waits to see that something that must not happen does not."""

Check = tuple[str, Callable[[], Awaitable[None]]]

RoleSchedulerFactory = Callable[[int], Sequence[RoleScheduler] | Awaitable[Sequence[RoleScheduler]]]


# -- helpers shared by every suite -------------------------------------------------------------


async def resolve(made: T | Awaitable[T]) -> T:
    """The value a factory returned, awaited when it is awaitable."""
    if inspect.isawaitable(made):
        return cast(T, await made)
    return made


def check(ok: bool, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not ok:
        raise AssertionError(message)


async def within(aw: Awaitable[T], what: str, timeout: float | None = None) -> T:
    """Await ``aw``; if it takes longer than ``timeout`` (default :data:`GUARD`) seconds, fail
    saying ``what`` did not happen."""
    timeout = GUARD if timeout is None else timeout
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout:g} s") from None


async def settle(tasks: Iterable[asyncio.Task[T]]) -> set[asyncio.Task[T]]:
    """The tasks that finish within :data:`BLOCKED` seconds (the others keep running)."""
    pending = set(tasks)
    if not pending:
        return set()
    done, _ = await asyncio.wait(pending, timeout=BLOCKED)
    return done


async def stop(tasks: Iterable[asyncio.Task[T]]) -> None:
    """Cancel tasks and wait for them, ignoring how they end."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_checks(suite: str, checks: Sequence[Check]) -> None:
    """Run each named check in order; the first failure raises ``AssertionError`` that names
    the suite and the behaviour (an unexpected exception is reported the same way)."""
    for name, run in checks:
        try:
            await run()
        except AssertionError as err:
            raise AssertionError(f"{suite}: {err}") from err
        except Exception as err:
            raise AssertionError(
                f"{suite}: {name}: unexpected {type(err).__name__}: {err}"
            ) from err


# -- the role scheduler suite -------------------------------------------------------------------


async def _handles(factory: RoleSchedulerFactory, n: int) -> list[RoleScheduler]:
    handles = list(await resolve(factory(n)))
    check(len(handles) == n, f"factory({n}) returned {len(handles)} handles")
    return handles


def _acquire(scheduler: RoleScheduler, role: str) -> asyncio.Task[Lease]:
    return asyncio.ensure_future(scheduler.await_role(role))


async def _first_holder(tasks: Iterable[asyncio.Task[Lease]], what: str) -> asyncio.Task[Lease]:
    """Wait until one waiter holds the role and check that no second one gets it too."""
    pending = set(tasks)
    done, pending = await asyncio.wait(pending, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED)
    check(bool(done), f"{what} did not happen within {GUARD:g} s")
    done |= await settle(pending)
    check(len(done) == 1, f"two holders held one role at once ({len(done)} waiters got it)")
    return done.pop()


async def _grant(factory: RoleSchedulerFactory) -> None:
    [rs] = await _handles(factory, 1)
    lease = await within(rs.await_role("adaptertest-grant"), "a free role being granted")
    check(isinstance(lease, Lease), f"await_role returned {lease!r}, not a workflow.Lease")
    check(lease.role == "adaptertest-grant", f"lease is for role {lease.role!r}")
    await lease.release()
    again = await within(rs.await_role("adaptertest-grant"), "re-granting a released role")
    await again.release()


async def _exclusive(factory: RoleSchedulerFactory) -> None:
    role = "adaptertest-lock"
    handles = await _handles(factory, 5)
    waiters = [_acquire(rs, role) for rs in handles]
    try:
        holder = await _first_holder(waiters, "granting a role to one of 5 racing waiters")
        remaining = [t for t in waiters if t is not holder]
        for round_ in range(len(remaining)):
            await holder.result().release()
            what = f"hand-over #{round_ + 1} of a released role to a waiter"
            if round_ < 2:
                holder = await _first_holder(remaining, what)
            else:
                done, _ = await asyncio.wait(
                    remaining, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED
                )
                check(bool(done), f"{what} did not happen within {GUARD:g} s")
                check(len(done) == 1, "a released role was handed to two waiters at once")
                holder = done.pop()
            remaining.remove(holder)
        await holder.result().release()
    finally:
        await _release_all(waiters)


async def _cancel_waiter(factory: RoleSchedulerFactory) -> None:
    role = "adaptertest-cancel"
    handles = await _handles(factory, 3)
    lease = await within(handles[0].await_role(role), "a free role being granted")
    first, second = _acquire(handles[1], role), _acquire(handles[2], role)
    tasks = [first, second]
    try:
        check(not await settle(tasks), "a held role was granted to a second waiter")
        first.cancel()
        try:
            got = await within(first, "a cancelled await_role returning")
        except asyncio.CancelledError:
            pass
        else:
            await got.release()
            raise AssertionError("a cancelled await_role returned a lease instead of raising")
        await lease.release()
        handed = await within(second, "hand-over to the waiter left after one was cancelled")
        check(first.cancelled(), "a cancelled waiter was granted the role")
        await handed.release()
        again = await within(
            handles[1].await_role(role), "granting a role whose cancelled waiter left a trace"
        )
        await again.release()
    finally:
        await _release_all(tasks)


async def _independent(factory: RoleSchedulerFactory) -> None:
    first, second = await _handles(factory, 2)
    a = await within(first.await_role("adaptertest-role-a"), "granting role a")
    try:
        b = await within(
            second.await_role("adaptertest-role-b"), "granting role b while role a is held"
        )
        await b.release()
    finally:
        await a.release()


async def _idempotent(factory: RoleSchedulerFactory) -> None:
    role = "adaptertest-idempotent"
    handles = await _handles(factory, 3)
    lease = await within(handles[0].await_role(role), "a free role being granted")
    await lease.release()
    await lease.release()
    second = await within(handles[1].await_role(role), "re-granting a released role")
    await lease.release()  # a stale lease must not release the new holder's role
    third = _acquire(handles[2], role)
    try:
        check(
            not await settle([third]),
            "releasing an already released lease released the next holder's role",
        )
        await second.release()
        await (await within(third, "hand-over after the real holder released")).release()
    finally:
        await _release_all([third])


async def _release_all(tasks: Iterable[asyncio.Task[Lease]]) -> None:
    """Cancel waiters still waiting and release every lease that was granted."""
    tasks = list(tasks)
    await stop(t for t in tasks if not t.done())
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is None:
            await task.result().release()


async def run_role_scheduler_test(factory: RoleSchedulerFactory) -> None:
    """Check a :class:`~workflow.RoleScheduler`: grant, exclusivity across handles, hand-over
    on release, cancellable waits that leave no trace, independent roles, idempotent release.
    """
    await run_checks(
        "role scheduler",
        [
            ("granting a free role", lambda: _grant(factory)),
            ("one holder among 5 racing handles", lambda: _exclusive(factory)),
            ("cancelling a waiter", lambda: _cancel_waiter(factory)),
            ("independent roles", lambda: _independent(factory)),
            ("idempotent release", lambda: _idempotent(factory)),
        ],
    )
