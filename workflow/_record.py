"""The stored and wire forms of a run: Record, Meta, Event, outbox and timeout rows."""

from __future__ import annotations

import functools
import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from ._runstate import RunState
from ._tracing import inject as inject_trace

__all__ = [
    "ConnectorEvent",
    "Event",
    "Header",
    "Meta",
    "OutboxEvent",
    "Record",
    "TimeoutRecord",
    "TypedRecord",
    "CHILD_RUN_ID",
    "children_topic",
    "compensation_topic",
    "decode_outbox_data",
    "delete_topic",
    "make_child_finished_event",
    "make_outbox_event",
    "run_state_change_topic",
    "topic",
]

T = TypeVar("T")
S = TypeVar("S")


class Header:
    """Header names carried by every workflow event (luno's wire names)."""

    WORKFLOW_NAME = "workflow_name"
    FOREIGN_ID = "foreign_id"
    TOPIC = "topic"
    RUN_ID = "run_id"
    RUN_STATE = "run_state"
    RECORD_VERSION = "record_version"
    CONNECTOR_DATA = "connector_data"


@dataclass(frozen=True, slots=True)
class Meta:
    """Bookkeeping stored beside a run. ``version`` starts at 1 and grows by one per write.

    ``attempt`` is the try of the current status visit that runs next (1 on arrival; a
    failed try stores the next number) and ``retry_at`` the time that retry is due (``None``
    when none is scheduled). ``paused_by`` says why a paused run is paused (a
    :class:`~workflow.PausedBy` value, empty otherwise). ``idempotency_key`` is the key the
    run was triggered with, if any. ``trace_origin`` is where the run was triggered from
    (the caller's ``file:line`` lines); a run triggered while tracing adds a last line,
    ``traceparent: 00-…``, the W3C context of its trigger span (see ``_tracing``).

    A child run (started by another run's step with ``run.start_child``) names its parent in
    ``parent_workflow`` and ``parent_run_id`` (both empty for a run triggered otherwise).
    ``compensations`` is the saga's stack: the statuses (each a step's ``from``) of the steps
    with a declared compensation that the run completed, oldest first; ``compensating`` is
    set while those compensations run (newest first) after ``on_exhausted="compensate"``.
    """

    run_state_reason: str = ""
    status_description: str = ""
    version: int = 0
    trace_origin: str = ""
    attempt: int = 1
    retry_at: datetime | None = None
    paused_by: str = ""
    idempotency_key: str | None = None
    parent_workflow: str = ""
    parent_run_id: str = ""
    compensations: tuple[int, ...] = ()
    compensating: bool = False


@dataclass(frozen=True, slots=True)
class Record:
    """One version of a run as a store keeps it. Immutable: derive new versions with
    :func:`dataclasses.replace`. Times are timezone-aware UTC."""

    workflow_name: str
    foreign_id: str
    run_id: str
    run_state: RunState
    status: int
    object: bytes
    created_at: datetime
    updated_at: datetime
    meta: Meta = field(default_factory=Meta)


@dataclass(frozen=True, slots=True)
class Event:
    """An event as a streamer delivers it.

    On workflow topics ``foreign_id`` carries the **run id** (as in luno); the run's foreign
    id travels in the ``foreign_id`` header.
    """

    id: int
    foreign_id: str
    type: int
    headers: dict[str, str]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ConnectorEvent:
    """An event from an external stream, handed to a connector function."""

    id: str
    foreign_id: str
    type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "foreign_id": self.foreign_id,
                "type": self.type,
                "headers": self.headers,
                "created_at": self.created_at.isoformat() if self.created_at else None,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> ConnectorEvent:
        data = json.loads(raw)
        created = data.get("created_at")
        return cls(
            id=data["id"],
            foreign_id=data["foreign_id"],
            type=data.get("type", ""),
            headers=dict(data.get("headers") or {}),
            created_at=datetime.fromisoformat(created) if created else None,
        )


class OutboxEvent:
    """A row of the transactional outbox, written in the same transaction as its record.

    ``data`` is the serialised event (JSON: run id, status and headers); stores persist it.
    An event made by :func:`make_outbox_event` also keeps the decoded parts, so an in-memory
    store never serialises what it never persists.
    """

    __slots__ = ("_data", "_parts", "created_at", "id", "workflow_name")

    def __init__(
        self,
        id: str,
        workflow_name: str,
        data: bytes | None,
        created_at: datetime,
        *,
        parts: tuple[str, int, dict[str, str]] | None = None,
    ) -> None:
        if data is None and parts is None:
            raise ValueError("an outbox event needs its data")
        self.id = id
        self.workflow_name = workflow_name
        self.created_at = created_at
        self._data = data
        self._parts = parts

    @property
    def data(self) -> bytes:
        if self._data is None:
            assert self._parts is not None
            run_id, status, headers = self._parts
            self._data = json.dumps(
                {"run_id": run_id, "type": status, "headers": headers}, separators=(",", ":")
            ).encode()
        return self._data

    def parts(self) -> tuple[str, int, dict[str, str]]:
        """``(run_id, status, headers)`` of the event."""
        if self._parts is None:
            self._parts = decode_outbox_data(self.data)
        return self._parts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutboxEvent) and (
            self.id,
            self.workflow_name,
            self.created_at,
            self.data,
        ) == (other.id, other.workflow_name, other.created_at, other.data)

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"OutboxEvent(id={self.id!r}, workflow_name={self.workflow_name!r})"


@dataclass(frozen=True, slots=True)
class TimeoutRecord:
    """A durable timer. ``index`` pairs it with the ``add_timeout`` call that created it."""

    id: int
    workflow_name: str
    foreign_id: str
    run_id: str
    status: int
    completed: bool
    expire_at: datetime
    created_at: datetime
    index: int = 0


class TypedRecord(Generic[T, S]):
    """A run as user code sees it: the record with its typed status and object.

    ``status`` is a member of the workflow's status enum, except for a run stored at a
    status the enum no longer has (a later version of the workflow removed the member):
    there it is the stored number, a plain ``int``. It compares equal to ints either way
    (``run.status == 3``); ``run.status is Status.X`` is simply false for such a run, and
    ``meta.status_description`` of a version written by the new code is the number as text.
    """

    __slots__ = (
        "created_at",
        "foreign_id",
        "meta",
        "object",
        "record",
        "run_id",
        "run_state",
        "status",
        "updated_at",
        "workflow_name",
    )

    def __init__(self, record: Record, status: S, obj: T) -> None:
        self.record = record
        self.workflow_name = record.workflow_name
        self.foreign_id = record.foreign_id
        self.run_id = record.run_id
        self.run_state = record.run_state
        self.status: S = status
        self.object: T = obj
        self.created_at = record.created_at
        self.updated_at = record.updated_at
        self.meta = record.meta

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(workflow_name={self.workflow_name!r}, "
            f"foreign_id={self.foreign_id!r}, run_id={self.run_id!r}, "
            f"run_state={self.run_state.name}, status={self.status!r}, object={self.object!r})"
        )


@functools.lru_cache(maxsize=1024)
def _topic_name(name: str) -> str:
    return name.replace(" ", "_")


@functools.lru_cache(maxsize=4096)
def topic(workflow_name: str, status: int) -> str:
    """The topic of a status: ``"{name}-{status}"`` with spaces replaced by ``_``."""
    return f"{_topic_name(workflow_name)}-{int(status)}"


@functools.lru_cache(maxsize=1024)
def run_state_change_topic(workflow_name: str) -> str:
    return f"{_topic_name(workflow_name)}-run-state-change"


@functools.lru_cache(maxsize=1024)
def delete_topic(workflow_name: str) -> str:
    return f"{_topic_name(workflow_name)}-delete"


_RUN_STATE_CHANGES = frozenset(
    {RunState.PAUSED, RunState.CANCELLED, RunState.COMPLETED, RunState.DATA_DELETED}
)
_RUN_STATE_TEXT = {rs: str(int(rs)) for rs in RunState}


@functools.lru_cache(maxsize=1024)
def compensation_topic(workflow_name: str) -> str:
    """The topic of a run's versions while its compensations run."""
    return f"{_topic_name(workflow_name)}-compensation"


@functools.lru_cache(maxsize=1024)
def children_topic(workflow_name: str) -> str:
    """The topic where a parent run of the workflow hears that one of its children finished."""
    return f"{_topic_name(workflow_name)}-child-finished"


def _event_topic(record: Record) -> str:
    rs = record.run_state
    if rs in _RUN_STATE_CHANGES:
        return run_state_change_topic(record.workflow_name)
    if rs is RunState.REQUESTED_DATA_DELETED:
        return delete_topic(record.workflow_name)
    if record.meta.compensating:
        return compensation_topic(record.workflow_name)
    return topic(record.workflow_name, record.status)


_OUTBOX_PREFIX = f"outbox-id-{uuid.uuid4().hex[:12]}-"
_outbox_seq = itertools.count(1)


def make_outbox_event(record: Record) -> OutboxEvent:
    """The outbox row for a stored record: which topic, and the event's headers (with the
    W3C trace context of the span that wrote it, when tracing: see ``_tracing``).

    Ids are unique: a random per-process prefix and a counter.
    """
    tp = _event_topic(record)
    headers = {
        Header.FOREIGN_ID: record.foreign_id,
        Header.WORKFLOW_NAME: record.workflow_name,
        Header.TOPIC: tp,
        Header.RUN_ID: record.run_id,
        Header.RUN_STATE: _RUN_STATE_TEXT[record.run_state],
        Header.RECORD_VERSION: str(record.meta.version),
    }
    inject_trace(headers, record)
    return OutboxEvent(
        f"{_OUTBOX_PREFIX}{next(_outbox_seq)}",
        record.workflow_name,
        None,
        record.updated_at,
        parts=(record.run_id, record.status, headers),
    )


CHILD_RUN_ID = "child_run_id"
"""The header of a child-finished event that names the child."""


def make_child_finished_event(child: Record) -> OutboxEvent:
    """The event that tells a child's parent run that the child finished: on the parent
    workflow's :func:`children_topic`, keyed by the parent's run id, written with the
    child's finishing version (its ``workflow_name`` is the parent's, so the parent
    workflow's outbox relay sends it)."""
    meta = child.meta
    tp = children_topic(meta.parent_workflow)
    headers = {
        Header.FOREIGN_ID: child.foreign_id,
        Header.WORKFLOW_NAME: meta.parent_workflow,
        Header.TOPIC: tp,
        Header.RUN_ID: meta.parent_run_id,
        Header.RUN_STATE: _RUN_STATE_TEXT[child.run_state],
        Header.RECORD_VERSION: "0",
        CHILD_RUN_ID: child.run_id,
    }
    inject_trace(headers, child)
    return OutboxEvent(
        f"{_OUTBOX_PREFIX}{next(_outbox_seq)}",
        meta.parent_workflow,
        None,
        child.updated_at,
        parts=(meta.parent_run_id, 0, headers),
    )


def decode_outbox_data(data: bytes) -> tuple[str, int, dict[str, str]]:
    """``(run_id, status, headers)`` of an outbox row's data."""
    raw: Any = json.loads(data)
    return str(raw["run_id"]), int(raw["type"]), {str(k): str(v) for k, v in raw["headers"].items()}
