"""The adapter contracts: small protocols that every storage / streaming back end implements.

Every method is ``async``. ``workflow.adapters.adaptertest`` holds conformance suites for each one.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from ._record import ConnectorEvent, Event, OutboxEvent, Record, TimeoutRecord
from ._runstate import RunState

__all__ = [
    "Ack",
    "AtomicWrites",
    "BatchSender",
    "ConnectorConstructor",
    "ConnectorConsumer",
    "DirectPublisher",
    "EventReceiver",
    "EventSender",
    "EventStreamer",
    "Filter",
    "Lease",
    "Order",
    "OutboxBulkDelete",
    "Purge",
    "RecordHistory",
    "RecordStore",
    "RoleScheduler",
    "ReadyReceiver",
    "RunVersions",
    "StatusCounts",
    "TimeoutStore",
    "field_text",
    "matches",
]

Ack = Callable[[], Awaitable[None]]
"""Acknowledge one received event: the receiver's durable cursor moves past it."""

Order = Literal["asc", "desc"]


@runtime_checkable
class EventSender(Protocol):
    async def send(self, foreign_id: str, status_type: int, headers: dict[str, str]) -> None:
        """Durably append one event to the sender's topic; return once it is stored."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class EventReceiver(Protocol):
    async def recv(self) -> tuple[Event, Ack]:
        """Wait for the next event of the topic (in order) and return it with its ack."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class EventStreamer(Protocol):
    """Topics of events with durable, named cursors.

    A receiver name is a durable cursor: a new receiver with the same name resumes after the
    last acked event, and an event that was received but not acked is delivered again.
    ``stream_from_latest`` matters only when the name has no cursor yet: the receiver then
    starts after the last event that exists when ``new_receiver`` returns.
    """

    async def new_sender(self, topic: str) -> EventSender: ...

    async def new_receiver(
        self,
        topic: str,
        name: str,
        *,
        poll_frequency: float | None = None,
        stream_from_latest: bool = False,
    ) -> EventReceiver: ...


@dataclass(frozen=True, slots=True)
class Filter:
    """A filter for :meth:`RecordStore.list`. Build one with the class methods."""

    kind: Literal[
        "foreign_id",
        "status",
        "run_state",
        "created_after",
        "created_before",
        "parent",
        "updated_after",
        "updated_before",
        "object_field",
    ]
    values: tuple[str | int, ...] = ()
    time: datetime | None = None

    @classmethod
    def by_foreign_id(cls, *foreign_ids: str) -> Filter:
        return cls("foreign_id", tuple(foreign_ids))

    @classmethod
    def by_status(cls, *statuses: int) -> Filter:
        return cls("status", tuple(int(s) for s in statuses))

    @classmethod
    def by_run_state(cls, *run_states: RunState | int) -> Filter:
        return cls("run_state", tuple(int(s) for s in run_states))

    @classmethod
    def by_parent(cls, *run_ids: str) -> Filter:
        """Child runs of these parent runs (``meta.parent_run_id``)."""
        return cls("parent", tuple(run_ids))

    @classmethod
    def created_after(cls, t: datetime) -> Filter:
        """Strictly after ``t``."""
        return cls("created_after", time=t)

    @classmethod
    def created_before(cls, t: datetime) -> Filter:
        """Strictly before ``t``."""
        return cls("created_before", time=t)

    @classmethod
    def updated_after(cls, t: datetime) -> Filter:
        """Last written strictly after ``t``."""
        return cls("updated_after", time=t)

    @classmethod
    def updated_before(cls, t: datetime) -> Filter:
        """Last written strictly before ``t``."""
        return cls("updated_before", time=t)

    @classmethod
    def object_field(cls, path: str, value: str) -> Filter:
        """Runs whose object has ``value`` at ``path`` (dotted keys, e.g.
        ``"customer.country"``), compared as JSON text: a string as itself, a number as
        written (``"42"``), a boolean as ``"true"`` / ``"false"``; ``null``, lists and objects
        never match."""
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise ValueError(f"an object field path is dotted keys, got {path!r}")
        if not isinstance(value, str):
            raise ValueError(f"an object field value is compared as text, got {value!r}")
        return cls("object_field", (path, value))


def matches(record: Record, filters: Sequence[Filter]) -> bool:
    """Whether a record passes every filter (reference semantics for adapters)."""
    for f in filters:
        if f.kind == "foreign_id":
            if record.foreign_id not in f.values:
                return False
        elif f.kind == "status":
            if record.status not in f.values:
                return False
        elif f.kind == "run_state":
            if int(record.run_state) not in f.values:
                return False
        elif f.kind == "parent":
            if record.meta.parent_run_id not in f.values:
                return False
        elif f.kind == "created_after":
            if f.time is None or not record.created_at > f.time:
                return False
        elif f.kind == "created_before":
            if f.time is None or not record.created_at < f.time:
                return False
        elif f.kind == "updated_after":
            if f.time is None or not record.updated_at > f.time:
                return False
        elif f.kind == "updated_before":
            if f.time is None or not record.updated_at < f.time:
                return False
        elif f.kind == "object_field":
            if field_text(record.object, str(f.values[0])) != f.values[1]:
                return False
    return True


def field_text(data: bytes, path: str) -> str | None:
    """The JSON text of the object's value at a dotted ``path`` (see ``Filter.object_field``)."""
    try:
        value: Any = json.loads(data)
    except ValueError:
        return None
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


# -- optional capabilities: the engine uses them when an adapter has them ------------------


@runtime_checkable
class RecordHistory(Protocol):
    """Optional capability of a record store: every stored version of a run, oldest first.

    Used by hooks (the version their event announced) and by ``await_`` (versions written
    elsewhere between two reads). Without it, both use the current version.
    """

    async def history(self, run_id: str) -> builtins.list[Record]: ...


@runtime_checkable
class OutboxBulkDelete(Protocol):
    """Optional capability of a record store: delete many relayed outbox events at once."""

    async def delete_outbox_events(self, ids: Sequence[str]) -> None: ...


@runtime_checkable
class DirectPublisher(Protocol):
    """Optional capability of a record store: it appends each record's event to a streamer
    itself, in the record's own transaction (``publishes_to`` is that streamer, or None when
    it writes outbox rows instead). ``build`` refuses a store that publishes to another
    streamer than the workflow's."""

    @property
    def publishes_to(self) -> Any: ...


@runtime_checkable
class BatchSender(Protocol):
    """Optional capability of an event sender: send many events in one round trip."""

    async def send_many(self, events: builtins.list[tuple[str, int, dict[str, str]]]) -> None: ...


@runtime_checkable
class ReadyReceiver(Protocol):
    """Optional capability of an event receiver: hand out, without waiting, the events it
    already holds (read ahead in a batch).

    A consumer takes them all at once, up to its concurrency, so that their runs are read
    in one statement and their writes committed together (a store that batches concurrent
    calls, as the SQL store does). Each comes with its ack, as from ``recv``.
    """

    def recv_ready(self, limit: int) -> builtins.list[tuple[Event, Ack]]:
        """Up to ``limit`` events that ``recv`` would return next without waiting; none if
        there are none."""
        ...


@runtime_checkable
class RunVersions(Protocol):
    """Optional capability of a record store: the current version of many runs in one read.

    ``await_`` uses it to follow runs written by other processes with one query per poll for
    all its waiters, instead of a lookup per waiter.
    """

    async def versions(self, run_ids: Sequence[str]) -> dict[str, int]:
        """``{run_id: version}`` of the runs that exist among ``run_ids``."""
        ...


@runtime_checkable
class StatusCounts(Protocol):
    """Optional capability of a record store: how many unfinished runs (initiated, running
    or paused) each status has, in one read. At start the engine uses it to report runs
    parked at statuses its graph no longer has; without it, it pages through ``list``."""

    async def unfinished_by_status(self, workflow_name: str) -> dict[int, int]: ...


@runtime_checkable
class AtomicWrites(Protocol):
    """Optional capability of a record store: several writes in one transaction. Child
    workflows need it (a parent's transition and its children's creation commit together),
    and so do the cascade of a parent's cancel or data deletion to its children and a
    child's finishing write that tells its parent."""

    async def store_many(
        self, records: Sequence[Record], events: Sequence[OutboxEvent] = ()
    ) -> None:
        """Store each record exactly as ``store`` would (the compare-and-set on its version,
        the checks of a new run, its history and its event), and ``events`` as well (extra
        events: outbox rows of their ``workflow_name``, or, for a store that publishes
        directly, events on the topic in their headers), all in one transaction. When any
        part is refused nothing at all is written, and the error is the one ``store`` would
        raise for the first record refused. The records have distinct run ids."""
        ...


@runtime_checkable
class Purge(Protocol):
    """Optional capability of a record store: retention. The CLI's and HTTP API's ``purge``
    need it."""

    async def purge_finished(self, finished_before: datetime, limit: int) -> int:
        """Delete at most ``limit`` runs that finished (completed, cancelled or data deleted)
        with their last write before ``finished_before``, oldest first, with their history
        (and the timers a store in the same database keeps for them); return how many runs
        were deleted (fewer than ``limit``: none left). Unfinished runs and runs whose data
        deletion is only requested stay. Their idempotency keys are forgotten with them."""
        ...


@runtime_checkable
class RecordStore(Protocol):
    """Runs and their transactional outbox.

    ``store(record)`` is a compare-and-set on ``record.meta.version``: it writes only if the
    stored version is ``record.meta.version - 1`` (no stored run for version 1), else it raises
    :class:`ConcurrentUpdateError` and changes nothing. Storing version 1 while the foreign id
    has an unfinished run raises :class:`WorkflowInProgressError`. The record and its outbox
    event (``make_outbox_event(record)``) are written in one transaction.

    A new run (version 1) whose ``meta.idempotency_key`` is set, while a run of the same
    workflow already has that key (in any state), raises :class:`IdempotencyKeyUsedError`
    carrying that run's id, and changes nothing: checked atomically with the write, and ahead
    of the unfinished-run check. Every ``meta`` field round-trips unchanged (``attempt``,
    ``retry_at``, ``paused_by`` and ``idempotency_key`` included).
    """

    async def store(self, record: Record) -> None: ...

    async def due_retries(
        self, workflow_name: str, status: int, now: datetime, limit: int
    ) -> builtins.list[Record]:
        """Runs of the workflow at ``status`` that are initiated or running and whose
        ``meta.retry_at`` is set and ``<= now``, earliest due first, at most ``limit``."""
        ...

    async def lookup(self, run_id: str) -> Record:
        """The run, or :class:`RecordNotFoundError`."""
        ...

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        """The most recently created run of the foreign id, or :class:`RecordNotFoundError`."""
        ...

    async def list(
        self,
        workflow_name: str = "",
        offset_id: int = 0,
        limit: int = 25,
        order: Order = "asc",
        *filters: Filter,
    ) -> builtins.list[Record]:
        """A page of runs ordered by creation; ``workflow_name=""`` means every workflow;
        ``offset_id`` is a row offset."""
        ...

    async def list_outbox_events(
        self, workflow_name: str, limit: int
    ) -> builtins.list[OutboxEvent]:
        """Unpublished outbox events, oldest first."""
        ...

    async def delete_outbox_event(self, id: str) -> None:
        """Remove a published outbox event. Deleting an absent id is not an error."""
        ...


@runtime_checkable
class TimeoutStore(Protocol):
    """Durable timers."""

    async def create(
        self,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        status: int,
        expire_at: datetime,
        *,
        index: int = 0,
    ) -> int:
        """Store a timer and return its id (store-generated, unique, increasing, and never
        reused: not even the id of a timer since cancelled or removed by :meth:`cancel_run`,
        because the engine completes or cancels a fired timer by id after the run's move may
        have removed it)."""
        ...

    async def complete(self, id: int) -> None:
        """Mark a timer as fired (kept, no longer listed)."""
        ...

    async def cancel(self, id: int) -> None:
        """Delete a timer. Cancelling an absent id is not an error."""
        ...

    async def list(self, workflow_name: str) -> builtins.list[TimeoutRecord]:
        """Every timer of the workflow that is not completed, in creation order."""
        ...

    async def list_valid(
        self, workflow_name: str, status: int, now: datetime
    ) -> builtins.list[TimeoutRecord]:
        """Timers of that status that are not completed and have ``expire_at <= now``."""
        ...

    async def cancel_run(self, workflow_name: str, run_id: str, status: int) -> None:
        """Delete every timer of the run at ``status`` (the run left it). Idempotent."""
        ...


class Lease:
    """A role held by one holder. The scheduler calls :meth:`revoke` when it takes the role
    back; the engine then cancels the holder's work and calls :meth:`release`."""

    __slots__ = ("_lost", "_release", "_released", "role")

    def __init__(self, role: str, release: Callable[[], Awaitable[None]]) -> None:
        self.role = role
        self._release = release
        self._released = False
        self._lost = asyncio.Event()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def revoke(self) -> None:
        """Mark the role as taken back (called by the scheduler)."""
        self._lost.set()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        """Give the role up. Idempotent."""
        if self._released:
            return
        self._released = True
        self._lost.set()
        await self._release()


@runtime_checkable
class RoleScheduler(Protocol):
    """Grants a named role to one holder at a time across every process that shares it."""

    async def await_role(self, role: str) -> Lease:
        """Wait until this caller holds ``role``. Cancelling the wait leaves no trace."""
        ...


@runtime_checkable
class ConnectorConsumer(Protocol):
    async def recv(self) -> tuple[ConnectorEvent, Ack]: ...

    async def close(self) -> None: ...


@runtime_checkable
class ConnectorConstructor(Protocol):
    """Makes a consumer of an external stream; ``name`` is its durable cursor."""

    async def make(self, name: str) -> ConnectorConsumer: ...
