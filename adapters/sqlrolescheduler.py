"""A :class:`workflow.RoleScheduler` shared by every process on one SQL database: leases.

A role is a row of the ``workflow_leases`` table (:mod:`adapters.sqlschema`): ``role``,
``holder`` (who holds it, for operators), ``token`` (random, new on every grant) and
``expires_at``. SPEC §9.16: a holder renews its lease; a crashed holder's roles are taken
over within two lease periods.

**Grant.** One atomic statement, ``INSERT ... ON CONFLICT (role) DO UPDATE ... WHERE
expires_at < now RETURNING token``, inserts the row when the role is free or takes it over
when its lease has run out; otherwise it changes nothing and the caller waits. Every grant
writes a fresh random token, so a holder's later renewal or release (``WHERE role AND
token``) can never touch the next holder's row.

**Whose clock.** Lease expiry is the one place where the *database's* clock is used (``clock``
of :mod:`adapters._postgres` / :mod:`adapters._sqlite`, ``clock_timestamp()`` on PostgreSQL:
the time the statement runs, not its transaction's start): hosts sharing a PostgreSQL server
may have skewed clocks, but they all see the same database clock, so "expired" means the same
thing to everyone. (Stored record, timeout and event times use the engine's clock instead,
SPEC §9.14.) On SQLite the expression is written in the text form every stored time has
(``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), so the text comparisons order correctly.

**Lease safety.** The holder counts its lease down on its *local* monotonic clock from the
moment it *sent* the grant or renewal, which is never later than the database's stamp: if no
renewal succeeds, it revokes the lease (its ``wait_lost`` ends, the engine cancels its work)
``safety_margin`` (default ``lease / 5``) *before* the row it last wrote expires, i.e. before
any other host can be granted the role. Nobody can take the role over earlier than the
expiry; a waiter polls, so it takes it within ``poll_interval`` after it (plus a round trip).
So, with renewals failing from time F on (the last successful renewal was sent at S ≤ F):

* the holder works until at most ``S + lease - safety_margin`` (≤ ``F + lease - margin``);
* another host holds the role at the earliest at ``S' + lease`` where S' ≥ S is when the
  database stamped that renewal.

The margin absorbs what the countdown cannot see: the holder's event loop running the
watchdog late (a busy loop or a stalled machine), the engine's cancellation of the holder's
work after the revocation, and the two clocks ticking at different rates over one lease
(NTP slews a clock by at most 0.05 %). Assumed: no clock *jumps* on the database (a stepped
database clock moves every lease's expiry; run NTP in slew mode) and the holder is not frozen
(SIGSTOP, a VM pause) for longer than the margin at the moment its lease runs out; writes of a
holder past that point are still refused by the store's compare-and-set on the run's
version, so a late holder can repeat a step's side effect but never store a stale transition.

Each lease statement commits by itself (autocommit on PostgreSQL): a holder cut off between
its renewal's ``UPDATE`` and its ``COMMIT`` would otherwise leave a transaction open on the
server that locks the row, and nobody could take the role over until the partition healed
(found by the cluster tests, docs/network-faults.md). No statement of the scheduler waits for
ever on a database that does not answer: a grant
attempt and a release give up after ``lease`` (the row has expired by then anyway), a renewal
after ``lease / 3`` (and is tried again while the countdown lasts). So a host cut off from the
database revokes its leases on time and stops (``close()``) within about a lease.

**While held.** A background task renews the lease every ``lease / 3``
(``UPDATE ... WHERE role AND token``). If the row is no longer ours (taken over or deleted),
or no renewal succeeded before the local countdown ran out (database unreachable, a renewal
hung), the lease is revoked (:meth:`workflow.Lease.revoke`: the engine cancels the holder's
work and releases it) and renewal stops. A renewal that succeeds late is fine: the token did
not change, so nobody held the role in between.

**Release** deletes the row (``WHERE role AND token``), stops renewal and at once wakes the
waiters of this process (every scheduler on the same :class:`AsyncEngine` object shares a
notifier, kept by its :class:`~adapters._sqlengine.EngineShared`). It is shielded: cancelling
the releasing task does not leave the row behind.

**Waiting.** A waiter tries the grant, then waits until a local release wakes it or
``poll_interval`` passes (default ``min(lease / 4, 1 s)``), and tries again. Hand-over between
processes is therefore by polling (within ``poll_interval`` of a release, within a lease plus
``poll_interval`` of a crash); PostgreSQL LISTEN/NOTIFY is not used. Cancelling a wait leaves
nothing behind: the grant statement runs in its own task, and if it granted the role after
all, the row is deleted before the cancellation goes on (further cancellations are held off
for at most a lease, then the clean-up finishes in the background).

:meth:`SQLRoleScheduler.close` releases every lease the scheduler holds, stops its tasks and
makes its waiters (and later calls of ``await_role``) raise :class:`RuntimeError`.

Tests may simulate a frozen or crashed holder by overriding the renewal statement
:meth:`SQLRoleScheduler._extend` (e.g. make it hang): the holder's lease is then revoked by
its countdown and the role is taken over by a waiter once the row expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from workflow import Lease
from workflow.abc import as_timedelta

from ._lograte import Throttle, reachable, unreachable
from ._schemacheck import check_schema
from ._sqlengine import shared
from ._sqlsetup import SQLSetupError, prepare
from .sqlschema import leases

__all__ = ["SQLRoleScheduler"]

_log = logging.getLogger(__name__)
_throttled = Throttle(_log)

T = TypeVar("T")


async def _outlast(task: asyncio.Task[Any], deadline: float) -> bool:
    """Wait until ``task`` is done (``True``) or loop time ``deadline`` passes (``False``),
    through cancellations of the waiter: the caller re-raises the one it is handling."""
    loop = asyncio.get_running_loop()
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=remaining)
    return True


def _not_sent(err: Exception) -> bool:
    """Whether ``err`` came before the statement reached the database: no connection (an
    ``OSError`` from connecting; a timeout may have come after it was sent), or a database
    the adapters refuse (checked first)."""
    if isinstance(err, SQLSetupError):
        return True
    return isinstance(err, OSError) and not isinstance(err, TimeoutError)


def _default_holder() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(eq=False)
class _Held:
    """A lease this scheduler holds: its row's token and local countdown (loop time)."""

    role: str
    token: int
    valid_until: float
    lease: Lease | None = None
    renewer: asyncio.Task[None] | None = None
    watchdog: asyncio.TimerHandle | None = None
    finishing: asyncio.Task[None] | None = None


class SQLRoleScheduler:
    """:class:`~workflow.RoleScheduler` on the ``workflow_leases`` table, shared by every
    process using the database (see the module docstring for how it works).

    ``lease`` (a ``timedelta`` or seconds) is how long a grant or renewal holds the role;
    the holder renews every ``lease / 3``, so a crashed holder's roles pass to a waiter
    within two lease periods. ``safety_margin`` (default ``lease / 5``, less than two thirds
    of the lease) is how long before the row's expiry a holder whose renewals fail revokes
    its lease. ``holder`` names this scheduler in the table (default
    ``"{hostname}:{pid}:{random}"``). ``poll_interval`` is how often a waiter retries when no
    release in this process wakes it (default ``min(lease / 4, 1 s)``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        lease: timedelta | float = timedelta(seconds=10),
        *,
        holder: str | None = None,
        poll_interval: timedelta | float | None = None,
        safety_margin: timedelta | float | None = None,
    ) -> None:
        self._engine = prepare(engine)
        self._db = shared(engine)
        self._lease = as_timedelta(lease)
        if self._lease <= timedelta(0):
            raise ValueError(f"lease must be positive, got {lease!r}")
        self._lease_s = self._lease.total_seconds()
        poll = (
            min(self._lease / 4, timedelta(seconds=1))
            if poll_interval is None
            else as_timedelta(poll_interval)
        )
        if poll <= timedelta(0):
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self._poll_s = poll.total_seconds()
        self._renew_s = self._lease_s / 3
        margin = self._lease / 5 if safety_margin is None else as_timedelta(safety_margin)
        if not timedelta(0) <= margin < self._lease * 2 / 3:
            raise ValueError(
                f"safety_margin must be at least 0 and less than two thirds of the lease, "
                f"got {safety_margin!r}"
            )
        self._valid_s = self._lease_s - margin.total_seconds()
        self._holder = holder if holder is not None else _default_holder()
        if not 0 < len(self._holder) <= 128:
            raise ValueError("holder must be 1 to 128 characters long")
        self._url = self._engine.url.render_as_string(hide_password=True)
        self._held: dict[int, _Held] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Future[None]] = set()
        self._closed = False

    @property
    def holder(self) -> str:
        """This scheduler's name in the ``holder`` column."""
        return self._holder

    @property
    def lease(self) -> timedelta:
        return self._lease

    @property
    def safety_margin(self) -> timedelta:
        """How long before its row expires a holder that cannot renew revokes its lease."""
        return timedelta(seconds=self._lease_s - self._valid_s)

    # -- the protocol ---------------------------------------------------------------------

    async def await_role(self, role: str) -> Lease:
        """Wait until this scheduler holds ``role`` and return its lease. Cancellable; raises
        :class:`RuntimeError` once the scheduler is closed."""
        notifier = self._db.roles
        while True:
            self._check_open()
            woken = notifier.subscribe(role)
            self._waiting.add(woken)
            try:
                attempt = self._spawn(self._try(role))
                try:
                    held = await asyncio.shield(attempt)
                except asyncio.CancelledError:
                    await self._undo(attempt)
                    raise
                if held is not None and held.lease is not None:
                    self._check_open()  # closed meanwhile: close() released it
                    return held.lease
                await asyncio.wait({woken}, timeout=self._poll_s)
            finally:
                self._waiting.discard(woken)
                notifier.unsubscribe(role, woken)

    async def close(self) -> None:
        """Release every lease this scheduler holds (their holders' work is revoked), stop
        its background tasks, and make its waiters and later ``await_role`` calls raise
        :class:`RuntimeError`. Idempotent. Call it once the workflows using it stopped."""
        self._closed = True
        for fut in list(self._waiting):
            if not fut.done():
                fut.set_result(None)
        while self._held or self._tasks:
            for held in list(self._held.values()):
                if held.lease is not None:
                    await held.lease.release()
                else:  # pragma: no cover - a lease object exists from _hold onwards
                    self._held.pop(held.token, None)
            if self._tasks:
                await asyncio.wait(set(self._tasks))

    # -- SQL ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one lease statement that commits by itself. On PostgreSQL it
        runs in autocommit: its row lock ends with the statement, whereas in ``BEGIN ...
        COMMIT`` a holder cut off after its renewal's ``UPDATE`` reached the server (the
        ``COMMIT`` lost) would leave a transaction open that holds the row, and every
        other host's grant would wait on that lock until the partition healed or the
        server dropped the connection. (SQLite: one statement in ``BEGIN IMMEDIATE``.)"""
        if not self._db.postgres:
            async with self._engine.begin() as conn:
                yield conn
            return
        async with self._engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    def _expiry_sql(self) -> sa.ColumnElement[Any]:
        return self._db.clock(self._lease)

    async def _acquire(self, role: str, token: int) -> bool:
        """Insert the row, or take it over if its lease has run out; whether we got it."""
        await check_schema(self._engine)
        insert = postgresql.insert if self._db.postgres else sqlite.insert
        stmt = insert(leases).values(
            role=role, holder=self._holder, token=token, expires_at=self._expiry_sql()
        )
        upsert = stmt.on_conflict_do_update(
            index_elements=[leases.c.role],
            set_={
                "holder": stmt.excluded.holder,
                "token": stmt.excluded.token,
                "expires_at": stmt.excluded.expires_at,
            },
            where=leases.c.expires_at < self._db.clock(None),
        ).returning(leases.c.token)
        async with self._statement() as conn:
            got = (await conn.execute(upsert)).scalar_one_or_none()
        return got is not None and int(got) == token

    async def _extend(self, role: str, token: int) -> bool:
        """Renew the lease; ``False`` if the row is no longer ours. Tests override this."""
        stmt = (
            sa.update(leases)
            .where(leases.c.role == role, leases.c.token == token)
            .values(expires_at=self._expiry_sql())
        )
        async with self._statement() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def _delete(self, role: str, token: int) -> None:
        stmt = sa.delete(leases).where(leases.c.role == role, leases.c.token == token)
        async with self._statement() as conn:
            await conn.execute(stmt)

    # -- grants ---------------------------------------------------------------------------

    async def _try(self, role: str) -> _Held | None:
        """One grant attempt (its own task, so a cancelled caller cannot interrupt it)."""
        token = secrets.randbits(63)
        started = asyncio.get_running_loop().time()
        try:
            granted = await asyncio.wait_for(self._acquire(role, token), self._lease_s)
        except Exception as err:
            if _not_sent(err):
                if not isinstance(err, SQLSetupError):
                    unreachable(self._url, err, self._poll_s)
            else:
                self._spawn(self._forget(role, token))  # the grant may have committed
            raise
        reachable(self._url)
        if not granted:
            return None
        if self._closed:
            await self._forget(role, token)
            return None
        return self._hold(role, token, started + self._valid_s)

    async def _undo(self, attempt: asyncio.Task[_Held | None]) -> None:
        """``await_role`` was cancelled: before the cancellation goes on, wait for its grant
        attempt and release what it got, so nothing is left behind. Further cancellations
        are held off for at most a lease (a row left by then has run out anyway); what is
        not done by then finishes in the background."""
        deadline = asyncio.get_running_loop().time() + self._lease_s
        if not await _outlast(attempt, deadline):
            attempt.add_done_callback(self._drop_unwanted)
            return
        if attempt.cancelled() or attempt.exception() is not None:
            return
        held = attempt.result()
        if held is not None and held.lease is not None:
            await _outlast(self._spawn(held.lease.release()), deadline)

    def _drop_unwanted(self, attempt: asyncio.Task[_Held | None]) -> None:
        """Release what a grant attempt nobody waits for got, if anything."""
        if attempt.cancelled() or attempt.exception() is not None:
            return
        held = attempt.result()
        if held is not None and held.lease is not None:
            self._spawn(held.lease.release())

    async def _forget(self, role: str, token: int) -> None:
        """Delete a row we may hold but do not track (best effort: it expires anyway, so this
        gives up after a lease)."""
        try:
            await asyncio.wait_for(self._delete(role, token), self._lease_s)
        except Exception as err:
            _throttled.warning(
                f"delete {self._url}", "could not delete lease row of role %r: %r", role, err
            )
        self._db.roles.wake(role)

    def _hold(self, role: str, token: int, valid_until: float) -> _Held:
        held = _Held(role, token, valid_until)
        held.lease = Lease(role, functools.partial(self._release, held))
        loop = asyncio.get_running_loop()
        # renew lease / 3 after the grant was *sent* (it may have waited for a lock)
        first = max(0.0, valid_until - self._valid_s + self._renew_s - loop.time())
        held.renewer = asyncio.create_task(self._keep(held, first), name=f"lease:{role}")
        held.watchdog = loop.call_at(valid_until, self._ran_out, held)
        self._held[token] = held
        return held

    # -- holding ------------------------------------------------------------------------

    async def _keep(self, held: _Held, delay: float) -> None:
        """Renew ``held`` every ``lease / 3`` (first after ``delay`` seconds) until it is
        released or lost."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(delay)
            started = loop.time()
            try:
                ours = await asyncio.wait_for(self._extend(held.role, held.token), self._renew_s)
            except Exception as err:
                _throttled.warning(
                    f"renew {self._url}", "renewing the lease of role %r failed: %r", held.role, err
                )
                delay = self._renew_s / 3
                continue
            if not ours:
                _log.warning("the lease of role %r was taken over: revoking it", held.role)
                self._lose(held)
                return
            held.valid_until = started + self._valid_s
            if held.watchdog is not None:
                held.watchdog.cancel()
            held.watchdog = loop.call_at(held.valid_until, self._ran_out, held)
            delay = max(0.0, started + self._renew_s - loop.time())

    def _ran_out(self, held: _Held) -> None:
        lease = held.lease
        if lease is not None and not lease.lost:
            _log.warning("the lease of role %r ran out before a renewal: revoking it", held.role)
            self._lose(held)

    def _lose(self, held: _Held) -> None:
        """Revoke the lease and stop renewing it (the row is deleted on release)."""
        if held.lease is not None:
            held.lease.revoke()
        self._stop_renewing(held)

    def _stop_renewing(self, held: _Held) -> None:
        if held.watchdog is not None:
            held.watchdog.cancel()
            held.watchdog = None
        renewer, held.renewer = held.renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            self._tasks.add(renewer)  # close() waits for it to finish
            renewer.add_done_callback(self._tasks.discard)

    async def _release(self, held: _Held) -> None:
        if held.finishing is None:
            held.finishing = self._spawn(self._finish(held))
        try:
            await asyncio.shield(held.finishing)
        except asyncio.CancelledError:  # delete the row before the cancellation goes on
            await _outlast(held.finishing, asyncio.get_running_loop().time() + self._lease_s)
            raise

    async def _finish(self, held: _Held) -> None:
        self._held.pop(held.token, None)
        self._stop_renewing(held)
        await self._forget(held.role, held.token)

    # -- plumbing -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SQLRoleScheduler is closed")
