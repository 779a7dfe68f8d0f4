"""In-process wake-ups shared by every workflow object that uses the same record store.

A write through one ``Workflow`` wakes the outbox relay, ``await_`` callers and timeout
pollers of every ``Workflow`` in this process that share the store object. Other processes
are reached through the adapters (polling fallback, or the adapter's own notifications).

``await_`` callers cost nothing while nothing happens: each waits on a future that the
writes of this process resolve. Writes by other processes (or through another store object)
are found by one watcher task per store, which polls the versions of every watched run in
one batched read (:class:`RunVersions`) while anybody waits, and pushes the runs that moved.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from ._adapters import DirectPublisher, RunVersions
from ._errors import RecordNotFoundError
from ._record import Record

_log = logging.getLogger("workflow")

__all__ = ["Signals", "signals_for"]


class RunWatch:
    """Collects every version of one run written while it is open: by this process as it is
    written, by others when the store's watcher sees them."""

    __slots__ = ("_fut", "poll", "records", "version")

    def __init__(self, poll: float) -> None:
        self.records: list[Record] = []
        self.version = 0  # the newest version known to this watch
        self.poll = poll
        self._fut: asyncio.Future[None] | None = None

    def push(self, record: Record) -> None:
        self.records.append(record)
        if record.meta.version > self.version:
            self.version = record.meta.version
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def take(self) -> list[Record]:
        records, self.records = self.records, []
        return records

    async def wait(self, timeout: float | None) -> None:
        """Return when a record arrives or after ``timeout`` seconds (None: no limit)."""
        if self.records:
            return
        self._fut = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._fut = None


class Signals:
    """The wake-ups of one record store object (see the module documentation)."""

    def __init__(self, store: Any) -> None:
        # False when the store appends events to the streamer itself (it writes no outbox
        # rows): the relay then only polls for rows left by other writers.
        self._relay_wakes = not isinstance(store, DirectPublisher) or store.publishes_to is None
        # The registry is keyed by the store: a strong reference here would keep it alive.
        try:
            self._store: Callable[[], Any] = weakref.ref(store)
        except TypeError:  # not weak-referenceable: these signals live on the store itself
            self._store = lambda: store
        self._outbox: dict[str, asyncio.Event] = {}
        self._timeouts: dict[str, asyncio.Event] = {}
        self._watches: dict[str, set[RunWatch]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._idle = False
        # The workflows built on this store in this process, by name: a parent decodes its
        # children's objects with their own workflow's types.
        self.engines: dict[str, Any] = {}

    def waiter(self, channel: str) -> asyncio.Future[None]:
        """A future resolved at the next :meth:`notify` of ``channel``. Take it *before*
        checking the condition you wait for, so that no notification is missed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(fut)
        return fut

    def notify(self, channel: str) -> None:
        waiters = self._waiters.pop(channel, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def outbox_event(self, workflow_name: str) -> asyncio.Event:
        ev = self._outbox.get(workflow_name)
        if ev is None:
            ev = self._outbox[workflow_name] = asyncio.Event()
        return ev

    def timeout_event(self, workflow_name: str) -> asyncio.Event:
        ev = self._timeouts.get(workflow_name)
        if ev is None:
            ev = self._timeouts[workflow_name] = asyncio.Event()
        return ev

    def stored(self, record: Record) -> None:
        if self._relay_wakes:
            ev = self._outbox.get(record.workflow_name)
            if ev is not None:
                ev.set()
        if self._waiters:
            self.notify(f"stored:{record.workflow_name}")
        watches = self._watches.get(record.run_id)
        if watches:
            for w in watches:
                w.push(record)

    def watch(self, run_id: str, poll: float) -> RunWatch:
        """Watch one run. The store is read every ``poll`` seconds (the smallest of the open
        watches) for versions written elsewhere, in one batched read for all watches."""
        w = RunWatch(poll)
        self._watches.setdefault(run_id, set()).add(w)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_others(), name="workflow:await-watcher"
            )
        return w

    def unwatch(self, run_id: str, w: RunWatch) -> None:
        watches = self._watches.get(run_id)
        if watches is not None:
            watches.discard(w)
            if not watches:
                del self._watches[run_id]
                if not self._watches and self._watcher is not None and self._idle:
                    self._watcher.cancel()  # asleep between polls: nothing to interrupt

    async def _watch_others(self) -> None:
        """While anybody waits: read the versions of every watched run in one batch each
        poll, and push the runs that moved to their watches."""
        me = asyncio.current_task()
        try:
            while self._watches:
                poll = min(w.poll for ws in self._watches.values() for w in ws)
                self._idle = True
                try:
                    await asyncio.sleep(poll)
                finally:
                    self._idle = False
                store = self._store()
                if not self._watches or store is None:
                    break
                try:
                    await self._poll_versions(store)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # a store outage: waiters time out, the next poll retries
                    _log.debug("await_ watcher: reading run versions failed: %r", err)
        finally:
            if self._watcher is me:
                self._watcher = None

    async def _poll_versions(self, store: Any) -> None:
        """Push every watched run that moved: the batched version read tells which, and only
        those are looked up. A store without :class:`RunVersions` is looked up run by run."""
        if isinstance(store, RunVersions):
            versions = await store.versions(list(self._watches))
            moved = [run_id for run_id, v in versions.items() if self._behind(run_id, v)]
        else:
            moved = list(self._watches)
        for run_id in moved:
            try:
                record = await store.lookup(run_id)
            except RecordNotFoundError:
                continue
            for w in list(self._watches.get(run_id, ())):
                if w.version < record.meta.version:
                    w.push(record)

    def _behind(self, run_id: str, version: int) -> bool:
        """Whether a watch of ``run_id`` has not seen ``version`` yet."""
        return any(w.version < version for w in self._watches.get(run_id, ()))


_by_store: weakref.WeakKeyDictionary[Any, Signals] = weakref.WeakKeyDictionary()
_ATTRIBUTE = "_workflow_signals"


def signals_for(store: Any) -> Signals:
    """The signals of a store object, shared by every workflow using it in this process. A
    store that cannot be weakly referenced keeps them in an attribute; one that cannot take an
    attribute either gets signals of its own per workflow (its writes then reach the other
    workflows of this process through the watcher's polling, as another process's would)."""
    try:
        sig = _by_store.get(store)
        if sig is None:
            sig = _by_store[store] = Signals(store)
        return sig
    except TypeError:  # not weak-referenceable
        pass
    sig = getattr(store, _ATTRIBUTE, None)
    if isinstance(sig, Signals):
        return sig
    sig = Signals(store)
    try:
        setattr(store, _ATTRIBUTE, sig)
    except (AttributeError, TypeError):
        pass
    return sig
