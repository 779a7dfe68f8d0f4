"""Run states: the life cycle of a run, independent of its status."""

from __future__ import annotations

import enum

__all__ = ["RunState", "State", "can_move"]


class RunState(enum.IntEnum):
    """Where a run is in its life cycle (luno's numbers)."""

    UNKNOWN = 0
    INITIATED = 1
    RUNNING = 2
    PAUSED = 3
    CANCELLED = 4
    COMPLETED = 5
    DATA_DELETED = 6
    REQUESTED_DATA_DELETED = 7

    # Hash as the int (Enum's default hashes the name in Python): run states are dict and set
    # keys on the hot path, and equal ints must hash equal anyway.
    __hash__ = int.__hash__

    @property
    def valid(self) -> bool:
        return 1 <= self <= 7

    @property
    def finished(self) -> bool:
        """No more status moves: Completed, Cancelled, RequestedDataDeleted, DataDeleted."""
        return _FINISHED_FLAGS[self]

    @property
    def stopped(self) -> bool:
        """Consumers skip the run: Paused, Cancelled, RequestedDataDeleted, DataDeleted."""
        return _STOPPED_FLAGS[self]

    def __str__(self) -> str:
        return _LABELS[self]


_FINISHED = frozenset(
    {
        RunState.COMPLETED,
        RunState.CANCELLED,
        RunState.REQUESTED_DATA_DELETED,
        RunState.DATA_DELETED,
    }
)
_STOPPED = frozenset(
    {
        RunState.PAUSED,
        RunState.CANCELLED,
        RunState.REQUESTED_DATA_DELETED,
        RunState.DATA_DELETED,
    }
)
_FINISHED_FLAGS = tuple(rs in _FINISHED for rs in RunState)
_STOPPED_FLAGS = tuple(rs in _STOPPED for rs in RunState)
_LABELS = {
    RunState.UNKNOWN: "Unknown",
    RunState.INITIATED: "Initiated",
    RunState.RUNNING: "Running",
    RunState.PAUSED: "Paused",
    RunState.CANCELLED: "Cancelled",
    RunState.COMPLETED: "Completed",
    RunState.DATA_DELETED: "Data Deleted",
    RunState.REQUESTED_DATA_DELETED: "Requested Data Deleted",
}

_MOVES: dict[RunState, frozenset[RunState]] = {
    RunState.INITIATED: frozenset({RunState.RUNNING, RunState.PAUSED, RunState.CANCELLED}),
    RunState.RUNNING: frozenset({RunState.COMPLETED, RunState.PAUSED, RunState.CANCELLED}),
    RunState.PAUSED: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.COMPLETED: frozenset({RunState.REQUESTED_DATA_DELETED}),
    RunState.CANCELLED: frozenset({RunState.REQUESTED_DATA_DELETED}),
    RunState.REQUESTED_DATA_DELETED: frozenset({RunState.DATA_DELETED}),
    RunState.DATA_DELETED: frozenset({RunState.REQUESTED_DATA_DELETED}),
}


def can_move(src: RunState, dst: RunState) -> bool:
    """Whether the run-state machine allows ``src -> dst``."""
    return dst in _MOVES.get(src, frozenset())


class State(enum.IntEnum):
    """The state of one background process (luno's numbers)."""

    UNKNOWN = 0
    SHUTDOWN = 1
    RUNNING = 2
    IDLE = 3

    __hash__ = int.__hash__

    def __str__(self) -> str:
        return self.name.capitalize()
