"""Conformance suites for adapters: run them against your own back end to check it behaves as
the engine needs.

Each suite is an ``async`` function that needs no test framework: it returns when the adapter
conforms and raises ``AssertionError`` naming the first behaviour it got wrong. With pytest and
pytest-asyncio::

    from workflow.adapters.adaptertest import (
        run_connector_test,
        run_event_streamer_test,
        run_record_store_test,
        run_role_scheduler_test,
        run_timeout_store_test,
    )

    async def test_my_store() -> None:
        await run_record_store_test(lambda: MyRecordStore(fresh_database()))

    async def test_my_roles() -> None:
        db = fresh_database()
        await run_role_scheduler_test(lambda n: [MyRoleScheduler(db) for _ in range(n)])

or from a script: ``asyncio.run(run_record_store_test(make_store))``.

Factories may be plain or ``async`` and must return a *fresh, empty* adapter on every call
(each suite calls its factory once per behaviour). ``run_role_scheduler_test`` takes
``factory(instances) -> list[RoleScheduler]``: that many handles sharing one fresh back end.
``run_connector_test`` takes ``maker(events) -> ConnectorConstructor`` replaying ``events``.
``run_atomic_writes_test`` (part of ``run_record_store_test``) checks what child workflows need
of a store, ``store_many`` included; run it alone for a store that publishes its events to a
streamer itself instead of an outbox.
The suites wait on events, never sleep; a behaviour that must happen gets 5 s, and "this
blocks" is checked over 0.05 s. A whole suite takes well under a second in memory.
"""

from __future__ import annotations

from ._connector import ConnectorMaker, run_connector_test
from ._roles import RoleSchedulerFactory, run_role_scheduler_test
from ._store import RecordStoreFactory
from ._store_many import run_atomic_writes_test
from ._store_retries import run_record_store_test
from ._streamer import EventStreamerFactory, run_event_streamer_test
from ._timeouts import TimeoutStoreFactory, run_timeout_store_test

__all__ = [
    "ConnectorMaker",
    "EventStreamerFactory",
    "RecordStoreFactory",
    "RoleSchedulerFactory",
    "TimeoutStoreFactory",
    "run_atomic_writes_test",
    "run_connector_test",
    "run_event_streamer_test",
    "run_record_store_test",
    "run_role_scheduler_test",
    "run_timeout_store_test",
]
