"""A durable, event-driven, state-machine workflow engine for asyncio.

Declare a typed object and an ``IntEnum`` of statuses, connect statuses with steps,
callbacks and timeouts on a :class:`Builder`, and :meth:`~Builder.build` a
:class:`Workflow` on adapters (in memory, SQLite, PostgreSQL, Kafka).
"""

from __future__ import annotations

from ._adapters import (
    Ack,
    ConnectorConstructor,
    ConnectorConsumer,
    EventReceiver,
    EventSender,
    EventStreamer,
    Filter,
    Lease,
    Order,
    RecordStore,
    RoleScheduler,
    TimeoutStore,
)
from ._builder import Builder, duration_timer
from ._clock import Clock, RealClock
from ._errors import (
    ConcurrentUpdateError,
    IdempotencyKeyUsedError,
    InvalidStatusError,
    InvalidTransitionError,
    NonRetryableError,
    RecordNotFoundError,
    RunFinishedError,
    RunStateError,
    StepInterruptedError,
    StepTimeoutError,
    UnableToCancelError,
    UnableToDeleteError,
    UnableToPauseError,
    UnableToResumeError,
    UnstorableObjectError,
    WorkflowError,
    WorkflowInProgressError,
)
from ._mermaid import mermaid
from ._options import OutboxOptions, ProcessOptions
from ._process import ErrorCounter
from ._record import (
    ConnectorEvent,
    Event,
    Header,
    Meta,
    OutboxEvent,
    Record,
    TimeoutRecord,
    TypedRecord,
    delete_topic,
    make_outbox_event,
    run_state_change_topic,
    topic,
)
from ._retry import PausedBy, RetryPolicy
from ._run import Run
from ._runstate import RunState, State
from ._workflow import Workflow

__all__ = [
    "Ack",
    "Builder",
    "Clock",
    "ConcurrentUpdateError",
    "ConnectorConstructor",
    "ConnectorConsumer",
    "ConnectorEvent",
    "ErrorCounter",
    "Event",
    "EventReceiver",
    "EventSender",
    "EventStreamer",
    "Filter",
    "Header",
    "IdempotencyKeyUsedError",
    "InvalidStatusError",
    "InvalidTransitionError",
    "Lease",
    "Meta",
    "NonRetryableError",
    "Order",
    "OutboxEvent",
    "OutboxOptions",
    "PausedBy",
    "ProcessOptions",
    "RealClock",
    "Record",
    "RecordNotFoundError",
    "RecordStore",
    "RetryPolicy",
    "RoleScheduler",
    "Run",
    "RunFinishedError",
    "RunState",
    "RunStateError",
    "State",
    "StepInterruptedError",
    "StepTimeoutError",
    "TimeoutRecord",
    "TimeoutStore",
    "TypedRecord",
    "UnableToCancelError",
    "UnableToDeleteError",
    "UnableToPauseError",
    "UnableToResumeError",
    "UnstorableObjectError",
    "Workflow",
    "WorkflowError",
    "WorkflowInProgressError",
    "delete_topic",
    "duration_timer",
    "make_outbox_event",
    "mermaid",
    "run_state_change_topic",
    "topic",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("workflow._"):
        try:
            _obj.__module__ = "workflow"
        except (AttributeError, TypeError):
            pass
del _name, _obj
