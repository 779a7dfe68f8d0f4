"""Everything an adapter author needs, in one public module.

The adapter protocols, the optional capabilities the engine uses when an adapter has them,
and the data types and helpers adapters work with. The adapters in ``workflow.adapters``
import from here and from ``workflow``, never from a private ``workflow._*`` module; the
conformance suites in ``workflow.adapters.adaptertest`` check the capabilities an adapter
declares.

Required protocols: :class:`RecordStore`, :class:`EventStreamer` (with :class:`EventSender`
and :class:`EventReceiver`), :class:`RoleScheduler` (with :class:`Lease`),
:class:`TimeoutStore`, :class:`ConnectorConstructor` (with :class:`ConnectorConsumer`).

Optional capabilities (``isinstance`` checks, so a method of that name is all it takes):
:class:`RecordHistory`, :class:`RunVersions`, :class:`StatusCounts`, :class:`OutboxBulkDelete`,
:class:`AtomicWrites`, :class:`Purge` and :class:`DirectPublisher` for record stores;
:class:`BatchSender` for event senders; :class:`ReadyReceiver` for event receivers.
"""

from __future__ import annotations

from ._adapters import (
    Ack,
    AtomicWrites,
    BatchSender,
    ConnectorConstructor,
    ConnectorConsumer,
    DirectPublisher,
    EventReceiver,
    EventSender,
    EventStreamer,
    Filter,
    Lease,
    Order,
    OutboxBulkDelete,
    Purge,
    ReadyReceiver,
    RecordHistory,
    RecordStore,
    RoleScheduler,
    RunVersions,
    StatusCounts,
    TimeoutStore,
    matches,
)
from ._clock import Clock, RealClock, as_timedelta
from ._record import (
    ConnectorEvent,
    Event,
    Header,
    Meta,
    OutboxEvent,
    Record,
    TimeoutRecord,
    children_topic,
    compensation_topic,
    decode_outbox_data,
    delete_topic,
    make_child_finished_event,
    make_outbox_event,
    run_state_change_topic,
    topic,
)
from ._run import Directive
from ._runstate import RunState

__all__ = [
    "Ack",
    "AtomicWrites",
    "BatchSender",
    "Clock",
    "ConnectorConstructor",
    "ConnectorConsumer",
    "ConnectorEvent",
    "DirectPublisher",
    "Directive",
    "Event",
    "EventReceiver",
    "EventSender",
    "EventStreamer",
    "Filter",
    "Header",
    "Lease",
    "Meta",
    "Order",
    "OutboxBulkDelete",
    "OutboxEvent",
    "Purge",
    "ReadyReceiver",
    "RealClock",
    "Record",
    "RecordHistory",
    "RecordStore",
    "RoleScheduler",
    "RunState",
    "RunVersions",
    "StatusCounts",
    "TimeoutRecord",
    "TimeoutStore",
    "as_timedelta",
    "children_topic",
    "compensation_topic",
    "decode_outbox_data",
    "delete_topic",
    "make_child_finished_event",
    "make_outbox_event",
    "matches",
    "run_state_change_topic",
    "topic",
]
