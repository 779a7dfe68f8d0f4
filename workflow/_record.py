"""The stored and wire forms of a run: Record, Meta, Event, outbox and timeout rows."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._runstate import RunState

if TYPE_CHECKING:
    pass

__all__ = [
    "ConnectorEvent",
    "Event",
    "Header",
    "Meta",
    "OutboxEvent",
    "Record",
    "TimeoutRecord",
    "TypedRecord",
    "decode_outbox_data",
    "delete_topic",
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
    """Bookkeeping stored beside a run. ``version`` starts at 1 and grows by one per write."""

    run_state_reason: str = ""
    status_description: str = ""
    version: int = 0
    trace_origin: str = ""


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


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A row of the transactional outbox, written in the same transaction as its record."""

    id: str
    workflow_name: str
    data: bytes
    created_at: datetime


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
    """A run as user code sees it: the record with its typed status and object."""

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


def _topic_name(name: str) -> str:
    return name.replace(" ", "_")


def topic(workflow_name: str, status: int) -> str:
    """The topic of a status: ``"{name}-{status}"`` with spaces replaced by ``_``."""
    return f"{_topic_name(workflow_name)}-{int(status)}"


def run_state_change_topic(workflow_name: str) -> str:
    return f"{_topic_name(workflow_name)}-run-state-change"


def delete_topic(workflow_name: str) -> str:
    return f"{_topic_name(workflow_name)}-delete"


def _event_topic(record: Record) -> str:
    rs = record.run_state
    if rs is RunState.REQUESTED_DATA_DELETED:
        return delete_topic(record.workflow_name)
    if rs in (
        RunState.PAUSED,
        RunState.CANCELLED,
        RunState.COMPLETED,
        RunState.DATA_DELETED,
    ):
        return run_state_change_topic(record.workflow_name)
    return topic(record.workflow_name, record.status)


def make_outbox_event(record: Record) -> OutboxEvent:
    """The outbox row for a stored record: which topic, and the event's headers."""
    tp = _event_topic(record)
    data = {
        "run_id": record.run_id,
        "type": record.status,
        "headers": {
            Header.FOREIGN_ID: record.foreign_id,
            Header.WORKFLOW_NAME: record.workflow_name,
            Header.TOPIC: tp,
            Header.RUN_ID: record.run_id,
            Header.RUN_STATE: str(int(record.run_state)),
            Header.RECORD_VERSION: str(record.meta.version),
        },
    }
    return OutboxEvent(
        id=f"outbox-id-{uuid.uuid4()}",
        workflow_name=record.workflow_name,
        data=json.dumps(data, separators=(",", ":")).encode(),
        created_at=record.updated_at,
    )


def decode_outbox_data(data: bytes) -> tuple[str, int, dict[str, str]]:
    """``(run_id, status, headers)`` of an outbox row's data."""
    raw: Any = json.loads(data)
    return str(raw["run_id"]), int(raw["type"]), {str(k): str(v) for k, v in raw["headers"].items()}
