"""An in-memory timeout store."""

from __future__ import annotations

import builtins
import itertools
from datetime import datetime

from workflow import TimeoutRecord
from workflow.abc import Clock, RealClock

__all__ = ["MemTimeoutStore"]


class MemTimeoutStore:
    """In-memory :class:`~workflow.TimeoutStore`; ``clock`` stamps ``created_at``."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or RealClock()
        self._timeouts: dict[int, TimeoutRecord] = {}
        self._ids = itertools.count(1)

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
        if expire_at.tzinfo is None:
            raise ValueError("expire_at must be timezone-aware")
        tid = next(self._ids)
        self._timeouts[tid] = TimeoutRecord(
            id=tid,
            workflow_name=workflow_name,
            foreign_id=foreign_id,
            run_id=run_id,
            status=int(status),
            completed=False,
            expire_at=expire_at,
            created_at=self._clock.now(),
            index=index,
        )
        return tid

    async def complete(self, id: int) -> None:
        t = self._timeouts.get(id)
        if t is not None and not t.completed:
            self._timeouts[id] = TimeoutRecord(
                id=t.id,
                workflow_name=t.workflow_name,
                foreign_id=t.foreign_id,
                run_id=t.run_id,
                status=t.status,
                completed=True,
                expire_at=t.expire_at,
                created_at=t.created_at,
                index=t.index,
            )

    async def cancel(self, id: int) -> None:
        self._timeouts.pop(id, None)

    async def cancel_run(self, workflow_name: str, run_id: str, status: int) -> None:
        for tid in [
            t.id
            for t in self._timeouts.values()
            if t.run_id == run_id and t.status == status and t.workflow_name == workflow_name
        ]:
            del self._timeouts[tid]

    async def list(self, workflow_name: str) -> builtins.list[TimeoutRecord]:
        return [
            t
            for t in self._timeouts.values()
            if t.workflow_name == workflow_name and not t.completed
        ]

    async def list_valid(
        self, workflow_name: str, status: int, now: datetime
    ) -> builtins.list[TimeoutRecord]:
        return [
            t
            for t in self._timeouts.values()
            if t.workflow_name == workflow_name
            and t.status == status
            and not t.completed
            and t.expire_at <= now
        ]
