"""An in-memory record store with a transactional outbox and per-run history."""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from datetime import datetime

from workflow import (
    ConcurrentUpdateError,
    IdempotencyKeyUsedError,
    OutboxEvent,
    Record,
    RecordNotFoundError,
    RunState,
    WorkflowInProgressError,
)
from workflow.abc import Clock, Filter, Order, make_outbox_event, matches

__all__ = ["MemRecordStore"]


class MemRecordStore:
    """In-memory :class:`~workflow.RecordStore`.

    Records are immutable, so every stored version is kept as is: :meth:`history` returns them
    all. ``clock`` is accepted for symmetry with the other adapters; stored times are the
    engine's.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self._records: dict[str, Record] = {}
        self._history: dict[str, list[Record]] = {}
        self._latest: dict[tuple[str, str], str] = {}
        self._order: list[str] = []
        self._outbox: dict[str, dict[str, OutboxEvent]] = {}
        self._outbox_owner: dict[str, str] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._retrying: dict[str, Record] = {}  # runs whose meta.retry_at is set

    async def store(self, record: Record) -> None:
        self._check(record, {}, {})
        self._apply(record)

    async def store_many(
        self, records: Sequence[Record], events: Sequence[OutboxEvent] = ()
    ) -> None:
        """Every record and event, or (on the first refusal) nothing."""
        new_ids: dict[tuple[str, str], str] = {}
        new_keys: dict[tuple[str, str], str] = {}
        for record in records:
            self._check(record, new_ids, new_keys)
        for record in records:
            self._apply(record)
        for event in events:
            self._outbox.setdefault(event.workflow_name, {})[event.id] = event
            self._outbox_owner[event.id] = event.workflow_name

    def _check(
        self,
        record: Record,
        new_ids: dict[tuple[str, str], str],
        new_keys: dict[tuple[str, str], str],
    ) -> None:
        """Raise what storing ``record`` would raise; ``new_ids`` / ``new_keys``: the new runs
        (by foreign id / idempotency key) stored before it in the same transaction."""
        current = self._records.get(record.run_id)
        expected = record.meta.version - 1
        if current is None:
            if expected != 0:
                raise ConcurrentUpdateError(
                    f"run {record.run_id} does not exist; a new run must be stored with "
                    f"version 1, got {record.meta.version}"
                )
            idem = record.meta.idempotency_key
            if idem is not None:
                existing = self._keys.get((record.workflow_name, idem)) or new_keys.get(
                    (record.workflow_name, idem)
                )
                if existing is not None:
                    raise IdempotencyKeyUsedError(
                        f"run {existing} of workflow {record.workflow_name!r} already has "
                        f"idempotency key {idem!r}",
                        existing,
                    )
                new_keys[(record.workflow_name, idem)] = record.run_id
            key = (record.workflow_name, record.foreign_id)
            last_id = self._latest.get(key)
            last = self._records[last_id] if last_id is not None else None
            if key in new_ids or (last is not None and not last.run_state.finished):
                holder = new_ids.get(key) or (last.run_id if last is not None else "")
                raise WorkflowInProgressError(
                    f"foreign id {record.foreign_id!r} of workflow {record.workflow_name!r}"
                    f" has an unfinished run {holder}; wait for it to finish or cancel it"
                )
            new_ids[key] = record.run_id
        elif current.meta.version != expected:
            raise ConcurrentUpdateError(
                f"run {record.run_id} is at version {current.meta.version}; a write of version "
                f"{record.meta.version} is stale. Read the run again"
            )

    def _apply(self, record: Record) -> None:
        if record.run_id not in self._records:
            key = (record.workflow_name, record.foreign_id)
            self._latest[key] = record.run_id
            idem = record.meta.idempotency_key
            if idem is not None:
                self._keys[(record.workflow_name, idem)] = record.run_id
            self._order.append(record.run_id)
            self._history[record.run_id] = []
        self._records[record.run_id] = record
        if record.meta.retry_at is None:
            self._retrying.pop(record.run_id, None)
        else:
            self._retrying[record.run_id] = record
        history = self._history[record.run_id]
        if record.run_state is RunState.DATA_DELETED:
            # a run's personal data must not survive its deletion in the history
            history[:] = [dataclasses.replace(h, object=record.object) for h in history]
        history.append(record)
        event = make_outbox_event(record)
        self._outbox.setdefault(record.workflow_name, {})[event.id] = event
        self._outbox_owner[event.id] = record.workflow_name

    async def due_retries(
        self, workflow_name: str, status: int, now: datetime, limit: int
    ) -> builtins.list[Record]:
        due = [
            r
            for r in self._retrying.values()
            if r.workflow_name == workflow_name
            and r.status == status
            and r.meta.retry_at is not None
            and r.meta.retry_at <= now
            and r.run_state in (RunState.INITIATED, RunState.RUNNING)
        ]
        due.sort(key=lambda r: r.meta.retry_at or now)
        return due[:limit]

    async def unfinished_by_status(self, workflow_name: str) -> dict[int, int]:
        """How many initiated, running or paused runs each status has."""
        counts: dict[int, int] = {}
        for r in self._records.values():
            if r.workflow_name == workflow_name and not r.run_state.finished:
                counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    async def lookup(self, run_id: str) -> Record:
        try:
            return self._records[run_id]
        except KeyError:
            raise RecordNotFoundError(f"no run with id {run_id!r}") from None

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        run_id = self._latest.get((workflow_name, foreign_id))
        if run_id is None:
            raise RecordNotFoundError(
                f"workflow {workflow_name!r} has no run for foreign id {foreign_id!r}"
            )
        return self._records[run_id]

    async def list(
        self,
        workflow_name: str = "",
        offset_id: int = 0,
        limit: int = 25,
        order: Order = "asc",
        *filters: Filter,
    ) -> builtins.list[Record]:
        if limit <= 0:
            limit = 25
        ids = self._order if order == "asc" else reversed(self._order)
        out: builtins.list[Record] = []
        skipped = 0
        for run_id in ids:
            rec = self._records[run_id]
            if workflow_name and rec.workflow_name != workflow_name:
                continue
            if filters and not matches(rec, filters):
                continue
            if skipped < offset_id:
                skipped += 1
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    async def list_outbox_events(
        self, workflow_name: str, limit: int
    ) -> builtins.list[OutboxEvent]:
        events = self._outbox.get(workflow_name)
        if not events:
            return []
        out: builtins.list[OutboxEvent] = []
        for ev in events.values():
            out.append(ev)
            if len(out) >= limit:
                break
        return out

    async def delete_outbox_event(self, id: str) -> None:
        wf = self._outbox_owner.pop(id, None)
        if wf is not None:
            self._outbox[wf].pop(id, None)

    async def delete_outbox_events(self, ids: Sequence[str]) -> None:
        """Delete a batch of published outbox events."""
        owner = self._outbox_owner
        for id in ids:
            wf = owner.pop(id, None)
            if wf is not None:
                self._outbox[wf].pop(id, None)

    async def versions(self, run_ids: Sequence[str]) -> dict[str, int]:
        """The current version of each existing run among ``run_ids``."""
        records = self._records
        return {r: records[r].meta.version for r in run_ids if r in records}

    async def history(self, run_id: str) -> builtins.list[Record]:
        """Every stored version of the run, oldest first."""
        try:
            return list(self._history[run_id])
        except KeyError:
            raise RecordNotFoundError(f"no run with id {run_id!r}") from None

    async def purge_finished(self, finished_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` finished runs last written before ``finished_before``,
        oldest first, with their history (the Purge capability)."""
        done = (RunState.COMPLETED, RunState.CANCELLED, RunState.DATA_DELETED)
        gone = [
            r
            for r in sorted(self._records.values(), key=lambda r: r.updated_at)
            if r.run_state in done and r.updated_at < finished_before
        ][: max(limit, 0)]
        ids = {r.run_id for r in gone}
        for r in gone:
            del self._records[r.run_id]
            self._history.pop(r.run_id, None)
            self._retrying.pop(r.run_id, None)
            key = (r.workflow_name, r.foreign_id)
            if self._latest.get(key) == r.run_id:
                del self._latest[key]
            if r.meta.idempotency_key is not None:
                self._keys.pop((r.workflow_name, r.meta.idempotency_key), None)
        if ids:
            self._order = [i for i in self._order if i not in ids]
        return len(gone)
