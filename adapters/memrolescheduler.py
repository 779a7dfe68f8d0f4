"""An in-memory role scheduler: one holder per role among everything sharing the object."""

from __future__ import annotations

import asyncio
from collections import deque

from workflow import Lease

__all__ = ["MemRoleScheduler"]


class MemRoleScheduler:
    """In-memory :class:`~workflow.RoleScheduler` for one process.

    Waiting is cancellable, and a released role passes to the longest waiter.
    :meth:`revoke` takes a role back from its holder (the engine then cancels its work).
    """

    def __init__(self) -> None:
        self._holders: dict[str, Lease] = {}
        self._waiters: dict[str, deque[asyncio.Future[Lease]]] = {}

    async def await_role(self, role: str) -> Lease:
        if role not in self._holders:
            return self._grant(role)
        fut: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(role, deque()).append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted and cancelled in the same tick: hand the role on.
                await fut.result().release()
            else:
                self._waiters[role].remove(fut)
            raise

    def _grant(self, role: str) -> Lease:
        lease = Lease(role, lambda: self._release(role, lease))
        self._holders[role] = lease
        return lease

    async def _release(self, role: str, lease: Lease) -> None:
        if self._holders.get(role) is not lease:
            return
        del self._holders[role]
        waiters = self._waiters.get(role)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(self._grant(role))
                return
        self._waiters.pop(role, None)

    def holder(self, role: str) -> Lease | None:
        """The current lease of ``role``, if held."""
        return self._holders.get(role)

    def revoke(self, role: str) -> None:
        """Take ``role`` back from its holder, as a lease expiry would."""
        lease = self._holders.get(role)
        if lease is not None:
            lease.revoke()
