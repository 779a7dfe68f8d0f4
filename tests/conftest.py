"""Shared fixtures. Each test gets its own Prometheus registry so metrics never leak."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflow.adapters.sqlschema import create_schema, make_engine
from workflow.testing import FakeClock

from .support import need_service


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2023, 4, 9, 8, 30, tzinfo=UTC))


# -- SQL databases -----------------------------------------------------------------------

PG_URL = os.environ.get("WORKFLOW_TEST_POSTGRES_URL", "")


def _need_postgres() -> str:
    return need_service(
        PG_URL, "PostgreSQL tests need WORKFLOW_TEST_POSTGRES_URL (.ci/run starts a server)"
    )


@pytest.fixture
def unraisable() -> Iterator[list[str]]:
    """What was reported as unraisable while the test ran (e.g. an unclosed aiokafka
    connection's ResourceWarning, reported when it is collected)."""
    found: list[str] = []

    def hook(u: sys.UnraisableHookArgs) -> None:
        found.append(f"{u.exc_value!r} in {u.object!r}")

    previous = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        yield found
    finally:
        sys.unraisablehook = previous


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'workflow.db'}")
    await create_schema(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def pg_schema() -> str:
    """The name of the fresh PostgreSQL schema of ``pg_engine``."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def pg_engine(pg_schema: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh schema of the test server, dropped afterwards."""
    url = _need_postgres()
    schema = pg_schema
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    await create_schema(engine)
    try:
        yield engine
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def sql_engine(request: pytest.FixtureRequest) -> AsyncEngine:
    """Each SQL test runs on SQLite and on PostgreSQL."""
    engine: AsyncEngine = request.getfixturevalue(
        f"{'pg' if request.param == 'postgres' else 'sqlite'}_engine"
    )
    return engine


from .backends import backend, backend_engine  # noqa: E402, F401 - shared fixtures
