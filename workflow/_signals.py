"""In-process wake-ups shared by every workflow object that uses the same record store.

A write through one ``Workflow`` wakes the outbox relay, ``await_`` callers and timeout
pollers of every ``Workflow`` in this process that share the store object. Other processes
are reached through the adapters (polling fallback, or the adapter's own notifications).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from ._record import Record

__all__ = ["Signals", "signals_for"]


class RunWatch:
    """Collects every version of one run written in this process while it is open."""

    __slots__ = ("_fut", "records")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._fut: asyncio.Future[None] | None = None

    def push(self, record: Record) -> None:
        self.records.append(record)
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Return when a record arrives or after ``timeout`` seconds."""
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
    def __init__(self, relay_wakes: bool = True) -> None:
        # False when the store appends events to the streamer itself (it writes no outbox
        # rows): the relay then only polls for rows left by other writers.
        self._relay_wakes = relay_wakes
        self._outbox: dict[str, asyncio.Event] = {}
        self._timeouts: dict[str, asyncio.Event] = {}
        self._watches: dict[str, set[RunWatch]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

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

    def watch(self, run_id: str) -> RunWatch:
        w = RunWatch()
        self._watches.setdefault(run_id, set()).add(w)
        return w

    def unwatch(self, run_id: str, w: RunWatch) -> None:
        watches = self._watches.get(run_id)
        if watches is not None:
            watches.discard(w)
            if not watches:
                del self._watches[run_id]


_by_store: weakref.WeakKeyDictionary[Any, Signals] = weakref.WeakKeyDictionary()
_by_id: dict[int, Signals] = {}


def signals_for(store: Any) -> Signals:
    """The signals of a store object (shared by every workflow using it in this process)."""
    try:
        sig = _by_store.get(store)
        if sig is None:
            sig = _by_store[store] = Signals(getattr(store, "publishes_to", None) is None)
        return sig
    except TypeError:  # not weak-referenceable: key by identity for the life of the process
        sig = _by_id.get(id(store))
        if sig is None:
            sig = _by_id[id(store)] = Signals(getattr(store, "publishes_to", None) is None)
        return sig
