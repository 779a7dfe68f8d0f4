"""In-memory adapters: one process, nothing durable. For tests and for trying things out.

from workflow.adapters.memory import (
    MemConnector, MemRecordStore, MemRoleScheduler, MemStreamer, MemTimeoutStore,
)
"""

from __future__ import annotations

from .memrecordstore import MemRecordStore
from .memrolescheduler import MemRoleScheduler
from .memstreamer import MemConnector, MemStreamer
from .memtimeoutstore import MemTimeoutStore

__all__ = ["MemConnector", "MemRecordStore", "MemRoleScheduler", "MemStreamer", "MemTimeoutStore"]
