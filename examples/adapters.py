"""What an example's ``main()`` runs on: ``main(adapters=...)`` takes a function that makes the
four adapters on the example's clock. ``python -m examples.<name>`` uses :func:`memory`; the
tests (``tests/test_examples.py``) also run every scenario on the SQL adapters, on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

from workflow import Clock, EventStreamer, RecordStore, RoleScheduler, TimeoutStore
from workflow.adapters.memory import MemRecordStore, MemRoleScheduler, MemStreamer, MemTimeoutStore

Adapters = tuple[EventStreamer, RecordStore, RoleScheduler, TimeoutStore]
"""``(streamer, record store, role scheduler, timeout store)``, the order ``build`` takes them."""

MakeAdapters = Callable[[Clock], Adapters]
"""Makes the adapters on the clock the example drives its workflow with."""


def memory(clock: Clock) -> Adapters:
    """Fresh in-memory adapters on ``clock``: one process, nothing kept after it ends."""
    return MemStreamer(clock), MemRecordStore(), MemRoleScheduler(), MemTimeoutStore(clock)
