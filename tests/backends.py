"""The adapter sets end-to-end tests run on: memory, SQLite and PostgreSQL. On each database
twice: with the outbox relay (``sqlite``, ``postgres``) and with the record store appending
events to the SQL streamer itself (``sqlite-direct``, ``postgres-direct``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Builder, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.adapters.memtimeoutstore import MemTimeoutStore
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqlstreamer import SQLStreamer
from workflow.adapters.sqltimeout import SQLTimeoutStore
from workflow.testing import FakeClock


@dataclass
class Backend:
    """One set of adapters sharing one database (or one memory)."""

    name: str
    clock: FakeClock
    registry: CollectorRegistry
    engine: AsyncEngine | None = None
    _closers: list[Any] = field(default_factory=list)
    _mem: tuple[Any, ...] | None = None

    def adapters(self) -> tuple[Any, Any, Any, Any]:
        """(streamer, record store, role scheduler, timeout store). On memory every call
        returns the same objects (one process); on SQL new objects on the same database,
        like another process would have."""
        if self.engine is None:
            if self._mem is None:
                self._mem = (
                    MemStreamer(self.clock),
                    MemRecordStore(),
                    MemRoleScheduler(),
                    MemTimeoutStore(self.clock),
                )
            return self._mem  # type: ignore[return-value]
        streamer = SQLStreamer(self.engine, clock=self.clock, poll_frequency=0.2)
        roles = SQLRoleScheduler(self.engine)
        self._closers += [streamer, roles]
        direct = self.name.endswith("-direct")
        return (
            streamer,
            SQLRecordStore(self.engine, streamer=streamer if direct else None),
            roles,
            SQLTimeoutStore(self.engine, clock=self.clock),
        )

    def build(self, b: Builder[Any, Any], **kwargs: Any) -> Workflow[Any, Any]:
        streamer, store, roles, timeouts = self.adapters()
        kwargs.setdefault("timeout_store", timeouts)
        return b.build(
            streamer, store, roles, clock=self.clock, metrics_registry=self.registry, **kwargs
        )

    def build_group(self, *builders: Builder[Any, Any], **kwargs: Any) -> list[Workflow[Any, Any]]:
        """Workflows on one set of adapters (one process): a parent and its child workflows
        share one record store object."""
        streamer, store, roles, timeouts = self.adapters()
        kwargs.setdefault("timeout_store", timeouts)
        return [
            b.build(
                streamer, store, roles, clock=self.clock, metrics_registry=self.registry, **kwargs
            )
            for b in builders
        ]

    async def close(self) -> None:
        for c in self._closers:
            await c.close()


@pytest.fixture(params=["memory", "sqlite", "postgres", "sqlite-direct", "postgres-direct"])
def backend_engine(request: pytest.FixtureRequest) -> tuple[str, AsyncEngine | None]:
    if request.param == "memory":
        return "memory", None
    fixture = "pg_engine" if request.param.startswith("postgres") else "sqlite_engine"
    return request.param, request.getfixturevalue(fixture)


@pytest.fixture
async def backend(
    backend_engine: tuple[str, AsyncEngine | None], clock: FakeClock, registry: CollectorRegistry
) -> AsyncIterator[Backend]:
    name, engine = backend_engine
    b = Backend(name, clock, registry, engine)
    yield b
    await b.close()
