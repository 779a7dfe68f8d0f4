"""A durable :class:`workflow.TimeoutStore` on SQL (SQLite or PostgreSQL, SQLAlchemy Core).

Timers live in the ``workflow_timeouts`` table of :mod:`adapters.sqlschema` (create it with
:func:`adapters.sqlschema.create_schema` or the alembic migrations). Ids come from the table's
auto-increment key, so creation order is id order. ``created_at`` is stamped with the store's
clock (the engine's clock when built with ``clock=``), never the database's ``now()``
(SPEC §9.14). Times round-trip with microsecond precision and come back timezone-aware UTC.

::

    engine = make_engine("sqlite+aiosqlite:///workflow.db")
    await create_schema(engine)
    b.build(..., timeout_store=SQLTimeoutStore(engine))
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Clock, RealClock, TimeoutRecord

from ._schemacheck import check_schema
from ._sqlsetup import prepare
from .sqlschema import reading, timeouts

__all__ = ["SQLTimeoutStore"]


def _record(row: sa.Row[Any]) -> TimeoutRecord:
    return TimeoutRecord(
        id=int(row.id),
        workflow_name=row.workflow_name,
        foreign_id=row.foreign_id,
        run_id=row.run_id,
        status=int(row.status),
        completed=bool(row.completed),
        expire_at=row.expire_at,
        created_at=row.created_at,
        index=int(row.idx),
    )


class SQLTimeoutStore:
    """:class:`~workflow.TimeoutStore` on the ``workflow_timeouts`` table.

    ``engine`` is an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (build it with
    :func:`adapters.sqlschema.make_engine`); ``clock`` stamps ``created_at`` (default: the
    wall clock). ``complete`` keeps the row, marked completed; ``cancel`` deletes it.
    """

    def __init__(self, engine: AsyncEngine, *, clock: Clock | None = None) -> None:
        self._engine = prepare(engine)
        self._clock: Clock = clock or RealClock()

    async def create(
        self,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        status: int,
        expire_at: datetime,
        *,
        index: int = 0,
    ) -> int:
        if expire_at.tzinfo is None or expire_at.utcoffset() is None:
            raise ValueError(f"expire_at must be timezone-aware, got {expire_at!r}")
        await check_schema(self._engine)
        stmt = (
            sa.insert(timeouts)
            .values(
                workflow_name=workflow_name,
                foreign_id=foreign_id,
                run_id=run_id,
                status=int(status),
                idx=int(index),
                completed=False,
                expire_at=expire_at,
                created_at=self._clock.now(),
            )
            .returning(timeouts.c.id)
        )
        async with self._engine.begin() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def complete(self, id: int) -> None:
        stmt = sa.update(timeouts).where(timeouts.c.id == id).values(completed=True)
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def cancel(self, id: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(timeouts).where(timeouts.c.id == id))

    async def cancel_run(self, workflow_name: str, run_id: str, status: int) -> None:
        stmt = sa.delete(timeouts).where(
            timeouts.c.run_id == run_id,
            timeouts.c.workflow_name == workflow_name,
            timeouts.c.status == int(status),
            timeouts.c.completed == sa.false(),
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def list(self, workflow_name: str) -> builtins.list[TimeoutRecord]:
        return await self._select(
            timeouts.c.workflow_name == workflow_name,
            timeouts.c.completed == sa.false(),
        )

    async def list_valid(
        self, workflow_name: str, status: int, now: datetime
    ) -> builtins.list[TimeoutRecord]:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware, got {now!r}")
        return await self._select(
            timeouts.c.workflow_name == workflow_name,
            timeouts.c.status == int(status),
            timeouts.c.completed == sa.false(),
            timeouts.c.expire_at <= now,
        )

    async def _select(self, *where: sa.ColumnElement[bool]) -> builtins.list[TimeoutRecord]:
        stmt = sa.select(timeouts).where(*where).order_by(timeouts.c.id)
        async with reading(self._engine) as conn:
            rows: Sequence[sa.Row[Any]] = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]
